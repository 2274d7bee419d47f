/* test_cli_fail.c -- a failure is never reported as "error: success": an error without a
 * recorded cause still names the command and says it failed. */
#include "check.h"

#include <stdio.h>
#include <unistd.h>

/* The CLI is not in the library: compile its shared part in. */
#include "../../src/cli/common.c"
#include "../../src/cli/cluster.c"

/* What cli_fail prints on stderr for err, into out. */
static int fail_output(const dbx_err *err, char *out, size_t cap) {
  fflush(stderr);
  int saved = dup(2);
  FILE *tmp = tmpfile();
  assert_non_null(tmp);
  dup2(fileno(tmp), 2);
  int rc = cli_fail("wordcount", err);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  rewind(tmp);
  size_t n = fread(out, 1, cap - 1, tmp);
  out[n] = 0;
  fclose(tmp);
  return rc;
}

static void test_no_cause_is_not_success(void **state) {
  (void)state;
  char out[2048];
  dbx_err err = {0, ""};
  assert_int_equal(fail_output(&err, out, sizeof out), EXIT_FAIL);
  assert_null(strstr(out, "success"));
  assert_non_null(strstr(out, "dbatch wordcount: error: "));
  assert_true(strlen(out) > strlen("dbatch wordcount: error: \n"));
}

static void test_code_without_message_names_the_code(void **state) {
  (void)state;
  char out[2048];
  dbx_err err = {DBX_ENOMEM, ""};
  assert_int_equal(fail_output(&err, out, sizeof out), EXIT_FAIL);
  assert_null(strstr(out, "success"));
  assert_non_null(strstr(out, dbx_strerror(DBX_ENOMEM)));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_cause_is_not_success),
      cmocka_unit_test(test_code_without_message_names_the_code),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
