/* fuzz_common.h -- what the libFuzzer targets share: a file made of the fuzz bytes, a small
 * naive Bayes training run whose broadcasts and partials are the valid context the targets
 * feed hostile bytes into, and sinks that touch every byte they are given (so AddressSanitizer
 * sees a read past the end where a careless caller would only print garbage). */
#ifndef DBX_FUZZ_COMMON_H
#define DBX_FUZZ_COMMON_H
#include <stddef.h>
#include <stdint.h>

#include "dbatch.h"
#include "ops/nbayes.h"
#include "ops/ops.h"

/* Stop the process with a one-line reason: a broken invariant is a finding like a crash. */
void fuzz_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Replace the contents of this process's scratch file (a memfd) with p[0..n) and return a
 * path that opens it ("/proc/self/fd/N"), valid until the next call. */
const char *fuzz_file(const void *p, size_t n);

/* Read every byte of p[0..n) (a read past the end is then an ASan report). */
void fuzz_touch(const void *p, size_t n);
extern volatile unsigned char fuzz_sink;

/* An emit callback: reads the first ntext columns of each row as text. ctx is a fuzz_rows. */
typedef struct fuzz_rows {
  uint32_t ntext;
  uint64_t rows;
} fuzz_rows;
int fuzz_emit(void *ctx, const dbx_value *row, dbx_err *err);

/* A batch of one segment over a copy of p[0..n), newline-terminated as the loader makes it.
 * The fields point into fb: valid until the next fuzz_batch() on it or fuzz_batch_free(). */
typedef struct fuzz_batch {
  dbx_buf data;
  dbx_segment seg;
  dbx_batch view;
} fuzz_batch;
void fuzz_batch_make(fuzz_batch *fb, const char *p, size_t n, const char *path);
void fuzz_batch_free(fuzz_batch *fb);

/* The classifier trained on a fixed six-line corpus, built once per process: the stage
 * broadcasts as blobs (envelopes) and loaded, and one valid encoded partial of each stage. */
typedef struct fuzz_nb {
  nb_cfg cfg;                      /* TSV, no probabilities, bad records skipped */
  dbx_buf env_none;                /* nb_vocab's broadcast: inputs table, empty payload */
  dbx_buf env_vocab, env_model;    /* nb_fit's and nb_predict's broadcasts */
  dbx_buf vocab, model;            /* the payloads alone */
  void *bc_none, *bc_vocab, *bc_model;
  dbx_buf part_vocab, part_fit, part_predict;  /* encoded partials of the training batch */
  const char *train;               /* the corpus text */
} fuzz_nb;
const fuzz_nb *fuzz_nb_get(void);

/* Wrap payload in a stage envelope for an input table of ninputs TSV files. OUT out. */
void fuzz_envelope(uint32_t ninputs, const char *payload, size_t n, dbx_buf *out);
#endif
