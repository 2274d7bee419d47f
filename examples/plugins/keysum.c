/* keysum.c -- an example dbatch plugin: per-key integer aggregation.
 *
 * Input lines are KEY<SEP>NUMBER (SEP a tab unless --op-arg sep=C says otherwise; NUMBER a
 * signed 64-bit decimal integer). Rows are key, count, sum, min, max: one per key, sorted
 * by key in byte order. A line without the separator or with a NUMBER that does not parse
 * is a bad record (counted, the first one noted with its file and line); empty lines are
 * skipped. Sums are exact: one that overflows 64 bits fails the job, naming the key.
 *
 *   cc -O2 -shared -fPIC $(pkg-config --cflags dbatch) -o keysum.so keysum.c
 *   dbatch run --op ./keysum.so --workers 4 -o sums.csv sales/
 *
 * It needs nothing but dbatch.h and libc: dbx_seterr, dbx_buf_append and dbx_batch_where
 * come from the running dbatch. Everything here is what any plugin operator supplies: a
 * partial (a hash table of keys), map, an associative merge, a self-contained encoding and
 * a decoder that trusts nothing, and finish, which writes the rows. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dbatch.h>

typedef struct entry {
  char *key;                  /* NULL: free slot */
  uint32_t klen;
  int64_t count, sum, min, max;
} entry;

typedef struct table {
  entry *e;
  size_t cap, n;              /* cap is a power of two, n <= cap / 2 */
} table;

static uint64_t hash(const char *p, size_t n) {  /* FNV-1a */
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

static void *ks_new(const void *cfg) {
  table *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->cap = 64;
  if (!(t->e = calloc(t->cap, sizeof *t->e))) { free(t); return NULL; }
  return t;
}

static void ks_free(void *p) {
  table *t = p;
  if (!t) return;
  for (size_t i = 0; i < t->cap; i++) free(t->e[i].key);
  free(t->e);
  free(t);
}

static entry *slot(entry *e, size_t cap, const char *k, size_t n) {
  size_t i = hash(k, n) & (cap - 1);
  while (e[i].key && !(e[i].klen == n && !memcmp(e[i].key, k, n))) i = (i + 1) & (cap - 1);
  return &e[i];
}

static int grow(table *t) {
  size_t cap = t->cap * 2;
  entry *e = calloc(cap, sizeof *e);
  if (!e) return DBX_ENOMEM;
  for (size_t i = 0; i < t->cap; i++)
    if (t->e[i].key) *slot(e, cap, t->e[i].key, t->e[i].klen) = t->e[i];
  free(t->e);
  t->e = e;
  t->cap = cap;
  return 0;
}

/* The entry of key k, created empty (count 0) if new; NULL on ENOMEM. */
static entry *lookup(table *t, const char *k, size_t n) {
  entry *s = slot(t->e, t->cap, k, n);
  if (s->key) return s;
  if ((t->n + 1) * 2 > t->cap) {
    if (grow(t)) return NULL;
    s = slot(t->e, t->cap, k, n);
  }
  if (!(s->key = malloc(n ? n : 1))) return NULL;
  memcpy(s->key, k, n);
  s->klen = (uint32_t)n;
  s->count = 0;
  t->n++;
  return s;
}

/* Fold (count, sum, min, max) of the same key into e; -1 when the sum overflows. */
static int fold(entry *e, int64_t count, int64_t sum, int64_t min, int64_t max) {
  if (__builtin_add_overflow(e->sum, sum, &e->sum)) return -1;
  if (e->count == 0 || min < e->min) e->min = min;
  if (e->count == 0 || max > e->max) e->max = max;
  e->count += count;
  return 0;
}

static char separator(const char *cfg) {
  if (cfg && !strncmp(cfg, "sep=", 4) && cfg[4] && !cfg[5]) return cfg[4];
  return '\t';
}

/* A whole decimal int64, optional sign; 0 on success. */
static int parse_i64(const char *p, size_t n, int64_t *out) {
  size_t i = 0;
  int neg = 0;
  if (n && (p[0] == '-' || p[0] == '+')) { neg = p[0] == '-'; i = 1; }
  if (i == n) return -1;
  uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  for (; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    unsigned d = (unsigned)(p[i] - '0');
    if (v > (lim - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

static int ks_map(const void *cfg, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                  dbx_err *err) {
  const char *arg = cfg;
  if (arg[0] && !(!strncmp(arg, "sep=", 4) && arg[4] && !arg[5]))
    return dbx_seterr(err, DBX_EINVAL, "keysum: --op-arg '%s': expected sep=C (one separator character)", arg);
  char sep = separator(arg);
  table *t = partial;
  size_t off = 0;
  while (off < b->size) {
    const char *line = b->data + off;
    const char *nl = memchr(line, '\n', b->size - off);
    size_t n = nl ? (size_t)(nl - line) : b->size - off;
    size_t at = off;
    off += n + (nl != NULL);
    if (n && line[n - 1] == '\r') n--;  /* CRLF files */
    if (n == 0) continue;
    st->records++;
    const char *s = memchr(line, sep, n);
    int64_t v;
    if (!s || parse_i64(s + 1, n - (size_t)(s - line) - 1, &v)) {
      if (st->bad_records++ == 0) {
        char where[200];
        dbx_batch_where(b, at, where, sizeof where);
        snprintf(st->bad_note, sizeof st->bad_note, "%s: %s", where,
                 s ? "not an integer after the separator" : "no separator");
      }
      continue;
    }
    entry *e = lookup(t, line, (size_t)(s - line));
    if (!e) return dbx_seterr(err, DBX_ENOMEM, "keysum: out of memory");
    if (fold(e, 1, v, v, v)) {
      char where[200];
      dbx_batch_where(b, at, where, sizeof where);
      return dbx_seterr(err, DBX_EINVAL, "keysum: %s: the sum of key '%.*s' overflows 64 bits", where,
                        (int)(e->klen > 100 ? 100 : e->klen), e->key);
    }
  }
  return 0;
}

static int ks_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  table *l = left;
  const table *r = right;
  for (size_t i = 0; i < r->cap; i++) {
    const entry *x = &r->e[i];
    if (!x->key) continue;
    entry *e = lookup(l, x->key, x->klen);
    if (!e) return dbx_seterr(err, DBX_ENOMEM, "keysum: out of memory");
    if (fold(e, x->count, x->sum, x->min, x->max))
      return dbx_seterr(err, DBX_EINVAL, "keysum: the sum of key '%.*s' overflows 64 bits",
                        (int)(e->klen > 100 ? 100 : e->klen), e->key);
  }
  return 0;
}

/* Encoding: n (u64), then n times: klen (u32), key, count, sum, min, max (i64); all little
 * endian, so workers and coordinator of any byte order agree. */
static int put(dbx_buf *out, uint64_t v, int bytes) {
  unsigned char b[8];
  for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * i));
  return dbx_buf_append(out, b, (size_t)bytes);
}

static uint64_t get(const char *p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) v |= (uint64_t)(unsigned char)p[i] << (8 * i);
  return v;
}

static int ks_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  const table *t = partial;
  int rc = put(out, t->n, 8);
  for (size_t i = 0; i < t->cap && !rc; i++) {
    const entry *e = &t->e[i];
    if (!e->key) continue;
    if (!(rc = put(out, e->klen, 4)) && !(rc = dbx_buf_append(out, e->key, e->klen)) &&
        !(rc = put(out, (uint64_t)e->count, 8)) && !(rc = put(out, (uint64_t)e->sum, 8)))
      if (!(rc = put(out, (uint64_t)e->min, 8))) rc = put(out, (uint64_t)e->max, 8);
  }
  return rc ? dbx_seterr(err, rc, "keysum: cannot encode a partial: %s", dbx_strerror(rc)) : 0;
}

/* Bytes from a peer: every length checked against what is left, every entry consistent
 * (count >= 1, min <= max), no key twice. */
static int ks_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  table *t = ks_new(cfg);
  if (!t) return dbx_seterr(err, DBX_ENOMEM, "keysum: out of memory");
  const char *why = "truncated";
  if (n < 8) goto bad;
  uint64_t count = get(p, 8);
  size_t off = 8;
  if (count > (n - off) / 36) { why = "more entries than bytes"; goto bad; }
  for (uint64_t i = 0; i < count; i++) {
    if (n - off < 4) goto bad;
    uint32_t kl = (uint32_t)get(p + off, 4);
    off += 4;
    if (kl > n - off || n - off - kl < 32) goto bad;
    const char *k = p + off;
    off += kl;
    int64_t c = (int64_t)get(p + off, 8), s = (int64_t)get(p + off + 8, 8);
    int64_t mn = (int64_t)get(p + off + 16, 8), mx = (int64_t)get(p + off + 24, 8);
    off += 32;
    if (c < 1 || mn > mx) { why = "an entry with count < 1 or min > max"; goto bad; }
    entry *e = lookup(t, k, kl);
    if (!e) { ks_free(t); return dbx_seterr(err, DBX_ENOMEM, "keysum: out of memory"); }
    if (e->count) { why = "a key twice"; goto bad; }
    e->count = c;
    e->sum = s;
    e->min = mn;
    e->max = mx;
  }
  if (off != n) { why = "trailing bytes"; goto bad; }
  *out = t;
  return 0;
bad:
  ks_free(t);
  return dbx_seterr(err, DBX_ECORRUPT, "keysum: malformed partial (%zu bytes): %s", n, why);
}

static int by_key(const void *a, const void *b) {
  const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = memcmp(x->key, y->key, n);
  return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

static int ks_finish(const void *cfg, const void *bcast, void *partial, dbx_emit_fn emit, void *ctx,
                     dbx_buf *bcast_out, dbx_err *err) {
  table *t = partial;
  if (!emit) return 0;
  const entry **v = malloc((t->n ? t->n : 1) * sizeof *v);
  if (!v) return dbx_seterr(err, DBX_ENOMEM, "keysum: out of memory");
  size_t k = 0;
  for (size_t i = 0; i < t->cap; i++)
    if (t->e[i].key) v[k++] = &t->e[i];
  qsort(v, k, sizeof *v, by_key);
  int rc = 0;
  for (size_t i = 0; i < k && !rc; i++) {
    dbx_value row[5];
    memset(row, 0, sizeof row);
    row[0].s = v[i]->key;
    row[0].n = v[i]->klen;
    row[1].i = v[i]->count;
    row[2].i = v[i]->sum;
    row[3].i = v[i]->min;
    row[4].i = v[i]->max;
    rc = emit(ctx, row, err);
  }
  free(v);
  return rc;
}

static const char *const ks_names[] = {"key", "count", "sum", "min", "max"};
static const dbx_coltype ks_types[] = {DBX_COL_TEXT, DBX_COL_INT, DBX_COL_INT, DBX_COL_INT, DBX_COL_INT};
static const dbx_schema ks_schema = {5, ks_names, ks_types};

static const dbx_op keysum = {
    .name = "keysum",
    .partial_new = ks_new,
    .partial_free = ks_free,
    .map = ks_map,
    .merge = ks_merge,
    .encode = ks_encode,
    .decode = ks_decode,
    .finish = ks_finish,
    .schema = &ks_schema,
};

static const dbx_op *const ops[] = {&keysum};
const dbx_plugin dbatch_plugin = {DBX_ABI_VERSION, 1, ops};
