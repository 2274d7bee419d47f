/* test_encode_oom.c -- encoders under allocation failure: every message and partial encoder
 * either succeeds with a complete encoding or fails with DBX_ENOMEM, leaving the buffer as it
 * was (never a truncated message reported as a success). This file provides its own
 * dbx_buf_reserve/append/free, which fail on demand, in place of util/buf.c. */
#include "check.h"

#include "net/proto.h"
#include "ops/nbayes.h"
#include "ops/ops.h"

static long budget = -1;  /* reallocations still allowed; -1 = unlimited */

int dbx_buf_reserve(dbx_buf *b, size_t extra) {
  if (b->cap - b->len >= extra) return 0;
  size_t need = b->len + extra;
  if (need < b->len) return DBX_ENOMEM;
  size_t cap = b->cap ? b->cap : 16;
  while (cap < need) cap = cap * 2 > cap ? cap * 2 : need;
  if (budget == 0) return DBX_ENOMEM;
  if (budget > 0) budget--;
  char *p = realloc(b->data, cap);
  if (!p) return DBX_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int dbx_buf_append(dbx_buf *b, const void *p, size_t n) {
  if (n == 0) return 0;
  int rc = dbx_buf_reserve(b, n);
  if (rc) return rc;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void dbx_buf_free(dbx_buf *b) {
  if (!b) return;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static char big[3000];

typedef int (*enc_fn)(dbx_buf *out, int which);

static int enc_msg(dbx_buf *out, int which) {
  static const char *paths[] = {"/a/b", "/c/d/e"};
  bseg seg[2] = {{0, 0, 100, 0, 5, 1000}, {1, 0, 2000, 5, 5, 2000}};
  batchdesc b;
  memset(&b, 0, sizeof b);
  b.index = 3;
  b.nseg = 2;
  b.seg = seg;
  b.shipped = 1;
  b.data.data = big;
  b.data.len = 3000;
  switch (which) {
  case 0: return msg_hello(out, 4, "a-host-with-a-rather-long-name", 1234, 1);
  case 1: return msg_welcome(out, 7, 1000);
  case 2: return msg_refuse(out, big + 2900);
  case 3: return msg_stage(out, 1, "wordcount", big, 32, big, 2000, paths, 2);
  case 4: return msg_task(out, 1, 2, &b);
  case 5: return msg_result(out, 1, 2, 3, 10, 1, "f line 2: why", 3000, 0.5, big, 3000);
  case 6: return msg_failure(out, 1, 2, 3, DBX_EIO, big + 2000);
  case 7: return msg_cancel(out, 1, 2, 3);
  default: return msg_simple(out, MSG_HEARTBEAT);
  }
}

/* Every budget from 0 up: ENOMEM with out empty, or a message that decodes. */
static void test_messages(void **state) {
  memset(big, 'x', sizeof big - 1);
  for (int which = 0; which <= 8; which++) {
    int ok = 0;
    for (long k = 0; k < 40 && !ok; k++) {
      dbx_buf out = {0};
      budget = -1;
      assert_int_equal(dbx_buf_append(&out, "stale", 5), 0);  /* a buffer reused from an earlier message */
      budget = k;
      int rc = enc_msg(&out, which);
      budget = -1;
      if (rc) {
        assert_int_equal(rc, DBX_ENOMEM);
        assert_int_equal(out.len, 0);
      } else {
        msg m;
        dbx_err err = {0, ""};
        if (msg_decode(out.data, out.len, &m, &err)) fail_msg("message %d, budget %ld: success but %s", which, k, err.msg);
        msg_free(&m);
        ok = 1;
      }
      dbx_buf_free(&out);
    }
    if (!ok) fail_msg("message %d never encoded", which);
  }
}

/* A word count partial of many words: its encoder under every budget. */
static void test_partials(void **state) {
  wc_cfg cfg = {0, 0, 0, 0};
  void *p = op_wordcount.partial_new(&cfg);
  char text[20000];
  size_t n = 0;
  for (int i = 0; i < 1500 && n + 16 < sizeof text; i++) n += (size_t)snprintf(text + n, sizeof text - n, "w%d ", i);
  dbx_batch b = {0, 0, NULL, text, n};
  dbx_stats st = {0, 0, ""};
  dbx_err err = {0, ""};
  assert_int_equal(op_wordcount.map(&cfg, NULL, &b, p, &st, &err), 0);
  dbx_buf want = {0};
  assert_int_equal(op_wordcount.encode(&cfg, p, &want, &err), 0);
  int ok = 0;
  for (long k = 0; k < 40 && !ok; k++) {
    dbx_buf out = {0};
    assert_int_equal(dbx_buf_append(&out, "prefix", 6), 0);
    budget = k;
    int rc = op_wordcount.encode(&cfg, p, &out, &err);
    budget = -1;
    if (rc) {
      assert_int_equal(rc, DBX_ENOMEM);
      assert_int_equal(out.len, 6);  /* cut back to what was there */
    } else {
      assert_int_equal(out.len, 6 + want.len);
      assert_memory_equal(out.data + 6, want.data, want.len);
      ok = 1;
    }
    dbx_buf_free(&out);
  }
  assert_true(ok);
  dbx_buf_free(&want);
  op_wordcount.partial_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_messages),
      cmocka_unit_test(test_partials),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
