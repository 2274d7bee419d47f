/* fuzz_kv.c -- keyed partials (engine/kv.c) from hostile bytes: the first byte picks one of a
 * few fixed aggregate specs, the rest goes to kv_decode, as a worker's RESULT of `run
 * --reduce` or `groupby` reaches the coordinator. What decode accepts is merged with itself
 * and with a valid partial on either side, given one more record, and emitted as rows.
 *
 * Invariants besides memory safety: encode(decode(x)) == x (the encoding is the run); what a
 * merge makes, decode accepts again; merges fail only as bad records or corrupt counts; the
 * streaming merge of the reduce side (kv_merge_to_fd) writes the very bytes of the in-memory
 * merge in the batch tree, or fails where it fails. The same bytes also go to the readers of
 * spilled raw records: kv_replay_records as records, and kv_replay as a spill file (zstd
 * frames), and once compressed as one frame to kv_replay, which must read them as
 * kv_replay_records did. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* The bytes kv_merge_to_fd writes for runs[0..n) at batch indices idx of nbatch, or NULL
 * when it fails (*len = 0). */
static char *merge_fd_levels(size_t si, kvpart **runs, const uint32_t *idx, uint32_t n, uint32_t nbatch, int levels,
                             size_t *len) {
  int fd = memfd_create("fuzz-kv", MFD_CLOEXEC);
  if (fd < 0) fuzz_fail("memfd_create");
  dbx_err err = {0, ""};
  int rc = kv_merge_to_fd(&S[si], runs, idx, n, nbatch, 0, levels, fd, "/tmp", &err);
  char *out = NULL;
  *len = 0;
  if (rc && rc != DBX_EBADREC && rc != DBX_ECORRUPT) fuzz_fail("kv_merge_to_fd: %d %s", rc, err.msg);
  if (!rc) {
    off_t end = lseek(fd, 0, SEEK_END);
    out = malloc(end > 0 ? (size_t)end : 1);
    if (!out || pread(fd, out, (size_t)end, 0) != end) fuzz_fail("reading the merge back");
    *len = (size_t)end;
  }
  close(fd);
  return out;
}

static char *merge_fd(size_t si, kvpart **runs, const uint32_t *idx, uint32_t n, uint32_t nbatch, size_t *len) {
  return merge_fd_levels(si, runs, idx, n, nbatch, 0, len);
}

/* The bytes as one of a task's level files (carriers allowed): merged as levels with a valid
 * partial on either side, whatever comes out must read back as a level file. */
static void as_level(size_t si, const char *p, size_t n) {
  kvpart *x = NULL;
  dbx_err err = {0, ""};
  if (kv_decode_level_view(&S[si], p, n, &x, &err)) return;
  for (int side = 0; side < 2; side++) {
    kvpart *runs[2];
    runs[side] = x;
    runs[1 - side] = decode_or_die(si, VALID[si].data, VALID[si].len);
    uint32_t idx[2] = {0, 1};
    size_t got_len;
    char *got = merge_fd_levels(si, runs, idx, 2, 2, 1, &got_len);
    kvpart *back = NULL;
    if (got && kv_decode_level_view(&S[si], got, got_len, &back, &err)) fuzz_fail("a merge of levels does not read back: %s", err.msg);
    kv_free(back);
    free(got);
    kv_free(runs[1 - side]);
  }
  kv_free(x);
}

/* x (bytes p[0..n)) with the valid partial V in the batch tree of three: x at 0, V at 1, x at
 * 2 is merge(merge(x, V), x); kv_merge_to_fd must write its bytes. */
static void streaming_equals_tree(size_t si, const char *p, size_t n) {
  kvpart *a = decode_or_die(si, p, n), *v = decode_or_die(si, VALID[si].data, VALID[si].len),
         *c = decode_or_die(si, p, n);
  dbx_err err = {0, ""};
  dbx_buf want = {0};
  int rc = kv_merge(a, v, &err);
  if (!rc) rc = kv_merge(a, c, &err);
  if (!rc && kv_encode(a, &want, &err)) fuzz_fail("encode of a merge: %s", err.msg);
  kv_free(a);
  kv_free(v);
  kv_free(c);
  kvpart *runs[3] = {decode_or_die(si, p, n), decode_or_die(si, VALID[si].data, VALID[si].len),
                     decode_or_die(si, p, n)};
  uint32_t idx[3] = {0, 1, 2};
  size_t got_len;
  char *got = merge_fd(si, runs, idx, 3, 3, &got_len);
  if (!rc != !!got) fuzz_fail("kv_merge %s, kv_merge_to_fd %s", rc ? "fails" : "merges", got ? "merges" : "fails");
  if (got && (got_len != want.len || memcmp(got, want.data, got_len)))
    fuzz_fail("kv_merge_to_fd wrote %zu bytes, the tree merge %zu (or others)", got_len, want.len);
  free(got);
  dbx_buf_free(&want);
  /* x alone at batch 5 of 9: a copy */
  uint32_t five = 5;
  got = merge_fd(si, runs, &five, 1, 9, &got_len);
  if (!got || got_len != n || memcmp(got, p, n)) fuzz_fail("kv_merge_to_fd of one run is not a copy");
  free(got);
  for (int i = 0; i < 3; i++) kv_free(runs[i]);
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
  /* as spilled raw records */
  kvpart *sp = kv_new(&S[si]);
  if (!sp) fuzz_fail("kv_new");
  int rr = kv_replay_records(sp, p, n, &err);
  if (rr && rr != DBX_ECORRUPT && rr != DBX_EBADREC) fuzz_fail("kv_replay_records: %d %s", rr, err.msg);
  kvpart *sz = kv_new(&S[si]);
  if (!sz) fuzz_fail("kv_new");
  int rz = kv_replay(sz, p, n, &err);
  if (rz && rz != DBX_ECORRUPT && rz != DBX_EBADREC) fuzz_fail("kv_replay: %d %s", rz, err.msg);
  kv_free(sz);
  /* The same records as a spill file holds them: compressed, they read the same. */
  size_t zcap = ZSTD_compressBound(n);
  char *z = malloc(zcap);
  size_t zn = z ? ZSTD_compress(z, zcap, p, n, 1) : 0;
  if (z && !ZSTD_isError(zn)) {
    kvpart *sc = kv_new(&S[si]);
    if (!sc) fuzz_fail("kv_new");
    int rc2 = kv_replay(sc, z, zn, &err);
    if ((rc2 == 0) != (rr == 0)) fuzz_fail("kv_replay of the compressed records: %d, as records: %d", rc2, rr);
    if (!rr) {
      dbx_buf ea = {0}, eb = {0};
      if (kv_encode(sp, &ea, &err) || kv_encode(sc, &eb, &err)) fuzz_fail("encode after replay");
      if (ea.len != eb.len || memcmp(ea.data, eb.data, ea.len)) fuzz_fail("compressed records replay differently");
      dbx_buf_free(&ea);
      dbx_buf_free(&eb);
    }
    kv_free(sc);
  }
  free(z);
  kv_free(sp);
  as_level(si, p, n);
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
  streaming_equals_tree(si, p, n);
  free(p);
  return 0;
}
