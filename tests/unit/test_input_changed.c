/* test_input_changed.c -- inputs are checked against the plan on every read: a file
 * truncated, rewritten or replaced after planning fails the load naming the file (never an
 * empty or short batch), and FIFOs, sockets and devices never become inputs. */
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "io/batch.h"
#include "io/corpus.h"
#include "io/input.h"

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s", test_tmpdir());
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rm_rf(g_dir);
  return 0;
}

/* A file of n numbered lines at dir/name; OUT path (static per call site buffer). */
static void lines_file(char *path, size_t cap, const char *name, int n) {
  snprintf(path, cap, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  for (int i = 0; i < n; i++) fprintf(f, "line %d alpha beta gamma w%d\n", i, i % 97);
  assert_int_equal(fclose(f), 0);
}

static void truncate_to(const char *path, off_t n) { assert_int_equal(truncate(path, n), 0); }

/* Split the planned inputs into batches (all of them, before anything changes). */
static size_t plan_batches(const inputs *in, split_opts o, batchdesc *out, size_t cap) {
  splitter *sp;
  dbx_err err = {0, ""};
  assert_int_equal(splitter_new(in, &o, &sp, &err), 0);
  size_t n = 0;
  int rc;
  while (n < cap && (rc = splitter_next(sp, &out[n], &err)) == 1) n++;
  splitter_free(sp);
  return n;
}

static void assert_changed(int rc, const dbx_err *err, const char *path) {
  if (rc != DBX_ECHANGED || !strstr(err->msg, path)) {
    fprintf(stderr, "expected DBX_ECHANGED (%d) naming %s, got %d: %s\n", DBX_ECHANGED, path, rc, err->msg);
    fail();
  }
}

/* The worker's view (paths only, no plan): a batch past the new end of a truncated file is
 * an error naming the file, not an empty batch. */
static void test_truncated_after_planning_fails_without_plan(void **state) {
  (void)state;
  char path[512];
  lines_file(path, sizeof path, "in.txt", 4000);
  char *args[] = {path};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  batchdesc b[64];
  size_t nb = plan_batches(&in, (split_opts){16384, 0, 0, 0, 0}, b, 64);
  assert_true(nb > 4);
  truncate_to(path, (off_t)(in.v[0].size / 3));
  loader *ld = loader_new();
  const char *pv[] = {in.v[0].path};
  dbx_batch v;
  /* The first batch is still whole on disk; the last one is past the new end. */
  assert_int_equal(loader_load(ld, &b[0], pv, &v, &err), 0);
  assert_changed(loader_load(ld, &b[nb - 1], pv, &v, &err), &err, path);
  /* The batch that straddles the new end too. */
  for (size_t i = 0; i < nb; i++) {
    uint64_t end = b[i].seg[0].off + b[i].seg[0].len;
    if (b[i].seg[0].off < in.v[0].size / 3 && end > in.v[0].size / 3)
      assert_changed(loader_load(ld, &b[i], pv, &v, &err), &err, path);
  }
  for (size_t i = 0; i < nb; i++) batchdesc_free(&b[i]);
  loader_free(ld);
  inputs_free(&in);
}

/* With the plan (coordinator, in-process run): any change of size, mtime or identity fails
 * every later load, even one whose bytes are still there. */
static void test_changed_after_planning_fails_with_plan(void **state) {
  (void)state;
  char path[512];
  lines_file(path, sizeof path, "in.txt", 4000);
  char *args[] = {path};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  batchdesc b[64];
  size_t nb = plan_batches(&in, (split_opts){16384, 0, 0, 0, 0}, b, 64);
  loader *ld = loader_new();
  loader_expect(ld, &in);
  const char *pv[] = {in.v[0].path};
  dbx_batch v;
  assert_int_equal(loader_load(ld, &b[0], pv, &v, &err), 0);
  assert_int_equal(inputs_check_unchanged(&in, &err), 0);

  /* Truncated: the first batch's bytes are still there, but the file is not the planned one. */
  truncate_to(path, (off_t)(in.v[0].size - 10));
  assert_changed(loader_load(ld, &b[0], pv, &v, &err), &err, path);
  assert_changed(inputs_check_unchanged(&in, &err), &err, path);

  /* Rewritten in place, same size, other bytes: only the mtime tells. */
  lines_file(path, sizeof path, "in.txt", 4000);
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "LINE", 4, 0), 4);
  struct timespec ts[2] = {{0, UTIME_OMIT}, {(time_t)(in.v[0].mtime_ns / 1000000000) + 7, 0}};
  assert_int_equal(futimens(fd, ts), 0);
  close(fd);
  assert_changed(loader_load(ld, &b[0], pv, &v, &err), &err, path);
  assert_non_null(strstr(err.msg, "modified"));
  assert_changed(inputs_check_unchanged(&in, &err), &err, path);

  /* Replaced by another file under the same name, same size and mtime. */
  char other[600];
  snprintf(other, sizeof other, "%s/other.txt", g_dir);
  lines_file(other, sizeof other, "other.txt", 4000);
  struct timespec same[2] = {{0, UTIME_OMIT}, {(time_t)(in.v[0].mtime_ns / 1000000000), (long)(in.v[0].mtime_ns % 1000000000)}};
  assert_int_equal(utimensat(AT_FDCWD, other, same, 0), 0);
  assert_int_equal(rename(other, path), 0);
  assert_changed(loader_load(ld, &b[0], pv, &v, &err), &err, path);
  assert_non_null(strstr(err.msg, "replaced"));
  assert_changed(inputs_check_unchanged(&in, &err), &err, path);

  /* Gone. */
  assert_int_equal(unlink(path), 0);
  assert_changed(inputs_check_unchanged(&in, &err), &err, path);

  for (size_t i = 0; i < nb; i++) batchdesc_free(&b[i]);
  loader_free(ld);
  inputs_free(&in);
}

/* Cut by records, the splitter scans the file with the reader while the job runs: a file
 * truncated before the scan reaches it fails, it does not give fewer records. */
static void test_record_scan_of_truncated_file_fails(void **state) {
  (void)state;
  char a[512], bpath[512];
  lines_file(a, sizeof a, "a.txt", 100);
  lines_file(bpath, sizeof bpath, "b.txt", 3000);
  char *args[] = {a, bpath};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 2, &in, &err), 0);
  splitter *sp;
  split_opts o = {0, 50, 0, 0, 0};
  assert_int_equal(splitter_new(&in, &o, &sp, &err), 0);
  batchdesc b;
  assert_int_equal(splitter_next(sp, &b, &err), 1);  /* a.txt lines 1-50 */
  batchdesc_free(&b);
  truncate_to(bpath, 1000);
  int rc;
  while ((rc = splitter_next(sp, &b, &err)) == 1) batchdesc_free(&b);
  assert_changed(rc, &err, bpath);
  splitter_free(sp);
  inputs_free(&in);
}

/* Changed while the record scan is inside the file (it reads 1 MiB at a time): the scan
 * must end exactly at the planned size. grow: append instead of truncating. */
static void scan_changed_midway(int grow) {
  char a[512];
  lines_file(a, sizeof a, "a.txt", 60000);  /* about 2 MiB */
  char *args[] = {a};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  assert_true(in.v[0].size > (2u << 20) - (200u << 10));
  splitter *sp;
  split_opts o = {0, 100, 0, 0, 0};
  assert_int_equal(splitter_new(&in, &o, &sp, &err), 0);
  batchdesc b;
  assert_int_equal(splitter_next(sp, &b, &err), 1);  /* the reader is open now */
  batchdesc_free(&b);
  if (grow) {
    FILE *f = fopen(a, "ab");
    assert_non_null(f);
    fputs("one more line\n", f);
    fclose(f);
  } else {
    truncate_to(a, 1500000);
  }
  int rc;
  while ((rc = splitter_next(sp, &b, &err)) == 1) batchdesc_free(&b);
  assert_changed(rc, &err, a);
  splitter_free(sp);
  inputs_free(&in);
}

static void test_record_scan_truncated_midway_fails(void **state) {
  (void)state;
  scan_changed_midway(0);
}

static void test_record_scan_grown_midway_fails(void **state) {
  (void)state;
  scan_changed_midway(1);
}

/* Whole-file documents (the classifier's corpora): a shrunk document fails naming it. */
static void test_whole_document_truncated_fails(void **state) {
  (void)state;
  char d[512], p[600];
  snprintf(d, sizeof d, "%s/corpus", g_dir);
  assert_int_equal(mkdir(d, 0755), 0);
  snprintf(p, sizeof p, "%s/corpus/ham", g_dir);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/corpus/ham/doc1.txt", g_dir);
  write_file(p, "hello there, a document of some length\n", 39);
  corpus c;
  dbx_err err = {0, ""};
  assert_int_equal(corpus_open(d, &c, &err), 0);
  assert_int_equal(c.in.n, 1);
  batchdesc b[4];
  size_t nb = plan_batches(&c.in, (split_opts){1 << 20, 0, 1, 0, 0}, b, 4);
  assert_int_equal(nb, 1);
  truncate_to(p, 5);
  loader *ld = loader_new();
  const char *pv[] = {c.in.v[0].path};
  dbx_batch v;
  assert_changed(loader_load(ld, &b[0], pv, &v, &err), &err, p);
  loader_expect(ld, &c.in);
  assert_changed(loader_load(ld, &b[0], pv, &v, &err), &err, p);
  batchdesc_free(&b[0]);
  loader_free(ld);
  corpus_free(&c);
}

static void make_fifo_and_socket(const char *dir, char *fifo, char *sock, size_t cap) {
  snprintf(fifo, cap, "%s/c.fifo", dir);
  assert_int_equal(mkfifo(fifo, 0644), 0);
  snprintf(sock, cap, "%s/d.sock", dir);
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(s >= 0);
  struct sockaddr_un sa = {0};
  sa.sun_family = AF_UNIX;
  assert_true(strlen(sock) < sizeof sa.sun_path);
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
  assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
  close(s);
}

/* A directory walk skips FIFOs and sockets (opening a FIFO would block forever). */
static void test_directory_skips_fifo_and_socket(void **state) {
  (void)state;
  char d[512], p[600], fifo[600], sock[600];
  snprintf(d, sizeof d, "%s/in", g_dir);
  assert_int_equal(mkdir(d, 0755), 0);
  snprintf(p, sizeof p, "%s/a.txt", d);
  write_file(p, "a b\n", 4);
  make_fifo_and_socket(d, fifo, sock, sizeof fifo);
  snprintf(p, sizeof p, "%s/e.txt", d);
  write_file(p, "e\n", 2);
  char *args[] = {d};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  assert_int_equal(in.n, 2);
  assert_non_null(strstr(in.v[0].path, "/a.txt"));
  assert_non_null(strstr(in.v[1].path, "/e.txt"));
  inputs_free(&in);
  /* A pattern matching them skips them too. */
  char pat[620];
  snprintf(pat, sizeof pat, "%s/*", d);
  char *gargs[] = {pat};
  assert_int_equal(inputs_expand(gargs, 1, &in, &err), 0);
  assert_int_equal(in.n, 2);
  inputs_free(&in);
}

/* Given explicitly, a FIFO or socket is a usage error naming it; '-' is still standard input. */
static void test_explicit_fifo_is_refused(void **state) {
  (void)state;
  char fifo[600], sock[600];
  make_fifo_and_socket(g_dir, fifo, sock, sizeof fifo);
  inputs in;
  dbx_err err = {0, ""};
  char *a1[] = {fifo};
  assert_int_equal(inputs_expand(a1, 1, &in, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, fifo));
  assert_non_null(strstr(err.msg, "FIFO"));
  char *a2[] = {sock};
  assert_int_equal(inputs_expand(a2, 1, &in, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, sock));
  assert_non_null(strstr(err.msg, "socket"));
  char *a3[] = {(char *)"/dev/zero"};
  assert_int_equal(inputs_expand(a3, 1, &in, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "/dev/zero"));
  char *a4[] = {(char *)"-"};
  assert_int_equal(inputs_expand(a4, 1, &in, &err), 0);
  assert_int_equal(in.n, 1);
  assert_int_equal(in.v[0].kind, IN_STREAM);
  assert_int_equal(inputs_check_unchanged(&in, &err), 0);
  inputs_free(&in);
}

/* A label folder holding a FIFO: the FIFO is no document. */
static void test_corpus_skips_fifo(void **state) {
  (void)state;
  char d[512], p[600];
  snprintf(d, sizeof d, "%s/corpus", g_dir);
  assert_int_equal(mkdir(d, 0755), 0);
  snprintf(p, sizeof p, "%s/spam", d);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/spam/a.txt", d);
  write_file(p, "buy now\n", 8);
  snprintf(p, sizeof p, "%s/spam/b.fifo", d);
  assert_int_equal(mkfifo(p, 0644), 0);
  corpus c;
  dbx_err err = {0, ""};
  assert_int_equal(corpus_open(d, &c, &err), 0);
  assert_int_equal(c.in.n, 1);
  assert_non_null(strstr(c.in.v[0].path, "/spam/a.txt"));
  corpus_free(&c);
}

/* A FIFO put in a planned file's place is refused by the loader without blocking. */
static void test_loader_refuses_fifo_in_place_of_file(void **state) {
  (void)state;
  char path[512];
  lines_file(path, sizeof path, "in.txt", 100);
  char *args[] = {path};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(args, 1, &in, &err), 0);
  batchdesc b[4];
  size_t nb = plan_batches(&in, (split_opts){1 << 20, 0, 0, 0, 0}, b, 4);
  assert_int_equal(nb, 1);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(mkfifo(path, 0644), 0);
  loader *ld = loader_new();
  const char *pv[] = {in.v[0].path};
  dbx_batch v;
  assert_changed(loader_load(ld, &b[0], pv, &v, &err), &err, path);
  batchdesc_free(&b[0]);
  loader_free(ld);
  inputs_free(&in);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_truncated_after_planning_fails_without_plan, setup, teardown),
    cmocka_unit_test_setup_teardown(test_changed_after_planning_fails_with_plan, setup, teardown),
    cmocka_unit_test_setup_teardown(test_record_scan_of_truncated_file_fails, setup, teardown),
    cmocka_unit_test_setup_teardown(test_record_scan_truncated_midway_fails, setup, teardown),
    cmocka_unit_test_setup_teardown(test_record_scan_grown_midway_fails, setup, teardown),
    cmocka_unit_test_setup_teardown(test_whole_document_truncated_fails, setup, teardown),
    cmocka_unit_test_setup_teardown(test_directory_skips_fifo_and_socket, setup, teardown),
    cmocka_unit_test_setup_teardown(test_explicit_fifo_is_refused, setup, teardown),
    cmocka_unit_test_setup_teardown(test_corpus_skips_fifo, setup, teardown),
    cmocka_unit_test_setup_teardown(test_loader_refuses_fifo_in_place_of_file, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
