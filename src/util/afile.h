/* afile.h -- output files committed atomically: a temporary file in the same directory,
 * renamed over the destination on commit, removed on abort (private).
 * A destination that exists and is not a regular file (a pipe, a terminal, /dev/null)
 * is written straight, since rename cannot replace it. */
#ifndef DBX_UTIL_AFILE_H
#define DBX_UTIL_AFILE_H
#include <stdio.h>
#include "dbatch.h"

typedef struct afile {
  FILE *fp;        /* write here between open and commit */
  char *path;      /* destination (owned) */
  char *tmp;       /* temporary path, NULL when written straight (owned) */
  int is_stdout;
} afile;

/* Open path for writing ("-" means standard output). 0, or an error naming the file. */
int afile_open(afile *f, const char *path, dbx_err *err);
/* Flush, sync and rename into place. Any write error found now (a full disk) is reported
 * with the file name, and the temporary file is removed. */
int afile_commit(afile *f, dbx_err *err);
/* Discard everything written; the destination is untouched. Accepts a closed afile. */
void afile_abort(afile *f);
#endif
