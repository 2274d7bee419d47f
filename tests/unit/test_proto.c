/* test_proto.c -- the wire decoder refuses what does not add up: a shipped task whose
 * segment lengths do not sum to its data, a segment whose range wraps around, a hello with
 * an absurd slot count. Each message is otherwise well formed, so only that check stops it. */
#include "check.h"

#include "net/proto.h"

/* A shipped task of two segments, 3 + 4 bytes announced, with `data` as its bytes. */
static void shipped_task(dbx_buf *out, const char *data, uint64_t dlen2, uint64_t off2, uint64_t len2) {
  bseg seg[2] = {{0, 0, 3, 0, 1, 3}, {0, off2, len2, 1, 1, dlen2}};
  batchdesc b;
  memset(&b, 0, sizeof b);
  b.index = 7;
  b.nseg = 2;
  b.seg = seg;
  b.shipped = 1;
  assert_int_equal(dbx_buf_append(&b.data, data, strlen(data)), 0);
  assert_int_equal(msg_task(out, 1, 1, &b), 0);
  dbx_buf_free(&b.data);
}

static void test_shipped_lengths_must_add_up(void **state) {
  (void)state;
  dbx_buf out = {0};
  msg m;
  dbx_err err = {0, ""};
  /* 3 + 4 = 7 bytes of data: accepted, and the segments say where each part is. */
  shipped_task(&out, "ab\ncde\n", 4, 3, 4);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.type, MSG_TASK);
  assert_int_equal(m.batch.nseg, 2);
  assert_int_equal(m.batch.data.len, 7);
  assert_int_equal(m.batch.seg[1].dlen, 4);
  msg_free(&m);
  /* 3 + 9 announced for 7 bytes: a worker trusting it would read past the frame. */
  shipped_task(&out, "ab\ncde\n", 9, 3, 4);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), DBX_EPROTO);
  assert_non_null(strstr(err.msg, "malformed message"));
  /* 3 + 1 announced for 7 bytes: fewer is wrong too. */
  shipped_task(&out, "ab\ncde\n", 1, 3, 4);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), DBX_EPROTO);
  dbx_buf_free(&out);
}

static void test_segment_range_must_not_wrap(void **state) {
  (void)state;
  dbx_buf out = {0};
  msg m;
  dbx_err err = {0, ""};
  shipped_task(&out, "ab\ncde\n", 4, UINT64_MAX - 1, 4);  /* off + len wraps past 2^64 */
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), DBX_EPROTO);
  shipped_task(&out, "ab\ncde\n", 4, UINT64_MAX - 4, 4);  /* ends at 2^64 - 1: fine */
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  msg_free(&m);
  dbx_buf_free(&out);
}

static void test_hello_slots_bounded(void **state) {
  (void)state;
  dbx_buf out = {0};
  msg m;
  dbx_err err = {0, ""};
  assert_int_equal(msg_hello(&out, 4096, "h", 1, 1), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.slots, 4096);
  msg_free(&m);
  assert_int_equal(msg_hello(&out, 4097, "h", 1, 1), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), DBX_EPROTO);
  assert_int_equal(msg_hello(&out, 0, "h", 1, 1), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), DBX_EPROTO);
  dbx_buf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shipped_lengths_must_add_up),
      cmocka_unit_test(test_segment_range_must_not_wrap),
      cmocka_unit_test(test_hello_slots_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
