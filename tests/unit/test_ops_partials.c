/* test_ops_partials.c -- partial results and broadcasts as a hostile peer or a damaged file
 * would send them: every operator's decode / merge_encoded / check / finish returns a clean
 * error (never reads out of bounds), and a refused merge_encoded leaves the aggregate as it was. */
#include "check.h"

#include <math.h>
#include <msgpack.h>

#include "ops/nbayes.h"
#include "ops/ops.h"
#include "util/mpk.h"
#include "util/strmap.h"

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

/* A vocabulary of the classes alpha, beta and the terms t0 < t1 < t2. */
static void vocab_payload_of(dbx_buf *out, const char *t0, const char *t1, const char *t2) {
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
  str(pk, t0);
  str(pk, t1);
  str(pk, t2);
  bin(pk, idf, sizeof idf);
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

static void vocab_payload(dbx_buf *out) { vocab_payload_of(out, "aa", "bb", "cc"); }

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
  nb_cfg cfg = {CORPUS_DIR, 0, 0};
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
  nb_cfg cfg = {CORPUS_DIR, 0, 0};
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
  nb_cfg cfg = {CORPUS_DIR, 0, 0};
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
  nb_cfg cfg = {CORPUS_DIR, 0, 0};
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
  /* A key twice: a label (its counts still add up to the documents), a term. */
  for (int twice = 0; twice < 2; twice++) {
    mb b;
    msgpack_packer *pk = mb_open(&b);
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, 3);
    msgpack_pack_array(pk, 4);
    str(pk, "alpha");
    msgpack_pack_uint64(pk, 2);
    str(pk, twice ? "beta" : "alpha");
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_array(pk, 4);
    str(pk, "aa");
    msgpack_pack_uint64(pk, 1);
    str(pk, twice ? "aa" : "bb");
    msgpack_pack_uint64(pk, 1);
    assert_int_equal(mpk_close(&b.m), 0);
    void *p = NULL;
    assert_int_equal(op_nb_vocab.decode(&cfg, b.buf.data, b.buf.len, &p, &err), DBX_ECORRUPT);
    assert_null(p);
    assert_int_equal(op_nb_vocab.merge_encoded(&cfg, agg, b.buf.data, b.buf.len, &err), DBX_ECORRUPT);
    after.len = 0;
    assert_int_equal(op_nb_vocab.encode(&cfg, agg, &after, &err), 0);
    assert_memory_equal(after.data, before.data, before.len);  /* unchanged */
    dbx_buf_free(&b.buf);
  }
  op_nb_vocab.partial_free(agg);
  dbx_buf_free(&good);
  dbx_buf_free(&before);
  dbx_buf_free(&after);
}

/* nb_vocab needs its broadcast (the input table): an empty one is refused when the stage is
 * loaded, and map without one fails cleanly. */
/* The fit stage's broadcast of vocab_payload_of(t0, t1, t2). */
static void *fit_bcast(const nb_cfg *cfg, const char *t0, const char *t1, const char *t2) {
  dbx_buf payload = {0}, env = {0};
  vocab_payload_of(&payload, t0, t1, t2);
  envelope(&env, &payload);
  void *bc = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(op_nb_fit.bcast_load(cfg, env.data, env.len, &bc, &err), 0);
  dbx_buf_free(&payload);
  dbx_buf_free(&env);
  return bc;
}

/* The fit stage's vocabulary map is kept for the next stage of the process (nbayes.c
 * vc_map), and used again only for exactly the same terms: a document "aa cc dd" of class
 * alpha under the terms (aa, bb, cc), then (aa, cc, dd), then (aa, bb, cc) again. */
static void test_vocab_map_kept_only_for_the_same_terms(void **state) {
  nb_cfg cfg = {1, 0, 0};  /* CORPUS_DIR: a document per input file, labelled by the envelope */
  const char *terms[3][3] = {{"aa", "bb", "cc"}, {"aa", "cc", "dd"}, {"aa", "bb", "cc"}};
  const int nonzero[3][3] = {{1, 0, 1}, {1, 1, 1}, {1, 0, 1}};
  for (int k = 0; k < 3; k++) {
    void *bc = fit_bcast(&cfg, terms[k][0], terms[k][1], terms[k][2]);
    for (int again = 0; again < 2; again++) {  /* the second task of the stage uses its map */
      void *p = op_nb_fit.partial_new(&cfg);
      const char *doc = "aa cc dd\n";
      dbx_segment seg = {"a.txt", 0, 0, 9, 0, 1, 0, 0, 9};
      dbx_batch b = {0, 1, &seg, doc, 9};
      dbx_stats st = {0, 0, ""};
      dbx_err err = {0, ""};
      assert_int_equal(op_nb_fit.map(&cfg, bc, &b, p, &st, &err), 0);
      dbx_buf enc = {0};
      assert_int_equal(op_nb_fit.encode(&cfg, p, &enc, &err), 0);
      msgpack_unpacked u;
      msgpack_unpacked_init(&u);
      assert_int_equal(msgpack_unpack_next(&u, enc.data, enc.len, NULL), MSGPACK_UNPACK_SUCCESS);
      const msgpack_object *a = u.data.via.array.ptr;
      assert_int_equal(a[0].via.u64, 2);
      assert_int_equal(a[1].via.u64, 3);
      assert_int_equal(a[3].via.bin.size, 6 * sizeof(double));
      for (int j = 0; j < 3; j++) {  /* class alpha's row */
        double w;
        memcpy(&w, a[3].via.bin.ptr + j * sizeof(double), sizeof w);
        assert_int_equal(w > 0, nonzero[k][j]);
      }
      msgpack_unpacked_destroy(&u);
      dbx_buf_free(&enc);
      op_nb_fit.partial_free(p);
    }
    op_nb_fit.bcast_free(bc);
  }
}

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


/* ---- partials no honest worker can send (counts, keys, words, rows) ---- */

static void wc_pairs(dbx_buf *out, size_t n, const char *const *w, const size_t *wn, const uint64_t *c) {
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, (uint32_t)(2 * n));
  for (size_t i = 0; i < n; i++) {
    msgpack_pack_str_with_body(pk, w[i], wn[i]);
    msgpack_pack_uint64(pk, c[i]);
  }
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

/* 1 if merging the single entry (w, c) into a word count holding "the" = 3 is accepted. */
static int wc_accepts(const char *w, size_t wn, uint64_t c) {
  wc_cfg cfg = {0, 0, 0, 0};
  void *agg = op_wordcount.partial_new(&cfg);
  dbx_buf honest = {0}, enc = {0}, before = {0}, after = {0};
  const char *hw[] = {"the"};
  size_t hn[] = {3};
  uint64_t hc[] = {3};
  wc_pairs(&honest, 1, hw, hn, hc);
  dbx_err err = {0, ""};
  assert_int_equal(op_wordcount.merge_encoded(&cfg, agg, honest.data, honest.len, &err), 0);
  assert_int_equal(op_wordcount.encode(&cfg, agg, &before, &err), 0);
  wc_pairs(&enc, 1, &w, &wn, &c);
  int rc = op_wordcount.merge_encoded(&cfg, agg, enc.data, enc.len, &err);
  void *p = NULL;
  int drc = op_wordcount.decode(&cfg, enc.data, enc.len, &p, &err);
  assert_int_equal(rc, drc);
  if (p) op_wordcount.partial_free(p);
  if (rc) {
    assert_int_equal(rc, DBX_ECORRUPT);
    assert_int_equal(op_wordcount.encode(&cfg, agg, &after, &err), 0);
    assert_int_equal(after.len, before.len);
    assert_memory_equal(after.data, before.data, before.len);
  }
  op_wordcount.partial_free(agg);
  dbx_buf_free(&honest);
  dbx_buf_free(&enc);
  dbx_buf_free(&before);
  dbx_buf_free(&after);
  return rc == 0;
}

static void test_wordcount_hostile_entries(void **state) {
  assert_true(wc_accepts("the", 3, 2));
  assert_true(wc_accepts("h\xc3\xa9llo_1", 8, WC_COUNT_MAX));
  assert_false(wc_accepts("the", 3, UINT64_MAX));      /* would wrap "the" to 2 */
  assert_false(wc_accepts("the", 3, WC_COUNT_MAX + 1));
  static const struct { const char *w; size_t n; } bad[] = {
      {"a\tb", 3}, {"a\0b", 3}, {"a\nb", 3}, {"a\rb", 3}, {"a b", 3}, {"\xff\xfe", 2},
      {"\xc0\x80", 2}, {"\xed\xa0\x80", 3}, {"\xf4\x90\x80\x80", 4}, {"ab\xc3", 3}, {"", 0},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (wc_accepts(bad[i].w, bad[i].n, 5)) fail_msg("word %zu accepted", i);
  /* The same word twice in one partial. */
  wc_cfg cfg = {0, 0, 0, 0};
  const char *w[] = {"the", "the"};
  size_t wn[] = {3, 3};
  uint64_t c[] = {1, 1};
  dbx_buf enc = {0};
  wc_pairs(&enc, 2, w, wn, c);
  void *p = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(op_wordcount.decode(&cfg, enc.data, enc.len, &p, &err), DBX_ECORRUPT);
  assert_null(p);
  dbx_buf_free(&enc);
  /* In-memory merge refuses a sum that overflows. */
  void *l = op_wordcount.partial_new(&cfg), *r = op_wordcount.partial_new(&cfg);
  assert_int_equal(strmap_add(l, "the", 3, UINT64_MAX - 1, NULL), 0);
  assert_int_equal(strmap_add(r, "the", 3, 5, NULL), 0);
  assert_int_equal(op_wordcount.merge(&cfg, l, r, &err), DBX_ECORRUPT);
  op_wordcount.partial_free(l);
  op_wordcount.partial_free(r);
}

static void test_vocab_hostile_entries(void **state) {
  nb_cfg cfg = {CORPUS_TSV, 0, 0};
  struct { uint64_t nd; const char *t; size_t tn; int dup; } bad[] = {
      {3, "a\tb", 3, 0}, {3, "zz\n", 3, 0}, {3, "\xff\xfe", 2, 0}, {3, "aa", 2, 1}, {NB_DOCS_MAX + 1, "aa", 2, 0},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    mb b;
    msgpack_packer *pk = mb_open(&b);
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, bad[i].nd);
    msgpack_pack_array(pk, 2);
    str(pk, "alpha");
    msgpack_pack_uint64(pk, bad[i].nd);
    msgpack_pack_array(pk, bad[i].dup ? 4 : 2);
    for (int k = 0; k < (bad[i].dup ? 2 : 1); k++) {
      msgpack_pack_str_with_body(pk, bad[i].t, bad[i].tn);
      msgpack_pack_uint64(pk, 1);
    }
    assert_int_equal(mpk_close(&b.m), 0);
    void *p = NULL;
    dbx_err err = {0, ""};
    if (op_nb_vocab.decode(&cfg, b.buf.data, b.buf.len, &p, &err) != DBX_ECORRUPT) fail_msg("vocab case %zu accepted", i);
    dbx_buf_free(&b.buf);
  }
}

static void fit_partial_cc(dbx_buf *out, uint64_t cc0, uint64_t cc1, double fill) {
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint32(pk, 2);
  msgpack_pack_uint32(pk, 3);
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint64(pk, cc0);
  msgpack_pack_uint64(pk, cc1);
  double fc[6];
  for (int i = 0; i < 6; i++) fc[i] = fill;
  bin(pk, fc, sizeof fc);
  assert_int_equal(mpk_close(&b.m), 0);
  *out = b.buf;
}

/* The vocabulary counted 2 documents of each class: a fit partial may count no more, its
 * sums are at most its documents, and it matches the documents its result reports. */
static void test_fit_counts_against_vocabulary(void **state) {
  nb_cfg cfg = {CORPUS_TSV, 0, 0};
  void *bc = load_bcast(&op_nb_fit, &cfg, 0);
  struct { uint64_t c0, c1; double fill; int ok; } cases[] = {
      {2, 2, 0.5, 1}, {2, 1, 1.0, 1}, {1, 0, 0.0, 1}, {UINT64_MAX - 3, 0, 0.5, 0}, {3, 0, 0.5, 0}, {1, 1, 1.5, 0}, {0, 0, 0.1, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    dbx_buf enc = {0};
    fit_partial_cc(&enc, cases[i].c0, cases[i].c1, cases[i].fill);
    void *p = NULL;
    dbx_err err = {0, ""};
    assert_int_equal(op_nb_fit.decode(&cfg, enc.data, enc.len, &p, &err), 0);
    int rc = ops_check_partial(&op_nb_fit, &cfg, bc, p, &err);
    if ((rc == 0) != cases[i].ok) fail_msg("fit case %zu: %d %s", i, rc, err.msg);
    op_nb_fit.partial_free(p);
    dbx_buf_free(&enc);
  }
  /* Against the result message: 4 documents read, 4 counted; not 5, not 3 + 1 bad of 5 wrong. */
  dbx_buf enc = {0}, model = {0};
  fit_partial_cc(&enc, 2, 2, 0.5);
  void *p = NULL, *q = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(op_nb_fit.decode(&cfg, enc.data, enc.len, &p, &err), 0);
  assert_int_equal(ops_check_result(&op_nb_fit, &cfg, bc, p, 4, 0, &err), 0);
  assert_int_equal(ops_check_result(&op_nb_fit, &cfg, bc, p, 5, 1, &err), 0);
  assert_int_equal(ops_check_result(&op_nb_fit, &cfg, bc, p, 5, 0, &err), DBX_ECORRUPT);
  assert_int_equal(ops_check_result(&op_nb_fit, &cfg, bc, p, 3, 0, &err), DBX_ECORRUPT);
  assert_int_equal(ops_check_result(&op_nb_fit, &cfg, bc, p, 1, 2, &err), DBX_ECORRUPT);
  /* Two partials that each fit but together count more than the vocabulary: finish refuses. */
  assert_int_equal(op_nb_fit.decode(&cfg, enc.data, enc.len, &q, &err), 0);
  assert_int_equal(op_nb_fit.merge(&cfg, p, q, &err), 0);
  assert_int_equal(op_nb_fit.finish(&cfg, bc, p, NULL, NULL, &model, &err), DBX_ECORRUPT);
  assert_non_null(strstr(err.msg, "counts 4 documents of class 0, but the vocabulary has 2"));
  op_nb_fit.partial_free(p);
  op_nb_fit.partial_free(q);
  op_nb_fit.bcast_free(bc);
  dbx_buf_free(&enc);
  dbx_buf_free(&model);
}

/* n prediction rows of class 0 for input 0 at the given lines, probabilities pr (2 classes)
 * or nil; confusion "alpha" -> class 0 counts n. */
static void pred_rows(dbx_buf *out, uint64_t n, const int64_t *lines, const double *pr) {
  mb rows;
  msgpack_packer *rp = mb_open(&rows);
  for (uint64_t i = 0; i < n; i++) {
    msgpack_pack_array(rp, 4);
    msgpack_pack_uint32(rp, 0);
    msgpack_pack_int64(rp, lines[i]);
    msgpack_pack_uint32(rp, 0);
    if (pr) bin(rp, pr, 2 * sizeof *pr);
    else msgpack_pack_nil(rp);
  }
  assert_int_equal(mpk_close(&rows.m), 0);
  char k[32];
  size_t kn;
  conf_key(k, "alpha", 0, &kn);
  mb b;
  msgpack_packer *pk = mb_open(&b);
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint64(pk, n);
  bin(pk, rows.buf.data, rows.buf.len);
  msgpack_pack_array(pk, n ? 2 : 0);
  if (n) {
    bin(pk, k, kn);
    msgpack_pack_uint64(pk, n);
  }
  assert_int_equal(mpk_close(&b.m), 0);
  dbx_buf_free(&rows.buf);
  *out = b.buf;
}

/* 0 if accepted by decode and the check against the model; else the code. */
static int pred_judge(int format, int proba, uint64_t n, const int64_t *lines, const double *pr, uint64_t records) {
  nb_cfg cfg = {format, proba, 0};
  void *bc = load_bcast(&op_nb_predict, &cfg, 1);
  dbx_buf enc = {0};
  pred_rows(&enc, n, lines, pr);
  void *p = NULL;
  dbx_err err = {0, ""};
  int rc = op_nb_predict.decode(&cfg, enc.data, enc.len, &p, &err);
  if (!rc) rc = ops_check_result(&op_nb_predict, &cfg, bc, p, records, 0, &err);
  if (p) op_nb_predict.partial_free(p);
  op_nb_predict.bcast_free(bc);
  dbx_buf_free(&enc);
  return rc;
}

static void test_predict_impossible_rows(void **state) {
  int64_t dirl[] = {-1, -1}, tsvl[] = {1, 2}, same[] = {3, 3}, big[] = {INT64_MAX, 1};
  double good[2] = {0.75, 0.25}, nan2[2] = {NAN, NAN}, inf2[2] = {INFINITY, 0}, neg[2] = {1.5, -0.5},
         notmax[2] = {0.25, 0.75};
  assert_int_equal(pred_judge(CORPUS_DIR, 1, 1, dirl, good, 1), 0);
  assert_int_equal(pred_judge(CORPUS_TSV, 1, 2, tsvl, good, 2), 0);
  assert_int_equal(pred_judge(CORPUS_DIR, 1, 1, dirl, nan2, 1), DBX_ECORRUPT);
  assert_int_equal(pred_judge(CORPUS_DIR, 1, 1, dirl, inf2, 1), DBX_ECORRUPT);
  assert_int_equal(pred_judge(CORPUS_DIR, 1, 1, dirl, neg, 1), DBX_ECORRUPT);
  assert_int_equal(pred_judge(CORPUS_DIR, 1, 1, dirl, notmax, 1), DBX_ECORRUPT);
  assert_int_equal(pred_judge(CORPUS_DIR, 0, 1, big, NULL, 1), DBX_ECORRUPT);  /* a line in a directory corpus */
  assert_int_equal(pred_judge(CORPUS_TSV, 0, 1, big, NULL, 1), DBX_ECORRUPT);  /* a line past any file */
  assert_int_equal(pred_judge(CORPUS_TSV, 0, 1, dirl, NULL, 1), DBX_ECORRUPT); /* no line in a line corpus */
  assert_int_equal(pred_judge(CORPUS_TSV, 0, 2, same, NULL, 2), DBX_ECORRUPT); /* one document twice */
  assert_int_equal(pred_judge(CORPUS_DIR, 0, 2, dirl, NULL, 2), DBX_ECORRUPT); /* one file twice */
  assert_int_equal(pred_judge(CORPUS_DIR, 0, 0, dirl, NULL, 1), DBX_ECORRUPT); /* no row for the task's document */
  assert_int_equal(pred_judge(CORPUS_TSV, 0, 2, tsvl, NULL, 1), DBX_ECORRUPT); /* a row too many */
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
      cmocka_unit_test(test_vocab_map_kept_only_for_the_same_terms),
      cmocka_unit_test(test_vocab_without_broadcast),
      cmocka_unit_test(test_wordcount_zero_counts),
      cmocka_unit_test(test_model_with_nan_or_inf_weight),
      cmocka_unit_test(test_wordcount_hostile_entries),
      cmocka_unit_test(test_vocab_hostile_entries),
      cmocka_unit_test(test_fit_counts_against_vocabulary),
      cmocka_unit_test(test_predict_impossible_rows),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
