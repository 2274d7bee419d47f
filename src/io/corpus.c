/* corpus.c -- listing a labelled-directory corpus in load_files order. */
#include "io/corpus.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/err.h"
#include "util/log.h"

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names in dir (not "." or ".."); OUT *names owned by the caller. */
static int list_sorted(const char *dir, char ***names, size_t *n, dbx_err *err) {
  DIR *d = opendir(dir);
  if (!d) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: cannot read directory: %s", dir, strerror(e));
  }
  char **v = NULL;
  size_t k = 0, cap = 0;
  struct dirent *de;
  int rc = 0;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    if (k == cap) {
      cap = cap ? cap * 2 : 64;
      char **nv = realloc(v, cap * sizeof *nv);
      if (!nv) { rc = DBX_ENOMEM; break; }
      v = nv;
    }
    if (!(v[k] = strdup(de->d_name))) { rc = DBX_ENOMEM; break; }
    k++;
  }
  closedir(d);
  if (rc) {
    for (size_t i = 0; i < k; i++) free(v[i]);
    free(v);
    return rc;
  }
  if (k) qsort(v, k, sizeof *v, cmp_str);
  *names = v;
  *n = k;
  return 0;
}

static char *join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s%s%s", a, a[strlen(a) - 1] == '/' ? "" : "/", b);
  return p;
}

/* Takes ownership of path, also on failure. */
static int push(corpus *c, size_t *cap, char *path, const char *label, const struct stat *st) {
  if (c->in.n == *cap) {
    size_t nc = *cap ? *cap * 2 : 256;
    input *nv = realloc(c->in.v, nc * sizeof *nv);
    char **nl = realloc(c->label, nc * sizeof *nl);
    if (nv) c->in.v = nv;
    if (nl) c->label = nl;
    if (!nv || !nl) { free(path); return DBX_ENOMEM; }  /* path is ours either way */
    *cap = nc;
  }
  input *x = &c->in.v[c->in.n];
  x->path = path;
  x->kind = IN_PLAIN;
  input_set_stat(x, st);
  c->label[c->in.n] = strdup(label);
  c->in.n++;
  c->nlabel = c->in.n;
  return c->label[c->in.n - 1] ? 0 : DBX_ENOMEM;
}

int corpus_open(const char *path, corpus *c, dbx_err *err) {
  memset(c, 0, sizeof *c);
  struct stat st;
  if (stat(path, &st) != 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: %s", path, strerror(e));
  }
  if (!S_ISDIR(st.st_mode)) {
    size_t n = strlen(path);
    if (n >= 4 && strcmp(path + n - 4, ".tsv") == 0) c->format = CORPUS_TSV;
    else if (n >= 6 && strcmp(path + n - 6, ".jsonl") == 0) c->format = CORPUS_JSONL;
    else
      return dbx_seterr(err, DBX_EUSAGE, "%s: a corpus is a directory ROOT/<label>/<document>, a .tsv or a .jsonl file", path);
    char *args[] = {(char *)path};
    return inputs_expand(args, 1, &c->in, err);
  }
  c->format = CORPUS_DIR;
  char **labels = NULL;
  size_t nl = 0, cap = 0;
  int rc = list_sorted(path, &labels, &nl, err);
  if (rc) return rc;
  for (size_t i = 0; i < nl && !rc; i++) {
    char *dir = join(path, labels[i]);
    if (!dir) { rc = DBX_ENOMEM; break; }
    struct stat ds;
    if (stat(dir, &ds) != 0 || !S_ISDIR(ds.st_mode)) { free(dir); continue; }  /* files at the top are not documents */
    char **docs = NULL;
    size_t nd = 0;
    rc = list_sorted(dir, &docs, &nd, err);
    for (size_t k = 0; k < nd; k++) {
      char *p = rc ? NULL : join(dir, docs[k]);
      struct stat fs;
      if (!rc && !p) rc = DBX_ENOMEM;
      if (!rc && stat(p, &fs) != 0) {
        int e = errno;
        rc = dbx_seterr(err, err_from_errno(e), "%s: %s", p, strerror(e));
      }
      if (!rc && S_ISDIR(fs.st_mode))
        rc = dbx_seterr(err, DBX_EISDIR, "%s: a directory inside label folder '%s'; documents must be files", p, labels[i]);
      if (!rc && !S_ISREG(fs.st_mode)) {
        /* A FIFO would block the read forever, a device never end: not a document. */
        log_warn("%s: skipped: not a regular file (a FIFO, socket or device), not a document", p);
      } else if (!rc) {
        rc = push(c, &cap, p, labels[i], &fs);
        p = NULL;
      }
      free(p);
      free(docs[k]);
    }
    free(docs);
    free(dir);
  }
  for (size_t i = 0; i < nl; i++) free(labels[i]);
  free(labels);
  if (!rc && c->in.n == 0)
    rc = dbx_seterr(err, DBX_EINVAL, "%s: no documents (expected ROOT/<label>/<document> files)", path);
  if (rc) corpus_free(c);
  return rc;
}

void corpus_free(corpus *c) {
  if (!c) return;
  for (size_t i = 0; c->label && i < c->nlabel; i++) free(c->label[i]);
  free(c->label);
  inputs_free(&c->in);
  c->label = NULL;
}
