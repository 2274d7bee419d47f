/* test_agg.c -- the merge tree depends on batch indices only, never on arrival order. */
#include "check.h"

#include "engine/agg.h"

/* A partial is a string; merge is "(left right)": associative in content, but the
 * parenthesisation shows the exact tree, so any change of tree or order is caught. */
static void *s_new(const void *cfg) { return calloc(1, 4096); }
static void s_free(void *p) { free(p); }
static int s_merge(const void *cfg, void *l, const void *r, dbx_err *err) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "(%s %s)", (char *)l, (const char *)r);
  memcpy(l, tmp, strlen(tmp) + 1);
  return 0;
}
static const dbx_op strop = {"str", s_new, s_free, NULL, s_merge, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL};

/* The same operator with encoded partials: the encoding of a string is the string. */
static int s_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  char *x = s_new(NULL);
  memcpy(x, p, n);
  *out = x;
  return 0;
}
static int s_merge_enc(const void *cfg, void *l, const char *p, size_t n, dbx_err *err) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "(%s %.*s)", (char *)l, (int)n, p);
  memcpy(l, tmp, strlen(tmp) + 1);
  return 0;
}
static const dbx_op encop = {"enc", s_new, s_free, NULL, s_merge, NULL, s_decode, NULL, NULL, NULL, NULL, 0, s_merge_enc};

static char *run(uint32_t n, const uint32_t *order) {
  agg *a = agg_new(&strop, NULL);
  dbx_err err;
  for (uint32_t i = 0; i < n; i++) {
    char *p = s_new(NULL);
    snprintf(p, 4096, "%u", order[i]);
    assert_int_equal(agg_add(a, order[i], p, &err), 0);
  }
  void *r;
  assert_int_equal(agg_finish(a, n, &r, &err), 0);
  agg_free(a);
  return r;
}

static void test_shape(void **state) {
  uint32_t ord[5] = {0, 1, 2, 3, 4};
  char *r = run(5, ord);
  assert_string_equal(r, "(((0 1) (2 3)) 4)");
  free(r);
  r = run(3, ord);
  assert_string_equal(r, "((0 1) 2)");
  free(r);
  r = run(1, ord);
  assert_string_equal(r, "0");
  free(r);
  r = run(0, ord);
  assert_string_equal(r, "");
  free(r);
}

static void test_any_arrival_order(void **state) {
  unsigned seed = 4242;
  for (uint32_t n = 1; n < 70; n++) {
    uint32_t ord[70];
    for (uint32_t i = 0; i < n; i++) ord[i] = i;
    char *want = run(n, ord);
    for (int round = 0; round < 20; round++) {
      for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)rand_r(&seed) % (i + 1), t = ord[i];
        ord[i] = ord[j];
        ord[j] = t;
      }
      char *got = run(n, ord);
      assert_string_equal(got, want);
      free(got);
    }
    free(want);
  }
}

/* Encoded partials (as from workers), mixed with decoded ones, give the same tree. */
static void test_encoded_partials_same_tree(void **state) {
  unsigned seed = 99;
  for (uint32_t n = 1; n < 40; n++) {
    uint32_t ord[40];
    for (uint32_t i = 0; i < n; i++) ord[i] = i;
    char *want = run(n, ord);
    for (int round = 0; round < 10; round++) {
      for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)rand_r(&seed) % (i + 1), t = ord[i];
        ord[i] = ord[j];
        ord[j] = t;
      }
      agg *a = agg_new(&encop, NULL);
      dbx_err err;
      for (uint32_t i = 0; i < n; i++) {
        char text[16];
        int k = snprintf(text, sizeof text, "%u", ord[i]);
        if (rand_r(&seed) % 2) {
          char *blob = malloc((size_t)k);
          memcpy(blob, text, (size_t)k);
          assert_int_equal(agg_add_encoded(a, ord[i], blob, (size_t)k, &err), 0);
        } else {
          char *p = s_new(NULL);
          memcpy(p, text, (size_t)k + 1);
          assert_int_equal(agg_add(a, ord[i], p, &err), 0);
        }
      }
      void *r;
      assert_int_equal(agg_finish(a, n, &r, &err), 0);
      assert_string_equal(r, want);
      free(r);
      agg_free(a);
    }
    free(want);
  }
}

static void test_duplicate_and_missing(void **state) {
  agg *a = agg_new(&strop, NULL);
  dbx_err err;
  assert_int_equal(agg_add(a, 0, s_new(NULL), &err), 0);
  assert_int_equal(agg_add(a, 0, s_new(NULL), &err), DBX_EINVAL);
  void *r;
  assert_int_equal(agg_finish(a, 2, &r, &err), DBX_EINVAL);
  assert_non_null(strstr(err.msg, "batch 1"));
  agg_free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shape),
      cmocka_unit_test(test_any_arrival_order),
      cmocka_unit_test(test_encoded_partials_same_tree),
      cmocka_unit_test(test_duplicate_and_missing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
