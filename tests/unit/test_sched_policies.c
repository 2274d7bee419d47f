/* test_sched_policies.c -- each policy's choice when several workers have room: least-loaded
 * takes the lowest inflight/slots (then the faster worker), round-robin walks on from the
 * last pick, and no policy ever exceeds a worker's cap or picks an unusable one. */
#include "check.h"

#include "engine/sched.h"

/* {usable, slots, cap, inflight, mean_task} */
static void test_least_loaded_takes_the_least_loaded(void **state) {
  (void)state;
  sched s;
  sched_init(&s, POLICY_LEAST_LOADED, 0);
  sched_worker w[3] = {{1, 1, 4, 2, 0}, {1, 1, 4, 0, 0}, {1, 1, 4, 1, 0}};
  assert_int_equal(sched_pick(&s, w, 3), 1);
  w[1].inflight = 3;
  assert_int_equal(sched_pick(&s, w, 3), 2);
  /* Load is inflight per slot: 3 of 4 slots is less loaded than 1 of 1. */
  sched_worker v[2] = {{1, 1, 3, 1, 0}, {1, 4, 8, 3, 0}};
  assert_int_equal(sched_pick(&s, v, 2), 1);
  /* Equal load: the worker with the shorter mean task time; unknown (0) loses to known. */
  sched_worker u[3] = {{1, 1, 3, 1, 0}, {1, 1, 3, 1, 0.3}, {1, 1, 3, 1, 0.2}};
  assert_int_equal(sched_pick(&s, u, 3), 2);
}

static void test_round_robin_spreads_over_all(void **state) {
  (void)state;
  sched s;
  sched_init(&s, POLICY_ROUND_ROBIN, 0);
  sched_worker w[4] = {{1, 1, 9, 0, 0}, {1, 1, 9, 0, 0}, {1, 1, 9, 0, 0}, {1, 1, 9, 0, 0}};
  int hits[4] = {0};
  for (int i = 0; i < 40; i++) {
    long k = sched_pick(&s, w, 4);
    assert_true(k >= 0 && k < 4);
    hits[k]++;
    w[k].inflight++;
    if (w[k].inflight == 5) w[k].inflight = 0;  /* tasks finish */
  }
  for (int i = 0; i < 4; i++) assert_int_equal(hits[i], 10);
}

static void test_no_policy_exceeds_cap_or_uses_unusable(void **state) {
  (void)state;
  for (int p = 0; p < 3; p++) {
    sched_policy pol = p == 0 ? POLICY_ROUND_ROBIN : p == 1 ? POLICY_RANDOM : POLICY_LEAST_LOADED;
    sched s;
    sched_init(&s, pol, 7);
    sched_worker w[3] = {{1, 2, 3, 0, 0}, {0, 2, 3, 0, 0}, {1, 1, 2, 0, 0}};
    int placed = 0;
    for (;;) {
      long k = sched_pick(&s, w, 3);
      if (k < 0) break;
      assert_int_not_equal(k, 1);
      w[k].inflight++;
      assert_true(w[k].inflight <= w[k].cap);
      placed++;
      assert_true(placed <= 5);
    }
    assert_int_equal(placed, 5);  /* caps 3 + 2 exactly */
    assert_int_equal(sched_pick(&s, w, 0), -1);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_least_loaded_takes_the_least_loaded),
      cmocka_unit_test(test_round_robin_spreads_over_all),
      cmocka_unit_test(test_no_policy_exceeds_cap_or_uses_unusable),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
