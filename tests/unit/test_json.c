/* test_json.c -- reading JSONL objects: escapes, surrogates, skipped values, malformed input. */
#include "check.h"

#include "util/json.h"

static const char *const keys[] = {"label", "text"};

static int rd(const char *s, dbx_buf *out, size_t *off, size_t *len) {
  const char *why;
  return json_object_strings(s, strlen(s), keys, 2, out, off, len, &why);
}

static void test_values_and_escapes(void **state) {
  dbx_buf b = {0};
  size_t off[2], len[2];
  assert_int_equal(rd("{\"n\": [1, {\"x\": null}, -2.5e3], \"label\": \"sp\\u00e9m\", \"text\": \"a\\tb\\n\\\"q\\\" \\ud83d\\ude00 \\ud800x\"}  ", &b, off, len), 0);
  assert_int_equal(len[0], 5);
  assert_memory_equal(b.data + off[0], "sp\xc3\xa9m", 5);
  const char *want = "a\tb\n\"q\" \xf0\x9f\x98\x80 \xef\xbf\xbdx";
  assert_int_equal(len[1], strlen(want));
  assert_memory_equal(b.data + off[1], want, len[1]);
  /* A key that is missing or not a string. */
  assert_int_equal(rd("{\"label\": 3}", &b, off, len), 0);
  assert_int_equal(len[0], SIZE_MAX);
  assert_int_equal(len[1], SIZE_MAX);
  dbx_buf_free(&b);
}

static void test_malformed(void **state) {
  dbx_buf b = {0};
  size_t off[2], len[2];
  const char *bad[] = {"", "[]", "{", "{\"label\": \"x\"", "{\"label\" \"x\"}", "{\"label\": \"x\",}",
                       "{\"label\": \"\\q\"}", "{\"a\": tru}", "{} {}", "{\"label\": \"x\001\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    const char *why = NULL;
    assert_int_equal(json_object_strings(bad[i], strlen(bad[i]), keys, 2, &b, off, len, &why), DBX_ECORRUPT);
    assert_non_null(why);
  }
  dbx_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_values_and_escapes),
      cmocka_unit_test(test_malformed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
