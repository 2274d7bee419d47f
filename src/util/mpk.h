/* mpk.h -- msgpack-c packers that write into a dbx_buf and remember a failed write (private). */
#ifndef DBX_UTIL_MPK_H
#define DBX_UTIL_MPK_H
#include <msgpack.h>
#include "dbatch.h"

/* A packer over a dbx_buf. Once one write fails (ENOMEM), every later write fails too, so
 * an encoder checks once, at the end, with mpk_close(); it never hands out a message with
 * a hole in the middle. */
typedef struct mpk {
  msgpack_packer pk;
  dbx_buf *out;
  size_t start;   /* out->len when opened: mpk_close() truncates back to it on failure */
  int failed;
} mpk;

static inline int mpk_write(void *data, const char *p, size_t n) {
  mpk *m = data;
  if (m->failed || dbx_buf_append(m->out, p, n)) {
    m->failed = 1;
    return -1;
  }
  return 0;
}

/* Start appending to out, which must outlive m. Returns the packer to pass to msgpack_pack_*. */
static inline msgpack_packer *mpk_open(mpk *m, dbx_buf *out) {
  m->out = out;
  m->start = out->len;
  m->failed = 0;
  msgpack_packer_init(&m->pk, m, mpk_write);
  return &m->pk;
}

/* 0, or DBX_ENOMEM when any write failed; then out is cut back to where it was at mpk_open(),
 * so a caller can never send or store a truncated encoding by mistake. */
static inline int mpk_close(mpk *m) {
  if (!m->failed) return 0;
  m->out->len = m->start;
  return DBX_ENOMEM;
}

/* Older interface: a packer whose failures show only in the msgpack_pack_* return values.
 * Prefer mpk_open()/mpk_close(). */
static inline int mpk_buf_write(void *data, const char *p, size_t n) {
  return dbx_buf_append(data, p, n) ? -1 : 0;
}
static inline void mpk_init(msgpack_packer *pk, dbx_buf *out) {
  msgpack_packer_init(pk, out, mpk_buf_write);
}
#endif
