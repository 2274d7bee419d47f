/* test_csv_quoting.c -- CSV output quotes a field for each reason alone (a comma, a quote,
 * a newline, a carriage return, a leading or trailing space) and nothing else, so a reader
 * such as Python's csv module gets every field back exactly. */
#include "check.h"

#include "sink/sink.h"

static const char *const names[] = {"word", "count"};
static const dbx_coltype types[] = {DBX_COL_TEXT, DBX_COL_INT};
static const dbx_schema schema = {2, names, types};

static void test_each_reason_to_quote_alone(void **state) {
  (void)state;
  const char *dir = test_tmpdir();
  char p[300];
  snprintf(p, sizeof p, "%s/out.csv", dir);
  sink_opts o = {p, NULL, "t", 0, 0};
  sink *s;
  dbx_err err = {0, ""};
  assert_int_equal(sink_open(&o, &schema, &s, &err), 0);
  const char *texts[] = {"a,b", "say \"hi\"", "two\nlines", "cr\rhere", " lead", "trail ", "", "plain-text;ok"};
  for (int i = 0; i < 8; i++) {
    dbx_value row[2] = {{texts[i], strlen(texts[i]), 0, 0}, {NULL, 0, i, 0}};
    assert_int_equal(sink_row(s, row, &err), 0);
  }
  assert_int_equal(sink_commit(s, &err), 0);
  char *got = read_file(p, NULL);
  assert_string_equal(got,
                      "word,count\n"
                      "\"a,b\",0\n"
                      "\"say \"\"hi\"\"\",1\n"
                      "\"two\nlines\",2\n"
                      "\"cr\rhere\",3\n"
                      "\" lead\",4\n"
                      "\"trail \",5\n"
                      ",6\n"
                      "plain-text;ok,7\n");
  free(got);
  rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_each_reason_to_quote_alone),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
