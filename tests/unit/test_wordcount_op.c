/* test_wordcount_op.c -- the word count operator: map, merge, encode/decode, hostile bytes. */
#include "check.h"

#include "ops/ops.h"

static void *map_text(const wc_cfg *cfg, const char *text) {
  void *p = op_wordcount.partial_new(cfg);
  dbx_batch b = {0, 0, NULL, text, strlen(text)};
  dbx_stats st = {0, 0, ""};
  dbx_err err;
  assert_int_equal(op_wordcount.map(cfg, NULL, &b, p, &st, &err), 0);
  return p;
}

typedef struct { char out[4096]; size_t len; } collect;
static int emit(void *ctx, const dbx_value *row, dbx_err *err) {
  collect *c = ctx;
  c->len += (size_t)snprintf(c->out + c->len, sizeof c->out - c->len, "%.*s=%lld ", (int)row[0].n,
                             row[0].s, (long long)row[1].i);
  return 0;
}

static void test_roundtrip_and_merge(void **state) {
  wc_cfg cfg = {0, 0, 0, 0};
  void *a = map_text(&cfg, "b a B\nc a\n");
  void *b = map_text(&cfg, "A d\n");
  dbx_buf enc = {0};
  dbx_err err;
  assert_int_equal(op_wordcount.encode(&cfg, b, &enc, &err), 0);
  void *b2;
  assert_int_equal(op_wordcount.decode(&cfg, enc.data, enc.len, &b2, &err), 0);
  assert_int_equal(op_wordcount.merge(&cfg, a, b2, &err), 0);
  collect c = {{0}, 0};
  assert_int_equal(op_wordcount.finish(&cfg, NULL, a, emit, &c, NULL, &err), 0);
  assert_string_equal(c.out, "a=3 b=2 c=1 d=1 ");
  /* Every truncation of a valid encoding is rejected, never read past. */
  for (size_t n = 0; n < enc.len; n++) {
    void *x = NULL;
    assert_int_equal(op_wordcount.decode(&cfg, enc.data, n, &x, &err), DBX_ECORRUPT);
  }
  const char junk[] = "\x92\xa1x\xa1y";  /* [ "x", "y" ]: count is not a number */
  void *x = NULL;
  assert_int_equal(op_wordcount.decode(&cfg, junk, sizeof junk - 1, &x, &err), DBX_ECORRUPT);
  dbx_buf_free(&enc);
  op_wordcount.partial_free(a);
  op_wordcount.partial_free(b);
  op_wordcount.partial_free(b2);
}

static void test_top_and_case(void **state) {
  wc_cfg cfg = {1, 2, 0, 0};
  void *a = map_text(&cfg, "Zed zed zed Alpha alpha\n");
  collect c = {{0}, 0};
  dbx_err err;
  assert_int_equal(op_wordcount.finish(&cfg, NULL, a, emit, &c, NULL, &err), 0);
  assert_string_equal(c.out, "zed=2 Alpha=1 ");
  op_wordcount.partial_free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_and_merge),
      cmocka_unit_test(test_top_and_case),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
