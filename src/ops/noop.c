/* noop.c -- an operator that does nothing but count batches: it measures the engine. */
#include <msgpack.h>
#include <stdlib.h>
#include <time.h>

#include "ops/ops.h"
#include "util/mpk.h"

static void *noop_new(const void *cfg) { return calloc(1, sizeof(uint64_t)); }
static void noop_free(void *p) { free(p); }

static int noop_map(const void *cfg, const void *bcast, const dbx_batch *b, void *partial,
                    dbx_stats *st, dbx_err *err) {
  const noop_cfg *c = cfg;
  /* The configuration comes from a peer: a NaN, infinite or absurd sleep is refused. */
  if (c && !(c->task_ms >= 0 && c->task_ms <= 86400e3))
    return dbx_seterr(err, DBX_EINVAL, "noop: task time %g ms out of range", c->task_ms);
  if (c && c->task_ms > 0) {
    struct timespec ts = {(time_t)(c->task_ms / 1000), (long)((c->task_ms - (double)(time_t)(c->task_ms / 1000) * 1000) * 1e6)};
    nanosleep(&ts, NULL);
  }
  *(uint64_t *)partial += 1;
  return 0;
}

static int noop_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  *(uint64_t *)left += *(const uint64_t *)right;
  return 0;
}

static int noop_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  mpk m;
  msgpack_pack_uint64(mpk_open(&m, out), *(const uint64_t *)partial);
  return mpk_close(&m) ? dbx_seterr(err, DBX_ENOMEM, "noop: out of memory") : 0;
}

static int noop_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int ok = msgpack_unpack_next(&u, p, n, &off) == MSGPACK_UNPACK_SUCCESS && off == n &&
           u.data.type == MSGPACK_OBJECT_POSITIVE_INTEGER;
  uint64_t v = ok ? u.data.via.u64 : 0;
  msgpack_unpacked_destroy(&u);
  if (!ok) return dbx_seterr(err, DBX_ECORRUPT, "noop: malformed partial result");
  uint64_t *x = malloc(sizeof *x);
  if (!x) return DBX_ENOMEM;
  *x = v;
  *out = x;
  return 0;
}

static int noop_finish(const void *cfg, const void *bc, void *partial, dbx_emit_fn emit, void *ctx,
                       dbx_buf *bcast, dbx_err *err) {
  if (!emit) return 0;
  dbx_value row[1] = {{0}};
  row[0].i = (int64_t)*(uint64_t *)partial;
  return emit(ctx, row, err);
}

static const char *const noop_names[] = {"tasks"};
static const dbx_coltype noop_types[] = {DBX_COL_INT};
static const dbx_schema noop_schema = {1, noop_names, noop_types};

const dbx_op op_noop = {
    "noop", noop_new, noop_free, noop_map, noop_merge, noop_encode, noop_decode, noop_finish,
    NULL, NULL, &noop_schema, sizeof(noop_cfg), NULL,
};
