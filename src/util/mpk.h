/* mpk.h -- msgpack-c packers that write into a dbx_buf (private). */
#ifndef DBX_UTIL_MPK_H
#define DBX_UTIL_MPK_H
#include <msgpack.h>
#include "dbatch.h"

static inline int mpk_buf_write(void *data, const char *p, size_t n) {
  return dbx_buf_append(data, p, n) ? -1 : 0;
}

/* pk appends to out; out must outlive pk. A dbx_buf write fails only on ENOMEM. */
static inline void mpk_init(msgpack_packer *pk, dbx_buf *out) {
  msgpack_packer_init(pk, out, mpk_buf_write);
}
#endif
