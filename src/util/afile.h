/* afile.h -- output files committed atomically: a temporary file in the same directory,
 * synced, renamed over the destination on commit, the directory synced; removed on abort
 * (private). A destination that exists and is not a regular file (a pipe, a terminal,
 * /dev/null) is written straight, since rename cannot replace it.
 *
 * Every failure (write, flush, fsync, close, rename) is reported with the file name and the
 * system's reason ("No space left on device"), also when it happened in a buffered write
 * whose return value the caller did not look at: the stream remembers the first error. */
#ifndef DBX_UTIL_AFILE_H
#define DBX_UTIL_AFILE_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "dbatch.h"

struct afile_io;

typedef struct afile {
  FILE *fp;        /* write here between open and commit (or use afile_write) */
  char *path;      /* destination (owned) */
  char *tmp;       /* temporary path, NULL when written straight (owned) */
  int is_stdout;
  struct afile_io *io;  /* descriptor under fp and its first error (owned; NULL for stdout) */
} afile;

/* Open path for writing ("-" means standard output). 0, or an error naming the file. */
int afile_open(afile *f, const char *path, dbx_err *err);

/* afile_open_ex flags. AFILE_GZIP and AFILE_ZSTD compress what is written (one gzip member or
 * zstd frame, finished by afile_prepare or afile_commit). AFILE_APPEND keeps what the
 * destination holds: the temporary file starts as a copy of it, so the commit is still one
 * rename and a failed job leaves the destination as it was. A symbolic link is followed (the
 * file it leads to is replaced; the link stays); a replaced file's mode (and, for root, its
 * owner) is kept; hard links to it keep the old content, as with any rename. While the job runs the
 * destination is locked (flock), so two jobs appending to one file take turns and neither
 * loses the other's rows. A compressed destination gets a new member or frame, which gzip,
 * zstd and their libraries read as one stream. Appending to a file whose last byte is not a
 * newline is refused: its rows would run into ours. */
enum { AFILE_GZIP = 1, AFILE_ZSTD = 2, AFILE_APPEND = 4 };
int afile_open_ex(afile *f, const char *path, unsigned flags, dbx_err *err);
/* Bytes the destination held when it was opened with AFILE_APPEND (0 otherwise). */
uint64_t afile_kept(const afile *f);
/* The identity ("SIZE:MTIME") the destination will have once committed, for an append: the
 * prepared temporary file's. 0 when this is no append to a file (nothing to tell apart). */
int afile_append_token(const afile *f, char *out, size_t cap);
/* Does the destination of f already carry token (an earlier commit of the same append)? */
int afile_landed(const afile *f, const char *token);

/* The first bytes (up to 1 MiB, decompressed) of what an append kept, NUL-terminated; *n
 * of them ("" and 0 when nothing was kept). An append checks the whole kept file first: a
 * .gz/.zst file must decompress completely, and the text must end with a newline. */
const char *afile_kept_head(const afile *f, size_t *n);
/* Write n bytes. A failure names the file and the cause ("%s: write failed: No space left on
 * device"); the caller then calls afile_abort. */
int afile_write(afile *f, const void *p, size_t n, dbx_err *err);
/* Push buffered bytes to the file now; an error (also an earlier one) names the file. */
int afile_flush(afile *f, dbx_err *err);
/* Write out what is buffered and sync the temporary file, reporting any error (also an
 * earlier one) with the file name: after this, afile_commit has only the rename left. */
int afile_prepare(afile *f, dbx_err *err);
/* Replace everything written so far with p[0..n) and sync it (a file prepared early and
 * rewritten at the end, like the summary). Only for a temporary file (f->tmp). */
int afile_rewrite(afile *f, const void *p, size_t n, dbx_err *err);
/* Flush, fsync, rename into place, then fsync the directory so the rename itself survives
 * a crash. Any error found now or earlier (a full disk) is reported with the file name and
 * the cause, and the temporary file is removed. The afile is closed either way. */
int afile_commit(afile *f, dbx_err *err);
/* Discard everything written; the destination is untouched. Accepts a closed afile. */
void afile_abort(afile *f);

/* The fsync used on outputs and their directories; tests replace it to see what is synced. */
extern int (*afile_fsync_fn)(int fd);
#endif
