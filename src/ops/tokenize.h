/* tokenize.h -- the word tokenizer shared by word count and the text classifier (private).
 *
 * A word is a maximal run of Unicode word characters as Python's re `\w` sees them on str:
 * letters (L*), numbers (Nd, Nl, No) and '_'. Lowercasing follows Python's str.lower():
 * Unicode simple case mapping plus its two special cases, U+0130 (which lowers to "i" and a
 * combining dot, so it ends the word after the "i") and the final sigma. Bytes that are not
 * valid UTF-8 separate words (as U+FFFD does after decoding with errors='replace'). */
#ifndef DBX_OPS_TOKENIZE_H
#define DBX_OPS_TOKENIZE_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"

typedef struct tok {
  const unsigned char *base;  /* the text */
  size_t size;
  /* The block scanner: the block at base + blk (64 bytes) as bit masks, its edges between
   * separators and the rest not yet visited, and the run of non-separators under way. */
  size_t blk, wstart;
  uint64_t s, h, u, edges;
  unsigned sb;
  int in_word, acc_h, acc_u;
  const unsigned char *rp, *rend; /* a run with Unicode in it, under the general tokenizer */
  int scalar;                     /* tok_next_scalar under way */
  int lower;            /* map to lowercase */
  size_t min_cp;        /* shortest word returned, in code points (1 = all; scikit-learn: 2) */
  dbx_buf word;         /* the current word, owned */
} tok;

void tok_init(tok *t, const char *data, size_t n, int lowercase, size_t min_cp);
/* Restart on new data, keeping the scratch buffer. */
void tok_reset(tok *t, const char *data, size_t n);
/* Next word: 1 with *w (valid until the next call; it may point into data) and *n bytes of UTF-8; 0 at the end;
 * DBX_ENOMEM. */
int tok_next(tok *t, const char **w, size_t *n);
/* The same words from the general tokenizer alone, a byte at a time over the whole text:
 * the reference that tests and fuzzing hold tok_next's 64-byte block scanner to. Do not mix
 * the two calls on one tok between resets. */
int tok_next_scalar(tok *t, const char **w, size_t *n);
void tok_free(tok *t);
#endif
