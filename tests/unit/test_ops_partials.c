/* test_ops_partials.c -- partial results and broadcasts as a hostile peer or a damaged file
 * would send them: every operator's decode / merge_encoded / check / finish returns a clean
 * error (never reads out of bounds), and a refused merge_encoded leaves the aggregate as it was. */
#include "check.h"

#include <math.h>
#include <msgpack.h>

#include "ops/nbayes.h"
#include "ops/ops.h"
#include "util/mpk.h"

/* A mutated msgpack header can claim 2^32 elements: msgpack-c asks for that much memory up
 * front, gets NULL and reports a malformed message. Under ASan, let malloc return NULL as it
 * does without it, instead of aborting. (Read by ASan at start-up; unused otherwise.) */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* ---- building messages ---- */

typedef struct mb {
  dbx_buf buf;
  mpk m;
  msgpack_packer *pk;
} mb;

static msgpack_packer *mb_open(mb *b) {
  memset(b, 0, sizeof *b);
  b->pk = mpk_open(&b->m, &b->buf);
  return b->pk;
}

static void str(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

static void bin(msgpack_packer *pk, const void *p, size_t n) { msgpack_pack_bin_with_body(pk, n ? p : "", n); }

/* Envelope [[[label, name]...], payload] around a payload, for 2 inputs. */
static void envelope(dbx_buf *out, const dbx_buf *payload) {
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 2);
  msgpack_pack_array(pk, 2);
  msgpack_pack_array(pk, 2);
  str(pk, "alpha");
  str(pk, "a.txt");
  msgpack_pack_array(pk, 2);
  str(pk, "beta");
  str(pk, "b.txt");
  bin(pk, payload ? payload->data : "", payload ? payload->len : 0);
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

/* A model of 2 classes (alpha, beta) x 3 terms; bad_weight puts w into feature_log_prob_. */
static void model_payload(dbx_buf *out, int bad_weight, double w) {
  double idf[3] = {1, 1.5, 2}, flp[6] = {-1, -1.2, -1.1, -0.9, -1.3, -1.4}, prior[2] = {-0.7, -0.69};
  if (bad_weight) flp[4] = w;
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 9);
  str(pk, "dbatch-nb-model");
  msgpack_pack_uint32(pk, 1);
  msgpack_pack_uint64(pk, 4);
  msgpack_pack_array(pk, 2);
  str(pk, "alpha");
  str(pk, "beta");
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint64(pk, 2);
  msgpack_pack_uint64(pk, 2);
  msgpack_pack_array(pk, 3);
  str(pk, "aa");
  str(pk, "bb");
  str(pk, "cc");
  bin(pk, idf, sizeof idf);
  bin(pk, flp, sizeof flp);
  bin(pk, prior, sizeof prior);
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

static void vocab_payload(dbx_buf *out) {
  double idf[3] = {1, 1.5, 2};
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 6);
  str(pk, "dbatch-nb-vocab");
  msgpack_pack_uint64(pk, 4);
  msgpack_pack_array(pk, 2);
  str(pk, "alpha");
  str(pk, "beta");
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint64(pk, 2);
  msgpack_pack_uint64(pk, 2);
  msgpack_pack_array(pk, 3);
  str(pk, "aa");
  str(pk, "bb");
  str(pk, "cc");
  bin(pk, idf, sizeof idf);
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

static void *load_bcast(const dbx_op *op, const nb_cfg *cfg, int model) {
  dbx_buf payload = {0}, env = {0};
  if (model) model_payload(&payload, 0, 0);
  else vocab_payload(&payload);
  envelope(&env, &payload);
  void *bc = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(op->bcast_load(cfg, env.data, env.len, &bc, &err), 0);
  dbx_buf_free(&payload);
  dbx_buf_free(&env);
  return bc;
}

static int count_rows(void *ctx, const dbx_value *row, dbx_err *err) {
  (*(int *)ctx)++;
  return 0;
}

/* ---- prediction partials ---- */

/* [nrows, rows, [key, count]] with one row [input, -1, cls, nil] and one confusion key. */
static void predict_partial(dbx_buf *out, uint32_t in, uint32_t cls, const char *key, size_t keylen) {
  mb rows;
  msgpack_packer *rp = mb_open(&rows);
  msgpack_pack_array(rp, 4);
  msgpack_pack_uint32(rp, in);
  msgpack_pack_int64(rp, -1);
  msgpack_pack_uint32(rp, cls);
  msgpack_pack_nil(rp);
  assert_int_equal(mpk_close(&rows.m), 0);
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint64(pk, 1);
  bin(pk, rows.buf.data, rows.buf.len);
  msgpack_pack_array(pk, 2);
  bin(pk, key, keylen);
  msgpack_pack_uint64(pk, 1);
  assert_int_equal(mpk_close(&b.m), 0);
  dbx_buf_free(&rows.buf);
  *out = b.buf;
}

static void conf_key(char *k, const char *truth, uint32_t cls, size_t *n) {
  size_t tl = strlen(truth);
  memcpy(k, truth, tl + 1);
  memcpy(k + tl + 1, &cls, 4);
  *n = tl + 5;
}

static void test_predict_good_partial(void **state) {
  nb_cfg cfg = {0, 0, 0};
  void *bc = load_bcast(&op_nb_predict, &cfg, 1);
  char k[32];
  size_t kn;
  conf_key(k, "alpha", 1, &kn);
  dbx_buf enc = {0};
  predict_partial(&enc, 1, 1, k, kn);
  void *p = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(op_nb_predict.decode(&cfg, enc.data, enc.len, &p, &err), 0);
  assert_int_equal(ops_check_partial(&op_nb_predict, &cfg, bc, p, &err), 0);
  int rows = 0;
  dbx_buf out = {0};
  assert_int_equal(op_nb_predict.finish(&cfg, bc, p, count_rows, &rows, &out, &err), 0);
  assert_int_equal(rows, 1);
  op_nb_predict.partial_free(p);
  op_nb_predict.bcast_free(bc);
  dbx_buf_free(&enc);
  dbx_buf_free(&out);
}

/* A confusion key without its NUL, or with one too early, is refused by decode. */
static void test_predict_key_without_nul(void **state) {
  nb_cfg cfg = {0, 0, 0};
  const char *keys[] = {"alpha\x01\x02\x03\x04", "al\0ha\0\0\0\0\0", "\0\0\0\0\0", "ab\0\0"};
  size_t lens[] = {10, 11, 5, 4};
  for (size_t i = 0; i < 4; i++) {
    dbx_buf enc = {0};
    predict_partial(&enc, 0, 0, keys[i], lens[i]);
    void *p = NULL;
    dbx_err err = {0, ""};
    assert_int_equal(op_nb_predict.decode(&cfg, enc.data, enc.len, &p, &err), DBX_ECORRUPT);
    assert_null(p);
    assert_true(strstr(err.msg, "malformed partial result") != NULL);
    dbx_buf_free(&enc);
  }
}

/* Indices past the model (class) or the input table (input) pass decode, which cannot know
 * them, and are refused by the check and by finish: a clean error, no read out of bounds. */
static void test_predict_indices_past_the_model(void **state) {
  nb_cfg cfg = {0, 0, 0};
  void *bc = load_bcast(&op_nb_predict, &cfg, 1);
  struct {
    uint32_t input, row_cls, key_cls;
    const char *want;
  } cases[] = {
      {0, 0, 99, "confusion entry 0 names class 99 of 2"},
      {0, 2, 0, "prediction row 0 names class 2 of 2"},
      {7, 0, 0, "prediction row 0 names input 7 of 2"},
      {0, 0, 0xffffffffu, "names class 4294967295 of 2"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char k[32];
    size_t kn;
    conf_key(k, "alpha", cases[i].key_cls, &kn);
    dbx_buf enc = {0}, out = {0};
    predict_partial(&enc, cases[i].input, cases[i].row_cls, k, kn);
    void *p = NULL;
    dbx_err err = {0, ""};
    assert_int_equal(op_nb_predict.decode(&cfg, enc.data, enc.len, &p, &err), 0);
    assert_int_equal(ops_check_partial(&op_nb_predict, &cfg, bc, p, &err), DBX_ECORRUPT);
    if (!strstr(err.msg, cases[i].want)) fail_msg("check: '%s' does not say '%s'", err.msg, cases[i].want);
    int rows = 0;
    err.msg[0] = 0;
    assert_int_equal(op_nb_predict.finish(&cfg, bc, p, count_rows, &rows, &out, &err), DBX_ECORRUPT);
    if (!strstr(err.msg, cases[i].want)) fail_msg("finish: '%s' does not say '%s'", err.msg, cases[i].want);
    /* Without a sink (emit NULL) finish checks the same. */
    assert_int_equal(op_nb_predict.finish(&cfg, bc, p, NULL, NULL, &out, &err), DBX_ECORRUPT);
    assert_int_equal(rows, 0);
    op_nb_predict.partial_free(p);
    dbx_buf_free(&enc);
    dbx_buf_free(&out);
  }
  op_nb_predict.bcast_free(bc);
}

/* Rows that do not parse, counts that do not add up: decode refuses. */
static void test_predict_bad_rows(void **state) {
  nb_cfg cfg = {0, 0, 0};
  char k[32];
  size_t kn;
  conf_key(k, "alpha", 0, &kn);
  dbx_buf good = {0};
  predict_partial(&good, 0, 0, k, kn);
  /* Every truncation and every single-byte change is refused or decodes to something the
   * check then judges; none reads out of bounds (this runs under ASan in the sanitizer build). */
  void *bc = load_bcast(&op_nb_predict, &cfg, 1);
  for (size_t n = 0; n < good.len; n++) {
    void *p = NULL;
    dbx_err err = {0, ""};
    assert_int_equal(op_nb_predict.decode(&cfg, good.data, n, &p, &err), DBX_ECORRUPT);
  }
  for (size_t i = 0; i < good.len; i++)
    for (int v = 0; v < 256; v += 17) {
      char *x = malloc(good.len);
      memcpy(x, good.data, good.len);
      x[i] = (char)v;
      void *p = NULL;
      dbx_err err = {0, ""};
      if (op_nb_predict.decode(&cfg, x, good.len, &p, &err) == 0) {
        dbx_buf out = {0};
        int rows = 0;
        if (ops_check_partial(&op_nb_predict, &cfg, bc, p, &err) == 0)
          assert_int_equal(op_nb_predict.finish(&cfg, bc, p, count_rows, &rows, &out, &err), 0);
        else
          assert_int_equal(op_nb_predict.finish(&cfg, bc, p, count_rows, &rows, &out, &err), DBX_ECORRUPT);
        op_nb_predict.partial_free(p);
        dbx_buf_free(&out);
      }
      free(x);
    }
  op_nb_predict.bcast_free(bc);
  dbx_buf_free(&good);
}

/* ---- fit partials ---- */

static void fit_partial(dbx_buf *out, uint32_t C, uint32_t V, double fill) {
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint32(pk, C);
  msgpack_pack_uint32(pk, V);
  msgpack_pack_array(pk, C);
  for (uint32_t c = 0; c < C; c++) msgpack_pack_uint64(pk, 2);
  double *fc = calloc((size_t)C * V + 1, sizeof *fc);
  for (size_t i = 0; i < (size_t)C * V; i++) fc[i] = fill;
  bin(pk, fc, (size_t)C * V * sizeof *fc);
  free(fc);
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

static void test_fit_shape_against_vocabulary(void **state) {
  nb_cfg cfg = {0, 0, 0};
  void *bc = load_bcast(&op_nb_fit, &cfg, 0);
  struct {
    uint32_t C, V;
    int ok;
  } cases[] = {{2, 3, 1}, {3, 3, 0}, {2, 2, 0}, {200, 3, 0}, {1, 6, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    dbx_buf enc = {0}, model = {0};
    fit_partial(&enc, cases[i].C, cases[i].V, 0.25);
    void *p = NULL;
    dbx_err err = {0, ""};
    assert_int_equal(op_nb_fit.decode(&cfg, enc.data, enc.len, &p, &err), 0);
    int want = cases[i].ok ? 0 : DBX_ECORRUPT;
    assert_int_equal(ops_check_partial(&op_nb_fit, &cfg, bc, p, &err), want);
    assert_int_equal(op_nb_fit.finish(&cfg, bc, p, NULL, NULL, &model, &err), want);
    if (!cases[i].ok) assert_true(strstr(err.msg, "but the vocabulary has 2 x 3") != NULL);
    op_nb_fit.partial_free(p);
    dbx_buf_free(&enc);
    dbx_buf_free(&model);
  }
  op_nb_fit.bcast_free(bc);
}

static void test_fit_sums_finite(void **state) {
  nb_cfg cfg = {0, 0, 0};
  double bad[] = {NAN, INFINITY, -INFINITY, -0.5};
  for (size_t i = 0; i < 4; i++) {
    dbx_buf enc = {0};
    fit_partial(&enc, 2, 3, bad[i]);
    void *p = NULL;
    dbx_err err = {0, ""};
    assert_int_equal(op_nb_fit.decode(&cfg, enc.data, enc.len, &p, &err), DBX_ECORRUPT);
    dbx_buf_free(&enc);
  }
  /* C x V x 8 that would wrap 2^64 is refused, not allocated. */
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint32(pk, 0x80000000u);
  msgpack_pack_uint32(pk, 0x80000000u);
  msgpack_pack_array(pk, 0);
  bin(pk, "", 0);
  assert_int_equal(mpk_close(&b.m), 0);
  void *p = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(op_nb_fit.decode(&cfg, b.buf.data, b.buf.len, &p, &err), DBX_ECORRUPT);
  dbx_buf_free(&b.buf);
}

/* ---- vocabulary and word count partials: merge_encoded refuses and changes nothing ---- */

static void vocab_partial(dbx_buf *out, uint64_t ndocs, uint64_t alpha, uint64_t beta, uint64_t df, const char *term,
                          size_t tn) {
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint64(pk, ndocs);
  msgpack_pack_array(pk, 4);
  str(pk, "alpha");
  msgpack_pack_uint64(pk, alpha);
  str(pk, "beta");
  msgpack_pack_uint64(pk, beta);
  msgpack_pack_array(pk, 2);
  msgpack_pack_str_with_body(pk, term, tn);
  msgpack_pack_uint64(pk, df);
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

static void test_vocab_partials(void **state) {
  nb_cfg cfg = {0, 0, 0};
  void *agg = op_nb_vocab.partial_new(&cfg);
  dbx_buf good = {0}, before = {0}, after = {0};
  dbx_err err = {0, ""};
  vocab_partial(&good, 3, 2, 1, 2, "aa", 2);
  assert_int_equal(op_nb_vocab.merge_encoded(&cfg, agg, good.data, good.len, &err), 0);
  assert_int_equal(op_nb_vocab.encode(&cfg, agg, &before, &err), 0);
  struct {
    uint64_t ndocs, alpha, beta, df;
    const char *term;
    size_t tn;
  } bad[] = {
      {3, 2, 2, 1, "aa", 2},   /* labels count 4 documents of 3 */
      {3, 2, 1, 4, "aa", 2},   /* a term in more documents than there are */
      {3, 2, 1, 0, "aa", 2},   /* a term in no document */
      {3, 3, 0, 1, "aa", 2},   /* a label with no document */
      {3, 2, 1, 1, "a\0b", 3}, /* a NUL in a term */
      {3, 2, 1, 1, "", 0},     /* an empty term */
      {UINT64_MAX, UINT64_MAX - 1, 1, 1, "aa", 2}, /* document count overflows the aggregate */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    dbx_buf enc = {0};
    vocab_partial(&enc, bad[i].ndocs, bad[i].alpha, bad[i].beta, bad[i].df, bad[i].term, bad[i].tn);
    assert_int_equal(op_nb_vocab.merge_encoded(&cfg, agg, enc.data, enc.len, &err), DBX_ECORRUPT);
    void *p = NULL;
    if (i < 6) assert_int_equal(op_nb_vocab.decode(&cfg, enc.data, enc.len, &p, &err), DBX_ECORRUPT);
    after.len = 0;
    assert_int_equal(op_nb_vocab.encode(&cfg, agg, &after, &err), 0);
    assert_int_equal(after.len, before.len);
    assert_memory_equal(after.data, before.data, before.len);  /* unchanged */
    dbx_buf_free(&enc);
  }
  op_nb_vocab.partial_free(agg);
  dbx_buf_free(&good);
  dbx_buf_free(&before);
  dbx_buf_free(&after);
}

/* nb_vocab needs its broadcast (the input table): an empty one is refused when the stage is
 * loaded, and map without one fails cleanly. */
static void test_vocab_without_broadcast(void **state) {
  nb_cfg cfg = {0, 0, 0};
  void *bc = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(op_nb_vocab.bcast_load(&cfg, "", 0, &bc, &err), DBX_ECORRUPT);
  assert_null(bc);
  void *p = op_nb_vocab.partial_new(&cfg);
  dbx_segment seg = {"x", 0, 0, 6, 0, 1, 0, 0, 6};
  dbx_batch b = {0, 1, &seg, "a\tbcd\n", 6};
  dbx_stats st = {0, 0, ""};
  assert_int_equal(op_nb_vocab.map(&cfg, NULL, &b, p, &st, &err), DBX_EPROTO);
  assert_int_equal(op_nb_fit.map(&cfg, NULL, &b, p, &st, &err), DBX_EPROTO);
  assert_int_equal(op_nb_predict.map(&cfg, NULL, &b, p, &st, &err), DBX_EPROTO);
  op_nb_vocab.partial_free(p);
}

static void test_wordcount_zero_counts(void **state) {
  wc_cfg cfg = {0, 0, 0, 0};
  void *agg = op_wordcount.partial_new(&cfg);
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 4);
  str(pk, "aa");
  msgpack_pack_uint64(pk, 3);
  str(pk, "bb");
  msgpack_pack_uint64(pk, 0);
  assert_int_equal(mpk_close(&b.m), 0);
  dbx_err err = {0, ""};
  assert_int_equal(op_wordcount.merge_encoded(&cfg, agg, b.buf.data, b.buf.len, &err), DBX_ECORRUPT);
  dbx_buf enc = {0};
  assert_int_equal(op_wordcount.encode(&cfg, agg, &enc, &err), 0);
  assert_int_equal(enc.len, 1);  /* still the empty array: nothing was merged */
  op_wordcount.partial_free(agg);
  dbx_buf_free(&b.buf);
  dbx_buf_free(&enc);
}

/* ---- model files ---- */

static void test_model_with_nan_or_inf_weight(void **state) {
  const char *dir = test_tmpdir();
  double bad[] = {NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < 3; i++) {
    dbx_buf payload = {0}, back = {0};
    model_payload(&payload, 1, bad[i]);
    char path[512];
    snprintf(path, sizeof path, "%s/m%zu.nbm", dir, i);
    dbx_err err = {0, ""};
    assert_int_equal(nb_model_save(path, payload.data, payload.len, &err), 0);
    assert_int_equal(nb_model_load(path, &back, &err), DBX_EMODEL);
    if (!strstr(err.msg, path) || !strstr(err.msg, "NaN or infinite weight in feature_log_prob_"))
      fail_msg("unclear error: %s", err.msg);
    /* The same payload in a stage broadcast is refused too. */
    dbx_buf env = {0};
    envelope(&env, &payload);
    nb_cfg cfg = {0, 0, 0};
    void *bc = NULL;
    assert_int_equal(op_nb_predict.bcast_load(&cfg, env.data, env.len, &bc, &err), DBX_EMODEL);
    dbx_buf_free(&env);
    dbx_buf_free(&payload);
    dbx_buf_free(&back);
  }
  /* A good model loads. */
  dbx_buf payload = {0}, back = {0};
  model_payload(&payload, 0, 0);
  char path[512];
  snprintf(path, sizeof path, "%s/good.nbm", dir);
  dbx_err err = {0, ""};
  assert_int_equal(nb_model_save(path, payload.data, payload.len, &err), 0);
  assert_int_equal(nb_model_load(path, &back, &err), 0);
  dbx_buf_free(&payload);
  dbx_buf_free(&back);
  rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_predict_good_partial),
      cmocka_unit_test(test_predict_key_without_nul),
      cmocka_unit_test(test_predict_indices_past_the_model),
      cmocka_unit_test(test_predict_bad_rows),
      cmocka_unit_test(test_fit_shape_against_vocabulary),
      cmocka_unit_test(test_fit_sums_finite),
      cmocka_unit_test(test_vocab_partials),
      cmocka_unit_test(test_vocab_without_broadcast),
      cmocka_unit_test(test_wordcount_zero_counts),
      cmocka_unit_test(test_model_with_nan_or_inf_weight),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
