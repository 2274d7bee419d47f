/* test_workers.c -- the coordinator's worker records: finding a peer by its routing id in
 * O(1) through the index, across records that die, are reused, and join by the thousand. */
#include "check.h"

#include <stdio.h>
#include <string.h>

#include "coord/workers.h"

static cworker *join(wtable *t, const char *rid) {
  cworker *w = wt_add(t);
  assert_non_null(w);
  memset(w, 0, sizeof *w);
  w->alive = 1;
  w->id = ++t->next_id;
  w->rid_len = strlen(rid);
  memcpy(w->rid, rid, w->rid_len);
  wt_index_rid(t, w);
  return w;
}

static cworker *find(wtable *t, const char *rid) {
  return wt_find_rid(t, (const unsigned char *)rid, strlen(rid));
}

static void test_many_peers(void **state) {
  wtable t;
  wt_init(&t);
  char rid[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(rid, sizeof rid, "\x01peer-%d", i);
    join(&t, rid);
  }
  for (int i = 0; i < 5000; i++) {
    snprintf(rid, sizeof rid, "\x01peer-%d", i);
    cworker *w = find(&t, rid);
    assert_non_null(w);
    assert_int_equal(w->id, (uint32_t)i + 1);
  }
  assert_null(find(&t, "\x01peer-5000"));
  assert_null(find(&t, ""));
  /* Every third one is lost; its slot goes to a newcomer with another id. Lost peers are
   * never found again, the newcomers and the rest always are. */
  for (int i = 0; i < 5000; i += 3) {
    snprintf(rid, sizeof rid, "\x01peer-%d", i);
    cworker *w = find(&t, rid);
    assert_non_null(w);
    wt_gone(&t, w, "lost");
  }
  for (int i = 0; i < 5000; i += 3) {
    snprintf(rid, sizeof rid, "\x02new-%d", i);
    join(&t, rid);
  }
  assert_int_equal(t.n, 5000);  /* slots were reused */
  for (int i = 0; i < 5000; i++) {
    snprintf(rid, sizeof rid, "\x01peer-%d", i);
    cworker *w = find(&t, rid);
    if (i % 3 == 0) {
      assert_null(w);
      snprintf(rid, sizeof rid, "\x02new-%d", i);
      w = find(&t, rid);
      assert_non_null(w);
      assert_memory_equal(w->rid, rid, strlen(rid));
    } else {
      assert_non_null(w);
      assert_int_equal(w->id, (uint32_t)i + 1);
    }
  }
  /* The index stays at most half full: rebuilt from the live records as it fills. */
  assert_true(t.ridused * 2 <= t.ridcap);
  wt_free(&t);
}

static void test_same_record_new_rid(void **state) {
  wtable t;
  wt_init(&t);
  cworker *w = join(&t, "abc");
  /* A worker that says hello again from a new connection keeps its record. */
  w->rid_len = 3;
  memcpy(w->rid, "xyz", 3);
  wt_index_rid(&t, w);
  assert_ptr_equal(find(&t, "xyz"), w);
  assert_null(find(&t, "abc"));
  /* A record no longer alive (a local worker that died, not yet archived) keeps its routing
   * id, but messages under it are not its own any more. */
  w->alive = 0;
  assert_null(find(&t, "xyz"));
  wt_free(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_peers),
      cmocka_unit_test(test_same_record_new_rid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
