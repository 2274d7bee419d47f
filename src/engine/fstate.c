/* fstate.c -- the state file of a followed job. See fstate.h. */
#include "engine/fstate.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define FSTATE_MAGIC "DBFOLLOW2\n"

static int put64(dbx_buf *b, uint64_t v) {
  char c[8];
  for (int i = 0; i < 8; i++) c[i] = (char)(v >> (8 * i));
  return dbx_buf_append(b, c, 8);
}

static int get64(const char **p, const char *end, uint64_t *v) {
  if (end - *p < 8) return -1;
  *v = 0;
  for (int i = 7; i >= 0; i--) *v = (*v << 8) | (unsigned char)(*p)[i];
  *p += 8;
  return 0;
}

static int put_bytes(dbx_buf *b, const char *s, size_t n) { return put64(b, n) || (n && dbx_buf_append(b, s, n)); }

static int put_ranges(dbx_buf *b, const fstate_range *v, size_t n) {
  int rc = put64(b, n);
  for (size_t i = 0; i < n && !rc; i++)
    rc = put_bytes(b, v[i].path, strlen(v[i].path)) || put64(b, v[i].from) || put64(b, v[i].to);
  return rc;
}

int fstate_encode(const fstate *s, dbx_buf *out) {
  size_t start = out->len;
  int rc = dbx_buf_append(out, FSTATE_MAGIC, strlen(FSTATE_MAGIC)) || put64(out, s->fingerprint) ||
           put64(out, s->epoch) || put64(out, s->nfiles);
  for (size_t i = 0; i < s->nfiles && !rc; i++)
    rc = put64(out, s->files[i].dev) || put64(out, s->files[i].ino) || put64(out, s->files[i].off) ||
         put_bytes(out, s->files[i].path, strlen(s->files[i].path));
  rc = rc || put_bytes(out, s->state, s->state_len) || put64(out, (uint64_t)s->wstart) || put64(out, s->wclosed) ||
       put_ranges(out, s->wr, s->nwr) || put64(out, (uint64_t)s->pend_on);
  if (!rc && s->pend_on)
    rc = put64(out, s->pend_k) || put64(out, (uint64_t)s->pend_start) ||
         put_bytes(out, s->pend_token, strlen(s->pend_token)) || put_bytes(out, s->pend_enc, s->pend_enc_len) ||
         put_ranges(out, s->pend_wr, s->pend_nwr);
  rc = rc || put64(out, XXH64(out->data + start, out->len - start, 0));
  return rc ? DBX_ENOMEM : 0;
}

/* Append a range as it is. */
static int push_range(fstate_range **v, size_t *n, size_t *cap, const char *path, uint64_t from, uint64_t to) {
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 8;
    fstate_range *nv = realloc(*v, nc * sizeof *nv);
    if (!nv) return DBX_ENOMEM;
    *v = nv, *cap = nc;
  }
  if (!((*v)[*n].path = strdup(path))) return DBX_ENOMEM;
  (*v)[*n].from = from, (*v)[*n].to = to;
  (*n)++;
  return 0;
}

int fstate_add_range(fstate_range **v, size_t *n, size_t *cap, const char *path, uint64_t from, uint64_t to) {
  if (*n && (*v)[*n - 1].to == from && !strcmp((*v)[*n - 1].path, path)) {
    (*v)[*n - 1].to = to;
    return 0;
  }
  return push_range(v, n, cap, path, from, to);
}

void fstate_free_ranges(fstate_range *v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i].path);
  free(v);
}

void fstate_free(fstate *s) {
  for (size_t i = 0; i < s->nfiles; i++) free(s->files[i].path);
  free(s->files);
  fstate_free_ranges(s->wr, s->nwr);
  fstate_free_ranges(s->pend_wr, s->pend_nwr);
  memset(s, 0, sizeof *s);
}

/* A length-prefixed byte string of at most max bytes, pointing into the input. */
static int get_bytes(const char **p, const char *end, uint64_t max, const char **s, size_t *n) {
  uint64_t k;
  if (get64(p, end, &k) || k > max || k > (uint64_t)(end - *p)) return -1;
  *s = *p, *n = (size_t)k;
  *p += k;
  return 0;
}

/* A path: no NUL inside (it becomes a C string). */
static int get_path(const char **p, const char *end, char **out) {
  const char *s;
  size_t n;
  if (get_bytes(p, end, FSTATE_PATH_MAX - 1, &s, &n) || memchr(s, 0, n)) return DBX_ECORRUPT;
  if (!(*out = malloc(n + 1))) return DBX_ENOMEM;
  memcpy(*out, s, n);
  (*out)[n] = 0;
  return 0;
}

static int get_ranges(const char **p, const char *end, fstate_range **v, size_t *n) {
  uint64_t k;
  size_t cap = 0;
  /* each range takes 24 bytes at least: a count past that is a lie */
  if (get64(p, end, &k) || k > (uint64_t)(end - *p) / 24) return DBX_ECORRUPT;
  for (uint64_t i = 0; i < k; i++) {
    char *path = NULL;
    uint64_t from, to;
    int rc = get_path(p, end, &path);
    if (!rc && (get64(p, end, &from) || get64(p, end, &to) || to < from)) rc = DBX_ECORRUPT;
    if (!rc) rc = push_range(v, n, &cap, path, from, to);  /* as written: decoding is not merging */
    free(path);
    if (rc) return rc;
  }
  return 0;
}

int fstate_decode(const char *p, size_t n, fstate *s) {
  memset(s, 0, sizeof *s);
  size_t ml = strlen(FSTATE_MAGIC);
  if (n < ml + 8 || memcmp(p, FSTATE_MAGIC, ml)) return DBX_ECORRUPT;
  const char *end = p + n - 8, *q = end;
  uint64_t sum, nf, on;
  get64(&q, p + n, &sum);
  if (XXH64(p, n - 8, 0) != sum) return DBX_ECORRUPT;
  const char *c = p + ml;
  int rc = 0;
  /* each file takes 32 bytes at least */
  if (get64(&c, end, &s->fingerprint) || get64(&c, end, &s->epoch) || get64(&c, end, &nf) ||
      nf > (uint64_t)(end - c) / 32)
    return DBX_ECORRUPT;
  if (nf && !(s->files = calloc((size_t)nf, sizeof *s->files))) return DBX_ENOMEM;
  for (uint64_t i = 0; i < nf && !rc; i++) {
    fstate_file *f = &s->files[i];
    if (get64(&c, end, &f->dev) || get64(&c, end, &f->ino) || get64(&c, end, &f->off)) rc = DBX_ECORRUPT;
    if (!rc) rc = get_path(&c, end, &f->path);
    if (!rc) s->nfiles++;
  }
  uint64_t ws;
  if (!rc && (get_bytes(&c, end, UINT64_MAX, &s->state, &s->state_len) || get64(&c, end, &ws) ||
              get64(&c, end, &s->wclosed)))
    rc = DBX_ECORRUPT;
  if (!rc) s->wstart = (int64_t)ws, rc = get_ranges(&c, end, &s->wr, &s->nwr);
  if (!rc && (get64(&c, end, &on) || on > 1)) rc = DBX_ECORRUPT;
  if (!rc && on) {
    uint64_t st;
    const char *tok;
    size_t tl;
    if (get64(&c, end, &s->pend_k) || get64(&c, end, &st) || get_bytes(&c, end, FSTATE_TOKEN_MAX - 1, &tok, &tl) ||
        memchr(tok, 0, tl) || get_bytes(&c, end, UINT64_MAX, &s->pend_enc, &s->pend_enc_len))
      rc = DBX_ECORRUPT;
    if (!rc) {
      memcpy(s->pend_token, tok, tl);
      s->pend_token[tl] = 0;
      s->pend_on = 1;
      s->pend_start = (int64_t)st;
      rc = get_ranges(&c, end, &s->pend_wr, &s->pend_nwr);
    }
  }
  if (!rc && c != end) rc = DBX_ECORRUPT;
  if (rc) fstate_free(s);
  return rc;
}
