/* test_strmap.c -- the counting table: inline and long keys, growth, dense ids. */
#include "check.h"

#include "dbatch.h"
#include "util/strmap.h"

static void test_many_keys(void **state) {
  strmap *m = strmap_new();
  char k[64];
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 100000; i++) {
      int n = snprintf(k, sizeof k, i % 3 ? "w%d" : "a-much-longer-key-%d", i);
      uint32_t id;
      assert_int_equal(strmap_add(m, k, (size_t)n, (uint64_t)i, &id), 0);
      assert_int_equal(id, (uint32_t)i);
    }
  assert_int_equal(strmap_count(m), 100000);
  for (int i = 0; i < 100000; i += 997) {
    int n = snprintf(k, sizeof k, i % 3 ? "w%d" : "a-much-longer-key-%d", i);
    assert_int_equal(strmap_find(m, k, (size_t)n), i);
    assert_int_equal(strmap_val(m, (uint32_t)i), 3 * (uint64_t)i);
    size_t len;
    const char *key = strmap_key(m, (uint32_t)i, &len);
    assert_int_equal(len, (size_t)n);
    assert_memory_equal(key, k, len);
  }
  assert_int_equal(strmap_find(m, "absent", 6), -1);
  strmap_free(m);
}

static void test_prefix_keys_differ(void **state) {
  strmap *m = strmap_new();
  const char *keys[] = {"a", "ab", "abc", "abcd", "abcde", "abcdefgh", "abcdefghi", "b\0c"};
  size_t lens[] = {1, 2, 3, 4, 5, 8, 9, 3};
  for (int i = 0; i < 8; i++) assert_int_equal(strmap_add(m, keys[i], lens[i], 1, NULL), 0);
  assert_int_equal(strmap_count(m), 8);
  assert_int_equal(strmap_find(m, "b\0d", 3), -1);
  assert_int_equal(strmap_add(m, "", 0, 1, NULL), DBX_EINVAL);
  strmap_free(m);
  strmap_free(NULL);
}

/* strmap_reset gives the memory back (a drained word count table must not stay over its
 * budget, or every later piece of the batch makes a level of its own), and the map works on. */
static void test_reset_gives_memory_back(void **state) {
  strmap *fresh = strmap_new(), *m = strmap_new();
  char k[64];
  for (int i = 0; i < 200000; i++) {
    int n = snprintf(k, sizeof k, "key-number-%d", i);
    assert_int_equal(strmap_add(m, k, (size_t)n, 1, NULL), 0);
  }
  assert_true(strmap_bytes(m) > 4 * strmap_bytes(fresh));
  assert_int_equal(strmap_reset(m), 0);
  assert_int_equal(strmap_count(m), 0);
  assert_int_equal(strmap_bytes(m), strmap_bytes(fresh));
  assert_int_equal(strmap_find(m, "key-number-7", 12), -1);
  uint32_t id;
  assert_int_equal(strmap_add(m, "key-number-7", 12, 5, &id), 0);
  assert_int_equal(id, 0);
  assert_int_equal(strmap_val(m, 0), 5);
  strmap_free(m);
  strmap_free(fresh);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_keys),
      cmocka_unit_test(test_prefix_keys_differ),
      cmocka_unit_test(test_reset_gives_memory_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
