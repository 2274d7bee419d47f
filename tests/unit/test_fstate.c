/* test_fstate.c -- a followed job's state file: what is encoded decodes to the same state,
 * and bytes that are not what the encoder writes are refused (a checksum that holds over a
 * count that lies, a NUL in a path, a range that runs backwards, trailing bytes). */
#include "check.h"

#include <xxhash.h>

#include "engine/fstate.h"

/* Put a valid checksum on b (its last 8 bytes). */
static void reseal(dbx_buf *b) {
  uint64_t h = XXH64(b->data, b->len - 8, 0);
  for (int i = 0; i < 8; i++) b->data[b->len - 8 + i] = (char)(h >> (8 * i));
}

static void test_round_trip(void **state) {
  (void)state;
  fstate_file files[2] = {{"logs/a.log", 1, 2, 300}, {"b", 3, 4, 0}};
  fstate_range wr[2] = {{"logs/a.log", 0, 100}, {"b", 5, 9}}, pr[1] = {{"b", 0, 5}};
  fstate s;
  memset(&s, 0, sizeof s);
  s.fingerprint = 42, s.epoch = 9, s.files = files, s.nfiles = 2, s.state = "abc", s.state_len = 3;
  s.wstart = 1700000000, s.wclosed = 4, s.wr = wr, s.nwr = 2;
  s.pend_on = 1, s.pend_k = 3, s.pend_start = 1699999940, s.pend_enc = "xy", s.pend_enc_len = 2, s.pend_wr = pr,
  s.pend_nwr = 1;
  snprintf(s.pend_token, sizeof s.pend_token, "tok");
  dbx_buf b = {0};
  assert_int_equal(fstate_encode(&s, &b), 0);
  fstate d;
  assert_int_equal(fstate_decode(b.data, b.len, &d), 0);
  assert_int_equal(d.fingerprint, 42);
  assert_int_equal(d.epoch, 9);
  assert_int_equal(d.nfiles, 2);
  assert_string_equal(d.files[0].path, "logs/a.log");
  assert_int_equal(d.files[0].off, 300);
  assert_int_equal(d.files[1].ino, 4);
  assert_int_equal(d.state_len, 3);
  assert_memory_equal(d.state, "abc", 3);
  assert_int_equal(d.wstart, 1700000000);
  assert_int_equal(d.wclosed, 4);
  assert_int_equal(d.nwr, 2);
  assert_int_equal(d.wr[1].to, 9);
  assert_int_equal(d.pend_on, 1);
  assert_string_equal(d.pend_token, "tok");
  assert_int_equal(d.pend_enc_len, 2);
  assert_int_equal(d.pend_nwr, 1);
  /* encoded again: the same bytes */
  dbx_buf again = {0};
  assert_int_equal(fstate_encode(&d, &again), 0);
  assert_int_equal(again.len, b.len);
  assert_memory_equal(again.data, b.data, b.len);
  fstate_free(&d);
  /* every shorter prefix, resealed, is refused */
  for (size_t n = 18; n < b.len - 8; n++) {  /* the content cut short, sealed again */
    dbx_buf c = {0};
    dbx_buf_append(&c, b.data, n);
    dbx_buf_append(&c, "\0\0\0\0\0\0\0\0", 8);
    reseal(&c);
    assert_int_equal(fstate_decode(c.data, c.len, &d), DBX_ECORRUPT);
    dbx_buf_free(&c);
  }
  /* a file count that lies (2^40 files), a NUL in a path, a range backwards, one byte more */
  const size_t count_at = 10 + 16, path_at = 10 + 24 + 32;
  for (int k = 0; k < 4; k++) {
    dbx_buf c = {0};
    dbx_buf_append(&c, b.data, b.len);
    if (k == 0) c.data[count_at + 5] = 1;
    if (k == 1) c.data[path_at + 2] = 0;
    if (k == 2) {  /* a range from 100 to 50 */
      wr[0].from = 100, wr[0].to = 50;
      c.len = 0;
      assert_int_equal(fstate_encode(&s, &c), 0);
      wr[0].from = 0, wr[0].to = 100;
    }
    if (k == 3) {
      dbx_buf_append(&c, "z", 1);
      c.data[c.len - 9] = 'z';  /* the extra byte before the checksum */
    }
    reseal(&c);
    assert_int_equal(fstate_decode(c.data, c.len, &d), DBX_ECORRUPT);
    dbx_buf_free(&c);
  }
  /* a damaged checksum */
  b.data[b.len - 1] ^= 1;
  assert_int_equal(fstate_decode(b.data, b.len, &d), DBX_ECORRUPT);
  dbx_buf_free(&b);
  dbx_buf_free(&again);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
