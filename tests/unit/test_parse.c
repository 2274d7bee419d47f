/* test_parse.c -- sizes and counts from the command line. */
#include "check.h"

#include "util/parse.h"

static void test_sizes(void **state) {
  static const struct {
    const char *s;
    uint64_t v;
  } ok[] = {{"0", 0}, {"65536", 65536}, {"512K", 512u << 10}, {"8M", 8u << 20}, {"1.5M", 3u << 19},
            {"0.5K", 512}, {"1.25G", 5ull << 28}, {"2g", 2ull << 30}, {"1T", 1ull << 40}, {"4KiB", 4096},
            {"10B", 10}, {"1.1K", 1126}, {"1.000000001G", (1ull << 30) + 1}};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    uint64_t v = 0;
    if (parse_size(ok[i].s, &v) != 0 || v != ok[i].v)
      fail_msg("%s: %llu, expected %llu", ok[i].s, (unsigned long long)v, (unsigned long long)ok[i].v);
  }
  static const char *const bad[] = {"", "M", "1.5", "1.", ".5M", "1.5X", "-1", "1..5M", "1.5MM", "two",
                                    "1.0000000001G", "20000000000T", "1.5 M"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t v = 7;
    if (parse_size(bad[i], &v) == 0) fail_msg("'%s' accepted as %llu", bad[i], (unsigned long long)v);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_sizes)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
