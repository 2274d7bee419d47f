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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_keys),
      cmocka_unit_test(test_prefix_keys_differ),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
