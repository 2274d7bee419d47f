/* err.h -- private error helpers on top of the public dbx_err (this file is private to dbatch). */
#ifndef DBX_UTIL_ERR_H
#define DBX_UTIL_ERR_H
#include <errno.h>
#include "dbatch.h"

/* Map an errno value to the closest DBX_ code. */
int err_from_errno(int e);

#define DBX_UNUSED(x) ((void)(x))
#endif
