/* linecount.c -- an example dbatch plugin with two operators: `lines` (lines and bytes of
 * the input) and `grep` (how many lines contain the --op-arg text).
 *
 *   cc -O2 -shared -fPIC $(pkg-config --cflags dbatch) -o linecount.so linecount.c
 *   dbatch run --op ./linecount.so:lines logs/
 *   dbatch run --op ./linecount.so:grep --op-arg ERROR -o errors.jsonl logs/
 *
 * The smallest shape of an operator: the partial is a pair of counters, merge adds them,
 * the encoding is 16 bytes, finish writes one row. */
#define _GNU_SOURCE 1 /* memmem */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <dbatch.h>

typedef struct counts {
  uint64_t a, b;   /* lines: lines, bytes; grep: matching lines, lines */
} counts;

static void *lc_new(const void *cfg) { return calloc(1, sizeof(counts)); }
static void lc_free(void *p) { free(p); }

/* Calls f(line, length, ctx) for each line of the batch (without its newline). */
static void each_line(const dbx_batch *b, void (*f)(const char *, size_t, void *), void *ctx) {
  size_t off = 0;
  while (off < b->size) {
    const char *line = b->data + off;
    const char *nl = memchr(line, '\n', b->size - off);
    size_t n = nl ? (size_t)(nl - line) : b->size - off;
    f(line, n, ctx);
    off += n + (nl != NULL);
  }
}

static void count_line(const char *line, size_t n, void *ctx) { ((counts *)ctx)->a++; }

static int lines_map(const void *cfg, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                     dbx_err *err) {
  counts *c = partial;
  uint64_t before = c->a;
  each_line(b, count_line, c);
  c->b += b->size;
  st->records += c->a - before;
  return 0;
}

struct grep_ctx {
  counts *c;
  const char *pat;
  size_t plen;
};

static void grep_line(const char *line, size_t n, void *ctx) {
  struct grep_ctx *g = ctx;
  g->c->b++;
  if (memmem(line, n, g->pat, g->plen)) g->c->a++;
}

static int grep_map(const void *cfg, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                    dbx_err *err) {
  const char *pat = cfg;
  if (!pat[0]) return dbx_seterr(err, DBX_EINVAL, "grep: give the text to look for with --op-arg TEXT");
  struct grep_ctx g = {partial, pat, strlen(pat)};
  uint64_t before = g.c->b;
  each_line(b, grep_line, &g);
  st->records += g.c->b - before;
  return 0;
}

static int lc_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  counts *l = left;
  const counts *r = right;
  l->a += r->a;
  l->b += r->b;
  return 0;
}

static int lc_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  const counts *c = partial;
  unsigned char b[16];
  for (int i = 0; i < 8; i++) {
    b[i] = (unsigned char)(c->a >> (8 * i));
    b[8 + i] = (unsigned char)(c->b >> (8 * i));
  }
  int rc = dbx_buf_append(out, b, sizeof b);
  return rc ? dbx_seterr(err, rc, "linecount: cannot encode a partial") : 0;
}

static int lc_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  if (n != 16) return dbx_seterr(err, DBX_ECORRUPT, "linecount: a partial of %zu bytes, expected 16", n);
  counts *c = lc_new(cfg);
  if (!c) return dbx_seterr(err, DBX_ENOMEM, "linecount: out of memory");
  for (int i = 0; i < 8; i++) {
    c->a |= (uint64_t)(unsigned char)p[i] << (8 * i);
    c->b |= (uint64_t)(unsigned char)p[8 + i] << (8 * i);
  }
  *out = c;
  return 0;
}

static int lines_finish(const void *cfg, const void *bcast, void *partial, dbx_emit_fn emit, void *ctx,
                        dbx_buf *bcast_out, dbx_err *err) {
  const counts *c = partial;
  dbx_value row[2];
  memset(row, 0, sizeof row);
  row[0].i = (int64_t)c->a;
  row[1].i = (int64_t)c->b;
  return emit ? emit(ctx, row, err) : 0;
}

static int grep_finish(const void *cfg, const void *bcast, void *partial, dbx_emit_fn emit, void *ctx,
                       dbx_buf *bcast_out, dbx_err *err) {
  const counts *c = partial;
  dbx_value row[3];
  memset(row, 0, sizeof row);
  row[0].s = cfg;
  row[0].n = strlen(cfg);
  row[1].i = (int64_t)c->a;
  row[2].i = (int64_t)c->b;
  return emit ? emit(ctx, row, err) : 0;
}

static const char *const lines_names[] = {"lines", "bytes"};
static const dbx_coltype lines_types[] = {DBX_COL_INT, DBX_COL_INT};
static const dbx_schema lines_schema = {2, lines_names, lines_types};
static const char *const grep_names[] = {"text", "matching_lines", "lines"};
static const dbx_coltype grep_types[] = {DBX_COL_TEXT, DBX_COL_INT, DBX_COL_INT};
static const dbx_schema grep_schema = {3, grep_names, grep_types};

static const dbx_op lines_op = {
    .name = "lines", .partial_new = lc_new, .partial_free = lc_free, .map = lines_map, .merge = lc_merge,
    .encode = lc_encode, .decode = lc_decode, .finish = lines_finish, .schema = &lines_schema,
};
static const dbx_op grep_op = {
    .name = "grep", .partial_new = lc_new, .partial_free = lc_free, .map = grep_map, .merge = lc_merge,
    .encode = lc_encode, .decode = lc_decode, .finish = grep_finish, .schema = &grep_schema,
};

static const dbx_op *const ops[] = {&lines_op, &grep_op};
const dbx_plugin dbatch_plugin = {DBX_ABI_VERSION, 2, ops};
