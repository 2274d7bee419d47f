/* test_json.c -- reading JSONL objects: escapes, surrogates, skipped values, malformed input. */
#include "check.h"

#include "util/json.h"

static const char *const keys[] = {"label", "text"};

static int rd(const char *s, dbx_buf *out, size_t *off, size_t *len) {
  const char *why;
  return json_object_strings(s, strlen(s), keys, 2, out, off, len, &why);
}

static void test_values_and_escapes(void **state) {
  dbx_buf b = {0};
  size_t off[2], len[2];
  assert_int_equal(rd("{\"n\": [1, {\"x\": null}, -2.5e3], \"label\": \"sp\\u00e9m\", \"text\": \"a\\tb\\n\\\"q\\\" \\ud83d\\ude00 \\ud800x\"}  ", &b, off, len), 0);
  assert_int_equal(len[0], 5);
  assert_memory_equal(b.data + off[0], "sp\xc3\xa9m", 5);
  const char *want = "a\tb\n\"q\" \xf0\x9f\x98\x80 \xef\xbf\xbdx";
  assert_int_equal(len[1], strlen(want));
  assert_memory_equal(b.data + off[1], want, len[1]);
  /* A key that is missing or not a string. */
  assert_int_equal(rd("{\"label\": 3}", &b, off, len), 0);
  assert_int_equal(len[0], SIZE_MAX);
  assert_int_equal(len[1], SIZE_MAX);
  dbx_buf_free(&b);
}

static void test_malformed(void **state) {
  dbx_buf b = {0};
  size_t off[2], len[2];
  const char *bad[] = {"", "[]", "{", "{\"label\": \"x\"", "{\"label\" \"x\"}", "{\"label\": \"x\",}",
                       "{\"label\": \"\\q\"}", "{\"a\": tru}", "{} {}", "{\"label\": \"x\001\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    const char *why = NULL;
    assert_int_equal(json_object_strings(bad[i], strlen(bad[i]), keys, 2, &b, off, len, &why), DBX_ECORRUPT);
    assert_non_null(why);
  }
  dbx_buf_free(&b);
}

/* RFC 8259, as Python's json.loads reads it (every row was checked against json.loads):
 * 1 = one well-formed object, 0 = refused. Python also takes NaN and Infinity, which are
 * not JSON; we refuse them. */
static const struct {
  const char *text;
  int ok;
} strict[] = {
    {"{\"n\": 0}", 1},           {"{\"n\": -0}", 1},          {"{\"n\": 10}", 1},
    {"{\"n\": -1.5e-3}", 1},     {"{\"n\": 1E+2}", 1},        {"{\"n\": 0.5}", 1},
    {"{\"n\": 1e5}", 1},         {"{\"n\": [1,2.0,-3]}", 1},  {"{\"n\":1}", 1},
    {"{\"n\": 01}", 0},          {"{\"n\": 1.}", 0},          {"{\"n\": .5}", 0},
    {"{\"n\": +1}", 0},          {"{\"n\": 1e}", 0},          {"{\"n\": --1}", 0},
    {"{\"n\": -}", 0},           {"{\"n\": 1e+}", 0},         {"{\"n\": 1.5.2}", 0},
    {"{\"n\": 0x10}", 0},        {"{\"n\": 1-2}", 0},         {"{\"n\": -01}", 0},
    {"{\"n\": 00}", 0},          {"{\"n\": 1.e3}", 0},        {"{\"n\": NaN}", 0},
    {"{\"n\": Infinity}", 0},    {"{\"n\": -Infinity}", 0},   {"{\"n\": [01]}", 0},
    /* escapes */
    {"{\"s\": \"\\u0041\\/\\b\\f\"}", 1},
    {"{\"s\": \"\\ud83d\\ude00\"}", 1},
    {"{\"s\": \"\\u12\"}", 0},    {"{\"s\": \"\\u12G4\"}", 0},  {"{\"s\": \"\\x41\"}", 0},
    {"{\"s\": \"\\U0041\"}", 0},  {"{\"s\": \"\\\"}", 0},       {"{\"s\": \"\\'\"}", 0},
    /* control characters must be escaped; DEL need not be */
    {"{\"s\": \"a\tb\"}", 0},      {"{\"s\": \"a\nb\"}", 0},      {"{\"s\": \"a\x1f\"}", 0},
    {"{\"s\": \"a\x7f\"}", 1},
    /* literals and structure */
    {"{\"a\": true, \"b\": false, \"c\": null}", 1},
    {"{\"a\": tru}", 0},          {"{\"a\": truex}", 0},       {"{\"a\": nul}", 0},
    {"{\"a\": True}", 0},         {"{\"a\": [1,]}", 0},        {"{\"a\": [,1]}", 0},
    {"{\"a\" : 1 , \"b\" : {} }", 1},
    {"{'a': 1}", 0},                {"{a: 1}", 0},                 {"{\"a\": 1}x", 0},
    {"{\"a\": 1}}", 0},           {" \t{\"a\": 1}\r\n", 1},   {"{\"a\": 1}\f", 0},
};

static void test_strict_table(void **state) {
  dbx_buf b = {0};
  size_t off[2], len[2];
  for (size_t i = 0; i < sizeof strict / sizeof *strict; i++) {
    const char *why = NULL;
    int rc = json_object_strings(strict[i].text, strlen(strict[i].text), keys, 2, &b, off, len, &why);
    if ((rc == 0) != strict[i].ok)
      fail_msg("%s: got %s (%s), want %s", strict[i].text, rc ? "refused" : "accepted", why ? why : "",
               strict[i].ok ? "accepted" : "refused");
  }
  dbx_buf_free(&b);
}

/* Nesting is bounded: a deep line is refused, not a stack overflow. */
static void test_depth_bound(void **state) {
  dbx_buf b = {0}, t = {0};
  size_t off[2], len[2];
  const char *why;
  for (int depth = 1; depth <= 100000; depth *= 10) {
    t.len = 0;
    assert_int_equal(dbx_buf_append(&t, "{\"a\": ", 6), 0);
    for (int i = 0; i < depth; i++) assert_int_equal(dbx_buf_append(&t, "[", 1), 0);
    for (int i = 0; i < depth; i++) assert_int_equal(dbx_buf_append(&t, "]", 1), 0);
    assert_int_equal(dbx_buf_append(&t, "}", 1), 0);
    int rc = json_object_strings(t.data, t.len, keys, 2, &b, off, len, &why);
    assert_int_equal(rc, depth <= 10 ? 0 : DBX_ECORRUPT);
  }
  dbx_buf_free(&t);
  dbx_buf_free(&b);
}

/* Integers as printf's %lld writes them, at the edges of int64 and around powers of ten. */
static void test_int_digits(void **state) {
  int64_t v[] = {0, 1, -1, 9, 10, -10, 99, 100, 12345678901234LL, INT64_MAX, INT64_MIN, INT64_MIN + 1};
  for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
    dbx_buf b = {0};
    char want[32];
    snprintf(want, sizeof want, "%lld", (long long)v[i]);
    assert_int_equal(json_int(&b, v[i]), 0);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    dbx_buf_free(&b);
  }
  for (int64_t p = 1; p < INT64_MAX / 10; p *= 10)
    for (int64_t d = -1; d <= 1; d++) {
      dbx_buf b = {0};
      char want[32];
      snprintf(want, sizeof want, "%lld", (long long)(p + d));
      assert_int_equal(json_int(&b, p + d), 0);
      assert_int_equal(b.len, strlen(want));
      assert_memory_equal(b.data, want, b.len);
      dbx_buf_free(&b);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_values_and_escapes),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_strict_table),
      cmocka_unit_test(test_depth_bound),
      cmocka_unit_test(test_int_digits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
