/* test_tasks.c -- the coordinator's task table: every transition of a task's state, the
 * retry budget, innocent requeues, backoff, and the speculation and timeout limits. */
#include "check.h"

#include "coord/tasks.h"

static void add_tasks(ttable *tt, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    batchdesc b;
    memset(&b, 0, sizeof b);
    b.index = i;
    uint32_t idx;
    assert_int_equal(tt_add(tt, &b, 0, &idx), 0);
    assert_int_equal(idx, tt->n - 1);
  }
}

static void test_queue_order_and_done(void **state) {
  ttable tt;
  tt_init(&tt);
  add_tasks(&tt, 3);
  batchdesc b;
  memset(&b, 0, sizeof b);
  uint32_t idx;
  assert_int_equal(tt_add(&tt, &b, 1, &idx), 0);  /* resumed from the journal: done, not queued */
  assert_int_equal(tt.t[3].state, T_DONE);
  assert_int_equal(tt.qlen, 3);
  assert_int_equal(tt.done, 1);
  assert_int_equal(tt.undone, 3);
  assert_int_equal(tt_pop(&tt), 0);
  assert_int_equal(tt_start(&tt, 0, 0, 5, 10.0), 1);
  assert_int_equal(tt.running, 1);
  assert_int_equal(tt_slot(&tt, 0, 5, 1), 0);
  assert_int_equal(tt_slot(&tt, 0, 4, 1), -1);   /* another worker */
  assert_int_equal(tt_slot(&tt, 0, 5, 2), -1);   /* another attempt */
  assert_int_equal(tt_slot(&tt, 9, 5, 1), -1);   /* no such task */
  assert_int_equal(tt_succeed(&tt, 0, 0, 12.0), -1);
  assert_int_equal(tt.t[0].state, T_DONE);
  assert_int_equal(tt.running, 0);
  assert_int_equal(tt.done, 2);
  assert_int_equal(tt.undone, 2);
  assert_int_equal(tt_slot(&tt, 0, 5, 1), -1);   /* a late duplicate finds nothing */
  assert_int_equal(tt.ndur, 1);
  assert_true(tt.dur[0] == 2.0);
  tt_free(&tt);
}

static void test_failures_count_and_give_up(void **state) {
  ttable tt;
  tt_init(&tt);
  add_tasks(&tt, 1);
  tt_pop(&tt);
  double now = 100;
  for (uint32_t a = 1; a <= 3; a++) {
    assert_int_equal(tt_start(&tt, 0, 0, 1, now), a);
    tt_verdict v = tt_fail(&tt, 0, 0, 7 + a, 3, now);
    if (a < 3) {
      assert_int_equal(v, TT_RETRY);
      assert_int_equal(tt.t[0].state, T_PENDING);
      assert_int_equal(tt.qlen, 0);              /* waiting out its backoff */
      assert_int_equal(tt_release_due(&tt, now + 0.01), 0);
      assert_int_equal(tt.qlen, 0);
      double backoff = 0.05 * (double)(1u << (a - 1));
      assert_int_equal(tt_release_due(&tt, now + backoff), 0);
      assert_int_equal(tt.qlen, 1);
      assert_int_equal(tt_pop(&tt), 0);
    } else {
      assert_int_equal(v, TT_GIVE_UP);
    }
  }
  assert_int_equal(tt.t[0].failures, 3);
  assert_true(tt_avoids(&tt.t[0], 8) && tt_avoids(&tt.t[0], 9) && tt_avoids(&tt.t[0], 10));
  assert_false(tt_avoids(&tt.t[0], 11));
  tt_skip(&tt, 0);
  assert_int_equal(tt.t[0].state, T_SKIPPED);
  assert_int_equal(tt.done, 1);
  assert_int_equal(tt.undone, 0);
  tt_free(&tt);
}

static void test_innocent_attempts_do_not_count(void **state) {
  ttable tt;
  tt_init(&tt);
  add_tasks(&tt, 2);
  tt_pop(&tt);
  tt_pop(&tt);
  tt_start(&tt, 0, 0, 1, 1.0);
  tt_start(&tt, 1, 0, 1, 1.0);
  for (int i = 0; i < 10; i++) {  /* lost with its worker ten times: never given up */
    assert_int_equal(tt_requeue(&tt, 1, 0), 0);
    assert_int_equal(tt.t[1].state, T_PENDING);
    assert_int_equal(tt.qlen, 1);
    assert_int_equal(tt.queue[tt.qhead], 1);   /* at the front, at once */
    tt_pop(&tt);
    tt_start(&tt, 1, 0, 2, 2.0);
  }
  assert_int_equal(tt.t[1].failures, 0);
  assert_int_equal(tt.t[1].innocent, 10);
  assert_int_equal(tt.t[1].attempts, 11);
  assert_int_equal(tt_fail(&tt, 0, 0, 1, 1, 3.0), TT_GIVE_UP);  /* --max-attempts 1 */
  tt_free(&tt);
}

static void test_speculative_copy_races(void **state) {
  ttable tt;
  tt_init(&tt);
  add_tasks(&tt, 1);
  tt_pop(&tt);
  tt_start(&tt, 0, 0, 1, 0.0);
  assert_int_equal(tt_start(&tt, 0, 1, 2, 5.0), 2);
  assert_int_equal(tt.running, 2);
  /* The first attempt fails while the copy runs: nothing to retry yet. */
  assert_int_equal(tt_fail(&tt, 0, 0, 1, 1, 6.0), TT_OTHER_RUNS);
  assert_int_equal(tt.t[0].state, T_RUNNING);
  assert_int_equal(tt_succeed(&tt, 0, 1, 7.0), -1);
  assert_int_equal(tt.t[0].state, T_DONE);
  /* Both running; the copy wins and the caller must cancel the first. */
  add_tasks(&tt, 1);
  tt_pop(&tt);
  tt_start(&tt, 1, 0, 1, 0.0);
  tt_start(&tt, 1, 1, 2, 1.0);
  assert_int_equal(tt_succeed(&tt, 1, 1, 2.0), 0);
  tt_drop(&tt, 1, 0);
  assert_int_equal(tt.running, 0);
  tt_free(&tt);
}

static void test_limits(void **state) {
  ttable tt;
  tt_init(&tt);
  add_tasks(&tt, 12);
  /* No finished task: a copy after `first` seconds; no default timeout. */
  assert_true(tt_spec_limit(&tt, 0, 5.0) == 5.0);
  assert_true(tt_default_timeout(&tt, 0, 60) == 0);
  for (uint32_t i = 0; i < 10; i++) {
    tt_pop(&tt);
    tt_start(&tt, i, 0, 1, 0.0);
    tt_succeed(&tt, i, 0, i < 9 ? 2.0 : 20.0);
    if (i == 1) {
      assert_true(tt_spec_limit(&tt, 1, 1.0) == 3.0);        /* 1.5x the longest of two */
      assert_true(tt_default_timeout(&tt, 1, 10) == 20.0);   /* 10x the longest of two */
    }
  }
  assert_true(tt_spec_limit(&tt, 100, 5.0) == 3.0);       /* 1.5x the median */
  assert_true(tt_default_timeout(&tt, 100, 60) == 200.0);  /* 10x p90 (20 s) */
  assert_true(tt_default_timeout(&tt, 100, 500) == 500.0); /* never below the floor */
  tt_free(&tt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_queue_order_and_done),
    cmocka_unit_test(test_failures_count_and_give_up),
    cmocka_unit_test(test_innocent_attempts_do_not_count),
    cmocka_unit_test(test_speculative_copy_races),
    cmocka_unit_test(test_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
