/* fuzz_kv.c -- keyed partials (engine/kv.c) from hostile bytes: the first byte picks one of a
 * few fixed aggregate specs, the rest goes to kv_decode, as a worker's RESULT of `run
 * --reduce` or `groupby` reaches the coordinator. What decode accepts is merged with itself
 * and with a valid partial on either side, given one more record, and emitted as rows.
 *
 * Invariants besides memory safety: encode(decode(x)) == x (the encoding is the run); what a
 * merge makes, decode accepts again; merges fail only as bad records or corrupt counts. */
#include <stdlib.h>
#include <string.h>

#include "engine/kv.h"
#include "fuzz_common.h"

static int col_of(void *ctx, const char *name, size_t n, dbx_err *err) {
  (void)ctx;
  static const char *cols[] = {"a", "b", "c"};
  for (int i = 0; i < 3; i++)
    if (n == 1 && name[0] == cols[i][0]) return i;
  return dbx_seterr(err, DBX_EUSAGE, "no column %.*s", (int)n, name);
}

/* Spec text, and key columns (groupby keys are NUL-joined fields). */
static const struct { const char *text; int cols; uint32_t nkey; } SPECS[] = {
    {"count,sum,min,max,mean,first,last,distinct,top:3", 0, 1},
    {"distinct,top:2", 0, 1},
    {"first,last", 0, 1},
    {"count,sum:a,top:2:b,distinct:a,first:b,mean:c,distinct:b,max:a,last:c", 1, 2},
};
#define NSPECS (sizeof SPECS / sizeof *SPECS)
static kv_spec S[NSPECS];
static dbx_buf VALID[NSPECS];

/* Read every byte of each row's text values. */
typedef struct rows { const kv_spec *s; uint32_t nkey; uint64_t n; } rows;
static int touch_row(void *ctx, const dbx_value *row, dbx_err *err) {
  (void)err;
  rows *r = ctx;
  for (uint32_t j = 0; j < r->nkey; j++) fuzz_touch(row[j].s, row[j].n);
  for (uint32_t i = 0; i < r->s->nagg; i++) {
    const dbx_value *v = &row[r->nkey + i];
    if (kv_agg_type(r->s, i) == DBX_COL_TEXT && v->s) fuzz_touch(v->s, v->n);
    if (kv_agg_type(r->s, i) == DBX_COL_NUM && v->n > DBX_NUM_NULL) fuzz_fail("a number of kind %zu", v->n);
  }
  r->n++;
  return 0;
}

static void add(kvpart *p, const kv_spec *s, const char *k, const char *v) {
  kv_val vals[KV_AGG_MAX];
  for (uint32_t c = 0; c < KV_AGG_MAX; c++) vals[c] = (kv_val){v, strlen(v), c == 2};
  dbx_err err = {0, ""};
  int rc = kv_add(p, k, strlen(k) + (s->nval > 1 ? 2 : 0), vals, &err);
  if (rc && rc != DBX_EBADREC) fuzz_fail("kv_add: %d %s", rc, err.msg);
}

void fuzz_kv_setup(void);
void fuzz_kv_setup(void) {
  for (size_t i = 0; i < NSPECS; i++) {
    dbx_err err = {0, ""};
    memset(&S[i], 0, sizeof S[i]);
    if (kv_spec_parse(&S[i], SPECS[i].text, SPECS[i].cols ? col_of : NULL, NULL, &err)) fuzz_fail("spec: %s", err.msg);
    kvpart *p = kv_new(&S[i]);
    if (!p) fuzz_fail("kv_new");
    /* keys "k\0x" for the two-column spec (strlen + 2 takes the NUL and one more byte) */
    add(p, &S[i], "m\0x", "3");
    add(p, &S[i], "b\0y", "2.5");
    add(p, &S[i], "m\0x", "-7");
    add(p, &S[i], "\0\0\0", "x");
    if (kv_encode(p, &VALID[i], &err)) fuzz_fail("encode: %s", err.msg);
    kv_free(p);
  }
}

static kvpart *decode_or_die(size_t si, const char *p, size_t n) {
  kvpart *x = NULL;
  dbx_err err = {0, ""};
  if (kv_decode(&S[si], p, n, &x, &err)) fuzz_fail("decode refuses what it accepted: %s", err.msg);
  return x;
}

/* Merge r into l (consumed), check the result re-decodes, emit it. */
static void merge_emit(size_t si, kvpart *l, kvpart *r) {
  dbx_err err = {0, ""};
  int rc = kv_merge(l, r, &err);
  kv_free(r);
  if (rc && rc != DBX_EBADREC && rc != DBX_ECORRUPT) fuzz_fail("kv_merge: %d %s", rc, err.msg);
  if (!rc) {
    dbx_buf b = {0};
    if (kv_encode(l, &b, &err)) fuzz_fail("encode of a merge: %s", err.msg);
    kvpart *again = decode_or_die(si, b.data, b.len);
    kv_free(again);
    dbx_buf_free(&b);
    add(l, &S[si], "m\0x", "1");
    rows rs = {&S[si], SPECS[si].nkey, 0};
    rc = kv_emit_rows(&S[si], l, rs.nkey, touch_row, &rs, &err);
    if (rc && rc != DBX_EBADREC && rc != DBX_ECORRUPT) fuzz_fail("kv_emit_rows: %d %s", rc, err.msg);
  }
  kv_free(l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    fuzz_kv_setup();
    ready = 1;
  }
  if (size < 1) return 0;
  size_t si = data[0] % NSPECS;
  /* A copy of exactly the bytes, so ASan sees a read past them. */
  size_t n = size - 1;
  char *p = malloc(n ? n : 1);
  if (!p) return 0;
  memcpy(p, data + 1, n);
  kvpart *x = NULL;
  dbx_err err = {0, ""};
  if (kv_decode(&S[si], p, n, &x, &err)) {
    free(p);
    return 0;
  }
  dbx_buf b = {0};
  if (kv_encode(x, &b, &err)) fuzz_fail("encode of a decoded partial: %s", err.msg);
  if (b.len != n || memcmp(b.data, p, n)) fuzz_fail("encode(decode(x)) != x (%zu vs %zu bytes)", b.len, n);
  dbx_buf_free(&b);
  /* rows of it alone */
  rows rs = {&S[si], SPECS[si].nkey, 0};
  int rc = kv_emit_rows(&S[si], x, rs.nkey, touch_row, &rs, &err);
  if (rc && rc != DBX_ECORRUPT) fuzz_fail("kv_emit_rows: %d %s", rc, err.msg);
  kv_free(x);
  /* with itself, with a valid one on either side */
  merge_emit(si, decode_or_die(si, p, n), decode_or_die(si, p, n));
  merge_emit(si, decode_or_die(si, p, n), decode_or_die(si, VALID[si].data, VALID[si].len));
  merge_emit(si, decode_or_die(si, VALID[si].data, VALID[si].len), decode_or_die(si, p, n));
  free(p);
  return 0;
}
