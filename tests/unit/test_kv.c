/* test_kv.c -- keyed partials (engine/kv.c) against a direct computation in the test: seeded
 * random record streams cut into batches in many ways, per-batch partials encoded and decoded,
 * merged in the engine's tree (agg.c) and left to right; the rows must equal the reference
 * (docs/keyed.md, /work/notes/keyed-spec.md). Plus the edges: int64 overflow, bad numbers,
 * NUL and empty keys, empty partials, kv_add after a seal, huge values, kv_parse_num. */
#include "check.h"

#include <math.h>

#include "engine/agg.h"
#include "engine/kv.h"
#include "engine/shuffle.h"
#include "ops/ops.h"
#include "util/strmap.h"

/* ---- a seeded generator (xorshift64*) ---- */
static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}
static uint32_t rndn(uint32_t n) { return (uint32_t)(rnd() % n); }

/* ---- the value pool: each value's class is written here, not parsed ---- */
enum { V_TEXT, V_INT, V_REAL };
typedef struct pval { const char *s; size_t n; int kind; int64_t i; double d; } pval;
#define PV(str, k, iv, dv) {str, sizeof(str) - 1, k, iv, dv}
static const pval POOL[] = {
    PV("0", V_INT, 0, 0),        PV("1", V_INT, 1, 0),       PV("-3", V_INT, -3, 0),
    PV("7", V_INT, 7, 0),        PV("12", V_INT, 12, 0),     PV("-0", V_INT, 0, 0),
    PV("+5", V_INT, 5, 0),       PV("007", V_INT, 7, 0),     PV("0.5", V_REAL, 0, 0.5),
    PV("-1.25", V_REAL, 0, -1.25), PV("2.75", V_REAL, 0, 2.75), PV("1e1", V_REAL, 0, 10.0),
    PV("3.", V_REAL, 0, 3.0),    PV(".25", V_REAL, 0, 0.25), PV("1.0", V_REAL, 0, 1.0),
    PV("-2.5E0", V_REAL, 0, -2.5),
};
static const pval TEXTS[] = {
    PV("x", V_TEXT, 0, 0), PV("", V_TEXT, 0, 0), PV("abc", V_TEXT, 0, 0), PV("1_0", V_TEXT, 0, 0),
    PV("0x10", V_TEXT, 0, 0), PV("inf", V_TEXT, 0, 0), PV(" 1", V_TEXT, 0, 0), PV("a\0b", V_TEXT, 0, 0),
};
#define NPOOL (sizeof POOL / sizeof *POOL)
#define NTEXT (sizeof TEXTS / sizeof *TEXTS)

typedef struct kstr { const char *s; size_t n; } kstr;
#define KS(str) {str, sizeof(str) - 1}
static const kstr KEYS[] = {KS(""), KS("a"), KS("b"), KS("a\0b"), KS("\0"), KS("ab"), KS("a\0"),
                            KS("zz\xff"), KS("\xff"), KS("A"), KS("key with spaces"), KS("b\0\0"),
                            KS("0123456789abcdefX"), KS("0123456789abcdef"), KS("0123456789abcdefW\0"),
                            KS("01234567\0"), KS("01234567")};
#define NKEYS (sizeof KEYS / sizeof *KEYS)

typedef struct rec { kstr key; const pval *v; } rec;

/* ---- formatting a row (the reference formats its own values the same way) ---- */
static void put_bytes(dbx_buf *o, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    char t[8];
    int k = (c >= 0x21 && c < 0x7f && c != '\\') ? snprintf(t, sizeof t, "%c", c) : snprintf(t, sizeof t, "\\x%02x", c);
    assert_int_equal(dbx_buf_append(o, t, (size_t)k), 0);
  }
}
static void put_str(dbx_buf *o, const char *s) { assert_int_equal(dbx_buf_append(o, s, strlen(s)), 0); }
static void put_real(dbx_buf *o, double x) {
  char t[64];
  for (int p = 1; p <= 17; p++) {
    snprintf(t, sizeof t, "%.*g", p, x);
    if (strtod(t, NULL) == x) break;
  }
  put_str(o, "r");
  put_str(o, t);
}
static void put_int(dbx_buf *o, int64_t i) {
  char t[32];
  snprintf(t, sizeof t, "%lld", (long long)i);
  put_str(o, t);
}

typedef struct collect { const kv_spec *s; dbx_buf out; uint64_t rows; } collect;
static int collect_row(void *ctx, const dbx_value *row, dbx_err *err) {
  (void)err;
  collect *c = ctx;
  dbx_buf *o = &c->out;
  put_bytes(o, row[0].s, row[0].n);
  for (uint32_t i = 0; i < c->s->nagg; i++) {
    const dbx_value *v = &row[1 + i];
    put_str(o, " | ");
    switch (kv_agg_type(c->s, i)) {
    case DBX_COL_INT: put_int(o, v->i); break;
    case DBX_COL_NUM:
      if (v->n == DBX_NUM_NULL) put_str(o, "NULL");
      else if (v->n == DBX_NUM_INT) put_int(o, v->i);
      else { assert_int_equal(v->n, DBX_NUM_REAL); put_real(o, v->d); }
      break;
    default:
      if (!v->s) put_str(o, "NULL");
      else { put_str(o, "'"); put_bytes(o, v->s, v->n); put_str(o, "'"); }
    }
  }
  put_str(o, "\n");
  c->rows++;
  return 0;
}

/* The rows of p as text (p is sealed by it). */
static char *rows_of(const kv_spec *s, kvpart *p) {
  collect c = {s, {0}, 0};
  dbx_err err = {0, ""};
  int rc = kv_emit_rows(s, p, 1, collect_row, &c, &err);
  if (rc) fail_msg("kv_emit_rows: %d %s", rc, err.msg);
  put_str(&c.out, "");
  assert_int_equal(dbx_buf_append(&c.out, "", 1), 0);
  return c.out.data;
}

/* ---- the reference: per key, its accepted values in input order ---- */
static int spec_numeric(const kv_spec *s) {
  for (uint32_t i = 0; i < s->nagg; i++)
    if (s->agg[i].kind >= KA_SUM && s->agg[i].kind <= KA_MEAN) return 1;
  return 0;
}
static int cmp_kstr(const kstr *a, const kstr *b) {
  int c = memcmp(a->s, b->s, a->n < b->n ? a->n : b->n);
  return c ? c : a->n < b->n ? -1 : a->n > b->n;
}
static int cmp_pv(const void *x, const void *y) {
  const pval *a = *(const pval *const *)x, *b = *(const pval *const *)y;
  kstr ka = {a->s, a->n}, kb = {b->s, b->n};
  return cmp_kstr(&ka, &kb);
}
static double as_d(const pval *v) { return v->kind == V_INT ? (double)v->i : v->d; }

static char *reference(const kv_spec *s, const rec *r, size_t n) {
  dbx_buf o = {0};
  int num = spec_numeric(s);
  const pval *vals[4096];
  for (size_t kk = 0; kk < NKEYS; kk++) {
    /* keys in bytewise order: pick the kk-th smallest */
    const kstr *key = NULL;
    for (size_t a = 0; a < NKEYS; a++) {
      size_t below = 0;
      for (size_t b = 0; b < NKEYS; b++) below += cmp_kstr(&KEYS[b], &KEYS[a]) < 0;
      if (below == kk) key = &KEYS[a];
    }
    size_t nv = 0;
    for (size_t j = 0; j < n; j++) {
      if (cmp_kstr(&r[j].key, key)) continue;
      if (num && r[j].v->kind == V_TEXT) continue;   /* a bad record: dropped whole */
      assert_true(nv < 4096);
      vals[nv++] = r[j].v;
    }
    if (!nv) continue;
    put_bytes(&o, key->s, key->n);
    for (uint32_t i = 0; i < s->nagg; i++) {
      put_str(&o, " | ");
      int kd = s->agg[i].kind;
      if (kd == KA_COUNT) put_int(&o, (int64_t)nv);
      else if (kd == KA_SUM || kd == KA_MEAN) {
        int real = 0;
        int64_t is = 0;
        double ds = 0;
        for (size_t j = 0; j < nv; j++) {
          if (vals[j]->kind == V_REAL) real = 1;
          is += vals[j]->kind == V_INT ? vals[j]->i : 0;
          ds += as_d(vals[j]);
        }
        if (kd == KA_MEAN) put_real(&o, ds / (double)nv);
        else if (real) put_real(&o, ds);
        else put_int(&o, is);
      } else if (kd == KA_MIN || kd == KA_MAX) {
        const pval *best = vals[0];
        for (size_t j = 1; j < nv; j++)
          if (kd == KA_MIN ? as_d(vals[j]) < as_d(best) : as_d(vals[j]) > as_d(best)) best = vals[j];
        if (best->kind == V_INT) put_int(&o, best->i);
        else put_real(&o, best->d);
      } else if (kd == KA_FIRST || kd == KA_LAST) {
        const pval *v = kd == KA_FIRST ? vals[0] : vals[nv - 1];
        put_str(&o, "'");
        put_bytes(&o, v->s, v->n);
        put_str(&o, "'");
      } else {
        /* distinct and top:K: sort the values, count runs */
        const pval *sorted[4096];
        memcpy(sorted, vals, nv * sizeof *vals);
        qsort(sorted, nv, sizeof *sorted, cmp_pv);
        struct { const pval *v; uint64_t c; } runs[4096];
        size_t nr = 0;
        for (size_t j = 0; j < nv; j++) {
          if (nr && !cmp_pv(&sorted[j], &runs[nr - 1].v)) runs[nr - 1].c++;
          else { runs[nr].v = sorted[j]; runs[nr].c = 1; nr++; }
        }
        if (kd == KA_DISTINCT) { put_int(&o, (int64_t)nr); continue; }
        /* top: count descending, then value bytewise (a stable selection, K times) */
        char used[4096] = {0};
        put_str(&o, "'");
        for (uint32_t t = 0; t < s->agg[i].k && t < nr; t++) {
          size_t b = SIZE_MAX;
          for (size_t j = 0; j < nr; j++)
            if (!used[j] && (b == SIZE_MAX || runs[j].c > runs[b].c)) b = j;
          used[b] = 1;
          if (t) put_str(&o, ",");
          put_bytes(&o, runs[b].v->s, runs[b].v->n);
          put_str(&o, "=");
          put_int(&o, (int64_t)runs[b].c);
        }
        put_str(&o, "'");
      }
    }
    put_str(&o, "\n");
  }
  assert_int_equal(dbx_buf_append(&o, "", 1), 0);
  return o.data;
}

/* ---- building partials ---- */
static kv_spec spec_of(const char *text) {
  kv_spec s;
  memset(&s, 0, sizeof s);
  dbx_err err = {0, ""};
  if (kv_spec_parse(&s, text, NULL, NULL, &err)) fail_msg("spec %s: %s", text, err.msg);
  return s;
}

static int add1(kvpart *p, kstr k, const char *v, size_t vn, dbx_err *err) {
  kv_val val = {v, vn, 0};
  return kv_add(p, k.s, k.n, &val, err);
}

/* The partial of records r[0..n) (a bad record must be refused: DBX_EBADREC). Sometimes
 * sealed in the middle (kv_add after a seal). */
static kvpart *build(const kv_spec *s, const rec *r, size_t n, int seal_midway) {
  kvpart *p = kv_new(s);
  assert_non_null(p);
  int num = spec_numeric(s);
  for (size_t j = 0; j < n; j++) {
    dbx_err err = {0, ""};
    int rc = add1(p, r[j].key, r[j].v->s, r[j].v->n, &err);
    if (num && r[j].v->kind == V_TEXT) {
      assert_int_equal(rc, DBX_EBADREC);
      assert_non_null(strstr(err.msg, "is not a number"));
    } else if (rc) {
      fail_msg("kv_add: %d %s", rc, err.msg);
    }
    if (seal_midway && j == n / 2) {
      dbx_buf tmp = {0};
      assert_int_equal(kv_encode(p, &tmp, &err), 0);
      dbx_buf_free(&tmp);
    }
  }
  return p;
}

static kvpart *roundtrip(const kv_spec *s, kvpart *p) {
  dbx_buf b = {0};
  dbx_err err = {0, ""};
  assert_int_equal(kv_encode(p, &b, &err), 0);
  kvpart *q = NULL;
  int rc = kv_decode(s, b.data, b.len, &q, &err);
  if (rc) fail_msg("kv_decode of a real encoding: %d %s", rc, err.msg);
  /* encode(decode(x)) == x */
  dbx_buf b2 = {0};
  assert_int_equal(kv_encode(q, &b2, &err), 0);
  assert_int_equal(b.len, b2.len);
  assert_memory_equal(b.data, b2.data, b.len);
  dbx_buf_free(&b);
  dbx_buf_free(&b2);
  kv_free(p);
  return q;
}

static const char *SPECS[] = {
    "count,sum,min,max,mean,first,last,distinct,top:3",
    "count,first,last,distinct,top:2",
    "top:1,distinct,count",
    "sum,mean",
    "min,max,top:4,first",
    "last,top:2,top:5,distinct,distinct",
};

/* One stream cut into batches: tree via agg (encoded and not, arrival order shuffled), left
 * to right, all equal to the reference. */
static void check_stream(const kv_spec *s, const rec *r, size_t n, const char *want) {
  for (int cut = 0; cut < 6; cut++) {
    /* cut points: sorted random positions, with empty batches allowed */
    uint32_t nb = 1 + rndn(cut == 0 ? 1 : 9);
    size_t bounds[12];
    bounds[0] = 0;
    bounds[nb] = n;
    for (uint32_t b = 1; b < nb; b++) bounds[b] = rndn((uint32_t)n + 1);
    for (uint32_t a = 1; a < nb; a++)
      for (uint32_t b = a + 1; b < nb; b++)
        if (bounds[b] < bounds[a]) { size_t t = bounds[a]; bounds[a] = bounds[b]; bounds[b] = t; }
    /* 1. the engine's tree, batches arriving in a random order, some encoded */
    reduce_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.spec = *s;
    agg *a = agg_new(&op_reduce, &cfg);
    uint32_t order[12];
    for (uint32_t b = 0; b < nb; b++) order[b] = b;
    for (uint32_t b = nb; b > 1; b--) { uint32_t j = rndn(b), t = order[b - 1]; order[b - 1] = order[j]; order[j] = t; }
    dbx_err err = {0, ""};
    for (uint32_t k = 0; k < nb; k++) {
      uint32_t b = order[k];
      kvpart *p = build(s, r + bounds[b], bounds[b + 1] - bounds[b], rndn(3) == 0);
      if (rndn(2)) {
        dbx_buf enc = {0};
        assert_int_equal(kv_encode(p, &enc, &err), 0);
        kv_free(p);
        size_t blen = enc.len;
        char *blob = malloc(blen ? blen : 1);
        memcpy(blob, enc.data, blen);
        dbx_buf_free(&enc);
        assert_int_equal(agg_add_encoded(a, b, blob, blen, &err), 0);
      } else {
        assert_int_equal(agg_add(a, b, p, &err), 0);
      }
    }
    void *res = NULL;
    if (agg_finish(a, nb, &res, &err)) fail_msg("agg_finish: %s", err.msg);
    agg_free(a);
    char *got = rows_of(s, res);
    if (strcmp(got, want)) fail_msg("tree of %u batches:\n--- got\n%s--- want\n%s", nb, got, want);
    free(got);
    kv_free(res);
    /* 2. left to right, every partial through encode/decode */
    kvpart *acc = roundtrip(s, build(s, r, bounds[1], 0));
    for (uint32_t b = 1; b < nb; b++) {
      kvpart *p = roundtrip(s, build(s, r + bounds[b], bounds[b + 1] - bounds[b], rndn(2)));
      if (kv_merge(acc, p, &err)) fail_msg("kv_merge: %s", err.msg);
      kv_free(p);
    }
    got = rows_of(s, acc);
    if (strcmp(got, want)) fail_msg("left to right over %u batches:\n--- got\n%s--- want\n%s", nb, got, want);
    free(got);
    kv_free(acc);
  }
}

static void test_random_streams(void **state) {
  (void)state;
  rec r[600];
  for (uint64_t seed = 1; seed <= 60; seed++) {
    rng_state = seed * 0x9E3779B97F4A7C15ull;
    const kv_spec s = spec_of(SPECS[seed % (sizeof SPECS / sizeof *SPECS)]);
    size_t n = rndn(seed % 5 == 0 ? 8 : 600);
    int text_rate = (int)rndn(4);   /* 0: no bad records */
    uint32_t nkeys = 1 + rndn(NKEYS);
    for (size_t j = 0; j < n; j++) {
      r[j].key = KEYS[rndn(nkeys)];
      r[j].v = text_rate && rndn(10) < (uint32_t)text_rate ? &TEXTS[rndn(NTEXT)] : &POOL[rndn(NPOOL)];
    }
    char *want = reference(&s, r, n);
    check_stream(&s, r, n, want);
    free(want);
  }
}

/* ---- the edges ---- */

static char *rows_text(const char *spec, const char *const *kv, size_t n) {
  kv_spec s = spec_of(spec);
  kvpart *p = kv_new(&s);
  for (size_t j = 0; j < n; j++) {
    dbx_err err = {0, ""};
    kstr k = {kv[2 * j], strlen(kv[2 * j])};
    int rc = add1(p, k, kv[2 * j + 1], strlen(kv[2 * j + 1]), &err);
    if (rc) fail_msg("kv_add %s=%s: %s", kv[2 * j], kv[2 * j + 1], err.msg);
  }
  char *got = rows_of(&s, p);
  kv_free(p);
  return got;
}

static void test_sum_overflow_at_add(void **state) {
  (void)state;
  const char *specs[] = {"count,sum,min,max,first,last,top:2", "mean,count"};
  for (int t = 0; t < 2; t++) {
    kv_spec s = spec_of(specs[t]);
    kvpart *p = kv_new(&s);
    dbx_err err = {0, ""};
    kstr k = KS("big");
    assert_int_equal(add1(p, k, "9223372036854775807", 19, &err), 0);
    assert_int_equal(add1(p, k, "1", 1, &err), DBX_EBADREC);
    assert_non_null(strstr(err.msg, "overflows"));
    assert_non_null(strstr(err.msg, "big"));
    /* below: -2^63 - 1 */
    kstr k2 = KS("neg");
    assert_int_equal(add1(p, k2, "-9223372036854775808", 20, &err), 0);
    assert_int_equal(add1(p, k2, "-1", 2, &err), DBX_EBADREC);
    char *got = rows_of(&s, p);
    const char *want = t == 0 ? "big | 1 | 9223372036854775807 | 9223372036854775807 | 9223372036854775807 | "
                                "'9223372036854775807' | '9223372036854775807' | '9223372036854775807=1'\n"
                                "neg | 1 | -9223372036854775808 | -9223372036854775808 | -9223372036854775808 | "
                                "'-9223372036854775808' | '-9223372036854775808' | '-9223372036854775808=1'\n"
                              : "big | r9.223372036854776e+18 | 1\nneg | r-9.223372036854776e+18 | 1\n";
    assert_string_equal(got, want);
    free(got);
    kv_free(p);
  }
}

static void test_sum_overflow_at_merge(void **state) {
  (void)state;
  kv_spec s = spec_of("count,sum");
  for (int way = 0; way < 3; way++) {
    kvpart *l = kv_new(&s), *r = kv_new(&s);
    dbx_err err = {0, ""};
    kstr k = KS("k\0ey");
    assert_int_equal(add1(l, k, "9223372036854775000", 19, &err), 0);
    assert_int_equal(add1(r, k, "1000", 4, &err), 0);
    if (way == 1) r = roundtrip(&s, r);
    if (way == 2) l = roundtrip(&s, l);
    int rc = kv_merge(l, r, &err);
    assert_int_equal(rc, DBX_EBADREC);
    assert_non_null(strstr(err.msg, "overflows"));
    assert_non_null(strstr(err.msg, "sum"));
    kv_free(l);
    kv_free(r);
  }
  /* the same sum past int64 after a seal of the same partial */
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  dbx_buf tmp = {0};
  assert_int_equal(add1(p, (kstr)KS("k"), "9223372036854775000", 19, &err), 0);
  assert_int_equal(kv_encode(p, &tmp, &err), 0);
  assert_int_equal(add1(p, (kstr)KS("k"), "1000", 4, &err), 0);
  tmp.len = 0;
  assert_int_equal(kv_encode(p, &tmp, &err), DBX_EBADREC);
  dbx_buf_free(&tmp);
  kv_free(p);
  /* but a real in the mix makes it a double: no overflow */
  const char *kv[] = {"k", "9223372036854775807", "k", "0.5", "k", "9223372036854775807"};
  char *got = rows_text("sum,count", kv, 3);
  assert_string_equal(got, "k | r1.8446744073709552e+19 | 3\n");
  free(got);
}

static void test_bad_number_adds_nothing(void **state) {
  (void)state;
  kv_spec s = spec_of("count,sum,min,max,mean,first,last,distinct,top:2");
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  assert_int_equal(add1(p, (kstr)KS("k"), "5", 1, &err), 0);
  const char *bad[] = {"x", "", "1_0", "inf", "nan", " 1", "0x10", "1e999", "-", "1e"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    assert_int_equal(add1(p, (kstr)KS("k"), bad[i], strlen(bad[i]), &err), DBX_EBADREC);
    assert_int_equal(add1(p, (kstr)KS("fresh"), bad[i], strlen(bad[i]), &err), DBX_EBADREC);
  }
  assert_int_equal(kv_count(p), 1);
  char *got = rows_of(&s, p);
  assert_string_equal(got, "k | 1 | 5 | 5 | 5 | r5 | '5' | '5' | 1 | '5=1'\n");
  free(got);
  kv_free(p);
}

static void test_keys_with_nul_and_empty(void **state) {
  (void)state;
  kv_spec s = spec_of("count,first,last");
  kvpart *a = kv_new(&s), *b = kv_new(&s);
  dbx_err err = {0, ""};
  /* a and b in different orders: the run is bytewise, shorter first on a common prefix */
  kstr keys[] = {KS("a\0b"), KS(""), KS("a"), KS("\0"), KS("a\0"), KS("\0\0"), KS("a\0a")};
  for (size_t i = 0; i < 7; i++) assert_int_equal(add1(a, keys[i], "L", 1, &err), 0);
  for (size_t i = 7; i-- > 0;) assert_int_equal(add1(b, keys[i], "R", 1, &err), 0);
  a = roundtrip(&s, a);
  assert_int_equal(kv_merge(a, b, &err), 0);
  char *got = rows_of(&s, a);
  assert_string_equal(got, " | 2 | 'L' | 'R'\n"
                           "\\x00 | 2 | 'L' | 'R'\n"
                           "\\x00\\x00 | 2 | 'L' | 'R'\n"
                           "a | 2 | 'L' | 'R'\n"
                           "a\\x00 | 2 | 'L' | 'R'\n"
                           "a\\x00a | 2 | 'L' | 'R'\n"
                           "a\\x00b | 2 | 'L' | 'R'\n");
  free(got);
  kv_free(a);
  kv_free(b);
}

/* kv_merge_to_fd of src[0..n) (batch indices 0..n-1, levels as given) into an unlinked file
 * in dir, read back into out. */
static void merge_to_buf(const kv_spec *s, kvpart **src, uint32_t n, int levels, const char *dir, dbx_buf *out) {
  char mpath[700];
  snprintf(mpath, sizeof mpath, "%s/merged-XXXXXX", dir);
  int mfd = mkstemp(mpath);
  assert_true(mfd >= 0);
  unlink(mpath);
  uint32_t idx[64];
  assert_true(n <= 64);
  for (uint32_t i = 0; i < n; i++) idx[i] = i;
  dbx_err err = {0, ""};
  assert_int_equal(kv_merge_to_fd(s, src, idx, n, n, 0, levels, mfd, dir, &err), 0);
  off_t mlen = lseek(mfd, 0, SEEK_END);
  assert_int_equal(dbx_buf_reserve(out, (size_t)mlen + 1), 0);
  assert_int_equal(pread(mfd, out->data, (size_t)mlen, 0), (ssize_t)mlen);
  out->len = (size_t)mlen;
  close(mfd);
}

/* The streaming merge of reduce tasks, which compares 8-byte prefixes first, gives the bytes of
 * the in-memory merge when one run's key is another's with zero bytes after it ("a" and "a\0",
 * 8 bytes and 8 bytes + "\0"): such keys stay apart. */
static void test_streamed_merge_keeps_zero_suffixes_apart(void **state) {
  (void)state;
  kv_spec s = spec_of("count,first");
  kvpart *a = kv_new(&s), *b = kv_new(&s);
  dbx_err err = {0, ""};
  kstr ka[] = {KS("a"), KS("\0"), KS("a\0a"), KS("ab"), KS("abcdefgh"), KS("abcdefgh\0\0")},
       kb[] = {KS("a\0"), KS("\0\0"), KS("a\0b"), KS("ab\0"), KS("abcdefgh\0"), KS("abcdefg")};
  for (size_t i = 0; i < 6; i++) assert_int_equal(add1(a, ka[i], "L", 1, &err), 0);
  for (size_t i = 0; i < 6; i++) assert_int_equal(add1(b, kb[i], "R", 1, &err), 0);
  a = roundtrip(&s, a);
  b = roundtrip(&s, b);
  char dir[] = "/tmp/test_kv-XXXXXX";
  assert_non_null(mkdtemp(dir));
  kvpart *src[2] = {a, b};
  dbx_buf streamed = {0}, merged = {0};
  merge_to_buf(&s, src, 2, 0, dir, &streamed);
  rmdir(dir);
  assert_int_equal(kv_merge(a, b, &err), 0);
  assert_int_equal(kv_encode(a, &merged, &err), 0);
  assert_int_equal(streamed.len, merged.len);
  assert_memory_equal(streamed.data, merged.data, merged.len);
  dbx_buf_free(&streamed);
  dbx_buf_free(&merged);
  kv_free(a);
  kv_free(b);
}

static void test_empty_partials(void **state) {
  (void)state;
  kv_spec s = spec_of("count,sum,first,top:2");
  const char *want = "k | 2 | 3 | '1' | '1=1,2=1'\n";
  for (int side = 0; side < 2; side++)
    for (int enc = 0; enc < 4; enc++) {
      kvpart *full = kv_new(&s), *empty = kv_new(&s);
      dbx_err err = {0, ""};
      assert_int_equal(add1(full, (kstr)KS("k"), "1", 1, &err), 0);
      assert_int_equal(add1(full, (kstr)KS("k"), "2", 1, &err), 0);
      if (enc & 1) full = roundtrip(&s, full);
      if (enc & 2) empty = roundtrip(&s, empty);
      kvpart *l = side ? empty : full, *r = side ? full : empty;
      assert_int_equal(kv_merge(l, r, &err), 0);
      char *got = rows_of(&s, l);
      assert_string_equal(got, want);
      free(got);
      kv_free(l);
      kv_free(r);
    }
  /* empty with empty: no rows, and its encoding decodes */
  kvpart *e = roundtrip(&s, kv_new(&s)), *f = kv_new(&s);
  dbx_err err = {0, ""};
  assert_int_equal(kv_merge(e, f, &err), 0);
  char *got = rows_of(&s, e);
  assert_string_equal(got, "");
  free(got);
  kv_free(e);
  kv_free(f);
}

/* last: over 200,000 records of two keys, values growing and shrinking: the values stay
 * right and the partial's memory follows the keys' values, not the records (replaced last
 * values are reused in place or compacted away). */
static void test_last_values_do_not_pile_up(void **state) {
  (void)state;
  kv_spec s = spec_of("first,last,count");
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  char v[600];
  size_t peak = 0;
  for (int i = 0; i < 200000; i++) {
    size_t n = (size_t)(i * 7919) % 512 + 12;  /* its record number, '.', then letters */
    int m = snprintf(v, sizeof v, "%d.", i);
    memset(v + m, 'a' + i % 26, n - (size_t)m);
    kstr k = i % 3 ? (kstr)KS("x") : (kstr)KS("y");
    assert_int_equal(add1(p, k, v, n, &err), 0);
    if (kv_bytes(p) > peak) peak = kv_bytes(p);
  }
  /* 2 keys: their values are < 2 KB; without reuse the blob holds every value: ~51 MB */
  assert_true(peak < (4u << 20));
  char *got = rows_of(&s, p);
  assert_non_null(strstr(got, "x | '1."));         /* first of x: record 1 */
  assert_non_null(strstr(got, "' | 133333\n"));    /* x's count */
  assert_non_null(strstr(got, "y | '0."));          /* first of y: record 0 */
  assert_non_null(strstr(got, "' | '199998"));      /* last of y: record 199998 */
  assert_non_null(strstr(got, "' | '199999"));      /* last of x: record 199999 */
  free(got);
  kv_free(p);
}

/* kv_split straight from a table never sealed writes the bytes of splitting its sealed run. */
static void test_split_from_table_equals_split_from_run(void **state) {
  (void)state;
  const char *specs[] = {"count", "count,sum,first,last,distinct,top:2", "distinct,top:3", "min,max,mean"};
  for (size_t si = 0; si < sizeof specs / sizeof *specs; si++) {
    kv_spec s = spec_of(specs[si]);
    for (uint32_t r = 1; r <= 9; r += 4) {
      rng_state = 99 + si * 31 + r;
      kvpart *a = kv_new(&s), *b = kv_new(&s);
      dbx_err err = {0, ""};
      for (int i = 0; i < 3000; i++) {
        kstr k = KEYS[rndn(NKEYS)];
        char kb[40];
        int n = snprintf(kb, sizeof kb, "%.*s%u", (int)k.n, k.s, rndn(200));
        const pval *v = rndn(4) ? &POOL[rndn(NPOOL)] : &TEXTS[rndn(NTEXT)];
        kv_val val = {v->s, v->n, 0};
        int ra = kv_add(a, kb, (size_t)n, &val, &err), rb = kv_add(b, kb, (size_t)n, &val, &err);
        assert_int_equal(ra, rb);
      }
      kv_cursor c;
      assert_int_equal(kv_cursor_init(&c, b, &err), 0);  /* b is sealed, a is not */
      dbx_buf pa[9], pb[9];
      memset(pa, 0, sizeof pa);
      memset(pb, 0, sizeof pb);
      assert_int_equal(kv_split(a, r, pa, &err), 0);
      assert_int_equal(kv_split(b, r, pb, &err), 0);
      for (uint32_t q = 0; q < r; q++) {
        assert_int_equal(pa[q].len, pb[q].len);
        assert_memory_equal(pa[q].data, pb[q].data, pa[q].len);
        dbx_buf_free(&pa[q]);
        dbx_buf_free(&pb[q]);
      }
      kv_free(a);
      kv_free(b);
    }
  }
}

/* Word count's table split straight (kv_split_counts) writes the bytes of a keyed partial
 * holding the same counts split: keys of 1 to 20 bytes (inline and arena keys of the strmap),
 * shared 8- and 16-byte prefixes, a NUL inside, and enough keys for the radix sort. */
static void test_split_counts_equals_split(void **state) {
  (void)state;
  kv_spec s = wc_count_spec;
  for (uint32_t r = 1; r <= 13; r += 4) {
    for (int nkeys = 0; nkeys <= 3000; nkeys += 1500) {
      rng_state = 7 + r + (uint64_t)nkeys;
      strmap *m = strmap_new();
      kvpart *p = kv_new(&s);
      dbx_err err = {0, ""};
      for (int i = 0; i < nkeys + 5; i++) {
        char kb[24];
        size_t n = 1 + rndn(20);
        for (size_t j = 0; j < n; j++) kb[j] = (char)(j < 9 && rndn(4) ? "prefix12"[j % 8] : (char)('a' + rndn(3)));
        if (rndn(50) == 0) kb[rndn((uint32_t)n)] = 0;
        uint64_t c = 1 + rndn(5);
        assert_int_equal(strmap_add(m, kb, n, c, NULL), 0);
        assert_int_equal(kv_add_count(p, kb, n, c, &err), 0);
      }
      /* A count past what the sort's packed entry holds (read back from the table). */
      assert_int_equal(strmap_add(m, "big", 3, ((uint64_t)1 << 27) + 5, NULL), 0);
      assert_int_equal(kv_add_count(p, "big", 3, ((uint64_t)1 << 27) + 5, &err), 0);
      dbx_buf pa[13], pb[13];
      memset(pa, 0, sizeof pa);
      memset(pb, 0, sizeof pb);
      assert_int_equal(kv_split_counts(&s, m, r, pa, &err), 0);
      assert_int_equal(kv_split(p, r, pb, &err), 0);
      for (uint32_t q = 0; q < r; q++) {
        assert_int_equal(pa[q].len, pb[q].len);
        assert_memory_equal(pa[q].data, pb[q].data, pa[q].len);
        dbx_buf_free(&pa[q]);
        dbx_buf_free(&pb[q]);
      }
      strmap_free(m);
      kv_free(p);
    }
  }
}

/* Records past the budget go to the spill file as zstd frames (a file far smaller than the
 * records on repetitive keys), and replaying the file gives the states the records would
 * have given. */
static void test_spill_file_is_compressed_and_replays(void **state) {
  (void)state;
  kv_spec s = spec_of("count,sum,distinct");
  char dir[] = "/tmp/dbx-kv-spill-XXXXXX";
  assert_non_null(mkdtemp(dir));
  kvpart *a = kv_new(&s), *ref = kv_new(&s);
  kv_set_budget(a, 4096, dir);
  dbx_err err = {0, ""};
  uint64_t raw = 0;
  for (int i = 0; i < 20000; i++) {
    char kb[32], vb[16];
    int kn = snprintf(kb, sizeof kb, "key-%05d", i % 5000), vn = snprintf(vb, sizeof vb, "%d", i % 7);
    kv_val v = {vb, (size_t)vn, 0};
    assert_int_equal(kv_add(a, kb, (size_t)kn, &v, &err), 0);
    assert_int_equal(kv_add(ref, kb, (size_t)kn, &v, &err), 0);
    raw += 5 + (uint64_t)kn + 5 + (uint64_t)vn;
  }
  int fd = -1;
  uint64_t bytes = 0;
  assert_int_equal(kv_take_spill(a, &fd, &bytes, &err), 0);
  assert_true(fd >= 0);
  assert_true(bytes > 0 && bytes < raw / 3);  /* most records spilled, and compressed */
  char *m = malloc(bytes);
  assert_int_equal(pread(fd, m, bytes, 0), (ssize_t)bytes);
  close(fd);
  assert_memory_equal(m, "\x28\xb5\x2f\xfd", 4);  /* a zstd frame */
  kvpart *b = kv_new(&s);
  assert_int_equal(kv_replay(b, m, bytes, &err), 0);
  /* The value pairs of the keys a holds went out as sorted runs past half its budget. */
  int pfd = -1;
  uint64_t pbytes = 0;
  kv_take_pairs(a, &pfd, &pbytes);
  assert_true(pfd >= 0 && pbytes > 0);
  char *pm = malloc(pbytes);
  assert_int_equal(pread(pfd, pm, pbytes, 0), (ssize_t)pbytes);
  close(pfd);
  kvpart *lv[64];
  uint32_t nl = 0;
  lv[nl++] = a;
  for (uint64_t o = 0; o < pbytes; nl++) {
    assert_true(nl < 63 && pbytes - o >= 8);
    uint64_t n = 0;
    memcpy(&n, pm + o, 8);
    assert_true(n <= pbytes - o - 8);
    assert_int_equal(kv_decode_level_view(&s, pm + o + 8, (size_t)n, &lv[nl], &err), 0);
    /* a carrier is no partial to a peer */
    kvpart *strict = NULL;
    assert_int_equal(kv_decode(&s, pm + o + 8, (size_t)n, &strict, &err), DBX_ECORRUPT);
    o += 8 + n;
  }
  lv[nl++] = b;
  /* a holds the keys it froze with, b the others: disjoint; the pair runs add their values.
   * Merged as a task's levels, they are the reference. */
  dbx_buf ea = {0}, er = {0};
  merge_to_buf(&s, lv, nl, 1, dir, &ea);
  assert_int_equal(kv_encode(ref, &er, &err), 0);
  assert_int_equal(ea.len, er.len);
  assert_memory_equal(ea.data, er.data, ea.len);
  for (uint32_t i = 1; i + 1 < nl; i++) kv_free(lv[i]);
  free(pm);
  /* A damaged frame is refused, not read. */
  m[bytes / 2] ^= 0x55;
  kvpart *c = kv_new(&s);
  assert_int_equal(kv_replay(c, m, bytes, &err), DBX_ECORRUPT);
  dbx_buf_free(&ea);
  dbx_buf_free(&er);
  free(m);
  kv_free(a);
  kv_free(b);
  kv_free(c);
  kv_free(ref);
  rmdir(dir);
}

static void test_add_after_seal(void **state) {
  (void)state;
  kv_spec s = spec_of("count,sum,first,last,distinct,top:2");
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  kv_cursor c;
  const char *kv[] = {"a", "1", "b", "7", "a", "2", "a", "2", "b", "7", "c", "3", "a", "4"};
  for (size_t j = 0; j < 7; j++) {
    kstr k = {kv[2 * j], 1};
    assert_int_equal(add1(p, k, kv[2 * j + 1], 1, &err), 0);
    if (j % 2 == 0) assert_int_equal(kv_cursor_init(&c, p, &err), 0);   /* seals */
  }
  char *got = rows_of(&s, p);
  assert_string_equal(got, "a | 4 | 9 | '1' | '4' | 3 | '2=2,1=1'\n"
                           "b | 2 | 14 | '7' | '7' | 1 | '7=2'\n"
                           "c | 1 | 3 | '3' | '3' | 1 | '3=1'\n");
  free(got);
  /* and still after the rows were read */
  assert_int_equal(add1(p, (kstr)KS("a"), "9", 1, &err), 0);
  got = rows_of(&s, p);
  assert_string_equal(got, "a | 5 | 18 | '1' | '9' | 4 | '2=2,1=1'\n"
                           "b | 2 | 14 | '7' | '7' | 1 | '7=2'\n"
                           "c | 1 | 3 | '3' | '3' | 1 | '3=1'\n");
  free(got);
  kv_free(p);
}

static void test_huge_values(void **state) {
  (void)state;
  /* min/max compare numbers exactly, also an integer against a real that rounds to it */
  const char *kv[] = {"k", "9223372036854775807", "k", "9223372036854775808", "k", "-9223372036854775808",
                      "k", "-9223372036854775809", "k", "1e308", "k", "-1e308"};
  /* -9223372036854775809 reads as the double -2^63, equal to INT64_MIN: the first one stays */
  char *got = rows_text("min,max", kv, 4);
  assert_string_equal(got, "k | -9223372036854775808 | r9.223372036854776e+18\n");
  free(got);
  const char *kv2[] = {"k", "9223372036854775808", "k", "9223372036854775807",
                       "k", "-9223372036854775809", "k", "-9223372036854775808"};
  got = rows_text("min,max", kv2, 4);
  assert_string_equal(got, "k | r-9.223372036854776e+18 | r9.223372036854776e+18\n");
  free(got);
  /* within int64, where a cast to double rounds: 2^53 + 1 > 2^53.0 */
  const char *kv3[] = {"k", "9007199254740992.0", "k", "9007199254740993", "k", "-9007199254740992.0",
                       "k", "-9007199254740993", "k", "2.5", "k", "2"};
  got = rows_text("min,max", kv3, 6);
  assert_string_equal(got, "k | -9007199254740993 | 9007199254740993\n");
  free(got);
  kv_spec s3 = spec_of("min,max");
  for (int o = 0; o < 2; o++) {
    kvpart *l = kv_new(&s3), *r = kv_new(&s3);
    dbx_err err = {0, ""};
    assert_int_equal(add1(o ? r : l, (kstr)KS("k"), "9007199254740993", 16, &err), 0);
    assert_int_equal(add1(o ? r : l, (kstr)KS("k"), "-9007199254740993", 17, &err), 0);
    assert_int_equal(add1(o ? l : r, (kstr)KS("k"), "9007199254740992.0", 18, &err), 0);
    assert_int_equal(add1(o ? l : r, (kstr)KS("k"), "-9007199254740992.0", 19, &err), 0);
    assert_int_equal(kv_merge(l, r, &err), 0);
    got = rows_of(&s3, l);
    assert_string_equal(got, "k | -9007199254740993 | 9007199254740993\n");
    free(got);
    kv_free(l);
    kv_free(r);
  }
  /* the same through a merge, both orders */
  kv_spec s = spec_of("min,max");
  for (int o = 0; o < 2; o++) {
    kvpart *l = kv_new(&s), *r = kv_new(&s);
    dbx_err err = {0, ""};
    assert_int_equal(add1(o ? r : l, (kstr)KS("k"), "9223372036854775807", 19, &err), 0);
    assert_int_equal(add1(o ? r : l, (kstr)KS("k"), "-9223372036854775808", 20, &err), 0);
    assert_int_equal(add1(o ? l : r, (kstr)KS("k"), "9223372036854775808", 19, &err), 0);
    assert_int_equal(add1(o ? l : r, (kstr)KS("k"), "-9223372036854775809", 20, &err), 0);
    r = roundtrip(&s, r);
    assert_int_equal(kv_merge(l, r, &err), 0);
    got = rows_of(&s, l);
    assert_string_equal(got, o ? "k | r-9.223372036854776e+18 | r9.223372036854776e+18\n"
                               : "k | -9223372036854775808 | r9.223372036854776e+18\n");
    free(got);
    kv_free(l);
    kv_free(r);
  }
  got = rows_text("sum,min,max,mean", (const char *[]){"k", "1e308", "k", "-1e308", "k", "4.9e-324"}, 3);
  assert_string_equal(got, "k | r5e-324 | r-1e+308 | r1e+308 | r0\n");
  free(got);
  /* a 3 MB value and a 1 MB key */
  size_t big = 3u << 20;
  char *v = malloc(big), *key = malloc(1u << 20);
  memset(v, 'v', big);
  memset(key, 'k', 1u << 20);
  kv_spec t = spec_of("count,first,last,distinct,top:1");
  kvpart *p = kv_new(&t);
  dbx_err err = {0, ""};
  kstr k = {key, 1u << 20};
  assert_int_equal(add1(p, k, v, big, &err), 0);
  assert_int_equal(add1(p, k, v, big - 1, &err), 0);
  assert_int_equal(add1(p, k, v, big, &err), 0);
  p = roundtrip(&t, p);
  kv_cursor c;
  kv_entry e;
  assert_int_equal(kv_cursor_init(&c, p, &err), 0);
  assert_int_equal(kv_cursor_next(&c, &e), 1);
  assert_int_equal(e.klen, 1u << 20);
  dbx_buf sc = {0};
  dbx_value val;
  assert_int_equal(kv_value(&t, 0, &e, &sc, &val, &err), 0);
  assert_int_equal(val.i, 3);
  assert_int_equal(kv_value(&t, 2, &e, &sc, &val, &err), 0);
  assert_int_equal(val.n, big);
  assert_int_equal(kv_value(&t, 3, &e, &sc, &val, &err), 0);
  assert_int_equal(val.i, 2);
  assert_int_equal(kv_value(&t, 4, &e, &sc, &val, &err), 0);
  assert_int_equal(val.n, big + 2);
  assert_memory_equal(val.s + big, "=2", 2);
  assert_int_equal(kv_cursor_next(&c, &e), 0);
  dbx_buf_free(&sc);
  kv_free(p);
  free(v);
  free(key);
}

static void test_parse_num(void **state) {
  (void)state;
  static const struct { const char *s; int kind; int64_t i; double d; } cases[] = {
      {"1", 1, 1, 0}, {"-0", 1, 0, 0}, {"+5", 1, 5, 0}, {"1e3", 2, 0, 1000}, {".5", 2, 0, 0.5},
      {"5.", 2, 0, 5}, {"0x10", 0, 0, 0}, {"inf", 0, 0, 0}, {"nan", 0, 0, 0}, {" 1", 0, 0, 0},
      {"1 ", 0, 0, 0}, {"", 0, 0, 0}, {"-", 0, 0, 0}, {"1e999", 0, 0, 0},
      {"9223372036854775808", 2, 0, 9223372036854775808.0}, {"1_0", 0, 0, 0},
      {"9223372036854775807", 1, INT64_MAX, 0}, {"-9223372036854775808", 1, INT64_MIN, 0},
      {"-9223372036854775809", 2, 0, -9223372036854775808.0}, {"007", 1, 7, 0}, {"+", 0, 0, 0},
      {".", 0, 0, 0}, {"1e", 0, 0, 0}, {"e5", 0, 0, 0}, {"+-1", 0, 0, 0}, {"1.5e+3", 2, 0, 1500},
      {"-2.5E-1", 2, 0, -0.25}, {"0x1p3", 0, 0, 0}, {"INF", 0, 0, 0}, {"-inf", 0, 0, 0},
      {"Infinity", 0, 0, 0}, {"1,5", 0, 0, 0}, {"1.2.3", 0, 0, 0}, {"\t1", 0, 0, 0}, {"1\n", 0, 0, 0},
      {"1e-400", 2, 0, 0}, {"-1e308", 2, 0, -1e308}, {"00", 1, 0, 0}, {"+.5e1", 2, 0, 5},
      {"1d", 0, 0, 0}, {"1f", 0, 0, 0}, {"١", 0, 0, 0},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    int64_t i = 12345;
    double d = 12345;
    int k = kv_parse_num(cases[c].s, strlen(cases[c].s), &i, &d);
    if (k != cases[c].kind) fail_msg("kv_parse_num(\"%s\") = %d, want %d", cases[c].s, k, cases[c].kind);
    if (k == 1 && i != cases[c].i) fail_msg("kv_parse_num(\"%s\"): %lld", cases[c].s, (long long)i);
    if (k == 2 && d != cases[c].d) fail_msg("kv_parse_num(\"%s\"): %.17g", cases[c].s, d);
  }
  /* NUL inside, and long numbers: 500 digits is still an integer, a 600-byte real a real */
  int64_t i;
  double d;
  assert_int_equal(kv_parse_num("1\0", 2, &i, &d), 0);
  assert_int_equal(kv_parse_num("12", 1, &i, &d), 1);
  assert_int_equal(i, 1);
  char lng[700];
  memset(lng, '0', sizeof lng);
  lng[499] = '9';
  assert_int_equal(kv_parse_num(lng, 500, &i, &d), 1);
  assert_int_equal(i, 9);
  memset(lng, '0', sizeof lng);
  lng[0] = '1';
  lng[1] = '.';
  assert_int_equal(kv_parse_num(lng, 600, &i, &d), 2);
  assert_true(d == 1.0);
  memset(lng, '9', sizeof lng);
  assert_int_equal(kv_parse_num(lng, 700, &i, &d), 0);   /* 10^700: not finite */
}

/* A decode that refuses: a few hand-made corruptions of a real encoding. */
static void test_decode_refuses(void **state) {
  (void)state;
  kv_spec s = spec_of("count,first,distinct");
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  assert_int_equal(add1(p, (kstr)KS("a"), "x", 1, &err), 0);
  assert_int_equal(add1(p, (kstr)KS("b"), "y", 1, &err), 0);
  dbx_buf b = {0};
  assert_int_equal(kv_encode(p, &b, &err), 0);
  kvpart *q = NULL;
  for (size_t cut = 0; cut < b.len; cut++) {
    assert_int_equal(kv_decode(&s, b.data, cut, &q, &err), DBX_ECORRUPT);
  }
  /* keys out of order: swap the one-byte keys a and b */
  char *x = malloc(b.len);
  memcpy(x, b.data, b.len);
  char *ka = memchr(x + 8, 'a', b.len - 8), *kb = memchr(x + 8, 'b', b.len - 8);
  *ka = 'b';
  *kb = 'a';
  assert_int_equal(kv_decode(&s, x, b.len, &q, &err), DBX_ECORRUPT);
  free(x);
  kv_spec other = spec_of("count,last,distinct");
  assert_int_equal(kv_decode(&other, b.data, b.len, &q, &err), DBX_ECORRUPT);
  dbx_buf_free(&b);
  kv_free(p);
}

/* Counts a merge makes must decode again: one task holds < 2^48, two merged hold more. */
static void test_merged_counts_decode(void **state) {
  (void)state;
  kv_spec s = spec_of("distinct,top:2");
  static const char enc[] = "DBKV\x01\x02\x08\x09" "\x01\0\0\0\0\0\0\0" "\x01\0\0\0\0\0\0\0"
                            "\x01\0\0\0k"
                            "\x01\0\0\0k\0\x01\0\0\0v" "\0\0\0\0\0\0\x01\0";   /* count 2^48 */
  dbx_err err = {0, ""};
  kvpart *a = NULL, *b = NULL;
  assert_int_equal(kv_decode(&s, enc, sizeof enc - 1, &a, &err), 0);
  assert_int_equal(kv_decode(&s, enc, sizeof enc - 1, &b, &err), 0);
  assert_int_equal(kv_merge(a, b, &err), 0);
  a = roundtrip(&s, a);
  char *got = rows_of(&s, a);
  assert_string_equal(got, "k | 1 | 'v=562949953421312'\n");
  free(got);
  kv_free(a);
  kv_free(b);
}

/* A real sum past the largest double is refused like an int64 one: at kv_add (nothing added)
 * and at merge; it never reaches an encoding (which decode would refuse). */
static void test_real_sum_overflow(void **state) {
  (void)state;
  kv_spec s = spec_of("count,sum,mean,max");
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  assert_int_equal(add1(p, (kstr)KS("k"), "1e308", 5, &err), 0);
  assert_int_equal(add1(p, (kstr)KS("k"), "1e308", 5, &err), DBX_EBADREC);
  assert_non_null(strstr(err.msg, "'k' overflows 64-bit floating point"));
  assert_int_equal(add1(p, (kstr)KS("k"), "-1e308", 6, &err), 0);
  assert_int_equal(add1(p, (kstr)KS("i"), "9223372036854775807", 19, &err), 0);
  assert_int_equal(add1(p, (kstr)KS("i"), "1.7976931348623157e308", 22, &err), 0);
  assert_int_equal(add1(p, (kstr)KS("i"), "1.7976931348623157e308", 22, &err), DBX_EBADREC);
  char *got = rows_of(&s, p);
  assert_string_equal(got, "i | 2 | r1.7976931348623157e+308 | r8.988465674311579e+307 | r1.7976931348623157e+308\n"
                           "k | 2 | r0 | r0 | r1e+308\n");
  free(got);
  kv_free(p);
  for (int enc = 0; enc < 2; enc++) {
    kvpart *l = kv_new(&s), *r = kv_new(&s);
    assert_int_equal(add1(l, (kstr)KS("k"), "1e308", 5, &err), 0);
    assert_int_equal(add1(r, (kstr)KS("k"), enc ? "1e308" : "8e307", 5, &err), 0);
    if (enc) r = roundtrip(&s, r);
    assert_int_equal(kv_merge(l, r, &err), DBX_EBADREC);
    assert_non_null(strstr(err.msg, "'k' overflows 64-bit floating point"));
    kv_free(l);
    kv_free(r);
  }
}


/* The names the coordinator takes back from a relayed task: exactly the files that task
 * writes, nothing of another task, stage or partition, one spelling per file. */
static int relay_out(const shuffle_relay *rl, uint32_t idx, const char *name, uint32_t *need) {
  return shuffle_relay_output(rl, idx, name, strlen(name), need);
}

static void test_relay_output_names(void **state) {
  (void)state;
  shuffle_relay map = {.pc = {.r = 7, .stage = 2}}, red = {.pc = {.r = 7, .stage = 2}, .reduce = 1};
  uint32_t need = 0;
  assert_int_equal(relay_out(&map, 5, "s2-m5-p0.kv", &need), 0);
  assert_int_equal(need, 7);
  assert_int_equal(relay_out(&map, 5, "s2-m5-p6.kv", &need), 6);
  assert_int_equal(relay_out(&map, 5, "s2-m5.spilled", &need), 7);
  const char *no[] = {"s2-m5-p7.kv", "s2-m5-p06.kv", "s2-m5-p00.kv", "s2-m4-p0.kv", "s1-m5-p0.kv", "s2-m5-p.kv",
                      "s2-m5-p1.kvx", "s2-m5-p1", "s2-m5-p-1.kv", "s2-m55-p0.kv", "s2-m5-p99999999999999999999.kv",
                      "s2-m4.spilled", "s2-r5.kv", "s2-c5.kv", "x"};
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) assert_int_equal(relay_out(&map, 5, no[i], &need), -1);
  assert_int_equal(relay_out(&red, 5, "s2-r5.kv", &need), 0);
  assert_int_equal(need, 1);
  assert_int_equal(relay_out(&red, 5, "s2-c5.kv", &need), -1);
  assert_int_equal(relay_out(&red, 5, "s2-r4.kv", &need), -1);
  assert_int_equal(relay_out(&red, 5, "s2-m5-p0.kv", &need), -1);
  red.by_count = 1;
  assert_int_equal(relay_out(&red, 5, "s2-c5.kv", &need), 1);
  assert_int_equal(need, 2);
}

/* A damaged reduced partition (one a relayed worker sent, say) is refused naming the file and
 * why, once: the message was formatted into itself and came out as the path twice, no reason. */
static void test_stream_refuses_damaged_partition(void **state) {
  (void)state;
  kv_spec s = spec_of("count");
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  assert_int_equal(add1(p, (kstr)KS("a"), "x", 1, &err), 0);
  dbx_buf b = {0};
  assert_int_equal(kv_encode(p, &b, &err), 0);
  kv_part_cfg pc = {.r = 1, .stage = 3};
  char tmpl[] = "/tmp/test_kv-XXXXXX";
  assert_non_null(mkdtemp(tmpl));
  snprintf(pc.dir, sizeof pc.dir, "%s", tmpl);
  char path[600];
  snprintf(path, sizeof path, "%s/s3-r0.kv", tmpl);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b.data, 1, b.len - 1, f), b.len - 1);  /* the last byte cut off */
  fclose(f);
  kv_stream *st = NULL;
  assert_int_equal(kv_stream_open(&pc, &s, &st, &err), DBX_ECORRUPT);
  char want[700];
  snprintf(want, sizeof want, "reduced partition %s: keyed partial: ", path);
  if (strncmp(err.msg, want, strlen(want)) || strstr(err.msg + strlen(want), "reduced partition"))
    fail_msg("message '%s', want '%s...'", err.msg, want);
  unlink(path);
  rmdir(tmpl);
  dbx_buf_free(&b);
  kv_free(p);
}

/* The contents the coordinator takes back from a relayed task: a partition file must decode
 * and hold only keys of its partition (a well-formed file of another partition's keys was
 * taken, and the answer had those keys twice); a spilled-bytes note is 8 bytes. */
static void test_relay_check_contents(void **state) {
  (void)state;
  kv_spec s = spec_of("count");
  shuffle_relay map = {.pc = {.r = 2, .stage = 0}, .spec = s}, red = {.pc = {.r = 2, .stage = 0}, .spec = s, .reduce = 1};
  kvpart *p = kv_new(&s);
  dbx_err err = {0, ""};
  char key[8];
  for (int i = 0; i < 20; i++) {
    snprintf(key, sizeof key, "k%d", i);
    if (kv_partition_of(key, strlen(key), 2) == 1) assert_int_equal(add1(p, (kstr){key, strlen(key)}, "x", 1, &err), 0);
  }
  dbx_buf b = {0};
  assert_int_equal(kv_encode(p, &b, &err), 0);
  assert_int_equal(shuffle_relay_check(&map, 4, 1, b.data, b.len, &err), 0);
  assert_int_equal(shuffle_relay_check(&red, 1, 0, b.data, b.len, &err), 0);
  assert_int_equal(shuffle_relay_check(&map, 4, 0, b.data, b.len, &err), DBX_ECORRUPT);
  assert_non_null(strstr(err.msg, "holds a key of partition 1, not 0"));
  assert_int_equal(shuffle_relay_check(&red, 0, 0, b.data, b.len, &err), DBX_ECORRUPT);
  assert_int_equal(shuffle_relay_check(&map, 4, 1, b.data, b.len - 1, &err), DBX_ECORRUPT);
  assert_int_equal(shuffle_relay_check(&map, 4, 2, "12345678", 8, &err), 0);
  assert_int_equal(shuffle_relay_check(&map, 4, 2, b.data, b.len, &err), DBX_ECORRUPT);
  dbx_buf_free(&b);
  kv_free(p);
}

/* The by-count merge orders keys as memcmp does, whatever their bytes: it compares their first
 * 8 bytes as numbers (zero-padded), so keys that hold zero bytes, share 8 bytes, or are
 * prefixes of each other are the cases. Three files, entries dealt round-robin; the stream must
 * give the sorted union, and a file out of order is refused. */
typedef struct cnt_ref { uint64_t c; const char *k; size_t n; } cnt_ref;
static int cnt_ref_cmp(const void *a, const void *b) {
  const cnt_ref *x = a, *y = b;
  if (x->c != y->c) return x->c > y->c ? -1 : 1;
  int m = memcmp(x->k, y->k, x->n < y->n ? x->n : y->n);
  return m ? m : (x->n > y->n) - (x->n < y->n);
}
static void put_entry(FILE *f, uint64_t c, const char *k, size_t n) {
  unsigned char h[12];
  for (int i = 0; i < 8; i++) h[i] = (unsigned char)(c >> (8 * i));
  for (int i = 0; i < 4; i++) h[8 + i] = (unsigned char)(n >> (8 * i));
  assert_int_equal(fwrite(h, 1, 12, f), 12);
  assert_int_equal(fwrite(k, 1, n, f), n);
}
static void test_count_stream_order(void **state) {
  (void)state;
  static const struct { const char *k; size_t n; } keys[] = {
      {"a", 1}, {"a\0", 2}, {"a\0\0\0\0\0\0\0", 8}, {"a\0\0\0\0\0\0\0\0", 9}, {"a\0\0\0\0\0\0\0x", 9},
      {"abcdefgh", 8}, {"abcdefghi", 9}, {"abcdefgha", 9}, {"abcdefgh\xff", 9}, {"abcdefgh\0", 9},
      {"abcdefghij", 10}, {"abcdefgg\xff\xff", 10}, {"\xff", 1}, {"\xff\xff\xff\xff\xff\xff\xff\xff\xff", 9},
      {"b", 1}, {"ab", 2}, {"\x01", 1}, {"zz", 2}, {"abcdefgh\xff\x01", 10}, {"abcdefgh\xfe\xff", 10},
  };
  size_t nk = sizeof keys / sizeof keys[0], n = 0;
  cnt_ref all[3 * sizeof keys / sizeof keys[0]];
  for (uint64_t c = 1; c <= 3; c++)
    for (size_t i = 0; i < nk; i++) all[n++] = (cnt_ref){c, keys[i].k, keys[i].n};
  qsort(all, n, sizeof all[0], cnt_ref_cmp);
  kv_part_cfg pc = {.r = 3, .stage = 2};
  char tmpl[] = "/tmp/test_kv-XXXXXX";
  assert_non_null(mkdtemp(tmpl));
  snprintf(pc.dir, sizeof pc.dir, "%s", tmpl);
  char path[3][600];
  FILE *f[3];
  for (int r = 0; r < 3; r++) {
    snprintf(path[r], sizeof path[r], "%s/s2-c%d.kv", tmpl, r);
    assert_non_null(f[r] = fopen(path[r], "wb"));
    assert_int_equal(fwrite("DBWC", 1, 4, f[r]), 4);
  }
  for (size_t i = 0; i < n; i++) put_entry(f[(i * 7 / 3) % 3], all[i].c, all[i].k, all[i].n);
  for (int r = 0; r < 3; r++) fclose(f[r]);
  dbx_err err = {0, ""};
  count_stream *cs = NULL;
  assert_int_equal(count_stream_open(&pc, &cs, &err), 0);
  for (size_t i = 0; i < n; i++) {
    const char *k;
    size_t kn;
    uint64_t c;
    assert_int_equal(count_stream_next(cs, &k, &kn, &c, &err), 1);
    if (c != all[i].c || kn != all[i].n || memcmp(k, all[i].k, kn)) fail_msg("row %zu is not the sorted one", i);
  }
  const char *k;
  size_t kn;
  uint64_t c;
  assert_int_equal(count_stream_next(cs, &k, &kn, &c, &err), 0);
  count_stream_close(cs);
  /* "ab" before "a" at the same count: out of order. */
  assert_non_null(f[0] = fopen(path[0], "wb"));
  assert_int_equal(fwrite("DBWC", 1, 4, f[0]), 4);
  put_entry(f[0], 5, "a\0b", 3);
  put_entry(f[0], 5, "a\0", 2);
  fclose(f[0]);
  cs = NULL;
  int rc = count_stream_open(&pc, &cs, &err);
  while (!rc && (rc = count_stream_next(cs, &k, &kn, &c, &err)) == 1) rc = 0;
  assert_int_equal(rc, DBX_ECORRUPT);
  assert_non_null(strstr(err.msg, "out of order"));
  count_stream_close(cs);
  for (int r = 0; r < 3; r++) unlink(path[r]);
  rmdir(tmpl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_relay_check_contents),
      cmocka_unit_test(test_stream_refuses_damaged_partition),
      cmocka_unit_test(test_parse_num),
      cmocka_unit_test(test_relay_output_names),
      cmocka_unit_test(test_bad_number_adds_nothing),
      cmocka_unit_test(test_sum_overflow_at_add),
      cmocka_unit_test(test_sum_overflow_at_merge),
      cmocka_unit_test(test_real_sum_overflow),
      cmocka_unit_test(test_keys_with_nul_and_empty),
      cmocka_unit_test(test_streamed_merge_keeps_zero_suffixes_apart),
      cmocka_unit_test(test_empty_partials),
      cmocka_unit_test(test_add_after_seal),
      cmocka_unit_test(test_huge_values),
      cmocka_unit_test(test_decode_refuses),
      cmocka_unit_test(test_split_from_table_equals_split_from_run),
      cmocka_unit_test(test_split_counts_equals_split),
      cmocka_unit_test(test_spill_file_is_compressed_and_replays),
      cmocka_unit_test(test_last_values_do_not_pile_up),
      cmocka_unit_test(test_merged_counts_decode),
      cmocka_unit_test(test_random_streams),
      cmocka_unit_test(test_count_stream_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
