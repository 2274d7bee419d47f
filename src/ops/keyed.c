/* keyed.c -- operators with keyed results built on engine/kv.h: `dbatch run --reduce` (the
 * user's map command's KEY<TAB>VALUE lines, built-in reducers) and `dbatch run --reduce-cmd`
 * (the same lines sorted by key, into the user's reduce command). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "util/strmap.h"

/* ---- shared: running the map command over a batch into a buffer ---- */

static int run_map(const exec_cfg *cfg, const dbx_batch *b, dbx_buf *out, dbx_stats *st, dbx_err *err) {
  dbx_buf *tmp = op_exec.partial_new(cfg);
  if (!tmp) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = op_exec.map(cfg, NULL, b, tmp, st, err);
  if (!rc) {
    dbx_buf_free(out);
    *out = *tmp;
    memset(tmp, 0, sizeof *tmp);
  }
  op_exec.partial_free(tmp);
  return rc;
}

/* The next line of p[0..n) from *off: OUT line and its length without the newline; 0 at end. */
static int next_line(const char *p, size_t n, size_t *off, const char **line, size_t *len) {
  if (*off >= n) return 0;
  const char *s = p + *off;
  const char *nl = memchr(s, '\n', n - *off);
  *line = s;
  *len = nl ? (size_t)(nl - s) : n - *off;
  *off += *len + (nl != NULL);
  return 1;
}

/* ---- run --reduce ---- */

static void *red_new(const void *cfgp) {
  const reduce_cfg *cfg = cfgp;
  if (kv_spec_check(&cfg->spec, NULL)) return NULL;
  return kv_new(&cfg->spec);
}

static void red_free(void *p) { kv_free(p); }

static int red_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                   dbx_err *err) {
  (void)bcast;
  const reduce_cfg *cfg = cfgp;
  dbx_buf out = {0};
  int rc = kv_spec_check(&cfg->spec, err);
  if (!rc) rc = shuffle_check(&cfg->part, err);
  if (!rc) shuffle_budget(&cfg->part, partial);
  if (!rc) rc = run_map(&cfg->map, b, &out, st, err);
  size_t off = 0, len;
  const char *line;
  uint64_t lineno = 0;
  while (!rc && next_line(out.data, out.len, &off, &line, &len)) {
    lineno++;
    const char *tab = memchr(line, '\t', len);
    size_t kl = tab ? (size_t)(tab - line) : len;
    kv_val v = {tab ? tab + 1 : "", tab ? len - kl - 1 : 0, 0};
    dbx_err e = {0, ""};
    rc = kv_add(partial, line, kl, &v, &e);
    if (rc == DBX_EBADREC) {
      char where[512];
      dbx_batch_where(b, 0, where, sizeof where);
      int overflow = kv_err_overflow(&e);
      if (cfg->bad_fail || overflow) {
        rc = dbx_seterr(err, DBX_EBADREC, "bad record at line %" PRIu64 " of the map output of the batch from %s: %s",
                        lineno, where, e.msg);
        break;
      }
      if (!st->bad_records++) {
        char note[1024];
        snprintf(note, sizeof note, "line %" PRIu64 " of the map output of the batch from %.200s: %.200s", lineno, where,
                 e.msg);
        snprintf(st->bad_note, sizeof st->bad_note, "%.255s", note);
      }
      rc = 0;
    } else if (rc) {
      dbx_seterr(err, rc, "%s", e.msg);
    }
  }
  dbx_buf_free(&out);
  if (!rc && cfg->part.r) rc = shuffle_write_map(&cfg->part, partial, b->index, err);
  return rc;
}

static int red_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  (void)cfg;
  return kv_merge(left, (kvpart *)right, err);
}

static int red_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  (void)cfg;
  return kv_encode((kvpart *)partial, out, err);
}

static int red_decode(const void *cfgp, const char *p, size_t n, void **out, dbx_err *err) {
  const reduce_cfg *cfg = cfgp;
  int rc = kv_spec_check(&cfg->spec, err);
  return rc ? rc : kv_decode(&cfg->spec, p, n, (kvpart **)out, err);
}

static int red_finish(const void *cfgp, const void *bc, void *partial, dbx_emit_fn emit, void *ctx, dbx_buf *bcast,
                      dbx_err *err) {
  (void)bc; (void)bcast;
  const reduce_cfg *cfg = cfgp;
  return kv_emit_rows(&cfg->spec, partial, 1, emit, ctx, err);
}

const dbx_op op_reduce = {
    "reduce", red_new, red_free, red_map, red_merge, red_encode, red_decode, red_finish,
    NULL, NULL, NULL, sizeof(reduce_cfg), NULL,
};

/* ---- run --reduce-cmd: a sorted run of lines ----
 * Partial: the KEY<TAB>VALUE lines of its batches, stably sorted by key: entries
 * [u32 len][line] in a buffer. Merge is a linear merge, the left (earlier) first on equal
 * keys, so a key's values stay in input order. Encoding: "DBRC", u64 n, the entries. */

typedef struct lrun {
  dbx_buf b;
  uint64_t n;
} lrun;

static uint32_t rd32(const char *p) {
  return (uint32_t)(unsigned char)p[0] | (uint32_t)(unsigned char)p[1] << 8 | (uint32_t)(unsigned char)p[2] << 16 |
         (uint32_t)(unsigned char)p[3] << 24;
}
static void wr32(char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (char)(v >> (8 * i)); }

static size_t key_len(const char *line, size_t n) {
  const char *tab = memchr(line, '\t', n);
  return tab ? (size_t)(tab - line) : n;
}

static int key_cmp(const char *a, size_t an, const char *b, size_t bn) {
  size_t ak = key_len(a, an), bk = key_len(b, bn);
  int c = memcmp(a, b, ak < bk ? ak : bk);
  return c ? c : ak < bk ? -1 : ak > bk;
}

static void *rc_new(const void *cfg) { (void)cfg; return calloc(1, sizeof(lrun)); }
static void rc_free(void *p) {
  if (!p) return;
  dbx_buf_free(&((lrun *)p)->b);
  free(p);
}

typedef struct lref { const char *p; uint32_t n; uint32_t seq; } lref;
static int cmp_lref(const void *x, const void *y) {
  const lref *a = x, *b = y;
  int c = key_cmp(a->p, a->n, b->p, b->n);
  return c ? c : a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int exec_check(const exec_cfg *c, dbx_err *err) {
  if (!memchr(c->cmd, 0, sizeof c->cmd) || !c->cmd[0]) return dbx_seterr(err, DBX_EPROTO, "malformed configuration");
  return 0;
}

static int rc_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                  dbx_err *err) {
  (void)bcast;
  const reduce_cmd_cfg *cfg = cfgp;
  lrun *r = partial;
  dbx_buf out = {0}, refs = {0};
  int rc = exec_check(&cfg->reduce, err);
  if (!rc) rc = run_map(&cfg->map, b, &out, st, err);
  size_t off = 0, len;
  const char *line;
  uint32_t seq = 0;
  while (!rc && next_line(out.data, out.len, &off, &line, &len)) {
    if (len > UINT32_MAX - 8 || seq == UINT32_MAX) {
      rc = dbx_seterr(err, DBX_ETOOBIG, "a map output line of %zu bytes", len);
      break;
    }
    lref l = {line, (uint32_t)len, seq++};
    if (dbx_buf_append(&refs, &l, sizeof l)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  size_t nl = refs.len / sizeof(lref);
  if (!rc && nl) {
    lref *v = (lref *)(void *)refs.data;
    qsort(v, nl, sizeof *v, cmp_lref);
    if (dbx_buf_reserve(&r->b, out.len + 5 * nl)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    for (size_t i = 0; i < nl && !rc; i++) {
      /* A line without a tab is a key with an empty value: the reducer sees KEY<TAB>. */
      int tab = memchr(v[i].p, '\t', v[i].n) != NULL;
      char h[4];
      wr32(h, v[i].n + !tab);
      if (dbx_buf_append(&r->b, h, 4) || dbx_buf_append(&r->b, v[i].p, v[i].n) ||
          (!tab && dbx_buf_append(&r->b, "\t", 1)))
        rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    }
    r->n += nl;
  }
  dbx_buf_free(&out);
  dbx_buf_free(&refs);
  return rc;
}

static int rc_merge(const void *cfg, void *leftp, const void *rightp, dbx_err *err) {
  (void)cfg;
  lrun *l = leftp;
  const lrun *r = rightp;
  if (!r->n) return 0;
  dbx_buf out = {0};
  if (dbx_buf_reserve(&out, l->b.len + r->b.len)) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  const char *x = l->b.data, *xe = x ? x + l->b.len : NULL, *y = r->b.data, *ye = y + r->b.len;
  while (x < xe || y < ye) {
    int takey = x >= xe || (y < ye && key_cmp(y + 4, rd32(y), x + 4, rd32(x)) < 0);
    const char *e = takey ? y : x;
    size_t n = 4 + rd32(e);
    dbx_buf_append(&out, e, n);  /* reserved */
    if (takey) y += n;
    else x += n;
  }
  dbx_buf_free(&l->b);
  l->b = out;
  l->n += r->n;
  return 0;
}

static int rc_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  (void)cfg;
  const lrun *r = partial;
  char h[12] = "DBRC";
  for (int i = 0; i < 8; i++) h[4 + i] = (char)(r->n >> (8 * i));
  if (dbx_buf_append(out, h, sizeof h) || (r->b.len && dbx_buf_append(out, r->b.data, r->b.len)))
    return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  return 0;
}

static int rc_decode(const void *cfg, const char *p, size_t n, void **outp, dbx_err *err) {
  if (n < 12 || memcmp(p, "DBRC", 4)) return dbx_seterr(err, DBX_ECORRUPT, "reduce-cmd partial: bad header");
  uint64_t cnt = 0;
  for (int i = 7; i >= 0; i--) cnt = (cnt << 8) | (unsigned char)p[4 + i];
  const char *q = p + 12, *end = p + n, *prev = NULL;
  uint64_t k = 0;
  while (q < end) {
    if ((size_t)(end - q) < 4 || (size_t)(end - q) - 4 < rd32(q))
      return dbx_seterr(err, DBX_ECORRUPT, "reduce-cmd partial: line %" PRIu64 " past the end", k);
    if (memchr(q + 4, '\n', rd32(q))) return dbx_seterr(err, DBX_ECORRUPT, "reduce-cmd partial: a line with a newline");
    if (prev && key_cmp(prev + 4, rd32(prev), q + 4, rd32(q)) > 0)
      return dbx_seterr(err, DBX_ECORRUPT, "reduce-cmd partial: keys out of order at line %" PRIu64, k);
    prev = q;
    q += 4 + rd32(q);
    k++;
  }
  if (k != cnt) return dbx_seterr(err, DBX_ECORRUPT, "reduce-cmd partial: %" PRIu64 " lines, %" PRIu64 " announced", k, cnt);
  lrun *r = rc_new(cfg);
  if (!r || (n > 12 && dbx_buf_append(&r->b, p + 12, n - 12))) {
    rc_free(r);
    return DBX_ENOMEM;
  }
  r->n = cnt;
  *outp = r;
  return 0;
}

/* The reduce command, once, over every line in key order; its output is the job's. */
static int rc_finish(const void *cfgp, const void *bc, void *partial, dbx_emit_fn emit, void *ctx, dbx_buf *bcast,
                     dbx_err *err) {
  (void)bc; (void)bcast;
  const reduce_cmd_cfg *cfg = cfgp;
  const lrun *r = partial;
  dbx_buf in = {0}, out = {0};
  int rc = 0;
  if (dbx_buf_reserve(&in, r->b.len + 1)) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (const char *q = r->b.data, *e = q ? q + r->b.len : NULL; q < e; q += 4 + rd32(q)) {
    dbx_buf_append(&in, q + 4, rd32(q));
    dbx_buf_append(&in, "\n", 1);
  }
  dbx_batch b;
  memset(&b, 0, sizeof b);
  b.data = in.data ? in.data : "";
  b.size = in.len;
  dbx_stats st = {0, 0, ""};
  dbx_err e = {0, ""};
  rc = run_map(&cfg->reduce, &b, &out, &st, &e);
  if (rc) rc = dbx_seterr(err, rc, "the reduce command failed: %s", e.msg);
  if (!rc && emit && out.len) {
    dbx_value row[1];
    memset(row, 0, sizeof row);
    row[0].s = out.data;
    row[0].n = out.len;
    rc = emit(ctx, row, err);
  }
  dbx_buf_free(&in);
  dbx_buf_free(&out);
  return rc;
}

const dbx_op op_reduce_cmd = {
    "reduce-cmd", rc_new, rc_free, rc_map, rc_merge, rc_encode, rc_decode, rc_finish,
    NULL, NULL, NULL, sizeof(reduce_cmd_cfg), NULL,
};

/* ---- word count, partitioned ---- */

const kv_spec wc_count_spec = {1, 1, {{KA_COUNT, 0, 0, 0, "count"}}};

static void *wcp_new(const void *cfg) {
  (void)cfg;
  return kv_new(&wc_count_spec);
}

/* A map task's levels: word count's table written out split whenever it fills. */
typedef struct wcp_task {
  const kv_part_cfg *pc;
  shuffle_levels lv;
} wcp_task;

static int wcp_level(void *ctx, strmap *m, dbx_err *err) {
  wcp_task *x = ctx;
  int rc = shuffle_level_counts(x->pc, &wc_count_spec, m, &x->lv, err);
  /* Emptied, keeping its slots (within the budget: strmap_limit): growing again from a small
   * table rehashed every key twice over and zeroed fresh pages, a seventh of a map task on
   * text of many distinct words. */
  strmap_clear(m);
  return rc;
}

static int wcp_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st, dbx_err *err) {
  (void)bcast;
  (void)partial;  /* the rows go to partition files; the partial sent back stays empty */
  const wcpart_cfg *cfg = cfgp;
  int rc = shuffle_check(&cfg->part, err);
  if (rc) return rc;
  if (!cfg->part.r) return dbx_seterr(err, DBX_EPROTO, "malformed configuration");
  strmap *m = op_wordcount.partial_new(&cfg->wc);
  if (!m) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  /* Word count's own table takes the words. Past half the task's memory it is written out
   * as a level of partition runs and emptied; a batch that fits (no level) is split from it
   * straight into its partition files. */
  size_t max = cfg->part.memory ? (size_t)cfg->part.memory / 2 : SIZE_MAX;
  wcp_task x = {&cfg->part, {{0}, 0, 0}};
  shuffle_levels_init(&cfg->part, &x.lv);
  rc = wc_map_draining(&cfg->wc, b, m, max, wcp_level, &x, st, err);
  if (!rc && x.lv.n == 0) {
    rc = shuffle_write_map_counts(&cfg->part, &wc_count_spec, m, b->index, err);
  } else {
    if (!rc) rc = wcp_level(&x, m, err);
    rc = shuffle_levels_finish(&cfg->part, &wc_count_spec, b->index, &x.lv, rc, err);
  }
  op_wordcount.partial_free(m);
  return rc;
}

static int wcp_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  (void)cfg;
  return kv_decode(&wc_count_spec, p, n, (kvpart **)out, err);
}

static int wcp_finish(const void *cfg, const void *bc, void *partial, dbx_emit_fn emit, void *ctx, dbx_buf *bcast,
                      dbx_err *err) {
  (void)cfg; (void)bc; (void)partial; (void)emit; (void)ctx; (void)bcast; (void)err;
  return 0;  /* the rows come from the reduce stage's by-count files */
}

const dbx_op op_wordcount_part = {
    "wordcount-part", wcp_new, red_free, wcp_map, red_merge, red_encode, wcp_decode, wcp_finish,
    NULL, NULL, NULL, sizeof(wcpart_cfg), NULL,
};
