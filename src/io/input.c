/* input.c -- input expansion: files, recursive sorted directories, globs and "-". */
#include "io/input.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/err.h"
#include "util/log.h"

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

in_kind input_kind_of(const char *path) {
  if (strcmp(path, "-") == 0) return IN_STREAM;
  if (ends_with(path, ".gz")) return IN_GZ;
  if (ends_with(path, ".zst")) return IN_ZST;
  return IN_PLAIN;
}

/* Does the regular file at path, whose size is 0, yield a byte when read? (Opening a
 * regular file does not block; O_NONBLOCK in case it is no longer one.) */
static int zero_size_has_bytes(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return 0;
  char c;
  ssize_t k;
  do k = read(fd, &c, 1); while (k < 0 && errno == EINTR);
  close(fd);
  return k > 0;
}

static int push(inputs *in, size_t *cap, const char *path, const struct stat *st) {
  if (in->n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    input *nv = realloc(in->v, nc * sizeof *nv);
    if (!nv) return DBX_ENOMEM;
    in->v = nv;
    *cap = nc;
  }
  input *x = &in->v[in->n];
  x->path = strdup(path);
  if (!x->path) return DBX_ENOMEM;
  x->kind = input_kind_of(path);
  x->size = 0;
  x->mtime_ns = 0;
  x->dev = x->ino = 0;
  if (st) input_set_stat(x, st);
  /* A regular file of size 0 that still has bytes (procfs, sysfs: the size is not known
   * until read) cannot be cut by byte ranges: it is read as a stream, like '-'. */
  if (st && st->st_size == 0 && zero_size_has_bytes(path)) x->kind = IN_STREAM;
  in->n++;
  return 0;
}

void input_set_stat(input *x, const struct stat *st) {
  x->size = (uint64_t)st->st_size;
  x->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
  x->dev = (uint64_t)st->st_dev;
  x->ino = (uint64_t)st->st_ino;
}

int input_check(const input *x, const struct stat *st, dbx_err *err) {
  if (x->kind == IN_STREAM) return 0;
  int64_t mt = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
  const char *what = NULL;
  char sz[96];
  if ((uint64_t)st->st_dev != x->dev || (uint64_t)st->st_ino != x->ino) {
    what = "was replaced by another file";
  } else if ((uint64_t)st->st_size != x->size) {
    snprintf(sz, sizeof sz, "is now %llu bytes, it was %llu when the job was planned",
             (unsigned long long)st->st_size, (unsigned long long)x->size);
    what = sz;
  } else if (mt != x->mtime_ns) {
    what = "was modified (its modification time changed)";
  }
  if (!what) return 0;
  return dbx_seterr(err, DBX_ECHANGED, "%s: input changed while the job ran: it %s; "
                    "no result was committed: run the job again once the file is stable", x->path, what);
}

int inputs_check_unchanged(const inputs *in, dbx_err *err) {
  for (size_t i = 0; in && i < in->n; i++) {
    const input *x = &in->v[i];
    if (x->kind == IN_STREAM) continue;
    struct stat st;
    if (stat(x->path, &st) != 0) {
      int e = errno;
      return dbx_seterr(err, DBX_ECHANGED, "%s: input changed while the job ran: %s; "
                        "no result was committed: run the job again once the file is stable",
                        x->path, strerror(e));
    }
    int rc = input_check(x, &st, err);
    if (rc) return rc;
  }
  return 0;
}

static const char *kind_name(mode_t m) {
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* listed: path came from a directory walk or a pattern, not from the command line. */
static int add_path(inputs *in, size_t *cap, const char *path, int depth, int listed, dbx_err *err);

static int add_dir(inputs *in, size_t *cap, const char *path, int depth, dbx_err *err) {
  if (depth > 64) return dbx_seterr(err, DBX_EINVAL, "%s: directories nested too deep (symlink loop?)", path);
  DIR *d = opendir(path);
  if (!d) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: cannot read directory: %s", path, strerror(e));
  }
  char **names = NULL;
  size_t n = 0, ncap = 0;
  int rc = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.' || de->d_name[0] == '_') continue;
    if (n == ncap) {
      ncap = ncap ? ncap * 2 : 64;
      char **nn = realloc(names, ncap * sizeof *nn);
      if (!nn) { rc = DBX_ENOMEM; goto done; }
      names = nn;
    }
    if (!(names[n] = strdup(de->d_name))) { rc = DBX_ENOMEM; goto done; }
    n++;
  }
  if (n) qsort(names, n, sizeof *names, cmp_str);  /* names is NULL for an empty directory */
  for (size_t i = 0; i < n && !rc; i++) {
    size_t len = strlen(path) + strlen(names[i]) + 2;
    char *child = malloc(len);
    if (!child) { rc = DBX_ENOMEM; break; }
    int slash = path[strlen(path) - 1] == '/';
    snprintf(child, len, "%s%s%s", path, slash ? "" : "/", names[i]);
    rc = add_path(in, cap, child, depth + 1, 1, err);
    free(child);
  }
done:
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  closedir(d);
  return rc;
}

static int add_path(inputs *in, size_t *cap, const char *path, int depth, int listed, dbx_err *err) {
  struct stat st;
  if (stat(path, &st) != 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: %s", path, strerror(e));
  }
  if (S_ISDIR(st.st_mode)) return add_dir(in, cap, path, depth, err);
  /* Opening a FIFO blocks until a writer comes, a device may never end: only regular files
   * are inputs (a stream comes in as '-'). Decided on stat, before any open. */
  if (!S_ISREG(st.st_mode)) {
    if (listed) {
      log_warn("%s: skipped: %s, not a regular file", path, kind_name(st.st_mode));
      return 0;
    }
    return dbx_seterr(err, DBX_EUSAGE, "%s: is %s; inputs are regular files or directories "
                      "(to read a stream, give '-' and redirect it: ... - < %s)", path,
                      kind_name(st.st_mode), path);
  }
  if (access(path, R_OK) != 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: cannot read: %s", path, strerror(e));
  }
  return push(in, cap, path, &st);
}

int inputs_expand(char *const *args, size_t nargs, inputs *out, dbx_err *err) {
  size_t cap = 0;
  int rc = 0, saw_stdin = 0;
  memset(out, 0, sizeof *out);
  for (size_t i = 0; i < nargs && !rc; i++) {
    const char *a = args[i];
    if (strcmp(a, "-") == 0) {
      if (saw_stdin++) { rc = dbx_seterr(err, DBX_EUSAGE, "standard input ('-') given twice"); break; }
      rc = push(out, &cap, "-", NULL);
      continue;
    }
    struct stat st;
    if (stat(a, &st) != 0 && strpbrk(a, "*?[")) {
      glob_t g;
      int grc = glob(a, 0, NULL, &g);
      if (grc == GLOB_NOMATCH) {
        rc = dbx_seterr(err, DBX_ENOENT, "%s: no files match this pattern", a);
      } else if (grc != 0) {
        rc = dbx_seterr(err, DBX_EIO, "%s: cannot expand pattern", a);
      } else {
        for (size_t k = 0; k < g.gl_pathc && !rc; k++) rc = add_path(out, &cap, g.gl_pathv[k], 0, 1, err);
      }
      globfree(&g);
      continue;
    }
    rc = add_path(out, &cap, a, 0, 0, err);
  }
  if (rc) inputs_free(out);
  return rc;
}

void inputs_free(inputs *in) {
  if (!in) return;
  for (size_t i = 0; i < in->n; i++) free(in->v[i].path);
  free(in->v);
  in->v = NULL;
  in->n = 0;
}
