/* wordcount.c -- the word count operator: batch -> word counts, merged by addition. */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "ops/nbayes.h"
#include "ops/ops.h"
#include "ops/tokenize.h"
#include "util/mpk.h"
#include "util/strmap.h"

static void *wc_new(const void *cfg) { return strmap_new(); }
static void wc_free(void *p) { strmap_free(p); }

static uint64_t count_lines(const char *p, size_t n) {
  uint64_t k = 0;
  const char *end = p + n;
  while (p < end && (p = memchr(p, '\n', (size_t)(end - p)))) { k++; p++; }
  return k;
}

/* Words are hashed and their table slots prefetched PIPE words ahead of the insertion, so
 * the cache misses of a large vocabulary overlap instead of queueing (about 2x here). */
#define PIPE 16

/* The table a map fills, drained (wc_map_draining) or not. */
typedef struct wc_sink {
  strmap *m;
  size_t max;
  int (*drain)(void *ctx, strmap *m, dbx_err *err);
  void *ctx;
  size_t peak;     /* the most keys the table held when drained */
} wc_sink;

/* A map task's table is made with room for the keys the last one held in this thread (the
 * batches of a job are alike): a table of text with many distinct words grew from small in
 * every task, rehashing its keys at each step and zeroing fresh pages, a seventh of a map. */
static _Thread_local size_t last_keys;

static int wc_drain(wc_sink *x, dbx_err *err) {
  if (strmap_count(x->m) > x->peak) x->peak = strmap_count(x->m);
  return x->drain(x->ctx, x->m, err);
}

static int wc_map_range(const wc_cfg *cfg, const char *data, size_t size, wc_sink *x, dbx_err *err);

/* A range of whole lines into x->m; with a drain, the table is drained when its slots are
 * full (its limit: x->max) and, in pieces of about 4 MB cut after a newline, when its keys
 * and ids hold more than x->max / 2 bytes besides (long words). */
static int wc_sink_range(const wc_cfg *cfg, const char *data, size_t size, wc_sink *x, dbx_err *err) {
  if (!x->drain) return wc_map_range(cfg, data, size, x, err);
  const char *p = data, *end = data + size;
  while (p < end) {
    const char *cut = end;
    if ((size_t)(end - p) > (4u << 20)) {
      const char *nl = memchr(p + (4u << 20), '\n', (size_t)(end - p - (4u << 20)));
      cut = nl ? nl + 1 : end;
    }
    int rc = wc_map_range(cfg, p, (size_t)(cut - p), x, err);
    if (!rc && strmap_aux_bytes(x->m) > x->max / 2) rc = wc_drain(x, err);
    if (rc) return rc;
    p = cut;
  }
  return 0;
}

static int wc_map_sink(const wc_cfg *cfg, const dbx_batch *b, wc_sink *x, dbx_stats *st, dbx_err *err);

static int wc_map(const void *cfgv, const void *bcast, const dbx_batch *b, void *partial,
                  dbx_stats *st, dbx_err *err) {
  (void)bcast;
  /* Room for the batch's vocabulary up front (about one distinct word per 256 bytes of a
   * batch of e-mail or prose), so the table does not rehash as it fills. */
  if (!strmap_count(partial) && strmap_reserve(partial, b->size / 256))
    return dbx_seterr(err, DBX_ENOMEM, "word count: out of memory");
  wc_sink x = {partial, 0, NULL, NULL, 0};
  return wc_map_sink(cfgv, b, &x, st, err);
}

int wc_map_draining(const wc_cfg *cfg, const dbx_batch *b, strmap *m, size_t max,
                    int (*drain)(void *ctx, strmap *m, dbx_err *err), void *ctx, dbx_stats *st, dbx_err *err) {
  wc_sink x = {m, max, drain, ctx, 0};
  size_t cap = max != SIZE_MAX ? strmap_limit(m, max) : SIZE_MAX;
  if (last_keys && strmap_reserve(m, last_keys < cap ? last_keys : cap))
    return dbx_seterr(err, DBX_ENOMEM, "word count: out of memory");
  int rc = wc_map_sink(cfg, b, &x, st, err);
  last_keys = strmap_count(m) > x.peak ? strmap_count(m) : x.peak;
  return rc;
}

/* With --max-record, lines longer than the limit are bad records: skipped and counted (the
 * first one noted with file and line), or the task fails with DBX_EBADREC. */
static int wc_map_sink(const wc_cfg *cfg, const dbx_batch *b, wc_sink *x, dbx_stats *st, dbx_err *err) {
  if (!cfg->max_record) {
    int rc = wc_sink_range(cfg, b->data, b->size, x, err);
    if (!rc) st->records += count_lines(b->data, b->size);
    return rc;
  }
  const char *p = b->data, *end = b->data + b->size, *run = p;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl + 1 : end;
    st->records++;
    uint64_t len = (uint64_t)(le - p) - (nl != NULL);  /* without its newline, as --max-record counts */
    if (len > cfg->max_record) {
      /* Where: only for the message that uses it (dbx_batch_where counts the lines from the
       * batch's start: for every bad record, a batch of them took quadratic time). */
      char where[512];
      if (cfg->bad_fail || !st->bad_records) dbx_batch_where(b, (size_t)(p - b->data), where, sizeof where);
      if (cfg->bad_fail)
        return dbx_seterr(err, DBX_EBADREC, "bad record at %s: a line of %llu bytes, longer than --max-record %llu",
                          where, (unsigned long long)len, (unsigned long long)cfg->max_record);
      if (!st->bad_records++)
        snprintf(st->bad_note, sizeof st->bad_note, "%.180s: a line of %llu bytes, longer than --max-record", where,
                 (unsigned long long)len);
      int rc = wc_sink_range(cfg, run, (size_t)(p - run), x, err);
      if (rc) return rc;
      run = le;
    }
    p = le;
  }
  return wc_sink_range(cfg, run, (size_t)(end - run), x, err);
}

static int wc_map_range(const wc_cfg *cfg, const char *data, size_t size, wc_sink *x, dbx_err *err) {
  strmap *m = x->m;
  tok t;
  dbx_buf pend = {0};      /* lowercased words, which live in the tokenizer's scratch */
  const char *ptr[PIPE];   /* a word in place in data (stable), or NULL: at pend + off */
  size_t off[PIPE], len[PIPE];
  uint64_t hash[PIPE];
  int k = 0, rc, done = 0, drain_rc = 0;
  tok_init(&t, data, size, !cfg->case_sensitive, 1);
  for (;;) {
    const char *w;
    size_t n;
    rc = tok_next(&t, &w, &n);
    done = rc == 0;
    if (rc == 1) {
      len[k] = n;
      hash[k] = strmap_hash(w, n);
      strmap_prefetch(m, hash[k]);
      if (w >= data && w < data + size) {
        ptr[k] = w;
      } else {
        ptr[k] = NULL;
        off[k] = pend.len;
        if ((rc = dbx_buf_append(&pend, w, n))) break;
      }
      if (++k < PIPE) continue;
    }
    if (rc < 0) break;
    rc = 0;
    for (int i = 0; i < k && !rc; i++) {
      rc = strmap_add_hashed(m, ptr[i] ? ptr[i] : pend.data + off[i], len[i], hash[i], 1, NULL);
      /* Full (a limited table, drained): written out and emptied, keeping its slots. */
      if (rc == STRMAP_FULL) rc = x->drain ? (drain_rc = wc_drain(x, err)) : 0;
    }
    k = 0;
    pend.len = 0;
    if (rc || done) break;
  }
  tok_free(&t);
  dbx_buf_free(&pend);
  if (drain_rc) return drain_rc;  /* err says why (a full spill directory) */
  if (rc < 0) return dbx_seterr(err, rc, "word count: out of memory");
  return 0;
}

/* l += one entry s of r. */
static int merge_slot(strmap *l, const strmap *r, const strmap_slot *s, dbx_err *err) {
  size_t len = s->len;
  const char *key = strmap_slot_key(r, s);
  uint32_t id;
  if (strmap_add_hashed(l, key, len, s->hash, 0, &id)) return dbx_seterr(err, DBX_ENOMEM, "merge: out of memory");
  uint64_t have = strmap_val(l, id);
  if (have + s->val < have)
    return dbx_seterr(err, DBX_ECORRUPT, "word count: the count of '%.*s' overflows when merged (a malformed partial result?)",
                      (int)(len > 100 ? 100 : len), key);
  strmap_setval(l, id, have + s->val);
  return 0;
}

/* right's keys are taken in the order of its slots (one pass over its table), left's slots
 * prefetched PIPE keys ahead so that the misses of a large left table overlap: the
 * in-process merges of a word count took a tenth of its time, one miss after another. */
static int wc_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  strmap *l = left;
  const strmap *r = right;
  size_t n = strmap_count(r);
  /* The union has at least as many keys as the larger side: grow once, not step by step. */
  if (strmap_reserve(l, n > strmap_count(l) ? n : strmap_count(l))) return dbx_seterr(err, DBX_ENOMEM, "merge: out of memory");
  const strmap_slot *ring[PIPE];
  size_t k = 0, head = 0;
  int rc = 0;
  for (size_t j = 0; j <= r->mask && !rc; j++) {
    const strmap_slot *s = &r->t[j];
    if (!s->len) continue;
    strmap_prefetch(l, s->hash);
    if (k < PIPE) {
      ring[k++] = s;
      continue;
    }
    rc = merge_slot(l, r, ring[head], err);
    ring[head] = s;
    head = (head + 1) % PIPE;
  }
  for (; k && !rc; k--, head = (head + 1) % PIPE) rc = merge_slot(l, r, ring[head], err);
  return rc;
}

/* Encoding: a msgpack array [word, count, word, count, ...]. */
static int wc_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  const strmap *m = partial;
  size_t n = strmap_count(m);
  if (n > UINT32_MAX / 2) return dbx_seterr(err, DBX_EINVAL, "word count: %zu words are too many for one partial", n);
  mpk mp;
  msgpack_packer *pk = mpk_open(&mp, out);
  int rc = msgpack_pack_array(pk, (uint32_t)(n * 2));
  for (uint32_t i = 0; i < n && !rc; i++) {
    size_t len;
    const char *k = strmap_key(m, i, &len);
    rc = msgpack_pack_str_with_body(pk, k, len);
    if (!rc) rc = msgpack_pack_uint64(pk, strmap_val(m, i));
  }
  return mpk_close(&mp) ? dbx_seterr(err, DBX_ENOMEM, "word count: cannot encode partial") : 0;
}

int ops_word_ok(const char *p, size_t n) {
  if (!n || !p) return 0;  /* an empty msgpack string may come with a NULL pointer */
  const unsigned char *s = (const unsigned char *)p, *e = s + n;
  while (s < e) {
    unsigned c = *s;
    if (c < 0x80) {  /* ASCII word characters only: letters, digits, '_' */
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')) return 0;
      s++;
      continue;
    }
    size_t k;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) { k = 1; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { k = 2; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { k = 3; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)(e - s) <= k) return 0;
    for (size_t i = 1; i <= k; i++) {
      if ((s[i] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    s += k + 1;
  }
  return 1;
}

/* left += the entries of an encoding made by wc_encode. Checks every entry first, against
 * what an honest worker can send: a word the tokenizer can emit (ops_word_ok), each word
 * once, a count in 1..WC_COUNT_MAX, and no sum that overflows in left. So a rejected
 * encoding (DBX_ECORRUPT) changes nothing; only DBX_ENOMEM can leave left half merged (and
 * fails the job). */
static int wc_merge_encoded(const void *cfg, void *left, const char *p, size_t n, dbx_err *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int rc = 0;
  strmap *m = left, *seen = NULL;
  if (msgpack_unpack_next(&u, p, n, &off) != MSGPACK_UNPACK_SUCCESS || off != n ||
      u.data.type != MSGPACK_OBJECT_ARRAY || u.data.via.array.size % 2) {
    rc = dbx_seterr(err, DBX_ECORRUPT, "word count: malformed partial result");
    goto done;
  }
  const msgpack_object *o = u.data.via.array.ptr;
  uint32_t k = u.data.via.array.size;
  if (!(seen = strmap_new()) || strmap_reserve(seen, k / 2)) { rc = DBX_ENOMEM; goto done; }
  for (uint32_t i = 0; i < k; i += 2) {
    if (o[i].type != MSGPACK_OBJECT_STR || o[i + 1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        !ops_word_ok(o[i].via.str.ptr, o[i].via.str.size) || o[i + 1].via.u64 == 0 || o[i + 1].via.u64 > WC_COUNT_MAX) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "word count: malformed partial result (entry %u)", i / 2);
      goto done;
    }
    uint32_t id;
    if (strmap_add(seen, o[i].via.str.ptr, o[i].via.str.size, 1, &id)) { rc = DBX_ENOMEM; goto done; }
    if (strmap_val(seen, id) > 1) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "word count: malformed partial result (entry %u repeats a word)", i / 2);
      goto done;
    }
    int64_t j = strmap_find(m, o[i].via.str.ptr, o[i].via.str.size);
    if (j >= 0 && strmap_val(m, (uint32_t)j) + o[i + 1].via.u64 < strmap_val(m, (uint32_t)j)) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "word count: the count of entry %u overflows when merged", i / 2);
      goto done;
    }
  }
  size_t have = strmap_count(m);
  if (strmap_reserve(m, k / 2 > have ? k / 2 : have)) { rc = DBX_ENOMEM; goto done; }
  for (uint32_t i = 0; i < k; i += 2)
    if (strmap_add(m, o[i].via.str.ptr, o[i].via.str.size, o[i + 1].via.u64, NULL)) {
      rc = DBX_ENOMEM;
      goto done;
    }
done:
  strmap_free(seen);
  msgpack_unpacked_destroy(&u);
  return rc;
}

static int wc_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  strmap *m = strmap_new();
  if (!m) return DBX_ENOMEM;
  int rc = wc_merge_encoded(cfg, m, p, n, err);
  if (rc) strmap_free(m);
  else *out = m;
  return rc;
}

typedef struct {
  const char *w;
  size_t n;
  uint64_t count;
} row_ref;

static int cmp_rows(const void *a, const void *b) {
  const row_ref *x = a, *y = b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  int c = memcmp(x->w, y->w, x->n < y->n ? x->n : y->n);  /* UTF-8 byte order = code-point order */
  if (c) return c;
  return x->n < y->n ? -1 : x->n > y->n;
}

static int wc_finish(const void *cfgv, const void *bc, void *partial, dbx_emit_fn emit, void *ctx,
                     dbx_buf *bcast, dbx_err *err) {
  const wc_cfg *cfg = cfgv;
  strmap *m = partial;
  size_t n = strmap_count(m);
  row_ref *rows = malloc((n ? n : 1) * sizeof *rows);
  if (!rows) return DBX_ENOMEM;
  for (uint32_t i = 0; i < n; i++) {
    rows[i].w = strmap_key(m, i, &rows[i].n);
    rows[i].count = strmap_val(m, i);
  }
  qsort(rows, n, sizeof *rows, cmp_rows);
  size_t lim = cfg->top && cfg->top < n ? (size_t)cfg->top : n;
  int rc = 0;
  for (size_t i = 0; i < lim && !rc && emit; i++) {
    dbx_value row[2];
    memset(row, 0, sizeof row);
    row[0].s = rows[i].w;
    row[0].n = rows[i].n;
    row[1].i = (int64_t)rows[i].count;
    rc = emit(ctx, row, err);
  }
  free(rows);
  return rc;
}

static const char *const wc_names[] = {"word", "count"};
static const dbx_coltype wc_types[] = {DBX_COL_TEXT, DBX_COL_INT};
static const dbx_schema wc_schema = {2, wc_names, wc_types};

const dbx_op op_wordcount = {
    "wordcount", wc_new, wc_free, wc_map, wc_merge, wc_encode, wc_decode, wc_finish, NULL, NULL, &wc_schema, sizeof(wc_cfg), wc_merge_encoded,
};
