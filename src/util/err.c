/* err.c -- error codes to messages, and filling a caller's error struct. */
#include "util/err.h"

#include <stdarg.h>
#include <stdio.h>

const char *dbx_strerror(int code) {
  switch (code) {
  case DBX_OK: return "success";
#define XX(name, val, msg) case DBX_##name: return msg;
    DBX_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

int dbx_seterr(dbx_err *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
  }
  return code;
}

int err_from_errno(int e) {
  switch (e) {
  case ENOENT: case ENOTDIR: return DBX_ENOENT;
  case EISDIR: return DBX_EISDIR;
  case ENOSPC: case EDQUOT: case EFBIG: return DBX_ENOSPC;
  case EACCES: case EPERM: case EROFS: return DBX_EACCES;
  case ENOMEM: return DBX_ENOMEM;
  case EINTR: return DBX_EINTR;
  default: return DBX_EIO;
  }
}

const char *dbx_version(void) { return DBX_VERSION; }
