/* check.h -- helpers shared by the unit tests: temporary files and directories. */
#ifndef DBX_TEST_CHECK_H
#define DBX_TEST_CHECK_H
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

/* A fresh temporary directory for one test; the name is static storage. */
static inline const char *test_tmpdir(void) {
  static char dir[256];
  snprintf(dir, sizeof dir, "/tmp/dbx-unit-XXXXXX");
  if (!mkdtemp(dir)) abort();
  return dir;
}

static inline void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* Whole file into a NUL-terminated malloc'd buffer (OUT *n: its length). */
static inline char *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t len = 0, cap = 0, k;
  char tmp[65536];
  while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) {
    if (len + k + 1 > cap) {
      cap = (len + k + 1) * 2;
      buf = realloc(buf, cap);
    }
    memcpy(buf + len, tmp, k);
    len += k;
  }
  fclose(f);
  if (!buf) buf = calloc(1, 1);
  buf[len] = 0;
  if (n) *n = len;
  return buf;
}

static inline void rm_rf(const char *dir) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}
#endif
