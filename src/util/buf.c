/* buf.c -- growable byte buffers (dbx_buf), the one way bytes are accumulated in dbatch. */
#include <stdlib.h>
#include <string.h>
#include "dbatch.h"

int dbx_buf_reserve(dbx_buf *b, size_t extra) {
  if (b->cap - b->len >= extra) return 0;
  size_t need = b->len + extra;
  if (need < b->len) return DBX_ENOMEM;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap * 2 > cap ? cap * 2 : need;
  char *p = realloc(b->data, cap);
  if (!p) return DBX_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int dbx_buf_append(dbx_buf *b, const void *p, size_t n) {
  if (n == 0) return 0;
  int rc = dbx_buf_reserve(b, n);
  if (rc) return rc;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void dbx_buf_free(dbx_buf *b) {
  if (!b) return;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
