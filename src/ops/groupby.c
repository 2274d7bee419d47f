/* groupby.c -- keyed operators over CSV, TSV and JSONL records (io/records.h):
 * `dbatch groupby` (key columns -> aggregates) and the two stages of `dbatch cooccur`
 * (orders -> baskets of distinct items per user; baskets -> items bought together). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/records.h"
#include "ops/ops.h"

static int cols_check(const rec_cols *c, uint32_t min, dbx_err *err) {
  if (c->format < REC_CSV || c->format > REC_JSONL || c->n < min || c->n > REC_COLS_MAX)
    return dbx_seterr(err, DBX_EPROTO, "malformed record configuration");
  for (uint32_t i = 0; i < c->n; i++)
    if (!memchr(c->name[i], 0, sizeof c->name[i])) return dbx_seterr(err, DBX_EPROTO, "malformed record configuration");
  return 0;
}

/* A bad record at data offset at of b: skipped (counted, the first one noted) or, with
 * bad_fail, the task's error with the record's place. 0 when skipped. */
static int bad_record(const dbx_batch *b, int bad_fail, size_t at, const dbx_err *e, dbx_stats *st, dbx_err *err) {
  char where[512];
  if (!bad_fail && !kv_err_overflow(e) && st->bad_records) {  /* only the first is noted: no need to find where */
    st->bad_records++;
    return 0;
  }
  dbx_batch_where(b, at, where, sizeof where);
  if (bad_fail || kv_err_overflow(e)) return dbx_seterr(err, DBX_EBADREC, "bad record at %s: %s", where, e->msg);
  if (!st->bad_records++) {
    char note[1024];
    snprintf(note, sizeof note, "%.300s: %.300s", where, e->msg);
    snprintf(st->bad_note, sizeof st->bad_note, "%.255s", note);
  }
  return 0;
}

/* Calls fn for every record of every segment of b (at: the record's offset in b->data); a
 * malformed record is a bad record (bad_record). fn may return DBX_EBADREC with a message in
 * its err, handled the same way, or 1 when it failed on an earlier record it held back (err
 * set, with that record's place). */
typedef int (*rec_fn)(void *ctx, const rec_field *f, size_t at, dbx_err *err);

static int each_record(const rec_cols *c, int bad_fail, const dbx_batch *b, rec_fn fn, void *ctx, dbx_stats *st,
                       dbx_err *err) {
  const char *names[REC_COLS_MAX];
  for (uint32_t i = 0; i < c->n; i++) names[i] = c->name[i];
  rec_want w = {c->n, c->col, names};
  rec_field f[REC_COLS_MAX];
  rec_iter it;
  int rc = 0, started = 0;
  for (uint32_t s = 0; s < b->nseg && !rc; s++) {
    const dbx_segment *sg = &b->seg[s];
    /* A CSV/TSV file's first record is its header. */
    int skip = c->format != REC_JSONL && sg->off == 0;
    size_t bom = 0;
    if (c->format == REC_JSONL && sg->off == 0 && sg->data_len >= 3 && !memcmp(b->data + sg->data_off, "\xef\xbb\xbf", 3))
      bom = 3;  /* a UTF-8 byte-order mark before the first object */
    if (!started) {
      int irc = rec_iter_init(&it, (rec_format)c->format, &w, b->data + sg->data_off + bom, sg->data_len - bom, skip);
      started = 1;
      if (irc) {
        rec_iter_free(&it);
        return dbx_seterr(err, irc, "cannot read records: %s", dbx_strerror(irc));
      }
    } else {
      rec_iter_reset(&it, b->data + sg->data_off + bom, sg->data_len - bom, skip);
    }
    for (;;) {
      size_t off = 0;
      dbx_err e = {0, ""};
      int r = rec_next(&it, f, &off, &e);
      if (r == 0) break;
      st->records++;
      if (r == 1) {
        r = fn(ctx, f, sg->data_off + bom + off, &e);
        if (r == 1) {
          rc = dbx_seterr(err, e.code, "%s", e.msg);
          break;
        }
      }
      if (!r) continue;
      if (r != DBX_EBADREC) rc = dbx_seterr(err, r, "%s", e.msg);
      else rc = bad_record(b, bad_fail, sg->data_off + bom + off, &e, st, err);
      if (rc) break;
    }
  }
  if (started) rec_iter_free(&it);
  return rc;
}

/* ---- groupby ---- */

/* Records wait in a short queue between parsing and the table, so the cache misses of a
 * large table overlap (kv_prefetch): a record's key and values are copied into its slot. */
#define GB_Q 16

typedef struct gb_rec {
  dbx_buf b;                 /* the key, then the values */
  size_t klen, at;
  uint64_t hash;
  uint32_t nv;
  size_t voff[KV_AGG_MAX], vlen[KV_AGG_MAX];
  int vmiss[KV_AGG_MAX];
} gb_rec;

typedef struct gb_ctx {
  const groupby_cfg *cfg;
  kvpart *p;
  const dbx_batch *b;
  dbx_stats *st;
  gb_rec q[GB_Q];
  uint64_t head, tail;       /* records enter at tail, leave at head */
} gb_ctx;

/* The oldest record goes into the table. */
static int gb_drain(gb_ctx *x, dbx_err *err) {
  gb_rec *r = &x->q[x->head++ % GB_Q];
  kv_val v[KV_AGG_MAX];
  for (uint32_t i = 0; i < r->nv; i++) v[i] = (kv_val){r->b.data + r->voff[i], r->vlen[i], r->vmiss[i]};
  if (!r->nv) v[0] = (kv_val){"", 0, 1};
  dbx_err e = {0, ""};
  int rc = kv_add_hashed(x->p, r->b.data, r->klen, r->hash, v, &e);
  if (rc == DBX_EBADREC) return bad_record(x->b, x->cfg->bad_fail, r->at, &e, x->st, err);
  if (rc) return dbx_seterr(err, rc, "%s", e.msg);
  return 0;
}

static int gb_record(void *ctxp, const rec_field *f, size_t at, dbx_err *err) {
  gb_ctx *x = ctxp;
  const groupby_cfg *cfg = x->cfg;
  if (x->tail - x->head == GB_Q) {
    int rc = gb_drain(x, err);
    if (rc) return 1;  /* an earlier record's error, placed in err already */
  }
  gb_rec *r = &x->q[x->tail % GB_Q];
  r->b.len = 0;
  for (uint32_t i = 0; i < cfg->nkey; i++) {
    if (f[i].missing) return dbx_seterr(err, DBX_EBADREC, "no value for the key column '%s'", cfg->cols.name[i]);
    if (memchr(f[i].p, 0, f[i].n)) return dbx_seterr(err, DBX_EBADREC, "a NUL byte in the key column '%s'", cfg->cols.name[i]);
    if ((i && dbx_buf_append(&r->b, "", 1)) || (f[i].n && dbx_buf_append(&r->b, f[i].p, f[i].n)))
      return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  r->klen = r->b.len;
  r->nv = cfg->cols.n - cfg->nkey;
  for (uint32_t i = 0; i < r->nv && i < KV_AGG_MAX; i++) {
    const rec_field *v = &f[cfg->nkey + i];
    r->voff[i] = r->b.len;
    r->vlen[i] = v->n;
    r->vmiss[i] = v->missing;
    if (v->n && dbx_buf_append(&r->b, v->p, v->n)) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  if (!r->b.data && dbx_buf_append(&r->b, "", 1)) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  r->hash = kv_hash(r->b.data, r->klen);
  r->at = at;
  kv_prefetch(x->p, r->hash);
  if (x->tail - x->head >= GB_Q / 2) kv_prefetch_entry(x->p, x->q[(x->tail - GB_Q / 2) % GB_Q].hash);
  x->tail++;
  return 0;
}

static int gb_check(const groupby_cfg *cfg, dbx_err *err) {
  int rc = cols_check(&cfg->cols, 1, err);
  if (!rc) rc = kv_spec_check(&cfg->spec, err);
  if (!rc) rc = shuffle_check(&cfg->part, err);
  if (!rc && (cfg->nkey < 1 || cfg->nkey > cfg->cols.n || cfg->spec.nval > cfg->cols.n - cfg->nkey + (cfg->cols.n == cfg->nkey)))
    rc = dbx_seterr(err, DBX_EPROTO, "malformed groupby configuration");
  return rc;
}

static void *gb_new(const void *cfgp) {
  const groupby_cfg *cfg = cfgp;
  return gb_check(cfg, NULL) ? NULL : kv_new(&cfg->spec);
}

static void gb_free(void *p) { kv_free(p); }

static int gb_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                  dbx_err *err) {
  (void)bcast;
  const groupby_cfg *cfg = cfgp;
  int rc = gb_check(cfg, err);
  if (rc) return rc;
  shuffle_budget(&cfg->part, partial);
  gb_ctx *x = calloc(1, sizeof *x);
  if (!x) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  x->cfg = cfg, x->p = partial, x->b = b, x->st = st;
  rc = each_record(&cfg->cols, cfg->bad_fail, b, gb_record, x, st, err);
  while (!rc && x->head < x->tail) rc = gb_drain(x, err);
  for (int i = 0; i < GB_Q; i++) dbx_buf_free(&x->q[i].b);
  free(x);
  if (!rc && cfg->part.r) rc = shuffle_write_map(&cfg->part, partial, b->index, err);
  return rc;
}

static int kv_op_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  (void)cfg;
  return kv_merge(left, (kvpart *)right, err);
}

static int kv_op_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  (void)cfg;
  return kv_encode((kvpart *)partial, out, err);
}

static int gb_decode(const void *cfgp, const char *p, size_t n, void **out, dbx_err *err) {
  const groupby_cfg *cfg = cfgp;
  int rc = gb_check(cfg, err);
  return rc ? rc : kv_decode(&cfg->spec, p, n, (kvpart **)out, err);
}

static int gb_finish(const void *cfgp, const void *bc, void *partial, dbx_emit_fn emit, void *ctx, dbx_buf *bcast,
                     dbx_err *err) {
  (void)bc; (void)bcast;
  const groupby_cfg *cfg = cfgp;
  return kv_emit_rows(&cfg->spec, partial, cfg->nkey, emit, ctx, err);
}

const dbx_op op_groupby = {
    "groupby", gb_new, gb_free, gb_map, kv_op_merge, kv_op_encode, gb_decode, gb_finish,
    NULL, NULL, NULL, sizeof(groupby_cfg), NULL,
};

/* ---- cooccur, stage 1: baskets ---- */

static const kv_spec basket_spec = {1, 1, {{KA_DISTINCT, 0, 0, 0, "items"}}};

typedef struct bk_ctx {
  kvpart *p;
} bk_ctx;

static int bk_record(void *ctxp, const rec_field *f, size_t at, dbx_err *err) {
  (void)at;
  bk_ctx *x = ctxp;
  if (f[0].missing) return dbx_seterr(err, DBX_EBADREC, "no user");
  if (f[1].missing) return dbx_seterr(err, DBX_EBADREC, "no item");
  kv_val v = {f[1].p, f[1].n, 0};
  return kv_add(x->p, f[0].p, f[0].n, &v, err);
}

static int bk_check(const baskets_cfg *cfg, dbx_err *err) {
  int rc = cols_check(&cfg->cols, 2, err);
  if (!rc && (cfg->cols.n != 2 || cfg->max_basket < 1)) rc = dbx_seterr(err, DBX_EPROTO, "malformed cooccur configuration");
  return rc;
}

static void *bk_new(const void *cfgp) { return bk_check(cfgp, NULL) ? NULL : kv_new(&basket_spec); }

static int bk_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                  dbx_err *err) {
  (void)bcast;
  const baskets_cfg *cfg = cfgp;
  int rc = bk_check(cfg, err);
  if (rc) return rc;
  bk_ctx x = {partial};
  return each_record(&cfg->cols, cfg->bad_fail, b, bk_record, &x, st, err);
}

static int bk_decode(const void *cfgp, const char *p, size_t n, void **out, dbx_err *err) {
  int rc = bk_check(cfgp, err);
  return rc ? rc : kv_decode(&basket_spec, p, n, (kvpart **)out, err);
}

static uint64_t left_out;
uint64_t cooccur_left_out(void) { return left_out; }

static int put_escaped(dbx_buf *b, const char *s, size_t n) {
  int rc = 0;
  size_t run = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    const char *esc = s[i] == '\\' ? "\\\\" : s[i] == '\t' ? "\\t" : s[i] == '\n' ? "\\n" : s[i] == '\r' ? "\\r" : NULL;
    if (!esc) continue;
    rc = dbx_buf_append(b, s + run, i - run);
    if (!rc) rc = dbx_buf_append(b, esc, 2);
    run = i + 1;
  }
  return rc ? rc : dbx_buf_append(b, s + run, n - run);
}

/* One line per user with at least two items: the items, escaped, TAB between them. */
static int bk_finish(const void *cfgp, const void *bc, void *partial, dbx_emit_fn emit, void *ctx, dbx_buf *bcast,
                     dbx_err *err) {
  (void)bc; (void)bcast;
  const baskets_cfg *cfg = cfgp;
  kv_cursor c;
  int rc = kv_cursor_init(&c, partial, err);
  if (rc) return rc;
  left_out = 0;
  dbx_buf line = {0};
  kv_entry e;
  while (!rc && kv_cursor_next(&c, &e)) {
    if (e.npairs > cfg->max_basket) { left_out++; continue; }
    if (e.npairs < 2 || !emit) continue;
    line.len = 0;
    const char *q = e.pairs;
    for (uint64_t k = 0; k < e.npairs && !rc; k++) {
      /* Pair entries: u32 klen, key, u8 agg, u32 vlen, value, u64 count (engine/kv.c). */
      uint32_t kl, vl;
      memcpy(&kl, q, 4);
      memcpy(&vl, q + 4 + kl + 1, 4);
      const char *v = q + 4 + kl + 5;
      if ((k && dbx_buf_append(&line, "\t", 1)) || put_escaped(&line, v, vl)) rc = DBX_ENOMEM;
      q = v + vl + 8;
    }
    if (!rc && dbx_buf_append(&line, "\n", 1)) rc = DBX_ENOMEM;
    if (rc) {
      rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
      break;
    }
    dbx_value row[1];
    memset(row, 0, sizeof row);
    row[0].s = line.data;
    row[0].n = line.len;
    rc = emit(ctx, row, err);
  }
  dbx_buf_free(&line);
  return rc;
}

const dbx_op op_baskets = {
    "baskets", bk_new, gb_free, bk_map, kv_op_merge, kv_op_encode, bk_decode, bk_finish,
    NULL, NULL, NULL, sizeof(baskets_cfg), NULL,
};

/* ---- cooccur, stage 2: pairs of items in a basket ---- */

const kv_spec cooccur_pair_spec = {1, 1, {{KA_COUNT, 0, 0, 0, "users"}}};
#define pair_spec cooccur_pair_spec

static void *pr_new(const void *cfgp) {
  (void)cfgp;
  return kv_new(&pair_spec);
}

/* Undo put_escaped in place; 0, or -1 for a bad escape. */
static int unescape(char *s, size_t n, size_t *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '\\') { s[o++] = s[i]; continue; }
    if (++i >= n) return -1;
    char c = s[i];
    s[o++] = c == '\\' ? '\\' : c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : 0;
    if (!s[o - 1]) return -1;
  }
  *out = o;
  return 0;
}

static int pr_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                  dbx_err *err) {
  (void)bcast;
  int src = shuffle_check(&((const pairs_cfg *)cfgp)->part, err);
  if (src) return src;
  shuffle_budget(&((const pairs_cfg *)cfgp)->part, partial);
  dbx_buf copy = {0}, items = {0}, key = {0}, keys = {0};
  int rc = 0;
  kv_val none = {"", 0, 1};
  const char *p = b->data, *end = b->data + b->size;
  while (p < end && !rc) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    st->records++;
    copy.len = items.len = 0;
    if (dbx_buf_append(&copy, p, (size_t)(le - p))) { rc = DBX_ENOMEM; break; }
    /* Items: (offset, length) in copy. */
    size_t s0 = 0;
    for (size_t i = 0; i <= copy.len && !rc; i++) {
      if (i < copy.len && copy.data[i] != '\t') continue;
      size_t n;
      if (unescape(copy.data + s0, i - s0, &n)) {
        char where[512];
        dbx_batch_where(b, (size_t)(p - b->data), where, sizeof where);
        rc = dbx_seterr(err, DBX_ECORRUPT, "a malformed basket at %s", where);
        break;
      }
      size_t ref[2] = {s0, n};
      if (dbx_buf_append(&items, ref, sizeof ref)) rc = DBX_ENOMEM;
      s0 = i + 1;
    }
    size_t ni = items.len / (2 * sizeof(size_t));
    const size_t *it = (const size_t *)(void *)items.data;
    /* Every pair's key (a NUL b) and hash first, their table slots prefetched, then added:
     * the cache misses of one basket's pairs overlap. */
    key.len = keys.len = 0;
    for (size_t i = 0; i < ni && !rc; i++)
      for (size_t j = 0; j < ni && !rc; j++) {
        if (i == j) continue;
        size_t at = key.len;
        if (dbx_buf_append(&key, copy.data + it[2 * i], it[2 * i + 1]) || dbx_buf_append(&key, "", 1) ||
            dbx_buf_append(&key, copy.data + it[2 * j], it[2 * j + 1])) {
          rc = DBX_ENOMEM;
          break;
        }
        uint64_t ref[3] = {at, key.len - at, kv_hash(key.data + at, key.len - at)};
        if (dbx_buf_append(&keys, ref, sizeof ref)) rc = DBX_ENOMEM;
        else kv_prefetch(partial, ref[2]);
      }
    size_t np = keys.len / (3 * sizeof(uint64_t));
    const uint64_t *r = (const uint64_t *)(void *)keys.data;
    for (size_t k = 0; k < np && !rc; k++) {
      if (k + 8 < np) kv_prefetch_entry(partial, r[3 * (k + 8) + 2]);
      rc = kv_add_hashed(partial, key.data + r[3 * k], (size_t)r[3 * k + 1], r[3 * k + 2], &none, err);
    }
    p = nl ? nl + 1 : end;
  }
  if (rc == DBX_ENOMEM) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  dbx_buf_free(&copy);
  dbx_buf_free(&items);
  dbx_buf_free(&key);
  dbx_buf_free(&keys);
  const pairs_cfg *cfg = cfgp;
  if (!rc && cfg->part.r) rc = shuffle_write_map(&cfg->part, partial, b->index, err);
  return rc;
}

static int pr_decode(const void *cfgp, const char *p, size_t n, void **out, dbx_err *err) {
  (void)cfgp;
  return kv_decode(&pair_spec, p, n, (kvpart **)out, err);
}

typedef struct other { const char *b; size_t n; uint64_t users; } other;
static int cmp_other(const void *x, const void *y) {
  const other *a = x, *b = y;
  if (a->users != b->users) return a->users > b->users ? -1 : 1;
  int c = memcmp(a->b, b->b, a->n < b->n ? a->n : b->n);
  return c ? c : a->n < b->n ? -1 : a->n > b->n;
}

static int emit_item(const pairs_cfg *cfg, const char *a, size_t an, dbx_buf *group, dbx_emit_fn emit, void *ctx,
                     dbx_err *err) {
  size_t n = group->len / sizeof(other);
  other *o = (other *)(void *)group->data;
  if (!n || !emit) return 0;
  qsort(o, n, sizeof *o, cmp_other);
  uint64_t k = n < cfg->top ? n : cfg->top;
  for (uint64_t i = 0; i < k; i++) {
    dbx_value row[3];
    memset(row, 0, sizeof row);
    row[0].s = a, row[0].n = an;
    row[1].s = o[i].b, row[1].n = o[i].n;
    row[2].i = (int64_t)o[i].users;
    int rc = emit(ctx, row, err);
    if (rc) return rc;
  }
  return 0;
}

int cooccur_rows(const pairs_cfg *cfg, kv_stream *st, dbx_emit_fn emit, void *ctx, dbx_err *err) {
  dbx_buf group = {0};
  const char *a = NULL;
  size_t an = 0;
  kv_entry e;
  int rc = 0;
  while (!rc && kv_stream_next(st, &e)) {
    const char *z = memchr(e.key, 0, e.klen);
    if (!z) { rc = dbx_seterr(err, DBX_ECORRUPT, "cooccur: a pair without its two items"); break; }
    size_t kn = (size_t)(z - e.key);
    if (a && (kn != an || memcmp(a, e.key, kn))) {
      rc = emit_item(cfg, a, an, &group, emit, ctx, err);
      group.len = 0;
    }
    a = e.key, an = kn;
    uint64_t users;
    memcpy(&users, e.state, 8);  /* the count state, little endian (engine/kv.c) */
    other o = {z + 1, e.klen - kn - 1, users};
    if (!rc && dbx_buf_append(&group, &o, sizeof o)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  if (!rc && a) rc = emit_item(cfg, a, an, &group, emit, ctx, err);
  dbx_buf_free(&group);
  return rc;
}

static int pr_finish(const void *cfgp, const void *bc, void *partial, dbx_emit_fn emit, void *ctx, dbx_buf *bcast,
                     dbx_err *err) {
  (void)bc; (void)bcast;
  const pairs_cfg *cfg = cfgp;
  if (cfg->part.r || !emit) return 0;  /* partitioned: the rows come from the reduced files */
  kv_stream *st = NULL;
  int rc = kv_stream_of(partial, &st, err);
  if (!rc) rc = cooccur_rows(cfg, st, emit, ctx, err);
  kv_stream_close(st);
  return rc;
}

const dbx_op op_pairs = {
    "pairs", pr_new, gb_free, pr_map, kv_op_merge, kv_op_encode, pr_decode, pr_finish,
    NULL, NULL, NULL, sizeof(pairs_cfg), NULL,
};
