/* test_split_records.c -- --batch-records N: every batch holds exactly N lines (the last
 * one the rest), numbered on from the previous batch, with short lines read many at once
 * from one chunk and with a last line that has no newline. */
#include "check.h"

#include "io/batch.h"
#include "io/input.h"

static void split_counts(const char *text, uint64_t per, const uint64_t *want, uint32_t nwant) {
  const char *dir = test_tmpdir();
  char path[300];
  snprintf(path, sizeof path, "%s/in.txt", dir);
  write_file(path, text, strlen(text));
  char *paths[1] = {path};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(paths, 1, &in, &err), 0);
  split_opts o;
  memset(&o, 0, sizeof o);
  o.batch_records = per;
  splitter *sp;
  assert_int_equal(splitter_new(&in, &o, &sp, &err), 0);
  batchdesc b;
  uint32_t n = 0;
  uint64_t next = 0;
  int rc;
  while ((rc = splitter_next(sp, &b, &err)) == 1) {
    assert_true(n < nwant);
    assert_int_equal(b.nseg, 1);
    assert_int_equal(b.seg[0].rec_first, next);
    assert_int_equal(b.seg[0].rec_count, want[n]);
    next += b.seg[0].rec_count;
    n++;
    batchdesc_free(&b);
  }
  assert_int_equal(rc, 0);
  assert_int_equal(n, nwant);
  splitter_free(sp);
  inputs_free(&in);
  rm_rf(dir);
}

static void test_exact_counts(void **state) {
  (void)state;
  const uint64_t a[] = {3, 3, 3, 1};
  split_counts("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", 3, a, 4);
  const uint64_t b[] = {1, 1, 1};
  split_counts("x\ny\nz\n", 1, b, 3);
  const uint64_t c[] = {4, 1};
  split_counts("a b\nc\n\nd\nlast without newline", 4, c, 2);
  const uint64_t d[] = {5};
  split_counts("1\n2\n3\n4\n5\n", 5, d, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_counts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
