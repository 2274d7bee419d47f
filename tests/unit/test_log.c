/* test_log.c -- escaping what reaches the terminal: ESC, C0 and C1 controls, DEL, invalid
 * UTF-8 become visible escapes; printable UTF-8 stays as it is; bounded output is cut at a
 * whole escape. */
#include "check.h"

#include "util/log.h"

static void expect(const char *in, size_t n, const char *want) {
  dbx_buf b = {0};
  assert_int_equal(log_escape_buf(&b, in, n), 0);
  assert_int_equal(b.len, strlen(want));
  assert_memory_equal(b.data, want, b.len);
  char small[512];
  size_t k = log_escape(small, sizeof small, in, n);
  assert_string_equal(small, want);
  assert_int_equal(k, strlen(want));
  dbx_buf_free(&b);
}

static void test_controls(void **state) {
  expect("\x1b[31mevil\x1b[0m", 13, "\\e[31mevil\\e[0m");
  expect("a\tb\nc\rd", 7, "a\\tb\\nc\\rd");
  expect("\x07\x08\x7f", 3, "\\x07\\x08\\x7f");
  expect("nul\0x", 5, "nul\\x00x");
  /* C1 controls (CSI U+009B is ESC [ to some terminals) in UTF-8. */
  expect("\xc2\x9b" "2J", 4, "\\u009b2J");
  expect("\xc2\x85", 2, "\\u0085");
}

static void test_utf8(void **state) {
  expect("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80", 17, "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
  expect("\xc2\xa0", 2, "\xc2\xa0");                  /* U+00A0 is printable */
  expect("\xff\xfe", 2, "\\xff\\xfe");                /* never valid */
  expect("\xc3(", 2, "\\xc3(");                       /* cut sequence */
  expect("\xe6\x97", 2, "\\xe6\\x97");                /* truncated at the end */
  expect("\xc0\xaf", 2, "\\xc0\\xaf");                /* overlong '/' */
  expect("\xed\xa0\x80", 3, "\\xed\\xa0\\x80");       /* a surrogate */
  expect("\xf4\x90\x80\x80", 4, "\\xf4\\x90\\x80\\x80"); /* past U+10FFFF */
  /* Escaping twice changes nothing. */
  expect("\\e[31m \\x07", 11, "\\e[31m \\x07");
}

static void test_bounded(void **state) {
  char out[8];
  /* "ab\e" fits 4+1... "ab" + "\e" = 4 bytes; the next "\e" would need 6 + NUL > 8. */
  size_t k = log_escape(out, sizeof out, "ab\x1b\x1b\x1b", 5);
  assert_string_equal(out, "ab\\e\\e");
  assert_int_equal(k, 6);
  k = log_escape(out, 1, "abc", 3);
  assert_int_equal(k, 0);
  assert_string_equal(out, "");
  assert_int_equal(log_escape(out, 0, "abc", 3), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_controls),
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
