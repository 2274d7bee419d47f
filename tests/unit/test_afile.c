/* test_afile.c -- atomic outputs: the commit syncs the file and, after the rename, its
 * directory; every write error names the file and the system's cause (a full disk says
 * "No space left on device"), also when the failed write was buffered long before. */
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "util/afile.h"

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s", test_tmpdir());
  return 0;
}

static int teardown(void **state) {
  (void)state;
  afile_fsync_fn = fsync;
  rm_rf(g_dir);
  return 0;
}

/* What the commit synced, in order. */
static struct synced { dev_t dev; ino_t ino; int is_dir, is_reg; } g_synced[16];
static int g_nsynced;

static int recording_fsync(int fd) {
  struct stat st;
  if (fstat(fd, &st) == 0 && g_nsynced < 16) {
    g_synced[g_nsynced].dev = st.st_dev;
    g_synced[g_nsynced].ino = st.st_ino;
    g_synced[g_nsynced].is_dir = S_ISDIR(st.st_mode);
    g_synced[g_nsynced].is_reg = S_ISREG(st.st_mode);
    g_nsynced++;
  }
  return fsync(fd);
}

static void test_commit_syncs_file_then_directory(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/out.tsv", g_dir);
  g_nsynced = 0;
  afile_fsync_fn = recording_fsync;
  afile f;
  dbx_err err = {0, ""};
  assert_int_equal(afile_open(&f, path, &err), 0);
  assert_int_equal(afile_write(&f, "a\t1\n", 4, &err), 0);
  assert_int_equal(afile_commit(&f, &err), 0);
  struct stat fst, dst;
  assert_int_equal(stat(path, &fst), 0);
  assert_int_equal(stat(g_dir, &dst), 0);
  /* The file's data, then the directory holding the new name. */
  assert_int_equal(g_nsynced, 2);
  assert_true(g_synced[0].is_reg);
  assert_int_equal(g_synced[0].ino, fst.st_ino);
  assert_true(g_synced[1].is_dir);
  assert_int_equal(g_synced[1].dev, dst.st_dev);
  assert_int_equal(g_synced[1].ino, dst.st_ino);
  size_t n;
  char *got = read_file(path, &n);
  assert_string_equal(got, "a\t1\n");
  free(got);
}

/* A bare file name: the directory synced is the current one. */
static void test_commit_syncs_current_directory(void **state) {
  (void)state;
  char cwd[4096];
  assert_non_null(getcwd(cwd, sizeof cwd));
  assert_int_equal(chdir(g_dir), 0);
  g_nsynced = 0;
  afile_fsync_fn = recording_fsync;
  afile f;
  dbx_err err = {0, ""};
  assert_int_equal(afile_open(&f, "bare.txt", &err), 0);
  fputs("x\n", f.fp);
  assert_int_equal(afile_commit(&f, &err), 0);
  struct stat dst;
  assert_int_equal(stat(".", &dst), 0);
  assert_int_equal(chdir(cwd), 0);
  assert_int_equal(g_nsynced, 2);
  assert_true(g_synced[1].is_dir);
  assert_int_equal(g_synced[1].ino, dst.st_ino);
}

static void assert_enospc(int rc, const dbx_err *err, const char *path) {
  if (rc != DBX_ENOSPC || !strstr(err->msg, path) || !strstr(err->msg, "No space left on device")) {
    fprintf(stderr, "expected DBX_ENOSPC (%d) naming %s with the cause, got %d: %s\n", DBX_ENOSPC, path, rc,
            err->msg);
    fail();
  }
}

/* A writer that ignores fwrite's result (as fprintf callers do), and other calls that move
 * errno on before the commit: the commit still tells ENOSPC. */
static void test_full_device_cause_survives_until_commit(void **state) {
  (void)state;
  afile f;
  dbx_err err = {0, ""};
  assert_int_equal(afile_open(&f, "/dev/full", &err), 0);
  static char block[300000];
  memset(block, 'x', sizeof block);
  (void)!fwrite(block, 1, sizeof block, f.fp);
  assert_int_equal(access("/nonexistent/dbatch", F_OK), -1);  /* errno is now ENOENT */
  fputs("more\n", f.fp);
  assert_enospc(afile_commit(&f, &err), &err, "/dev/full");
  assert_null(f.fp);
  assert_null(f.path);
}

/* afile_write reports the full device at once, with the cause. */
static void test_full_device_write_names_cause(void **state) {
  (void)state;
  afile f;
  dbx_err err = {0, ""};
  assert_int_equal(afile_open(&f, "/dev/full", &err), 0);
  static char block[300000];
  memset(block, 'y', sizeof block);
  assert_enospc(afile_write(&f, block, sizeof block, &err), &err, "/dev/full");
  afile_abort(&f);
  /* Small writes sit in the buffer: the commit finds the cause. */
  assert_int_equal(afile_open(&f, "/dev/full", &err), 0);
  assert_int_equal(afile_write(&f, "z\n", 2, &err), 0);
  assert_enospc(afile_commit(&f, &err), &err, "/dev/full");
}

/* A real full file system (a 64 KiB tmpfs): the error says ENOSPC, names the output, and
 * neither the output nor its temporary file is left. Needs root to mount. */
static void test_full_tmpfs(void **state) {
  (void)state;
  char mnt[512], path[600];
  snprintf(mnt, sizeof mnt, "%s/small", g_dir);
  assert_int_equal(mkdir(mnt, 0755), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=64k") != 0) {
    fprintf(stderr, "SKIP test_full_tmpfs: cannot mount a tmpfs here (%s); /dev/full tests cover the cause\n",
            strerror(errno));
    skip();
  }
  snprintf(path, sizeof path, "%s/out.tsv", mnt);
  afile f;
  dbx_err err = {0, ""};
  int rc = afile_open(&f, path, &err);
  if (rc == 0) {
    static char block[1 << 20];
    memset(block, 'w', sizeof block);
    for (int i = 0; i < 4; i++) (void)!fwrite(block, 1, sizeof block, f.fp);
    rc = afile_commit(&f, &err);
  }
  int left = 0;
  char cmd[700];
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", mnt);
  left = system(cmd) != 0;
  umount2(mnt, MNT_DETACH);
  assert_enospc(rc, &err, path);
  assert_false(left);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_commit_syncs_file_then_directory, setup, teardown),
    cmocka_unit_test_setup_teardown(test_commit_syncs_current_directory, setup, teardown),
    cmocka_unit_test_setup_teardown(test_full_device_cause_survives_until_commit, setup, teardown),
    cmocka_unit_test_setup_teardown(test_full_device_write_names_cause, setup, teardown),
    cmocka_unit_test_setup_teardown(test_full_tmpfs, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
