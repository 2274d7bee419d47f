/* fstate.h -- the state file of a followed job (--follow, docs/follow.md): its bytes, both
 * ways (private). The file is written by dbatch into the job directory; it is read back as
 * untrusted bytes all the same: every length and count is checked against what is left, and
 * the whole is covered by an XXH64 checked first.
 *
 * Layout (little-endian u64 unless said): "DBFOLLOW2\n", fingerprint, micro-batch number,
 * file count, per file (dev, ino, offset, path length, path bytes), state length, state
 * bytes, window start, windows closed, ranges of the open window, pending flag, and when set
 * the pending window (number, start, token length, token, state length, state, ranges);
 * ranges are a count and per range (path length, path, from, to); then XXH64 of all that. */
#ifndef DBX_ENGINE_FSTATE_H
#define DBX_ENGINE_FSTATE_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"

#define FSTATE_PATH_MAX 4096
#define FSTATE_TOKEN_MAX 128

typedef struct fstate_file {
  char *path;
  uint64_t dev, ino, off;
} fstate_file;

typedef struct fstate_range {   /* bytes [from, to) of a file */
  char *path;
  uint64_t from, to;
} fstate_range;

typedef struct fstate {
  uint64_t fingerprint, epoch;
  fstate_file *files;
  size_t nfiles;
  const char *state;          /* encoded partial; into the decoded buffer */
  size_t state_len;
  int64_t wstart;
  uint64_t wclosed;
  fstate_range *wr;
  size_t nwr;
  int pend_on;
  uint64_t pend_k;
  int64_t pend_start;
  char pend_token[FSTATE_TOKEN_MAX];
  const char *pend_enc;       /* into the decoded buffer */
  size_t pend_enc_len;
  fstate_range *pend_wr;
  size_t pend_nwr;
} fstate;

/* Append s's bytes to out (DBX_ENOMEM). */
int fstate_encode(const fstate *s, dbx_buf *out);
/* Decode n bytes at p into *s (whose strings and arrays are owned: fstate_free; state and
 * pend_enc point into p). DBX_ECORRUPT for anything that is not what fstate_encode writes. */
int fstate_decode(const char *p, size_t n, fstate *s);
void fstate_free(fstate *s);
/* Add [from, to) of path to a range list (joined to the last range when it goes on). */
int fstate_add_range(fstate_range **v, size_t *n, size_t *cap, const char *path, uint64_t from, uint64_t to);
void fstate_free_ranges(fstate_range *v, size_t n);
#endif
