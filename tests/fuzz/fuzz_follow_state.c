/* fuzz_follow_state.c -- the state file of a followed job (engine/fstate.c) on hostile bytes.
 * The bytes are tried twice: as the file, and behind a valid magic with a valid checksum (else
 * the checksum stops nearly every mutation). A state that decodes must encode to the same
 * bytes it came from, its ranges must run forwards and its paths must be C strings. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "engine/fstate.h"
#include "fuzz_common.h"

static void try(const char *p, size_t n) {
  fstate s;
  if (fstate_decode(p, n, &s)) return;
  dbx_buf again = {0};
  if (fstate_encode(&s, &again)) fuzz_fail("a decoded state does not encode");
  if (again.len != n || memcmp(again.data, p, n)) fuzz_fail("a decoded state encodes to other bytes (%zu, %zu)", n, again.len);
  for (size_t i = 0; i < s.nfiles; i++) fuzz_touch(s.files[i].path, strlen(s.files[i].path));
  for (size_t i = 0; i < s.nwr; i++)
    if (s.wr[i].to < s.wr[i].from) fuzz_fail("a range runs backwards");
  for (size_t i = 0; i < s.pend_nwr; i++)
    if (s.pend_wr[i].to < s.pend_wr[i].from) fuzz_fail("a pending range runs backwards");
  fuzz_touch(s.state, s.state_len);
  fuzz_touch(s.pend_enc, s.pend_enc_len);
  dbx_buf_free(&again);
  fstate_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  try((const char *)data, size);
  /* magic + the bytes + XXH64 of both */
  size_t n = 10 + size + 8;
  char *b = malloc(n);
  if (!b) return 0;
  memcpy(b, "DBFOLLOW2\n", 10);
  if (size) memcpy(b + 10, data, size);
  uint64_t h = XXH64(b, 10 + size, 0);
  for (int i = 0; i < 8; i++) b[10 + size + i] = (char)(h >> (8 * i));
  try(b, n);
  free(b);
  return 0;
}
