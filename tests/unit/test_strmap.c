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

/* A limited map holds its keys within its slots: past the limit an insertion is done but
 * says STRMAP_FULL; strmap_clear empties it keeping the slots (no growth the next time); a
 * caller that goes on inserting past full gets a grown map, not an endless probe. */
static void test_limit_fills_then_clears(void **state) {
  (void)state;
  strmap *m = strmap_new();
  size_t cap = strmap_limit(m, 64 * 1024);
  assert_int_equal(cap, 1023);  /* 2048 slots of 32 bytes, at most half of them used */
  char k[64];
  size_t full_at = 0;
  for (size_t i = 0; i < 4 * cap && !full_at; i++) {
    int n = snprintf(k, sizeof k, "key-number-%zu", i);
    int rc = strmap_add(m, k, (size_t)n, 1, NULL);
    assert_true(rc == 0 || rc == STRMAP_FULL);
    if (rc == STRMAP_FULL) full_at = i + 1;
  }
  assert_int_equal(full_at, cap + 1);
  assert_int_equal(strmap_count(m), cap + 1);
  assert_int_equal(strmap_find(m, "key-number-1023", 15), 1023);  /* the key that filled it is in */
  size_t held = strmap_bytes(m);
  strmap_clear(m);
  assert_int_equal(strmap_count(m), 0);
  assert_int_equal(strmap_aux_bytes(m), 0);
  assert_int_equal(strmap_find(m, "key-number-7", 12), -1);
  for (size_t i = 0; i < cap; i++) {
    int n = snprintf(k, sizeof k, "other-%zu", i);
    assert_int_equal(strmap_add(m, k, (size_t)n, 1, NULL), 0);
  }
  assert_int_equal(strmap_bytes(m), held);  /* the same slots, not grown */
  /* Inserting on regardless: full until 7/8 of the slots are used, then it grows. */
  int rc = 0;
  for (size_t i = 0; i < 2 * cap; i++) {
    int n = snprintf(k, sizeof k, "more-%zu", i);
    rc = strmap_add(m, k, (size_t)n, 1, NULL);
    assert_true(rc == 0 || rc == STRMAP_FULL);
  }
  assert_int_equal(strmap_count(m), 3 * cap);
  assert_true(strmap_bytes(m) > held);
  for (size_t i = 0; i < 2 * cap; i++) {
    int n = snprintf(k, sizeof k, "more-%zu", i);
    assert_true(strmap_find(m, k, (size_t)n) >= 0);
  }
  strmap_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_keys),
      cmocka_unit_test(test_prefix_keys_differ),
      cmocka_unit_test(test_limit_fills_then_clears),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
