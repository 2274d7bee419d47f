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

/* A heartbeat is empty or carries a worker's usage (three counts), nothing in between. */
static void test_heartbeat_usage(void **state) {
  (void)state;
  dbx_buf out = {0};
  msg m;
  dbx_err err = {0, ""};
  assert_int_equal(msg_heartbeat(&out, 1500, 10u << 20, 12u << 20), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.type, MSG_HEARTBEAT);
  assert_int_equal(m.has_usage, 1);
  assert_int_equal(m.cpu_ms, 1500);
  assert_int_equal(m.rss, 10u << 20);
  assert_int_equal(m.peak_rss, 12u << 20);
  msg_free(&m);
  assert_int_equal(msg_simple(&out, MSG_HEARTBEAT), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.has_usage, 0);
  msg_free(&m);
  /* A usage that is not three unsigned counts: refused. */
  assert_int_equal(msg_heartbeat(&out, 1, 2, 3), 0);
  out.data[out.len - 1] = (char)0xff;  /* the last count becomes -1 (a negative fixint) */
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), DBX_EPROTO);
  dbx_buf_free(&out);
}

/* A stage's planned identity of its paths: 16 bytes per path, exactly, after the plugin
 * field (nil without a plugin); decoded as sent. */
static void test_stage_identity(void **state) {
  (void)state;
  dbx_buf out = {0};
  msg m;
  dbx_err err = {0, ""};
  const char *paths[] = {"/a", "/b"};
  uint64_t size[] = {123, UINT64_MAX};
  int64_t mt[] = {1700000000123456789LL, 0};
  msg_ident id = {size, mt};
  assert_int_equal(msg_stage_plugin(&out, 3, "noop", "\0\0\0\0\0\0\0\0", 8, NULL, 0, paths, 2, NULL, &id), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.has_plugin, 0);
  assert_int_equal(m.ident_len, 32);
  assert_int_equal(m.ident[0], 123);
  for (int k = 1; k < 8; k++) assert_int_equal(m.ident[k], 0);
  uint64_t back = 0;
  for (int k = 7; k >= 0; k--) back = back << 8 | m.ident[8 + k];
  assert_int_equal((int64_t)back, mt[0]);
  for (int k = 16; k < 24; k++) assert_int_equal(m.ident[k], 0xff);
  msg_free(&m);
  /* Without it: no identity. */
  assert_int_equal(msg_stage(&out, 3, "noop", "\0\0\0\0\0\0\0\0", 8, NULL, 0, paths, 2), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_null(m.ident);
  msg_free(&m);
  /* An identity of 16 bytes for two paths is refused: a worker would read past it. */
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 10);
  msgpack_pack_str_with_body(&pk, "DBX", 3);
  msgpack_pack_uint64(&pk, PROTO_VERSION);
  msgpack_pack_uint64(&pk, MSG_STAGE);
  msgpack_pack_uint64(&pk, 3);
  msgpack_pack_str_with_body(&pk, "noop", 4);
  msgpack_pack_bin_with_body(&pk, "\0\0\0\0\0\0\0\0", 8);
  msgpack_pack_bin_with_body(&pk, "", 0);
  msgpack_pack_array(&pk, 2);
  msgpack_pack_str_with_body(&pk, "/a", 2);
  msgpack_pack_str_with_body(&pk, "/b", 2);
  msgpack_pack_nil(&pk);
  msgpack_pack_bin_with_body(&pk, "0123456789abcdef", 16);
  assert_int_equal(msg_decode(sb.data, sb.size, &m, &err), DBX_EPROTO);
  msgpack_sbuffer_destroy(&sb);
  dbx_buf_free(&out);
}


/* A task and a result may carry relayed files: names and bytes come back as sent, an empty
 * list is not an absent one, and a name that could leave the directory (or is not one dbatch
 * writes) is refused where it is decoded. */
static void test_relayed_files(void **state) {
  (void)state;
  dbx_buf out = {0};
  msg m;
  dbx_err err = {0, ""};
  batchdesc b;
  memset(&b, 0, sizeof b);
  b.index = 3;
  msg_file f[2] = {{"s0-m1-p3.kv", 11, "abc", 3}, {"s0-m2-p3.kv", 11, "", 0}};
  assert_int_equal(msg_task_files(&out, 1, 2, &b, f, 2), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.has_files, 1);
  assert_int_equal(m.nfiles, 2);
  msg_file g;
  msg_file_at(&m, 0, &g);
  assert_int_equal(g.name_len, 11);
  assert_memory_equal(g.name, "s0-m1-p3.kv", 11);
  assert_int_equal(g.len, 3);
  assert_memory_equal(g.data, "abc", 3);
  msg_file_at(&m, 1, &g);
  assert_int_equal(g.len, 0);
  msg_free(&m);
  /* an empty list: present (a map task that sends its outputs back) */
  assert_int_equal(msg_task_files(&out, 1, 2, &b, NULL, 0), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.has_files, 1);
  assert_int_equal(m.nfiles, 0);
  msg_free(&m);
  assert_int_equal(msg_task(&out, 1, 2, &b), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.has_files, 0);
  msg_free(&m);
  assert_int_equal(msg_result_files(&out, 1, 3, 2, 10, 0, "", 100, 0.5, "p", 1, f, 1), 0);
  assert_int_equal(msg_decode(out.data, out.len, &m, &err), 0);
  assert_int_equal(m.type, MSG_RESULT);
  assert_int_equal(m.has_files, 1);
  assert_int_equal(m.nfiles, 1);
  assert_int_equal(m.partial_len, 1);
  msg_free(&m);
  /* names the encoder refuses to send */
  const char *bad[] = {"", ".tmp-x", "../x", "a/b", "..", "a b", "x\n", "s0-\xc3\xa9.kv",
                       "0123456789012345678901234567890123456789012345678901234567890123456789"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    msg_file x = {bad[i], strlen(bad[i]), "z", 1};
    assert_int_equal(msg_file_name_ok(bad[i], strlen(bad[i])), 0);
    assert_int_equal(msg_task_files(&out, 1, 2, &b, &x, 1), DBX_EINVAL);
    assert_int_equal(out.len, 0);
  }
  /* ... and the decoder refuses them from a peer that sends them anyway: a task's last field,
   * then a result's, with a bad name, a name that is not a string, bytes that are not bin, a
   * pair of three */
  for (int which = 0; which < 2; which++)
    for (int k = 0; k < 5; k++) {
      msgpack_sbuffer sb;
      msgpack_sbuffer_init(&sb);
      msgpack_packer pk;
      msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
      msgpack_pack_array(&pk, which ? 13 : 11);
      msgpack_pack_str_with_body(&pk, "DBX", 3);
      msgpack_pack_uint64(&pk, PROTO_VERSION);
      if (which == 0) {
        msgpack_pack_uint64(&pk, MSG_TASK);
        msgpack_pack_uint64(&pk, 1);
        msgpack_pack_uint64(&pk, 3);
        msgpack_pack_uint64(&pk, 1);
        msgpack_pack_array(&pk, 0);
        msgpack_pack_false(&pk);
        msgpack_pack_bin_with_body(&pk, "", 0);
        msgpack_pack_false(&pk);
      } else {
        msgpack_pack_uint64(&pk, MSG_RESULT);
        for (int i = 0; i < 6; i++) msgpack_pack_uint64(&pk, 1);
        msgpack_pack_double(&pk, 0.1);
        msgpack_pack_bin_with_body(&pk, "", 0);
        msgpack_pack_str_with_body(&pk, "", 0);
      }
      msgpack_pack_array(&pk, 1);
      if (k == 4) {
        msgpack_pack_array(&pk, 3);
        msgpack_pack_str_with_body(&pk, "ok.kv", 5);
        msgpack_pack_bin_with_body(&pk, "z", 1);
        msgpack_pack_nil(&pk);
      } else {
        msgpack_pack_array(&pk, 2);
        if (k == 0) msgpack_pack_str_with_body(&pk, "ok.kv", 5);
        else if (k == 1) msgpack_pack_str_with_body(&pk, "../../etc/x", 11);
        else if (k == 2) msgpack_pack_bin_with_body(&pk, "ok.kv", 5);
        else msgpack_pack_str_with_body(&pk, "ok.kv", 5);
        if (k == 3) msgpack_pack_str_with_body(&pk, "z", 1);
        else msgpack_pack_bin_with_body(&pk, "z", 1);
      }
      int rc = msg_decode(sb.data, sb.size, &m, &err);
      assert_int_equal(rc, k == 0 ? 0 : DBX_EPROTO);
      if (k == 0) {
        assert_int_equal(m.nfiles, 1);
        msg_free(&m);
      } else {
        assert_non_null(strstr(err.msg, "relayed files"));
      }
      msgpack_sbuffer_destroy(&sb);
    }
  dbx_buf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shipped_lengths_must_add_up),
      cmocka_unit_test(test_segment_range_must_not_wrap),
      cmocka_unit_test(test_hello_slots_bounded),
      cmocka_unit_test(test_stage_identity),
      cmocka_unit_test(test_heartbeat_usage),
      cmocka_unit_test(test_relayed_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
