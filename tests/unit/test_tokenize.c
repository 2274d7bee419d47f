/* test_tokenize.c -- words as Python's re \w sees them, lowercased as str.lower(). */
#include "check.h"

#include "ops/tokenize.h"

/* The words of s joined by '|'. */
static char *words(const char *s, size_t n, int lower, size_t min_cp) {
  static char out[4096];
  tok t;
  tok_init(&t, s, n, lower, min_cp);
  const char *w;
  size_t k, len = 0;
  out[0] = 0;
  while (tok_next(&t, &w, &k) == 1) {
    assert_true(len + k + 2 < sizeof out);
    if (len) out[len++] = '|';
    memcpy(out + len, w, k);
    len += k;
  }
  out[len] = 0;
  tok_free(&t);
  return out;
}

#define W(s) words(s, sizeof(s) - 1, 1, 1)

static void test_ascii(void **state) {
  assert_string_equal(W("Hello, World! foo_bar 42x"), "hello|world|foo_bar|42x");
  assert_string_equal(W(""), "");
  assert_string_equal(W("  ,;  "), "");
  assert_string_equal(W("a-b'c"), "a|b|c");
  assert_string_equal(words("ABC def", 7, 0, 1), "ABC|def");
}

static void test_unicode_letters_and_numbers(void **state) {
  assert_string_equal(W("Grüße ÆON straße"), "grüße|æon|straße");
  assert_string_equal(W("Москва МОСКВА"), "москва|москва");
  assert_string_equal(W("東京 漢字テスト"), "東京|漢字テスト");
  assert_string_equal(W("١٢٣ ½ ² Ⅻ"), "١٢٣|½|²|ⅻ");  /* Nd, No, No, Nl (lowercased) */
  assert_string_equal(W("«quoted»—dash"), "quoted|dash");
  /* Combining marks are not \w in Python: Devanagari vowel signs split words. */
  assert_string_equal(W("नमस्ते"), "नमस|त");
}

static void test_special_casing(void **state) {
  /* U+0130 lowers to "i" + U+0307 (not a word character). */
  assert_string_equal(W("İstanbul"), "i|stanbul");
  /* Final sigma. */
  assert_string_equal(W("ΟΔΟΣ ΣΑΣ Σ"), "οδος|σας|σ");
  assert_string_equal(words("ΟΔΟΣ", 8, 0, 1), "ΟΔΟΣ");
}

static void test_invalid_utf8_separates(void **state) {
  assert_string_equal(W("ab\xff" "cd\xc3(ef\xe2\x82xy"), "ab|cd|ef|xy");
  assert_string_equal(W("\xed\xa0\x80surrogate"), "surrogate");
  assert_string_equal(W("over\xc0\xaflong"), "over|long");
}

static void test_min_length(void **state) {
  assert_string_equal(words("a bb c ddd é éé", 18, 1, 2), "bb|ddd|éé");
}

static void test_huge_word(void **state) {
  size_t n = 1 << 20;
  char *s = malloc(n);
  memset(s, 'Q', n);
  tok t;
  tok_init(&t, s, n, 1, 1);
  const char *w;
  size_t k;
  assert_int_equal(tok_next(&t, &w, &k), 1);
  assert_int_equal(k, n);
  assert_int_equal(w[n - 1], 'q');
  assert_int_equal(tok_next(&t, &w, &k), 0);
  tok_free(&t);
  free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ascii),
      cmocka_unit_test(test_unicode_letters_and_numbers),
      cmocka_unit_test(test_special_casing),
      cmocka_unit_test(test_invalid_utf8_separates),
      cmocka_unit_test(test_min_length),
      cmocka_unit_test(test_huge_word),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
