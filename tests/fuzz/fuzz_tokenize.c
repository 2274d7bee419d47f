/* fuzz_tokenize.c -- the word tokenizer (ops/tokenize.c). The first byte chooses lowercasing
 * and the shortest word; the rest is the text. Invariant: tok_next, which classifies 64 bytes
 * at a time and hands only runs holding bytes of 0x80 and up to the general tokenizer, returns
 * exactly the words of the general tokenizer run a byte at a time over the whole text
 * (tok_next_scalar), in the same order; every word is non-empty valid UTF-8 of readable bytes. */
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "fuzz_common.h"
#include "ops/tokenize.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int lower = data[0] & 1;
  size_t min_cp = 1 + (data[0] >> 1) % 3;
  const char *text = (const char *)data + 1;
  size_t n = size - 1;
  tok a, b;
  tok_init(&a, text, n, lower, min_cp);
  tok_init(&b, text, n, lower, min_cp);
  for (size_t k = 0;; k++) {
    const char *wa, *wb;
    size_t na = 0, nb = 0;
    int ra = tok_next(&a, &wa, &na), rb = tok_next_scalar(&b, &wb, &nb);
    if (ra != rb) fuzz_fail("word %zu: block scanner says %d, general tokenizer %d", k, ra, rb);
    if (ra != 1) break;
    if (na != nb || memcmp(wa, wb, na))
      fuzz_fail("word %zu: block scanner '%.*s', general tokenizer '%.*s'", k, (int)na, wa, (int)nb, wb);
    if (!na) fuzz_fail("word %zu is empty", k);
    fuzz_touch(wa, na);
    utf8proc_int32_t c;
    for (size_t i = 0; i < na;) {
      utf8proc_ssize_t l = utf8proc_iterate((const uint8_t *)wa + i, (utf8proc_ssize_t)(na - i), &c);
      if (l <= 0) fuzz_fail("word %zu is not valid UTF-8 at byte %zu", k, i);
      i += (size_t)l;
    }
  }
  tok_free(&a);
  tok_free(&b);
  return 0;
}
