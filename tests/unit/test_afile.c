/* test_afile.c -- an output file is made durable before it is renamed into place: its data
 * is fsync'ed while it still has its temporary name. fsync is interposed here (this
 * program's definition wins over libc's for the library linked into it), records which file
 * it synced, then syncs for real. */
#define _GNU_SOURCE 1
#include "check.h"

#include <limits.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "util/afile.h"

static char synced[8][PATH_MAX];
static int nsynced;

int fsync(int fd) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  if (nsynced < 8) {
    ssize_t k = readlink(link, synced[nsynced], PATH_MAX - 1);
    synced[nsynced][k > 0 ? k : 0] = 0;
    nsynced++;
  }
  return (int)syscall(SYS_fsync, fd);
}

static void test_commit_syncs_the_temporary_file_before_rename(void **state) {
  (void)state;
  const char *dir = test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/out.tsv", dir);
  afile f;
  dbx_err err = {0, ""};
  assert_int_equal(afile_open(&f, path, &err), 0);
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", f.tmp);
  assert_int_equal(fputs("alpha\t1\n", f.fp) >= 0, 1);
  nsynced = 0;
  assert_int_equal(afile_commit(&f, &err), 0);
  /* Exactly one sync, of the temporary file (then still under its own name). */
  assert_int_equal(nsynced, 1);
  assert_string_equal(synced[0], tmp);
  struct stat st;
  assert_int_not_equal(stat(tmp, &st), 0);
  size_t n;
  char *got = read_file(path, &n);
  assert_non_null(got);
  assert_string_equal(got, "alpha\t1\n");
  free(got);
  rm_rf(dir);
}

static void test_abort_leaves_nothing(void **state) {
  (void)state;
  const char *dir = test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/out.tsv", dir);
  afile f;
  dbx_err err = {0, ""};
  assert_int_equal(afile_open(&f, path, &err), 0);
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", f.tmp);
  fputs("x\n", f.fp);
  afile_abort(&f);
  struct stat st;
  assert_int_not_equal(stat(tmp, &st), 0);
  assert_int_not_equal(stat(path, &st), 0);
  rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_commit_syncs_the_temporary_file_before_rename),
      cmocka_unit_test(test_abort_leaves_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
