/* test_sched.c -- placement policies: room, fairness, slots, and seeded randomness. */
#include "check.h"

#include "engine/sched.h"

static void test_round_robin_cycles_and_skips_full(void **state) {
  sched s;
  sched_init(&s, POLICY_ROUND_ROBIN, 0);
  sched_worker w[3] = {{1, 1, 2, 0, 0}, {1, 1, 2, 0, 0}, {1, 1, 2, 0, 0}};
  assert_int_equal(sched_pick(&s, w, 3), 0);
  assert_int_equal(sched_pick(&s, w, 3), 1);
  assert_int_equal(sched_pick(&s, w, 3), 2);
  assert_int_equal(sched_pick(&s, w, 3), 0);
  w[1].inflight = 2;  /* full: skipped */
  assert_int_equal(sched_pick(&s, w, 3), 2);
  w[0].usable = 0;
  assert_int_equal(sched_pick(&s, w, 3), 2);
  w[2].inflight = 2;
  assert_int_equal(sched_pick(&s, w, 3), -1);
}

static void test_least_loaded_uses_slots_and_speed(void **state) {
  sched s;
  sched_init(&s, POLICY_LEAST_LOADED, 0);
  sched_worker w[2] = {{1, 1, 3, 0, 0}, {1, 4, 6, 0, 0}};
  int count[2] = {0, 0};
  for (int i = 0; i < 9; i++) {
    long k = sched_pick(&s, w, 2);
    assert_true(k >= 0);
    w[k].inflight++;
    count[k]++;
  }
  assert_int_equal(count[0], 3);  /* 1 slot: fills last */
  assert_int_equal(count[1], 6);
  /* Equal load: the faster worker wins. */
  sched_worker v[2] = {{1, 2, 4, 1, 0.5}, {1, 2, 4, 1, 0.1}};
  assert_int_equal(sched_pick(&s, v, 2), 1);
}

static void test_random_seeded_is_reproducible(void **state) {
  sched a, b, c;
  sched_init(&a, POLICY_RANDOM, 42);
  sched_init(&b, POLICY_RANDOM, 42);
  sched_init(&c, POLICY_RANDOM, 43);
  sched_worker w[5] = {{1, 1, 9, 0, 0}, {1, 1, 9, 0, 0}, {0, 1, 9, 0, 0}, {1, 1, 9, 0, 0}, {1, 1, 9, 0, 0}};
  int differ = 0, hits[5] = {0};
  for (int i = 0; i < 1000; i++) {
    long x = sched_pick(&a, w, 5), y = sched_pick(&b, w, 5), z = sched_pick(&c, w, 5);
    assert_int_equal(x, y);
    assert_int_not_equal(x, 2);  /* never an unusable worker */
    differ += x != z;
    hits[x]++;
  }
  assert_true(differ > 100);
  for (int i = 0; i < 5; i++)
    if (i != 2) assert_true(hits[i] > 150);  /* roughly uniform over 4 */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_robin_cycles_and_skips_full),
      cmocka_unit_test(test_least_loaded_uses_slots_and_speed),
      cmocka_unit_test(test_random_seeded_is_reproducible),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
