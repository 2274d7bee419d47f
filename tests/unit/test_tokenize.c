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
  /* Its context is the text's, not the word's: case-ignorable characters (' . : Mn Lm ...)
   * are skipped either way, and Cased is wider than Lu/Ll/Lt (ª, Ⅻ, ⓐ). */
  assert_string_equal(W("A.Σ"), "a|ς");
  assert_string_equal(W("Α\u0301Σ"), "α|ς");
  assert_string_equal(W("ΑΣ'Β"), "ασ|β");
  assert_string_equal(W("ΑΣ\u0301Β"), "ασ|β");
  assert_string_equal(W("ªΣ ⓐΣ ΑΣª"), "ªς|ς|ασª");
  assert_string_equal(W("ıʰΣ"), "ıʰς");
  assert_string_equal(W("1.Σ \xff'Σ"), "1|σ|σ");
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

/* The words of s from tok_next (block scanner) or tok_next_scalar, joined by '|'. */
static size_t all_words(const char *s, size_t n, int lower, size_t min_cp, int scalar, char *out, size_t cap) {
  tok t;
  tok_init(&t, s, n, lower, min_cp);
  const char *w;
  size_t k, len = 0;
  int rc;
  while ((rc = scalar ? tok_next_scalar(&t, &w, &k) : tok_next(&t, &w, &k)) == 1) {
    assert_true(len + k + 2 < cap);
    out[len++] = '|';
    memcpy(out + len, w, k);
    len += k;
  }
  assert_int_equal(rc, 0);
  tok_free(&t);
  return len;
}

/* Runs of every length across the 64-byte blocks: the scanner's edges, its carry from block
 * to block, and its tail block. */
static void test_words_across_blocks(void **state) {
  char s[300], out[1024];
  for (size_t at = 0; at < 140; at++) {
    for (size_t wl = 1; wl < 140; wl += 7) {
      memset(s, ' ', sizeof s);
      for (size_t i = 0; i < wl; i++) s[at + i] = (char)(i % 3 ? 'a' + i % 26 : 'A' + i % 26);
      size_t n = at + wl + (wl & 1);  /* the word ends at the end of the text half of the time */
      char ref[300];
      for (size_t i = 0; i < wl; i++) ref[i] = (char)('a' + i % 26);
      size_t len = all_words(s, n, 1, 1, 0, out, sizeof out);
      assert_int_equal(len, wl + 1);
      assert_memory_equal(out + 1, ref, wl);
    }
  }
}

/* The block scanner against the general tokenizer on random text made of ASCII, separators,
 * two- to four-byte characters, the special cases and invalid bytes. */
static void test_block_scanner_matches_scalar(void **state) {
  static const char *piece[] = {"a", "Q", "_", "7", "xyz", "AbC", " ", ",", "\n", "\r\n", "\t", "é", "É", "Σ", "ΟΔΟΣ",
                                "İ", "東京", "\xff", "\xc3", "\xe2\x82", "\xf0\x9f\x98\x80", "\xc2\xa0", "ß", "½", "\x80"};
  char s[1200], a[4096], b[4096];
  uint64_t x = 0x9e3779b97f4a7c15u;
  for (int iter = 0; iter < 4000; iter++) {
    size_t n = 0;
    x = x * 6364136223846793005u + 1442695040888963407u;
    size_t want = (size_t)(x >> 33) % 1000;
    while (n < want) {
      x = x * 6364136223846793005u + 1442695040888963407u;
      const char *p = piece[(x >> 33) % (sizeof piece / sizeof *piece)];
      size_t k = strlen(p);
      if (n + k > want) break;
      memcpy(s + n, p, k);
      n += k;
    }
    int lower = iter & 1;
    size_t min_cp = 1 + (iter >> 1) % 3;
    size_t la = all_words(s, n, lower, min_cp, 0, a, sizeof a);
    size_t lb = all_words(s, n, lower, min_cp, 1, b, sizeof b);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ascii),
      cmocka_unit_test(test_unicode_letters_and_numbers),
      cmocka_unit_test(test_special_casing),
      cmocka_unit_test(test_invalid_utf8_separates),
      cmocka_unit_test(test_min_length),
      cmocka_unit_test(test_huge_word),
      cmocka_unit_test(test_words_across_blocks),
      cmocka_unit_test(test_block_scanner_matches_scalar),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
