/* test_splitter.c -- every line is in exactly one batch, whatever the cut points. */
#include "check.h"

#include <zlib.h>

#include "io/batch.h"
#include "io/input.h"

/* Split paths with o, load every batch, concatenate their bytes. OUT *nbatches. */
static char *split_all(char **paths, size_t npaths, split_opts o, size_t *len, uint32_t *nbatches,
                       uint64_t *records_seen) {
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(paths, npaths, &in, &err), 0);
  splitter *sp;
  assert_int_equal(splitter_new(&in, &o, &sp, &err), 0);
  loader *ld = loader_new();
  const char *pv[64];
  for (size_t i = 0; i < in.n; i++) pv[i] = in.v[i].path;
  dbx_buf all = {0};
  batchdesc b;
  int rc;
  uint32_t n = 0;
  uint64_t recs = 0, next_rec = 0;
  while ((rc = splitter_next(sp, &b, &err)) == 1) {
    assert_int_equal(b.index, n);
    n++;
    dbx_batch v;
    assert_int_equal(loader_load(ld, &b, pv, &v, &err), 0);
    if (v.size) assert_int_equal(v.data[v.size - 1], '\n');
    size_t seg_total = 0;
    for (uint32_t s = 0; s < v.nseg; s++) seg_total += v.seg[s].data_len;
    assert_int_equal(seg_total, v.size);
    if (o.batch_records) {
      uint64_t lines = 0;
      for (size_t i = 0; i < v.size; i++) lines += v.data[i] == '\n';
      uint64_t r = 0;
      for (uint32_t s = 0; s < b.nseg; s++) {
        r += b.seg[s].rec_count;
        if (in.n == 1) {
          assert_int_equal(b.seg[s].rec_first, next_rec);
          next_rec += b.seg[s].rec_count;
        }
      }
      assert_int_equal(r, lines);
      recs += lines;
    }
    dbx_buf_append(&all, v.data, v.size);
    batchdesc_free(&b);
  }
  assert_int_equal(rc, 0);
  splitter_free(sp);
  loader_free(ld);
  inputs_free(&in);
  *len = all.len;
  *nbatches = n;
  if (records_seen) *records_seen = recs;
  if (!all.data) return calloc(1, 1);
  return all.data;
}

/* What the concatenated batches must be: the file with a final newline. */
static void expect_same(const char *content, size_t n, const char *got, size_t glen) {
  size_t want = n + (n && content[n - 1] != '\n');
  assert_int_equal(glen, want);
  assert_memory_equal(got, content, n);
}

static size_t random_text(char *buf, size_t max, unsigned *seed) {
  size_t n = (size_t)rand_r(seed) % max;
  for (size_t i = 0; i < n; i++) {
    int r = rand_r(seed) % 100;
    buf[i] = r < 8 ? '\n' : r < 10 ? '\r' : r < 25 ? ' ' : (char)('a' + r % 26);
  }
  /* Sometimes one long line, longer than any batch. */
  if (n > 10 && rand_r(seed) % 4 == 0) memset(buf + n / 3, 'x', n / 3);
  return n;
}

static void test_random_byte_batches(void **state) {
  const char *dir = test_tmpdir();
  char path[300];
  snprintf(path, sizeof path, "%s/in.txt", dir);
  char *text = malloc(20000);
  unsigned seed = 12345;
  for (int round = 0; round < 300; round++) {
    size_t n = random_text(text, 20000, &seed);
    write_file(path, text, n);
    split_opts o = {1 + (uint64_t)rand_r(&seed) % (round % 3 == 0 ? 7 : 3000), 0, 0, 0, 0};
    char *args[] = {path};
    size_t glen;
    uint32_t nb;
    char *got = split_all(args, 1, o, &glen, &nb, NULL);
    expect_same(text, n, got, glen);
    free(got);
  }
  free(text);
  rm_rf(dir);
}

static void test_random_record_batches(void **state) {
  const char *dir = test_tmpdir();
  char path[300];
  snprintf(path, sizeof path, "%s/in.txt", dir);
  char *text = malloc(20000);
  unsigned seed = 777;
  for (int round = 0; round < 200; round++) {
    size_t n = random_text(text, 20000, &seed);
    write_file(path, text, n);
    split_opts o = {0, 1 + (uint64_t)rand_r(&seed) % 50, 0, 0, 0};
    char *args[] = {path};
    size_t glen;
    uint32_t nb;
    uint64_t recs;
    char *got = split_all(args, 1, o, &glen, &nb, &recs);
    expect_same(text, n, got, glen);
    uint64_t lines = 0;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    if (n && text[n - 1] != '\n') lines++;
    assert_int_equal(recs, lines);
    free(got);
  }
  free(text);
  rm_rf(dir);
}

static void test_many_files_and_empty(void **state) {
  const char *dir = test_tmpdir();
  char p1[300], p2[300], p3[300], p4[300];
  snprintf(p1, sizeof p1, "%s/a.txt", dir);
  snprintf(p2, sizeof p2, "%s/b.txt", dir);
  snprintf(p3, sizeof p3, "%s/c.txt", dir);
  snprintf(p4, sizeof p4, "%s/d.txt", dir);
  write_file(p1, "one\ntwo", 7);           /* no trailing newline: must not join "three" */
  write_file(p2, "", 0);                   /* empty */
  write_file(p3, "three\r\nfour\r\n", 13); /* CRLF kept as is */
  write_file(p4, "five\n", 5);
  char *args[] = {p1, p2, p3, p4};
  for (uint64_t bb = 1; bb < 40; bb++) {
    split_opts o = {bb, 0, 0, 0, 0};
    size_t glen;
    uint32_t nb;
    char *got = split_all(args, 4, o, &glen, &nb, NULL);
    const char *want = "one\ntwo\nthree\r\nfour\r\nfive\n";
    assert_int_equal(glen, strlen(want));
    assert_memory_equal(got, want, glen);
    free(got);
  }
  /* Only an empty file: no batches at all. */
  char *only[] = {p2};
  split_opts o = {100, 0, 0, 0, 0};
  size_t glen;
  uint32_t nb;
  free(split_all(only, 1, o, &glen, &nb, NULL));
  assert_int_equal(nb, 0);
  rm_rf(dir);
}

static void test_gzip_stream(void **state) {
  const char *dir = test_tmpdir();
  char path[300];
  snprintf(path, sizeof path, "%s/in.txt.gz", dir);
  char *text = malloc(300000);
  unsigned seed = 99;
  size_t n = 0;
  while (n < 250000) n += random_text(text + n, 5000, &seed);
  gzFile g = gzopen(path, "wb");
  assert_non_null(g);
  assert_int_equal(gzwrite(g, text, (unsigned)n), (int)n);
  gzclose(g);
  split_opts by_recs = {0, 37, 0, 0, 0}, by_bytes = {4096, 0, 0, 0, 0};
  char *args[] = {path};
  size_t glen;
  uint32_t nb;
  char *got = split_all(args, 1, by_recs, &glen, &nb, NULL);
  expect_same(text, n, got, glen);
  free(got);
  got = split_all(args, 1, by_bytes, &glen, &nb, NULL);
  expect_same(text, n, got, glen);
  assert_true(nb > 10);
  free(got);
  free(text);
  rm_rf(dir);
}

static void test_corrupt_gzip_names_file(void **state) {
  const char *dir = test_tmpdir();
  char path[300];
  snprintf(path, sizeof path, "%s/bad.gz", dir);
  write_file(path, "\x1f\x8b\x08\x00garbage-garbage-garbage", 27);
  char *args[] = {path};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  split_opts o = {0, 10, 0, 0, 0};
  splitter *sp;
  assert_int_equal(splitter_new(&in, &o, &sp, &err), 0);
  batchdesc b;
  assert_int_equal(splitter_next(sp, &b, &err), DBX_ECORRUPT);
  assert_non_null(strstr(err.msg, "bad.gz"));
  splitter_free(sp);
  inputs_free(&in);
  rm_rf(dir);
}

static void test_inputs_errors_and_order(void **state) {
  const char *dir = test_tmpdir();
  char sub[300], p[400];
  snprintf(sub, sizeof sub, "%s/d/e", dir);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "mkdir -p %s", sub);
  assert_int_equal(system(cmd), 0);
  const char *names[] = {"d/b.txt", "d/a.txt", "d/e/c.txt", "d/.hidden", "d/_SUCCESS"};
  for (int i = 0; i < 5; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    write_file(p, "x\n", 2);
  }
  snprintf(p, sizeof p, "%s/d", dir);
  char *args[] = {p};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  assert_int_equal(in.n, 3);
  assert_non_null(strstr(in.v[0].path, "d/a.txt"));
  assert_non_null(strstr(in.v[1].path, "d/b.txt"));
  assert_non_null(strstr(in.v[2].path, "d/e/c.txt"));
  inputs_free(&in);
  snprintf(p, sizeof p, "%s/d/*.txt", dir);
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  assert_int_equal(in.n, 2);
  inputs_free(&in);
  snprintf(p, sizeof p, "%s/missing.txt", dir);
  assert_int_equal(inputs_expand(args, 1, &in, &err), DBX_ENOENT);
  assert_non_null(strstr(err.msg, "missing.txt"));
  snprintf(p, sizeof p, "%s/*.nothing", dir);
  assert_int_equal(inputs_expand(args, 1, &in, &err), DBX_ENOENT);
  assert_non_null(strstr(err.msg, "no files match"));
  rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_byte_batches),
      cmocka_unit_test(test_random_record_batches),
      cmocka_unit_test(test_many_files_and_empty),
      cmocka_unit_test(test_gzip_stream),
      cmocka_unit_test(test_corrupt_gzip_names_file),
      cmocka_unit_test(test_inputs_errors_and_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
