/* gen_seeds.c -- writes the seed corpora of the fuzz targets with dbatch's own encoders:
 * real protocol messages, real partials of every operator, a real model file, corpora and
 * compressed files. Usage: gen_seeds DIR (DIR/<target>/ must exist; scripts/fuzz.sh seeds). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "engine/fstate.h"
#include "fuzz_common.h"
#include "io/batch.h"
#include "io/corpus.h"
#include "net/proto.h"

static const char *root;

static void put(const char *target, const char *name, const void *p, size_t n) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s/seed-%s", root, target, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f)) fuzz_fail("cannot write %s", path);
}

/* wire: frames of a 2-byte little-endian length and a message. */
static void frame(dbx_buf *seq, const dbx_buf *m) {
  unsigned char h[2] = {(unsigned char)(m->len & 0xff), (unsigned char)(m->len >> 8)};
  if (m->len > 0xffff) fuzz_fail("a seed message of %zu bytes does not fit a frame", m->len);
  dbx_buf_append(seq, h, 2);
  dbx_buf_append(seq, m->data, m->len);
}

static void shipped_task(dbx_buf *out, uint32_t index, const char *text, uint32_t nseg) {
  batchdesc b;
  memset(&b, 0, sizeof b);
  bseg seg[4];
  memset(seg, 0, sizeof seg);
  size_t n = strlen(text), at = 0;
  for (uint32_t i = 0; i < nseg; i++) {
    /* Cut at line ends: segment i ends after its share of lines. */
    size_t end = i + 1 == nseg ? n : at;
    if (i + 1 < nseg) {
      size_t want = at + (n - at) / (nseg - i);
      const char *nl = memchr(text + want, '\n', n - want);
      end = nl ? (size_t)(nl - text) + 1 : n;
    }
    seg[i].input = i;
    seg[i].off = 0;
    seg[i].len = end - at;
    seg[i].rec_first = 0;
    seg[i].rec_count = DBX_UNKNOWN;
    seg[i].dlen = end - at;
    at = end;
  }
  b.index = index;
  b.nseg = nseg;
  b.seg = seg;
  b.shipped = 1;
  b.data.data = (char *)text;
  b.data.len = n;
  msg_task(out, 1, 1, &b);
}

static void ref_task(dbx_buf *out, uint64_t off, uint64_t len, int whole) {
  bseg seg = {1, off, len, whole ? DBX_UNKNOWN : 0, whole ? 1 : DBX_UNKNOWN, 0};
  batchdesc b;
  memset(&b, 0, sizeof b);
  b.index = 3;
  b.nseg = 1;
  b.seg = &seg;
  b.whole = whole;
  msg_task(out, 1, 2, &b);
}

static void wire_seeds(const fuzz_nb *nb) {
  static const char *const paths[] = {"a.tsv", "b.tsv", "c.tsv", "d.tsv"};
  static const char tsv[] = "spam\tcheap pills now\nham\tproject review\neggs\tfried eggs\nbad line\n";
  dbx_buf m = {0}, seq = {0};
  wc_cfg wc = {0, 0, 0, 0};
  wc_cfg wc_limit = {1, 10, 12, 0};
  nb_cfg nbc = nb->cfg;

  msg_hello(&m, 4, "host-1", 1234, 1); put("wire", "hello", m.data, m.len);
  seq.len = 0; frame(&seq, &m); put("wire", "hello-framed", seq.data, seq.len);
  msg_welcome(&m, 7, 500, 1u << 30); seq.len = 0; frame(&seq, &m); put("wire", "welcome", seq.data, seq.len);
  msg_refuse(&m, "too many workers"); seq.len = 0; frame(&seq, &m); put("wire", "refuse", seq.data, seq.len);
  msg_failure(&m, 1, 2, 3, -14, "task failed: bad record"); seq.len = 0; frame(&seq, &m);
  put("wire", "failure", seq.data, seq.len);
  msg_cancel(&m, 1, 2, 3); seq.len = 0; frame(&seq, &m); put("wire", "cancel", seq.data, seq.len);
  msg_simple(&m, MSG_HEARTBEAT); seq.len = 0; frame(&seq, &m);
  msg_simple(&m, MSG_BYE); frame(&seq, &m);
  msg_simple(&m, MSG_REHELLO); frame(&seq, &m); put("wire", "heartbeat-bye-rehello", seq.data, seq.len);
  msg_heartbeat(&m, 1234, 56u << 20, 78u << 20); seq.len = 0; frame(&seq, &m);
  put("wire", "heartbeat-usage", seq.data, seq.len);
  {
    /* A reduce task with its relayed pieces, and a map result sending its partitions back. */
    batchdesc rb;
    memset(&rb, 0, sizeof rb);
    rb.index = 2;
    msg_file rf[2] = {{"s0-m0-p2.kv", 11, "DBKV....", 8}, {"s0-m1-p2.kv", 11, "", 0}};
    msg_task_files(&m, 1, 1, &rb, rf, 2); seq.len = 0; frame(&seq, &m);
    msg_result_files(&m, 1, 2, 1, 0, 0, "", 0, 0.1, "", 0, rf, 2); frame(&seq, &m);
    put("wire", "relayed-files", seq.data, seq.len);
  }

  /* Word count: a stage, shipped tasks of 1 and 3 segments, tasks by reference, a result. */
  seq.len = 0;
  msg_stage(&m, 1, "wordcount", &wc, sizeof wc, NULL, 0, paths, 3); frame(&seq, &m);
  shipped_task(&m, 0, "the quick brown fox\njumps over\nthe lazy dog\n", 1); frame(&seq, &m);
  shipped_task(&m, 1, "one two\nthree\nfour five six\n", 3); frame(&seq, &m);
  put("wire", "wordcount-shipped", seq.data, seq.len);
  seq.len = 0;
  msg_stage(&m, 1, "wordcount", &wc_limit, sizeof wc_limit, NULL, 0, paths, 2); frame(&seq, &m);
  ref_task(&m, 0, 40, 0); frame(&seq, &m);
  ref_task(&m, 17, 30, 0); frame(&seq, &m);
  ref_task(&m, 0, 60, 1); frame(&seq, &m);
  put("wire", "wordcount-by-reference", seq.data, seq.len);
  {
    void *p = op_wordcount.partial_new(&wc);
    dbx_batch b = {0, 0, NULL, "a b c a\n", 8};
    dbx_stats st = {0, 0, ""};
    dbx_buf enc = {0};
    dbx_err err;
    op_wordcount.map(&wc, NULL, &b, p, &st, &err);
    op_wordcount.encode(&wc, p, &enc, &err);
    msg_result(&m, 1, 0, 1, 1, 0, "", 8, 0.25, enc.data, enc.len);
    seq.len = 0;
    msg_stage(&m, 1, "wordcount", &wc, sizeof wc, NULL, 0, paths, 1); frame(&seq, &m);
    msg_result(&m, 1, 0, 1, 1, 0, "", 8, 0.25, enc.data, enc.len); frame(&seq, &m);
    put("wire", "wordcount-result", seq.data, seq.len);
    op_wordcount.partial_free(p);
    dbx_buf_free(&enc);
  }

  /* The classifier's three stages, each with its broadcast, and a shipped task each. */
  struct { const char *op, *name; const dbx_buf *bc; } st[] = {
      {"nb_vocab", "nb-vocab", &nb->env_none}, {"nb_fit", "nb-fit", &nb->env_vocab},
      {"nb_predict", "nb-predict", &nb->env_model}};
  for (int i = 0; i < 3; i++) {
    seq.len = 0;
    msg_stage(&m, 2, st[i].op, &nbc, sizeof nbc, st[i].bc->data, st[i].bc->len, paths, 1); frame(&seq, &m);
    shipped_task(&m, 0, tsv, 1); frame(&seq, &m);
    put("wire", st[i].name, seq.data, seq.len);
  }
  /* nb_predict with probabilities, a document corpus (one file per document, labelled). */
  {
    input v[2];
    memset(v, 0, sizeof v);
    v[0].path = (char *)"train/spam/1.txt";
    v[1].path = (char *)"train/ham/2.txt";
    char *labels[2] = {(char *)"spam", (char *)"ham"};
    corpus c = {CORPUS_DIR, {v, 2}, labels, 2};
    dbx_buf env = {0};
    nb_cfg dir = {CORPUS_DIR, 1, 0};
    nb_envelope(&c, nb->model.data, nb->model.len, &env);
    seq.len = 0;
    msg_stage(&m, 3, "nb_predict", &dir, sizeof dir, env.data, env.len, paths, 2); frame(&seq, &m);
    batchdesc b;
    memset(&b, 0, sizeof b);
    static const char docs[] = "cheap pills now\nproject review monday\n";
    bseg seg[2] = {{0, 0, 16, DBX_UNKNOWN, 1, 16}, {1, 0, 22, DBX_UNKNOWN, 1, 22}};
    b.nseg = 2;
    b.seg = seg;
    b.shipped = 1;
    b.whole = 1;
    b.data.data = (char *)docs;
    b.data.len = sizeof docs - 1;
    msg_task(&m, 3, 1, &b); frame(&seq, &m);
    put("wire", "nb-predict-documents", seq.data, seq.len);
    dbx_buf_free(&env);
  }
  dbx_buf_free(&m);
  dbx_buf_free(&seq);
}

static void op_seeds(const fuzz_nb *nb) {
  dbx_err err;
  dbx_buf enc = {0};
  wc_cfg wc = {0, 0, 0, 0};
  static const char *const texts[] = {"", "a\n", "the quick brown fox\njumps over the lazy dog\n",
                                      "Ünïcödé wörds, ünïcödé\n日本語 テキスト\n"};
  for (int i = 0; i < 4; i++) {
    void *p = op_wordcount.partial_new(&wc);
    dbx_batch b = {0, 0, NULL, texts[i], strlen(texts[i])};
    dbx_stats st = {0, 0, ""};
    enc.len = 0;
    op_wordcount.map(&wc, NULL, &b, p, &st, &err);
    op_wordcount.encode(&wc, p, &enc, &err);
    char name[16];
    snprintf(name, sizeof name, "text%d", i);
    put("op_wordcount", name, enc.data, enc.len);
    op_wordcount.partial_free(p);
  }
  noop_cfg nc = {0};
  uint64_t counts[] = {0, 1, 1000};
  for (int i = 0; i < 3; i++) {
    enc.len = 0;
    op_noop.encode(&nc, &counts[i], &enc, &err);
    char name[16];
    snprintf(name, sizeof name, "count%d", i);
    put("op_noop", name, enc.data, enc.len);
  }
  put("op_nb_vocab", "train", nb->part_vocab.data, nb->part_vocab.len);
  put("op_nb_fit", "train", nb->part_fit.data, nb->part_fit.len);
  put("op_nb_predict", "train", nb->part_predict.data, nb->part_predict.len);
  /* Empty partials, as a task of a batch without documents makes them. */
  const dbx_op *ops[] = {&op_nb_vocab, &op_nb_fit, &op_nb_predict};
  const char *dirs[] = {"op_nb_vocab", "op_nb_fit", "op_nb_predict"};
  for (int i = 0; i < 3; i++) {
    void *p = ops[i]->partial_new(&nb->cfg);
    enc.len = 0;
    ops[i]->encode(&nb->cfg, p, &enc, &err);
    put(dirs[i], "empty", enc.data, enc.len);
    ops[i]->partial_free(p);
  }
  /* Predictions with probabilities. */
  {
    nb_cfg pc = nb->cfg;
    pc.proba = 1;
    fuzz_batch fb = {0};
    fuzz_batch_make(&fb, nb->train, strlen(nb->train), "test.tsv");
    void *p = op_nb_predict.partial_new(&pc);
    dbx_stats st = {0, 0, ""};
    op_nb_predict.map(&pc, nb->bc_model, &fb.view, p, &st, &err);
    enc.len = 0;
    op_nb_predict.encode(&pc, p, &enc, &err);
    put("op_nb_predict", "proba", enc.data, enc.len);
    op_nb_predict.partial_free(p);
    fuzz_batch_free(&fb);
  }
  dbx_buf_free(&enc);
}

static void model_seeds(const fuzz_nb *nb) {
  char path[512];
  dbx_err err;
  snprintf(path, sizeof path, "%s/model_file/seed-train", root);
  if (nb_model_save(path, nb->model.data, nb->model.len, &err)) fuzz_fail("%s", err.msg);
  put("model_file", "payload", nb->model.data, nb->model.len);
}

static const char *const tsv_seeds[] = {
    "spam\tbuy cheap pills now\nham\tmeeting at noon\n",
    "spam\tcheap\n\nno tab here\n\tno label\nham\ttrailing line without newline",
    "ünï\tcödé wörds 日本語 テキスト\nüñí\tmore wörds\r\n",
    "a\tb\tc\nA\tB\nspam\tspam spam spam spam\n",
};
static const char *const jsonl_seeds[] = {
    "{\"label\": \"spam\", \"text\": \"buy cheap pills now\"}\n{\"label\": \"ham\", \"text\": \"meeting\"}\n",
    "{\"text\": \"no label\"}\n{\"label\": 3, \"text\": \"x\"}\nnot json\n{\"label\":\"a\",\"text\":\"b\"}  \n",
    ("{\"label\": \"\\u00fcn\\u00efc\\u00f6d\\u00e9\", \"text\": \"esc \\\" \\\\ \\/ \\b\\f\\n\\r\\t \\ud83d\\ude00\", "
    "\"extra\": [1, {\"a\": null}, true, false, -1.5e3]}\n"),
    "{}\n{\"label\":\"x\",\"text\":\"\"}\n{\"label\":\"\\u0000\",\"text\":\"nul\"}\n",
};

static void text_seeds(void) {
  char name[16];
  for (int i = 0; i < 4; i++) {
    snprintf(name, sizeof name, "%d", i);
    put("corpus_tsv", name, tsv_seeds[i], strlen(tsv_seeds[i]));
    put("corpus_jsonl", name, jsonl_seeds[i], strlen(jsonl_seeds[i]));
    /* json: one object each, the first line of each JSONL seed. */
    const char *nl = strchr(jsonl_seeds[i], '\n');
    put("json", name, jsonl_seeds[i], nl ? (size_t)(nl - jsonl_seeds[i]) : strlen(jsonl_seeds[i]));
  }
  static const char deep[] = "{\"label\":\"l\",\"a\":[[[[{\"b\":[1,2,{\"c\":\"d\"}]}]]]],\"text\":\"t\"}";
  put("json", "nested", deep, sizeof deep - 1);
}

static void gz(const char *text, size_t n, dbx_buf *out) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (deflateInit2(&zs, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) fuzz_fail("deflateInit2");
  unsigned char buf[65536];
  zs.next_in = (Bytef *)text;
  zs.avail_in = (uInt)n;
  int rc;
  do {
    zs.next_out = buf;
    zs.avail_out = sizeof buf;
    rc = deflate(&zs, Z_FINISH);
    dbx_buf_append(out, buf, sizeof buf - zs.avail_out);
  } while (rc == Z_OK);
  deflateEnd(&zs);
}

static void zst(const char *text, size_t n, dbx_buf *out) {
  size_t cap = ZSTD_compressBound(n);
  if (dbx_buf_reserve(out, cap)) fuzz_fail("out of memory");
  size_t k = ZSTD_compress(out->data + out->len, cap, text, n, 3);
  if (ZSTD_isError(k)) fuzz_fail("ZSTD_compress");
  out->len += k;
}

static void compressed_seeds(void) {
  static const char *const texts[] = {"", "one line\n", "two\nlines without a final newline",
                                      "spam\tcheap pills\nham\tmeeting\n\n\nlast\n"};
  dbx_buf b = {0};
  char name[16];
  for (int i = 0; i < 4; i++) {
    snprintf(name, sizeof name, "%d", i);
    b.len = 0; gz(texts[i], strlen(texts[i]), &b); put("reader_gz", name, b.data, b.len);
    b.len = 0; zst(texts[i], strlen(texts[i]), &b); put("reader_zst", name, b.data, b.len);
  }
  /* Several members / frames back to back: one stream. */
  b.len = 0;
  gz(texts[1], strlen(texts[1]), &b);
  gz(texts[2], strlen(texts[2]), &b);
  put("reader_gz", "members", b.data, b.len);
  b.len = 0;
  zst(texts[1], strlen(texts[1]), &b);
  zst(texts[3], strlen(texts[3]), &b);
  put("reader_zst", "frames", b.data, b.len);
  /* A longer stream: many short lines, more than one output buffer. */
  dbx_buf t = {0};
  for (int i = 0; i < 3000; i++) {
    char line[32];
    int k = snprintf(line, sizeof line, "line %d\n", i);
    dbx_buf_append(&t, line, (size_t)k);
  }
  b.len = 0; gz(t.data, t.len, &b); put("reader_gz", "long", b.data, b.len);
  b.len = 0; zst(t.data, t.len, &b); put("reader_zst", "long", b.data, b.len);
  dbx_buf_free(&t);
  dbx_buf_free(&b);
}

/* follow_state: a running state of two files, and a windowed one with a pending window. */
static void follow_state_seeds(void) {
  fstate_file files[2] = {{"logs/a.log", 2049, 131, 4096}, {"logs/b.log", 2049, 132, 17}};
  fstate_range wr[2] = {{"logs/a.log", 100, 4096}, {"logs/b.log", 0, 17}}, pr[1] = {{"logs/a.log", 0, 100}};
  fstate s;
  memset(&s, 0, sizeof s);
  s.fingerprint = 0x1234abcd;
  s.epoch = 7;
  s.files = files;
  s.nfiles = 2;
  s.state = "DBKV\x01\x01\x01\0";
  s.state_len = 8;
  dbx_buf b = {0};
  fstate_encode(&s, &b);
  put("follow_state", "running", b.data, b.len);
  s.wstart = 1795852560;
  s.wclosed = 3;
  s.wr = wr;
  s.nwr = 2;
  s.pend_on = 1;
  s.pend_k = 2;
  s.pend_start = 1795852500;
  snprintf(s.pend_token, sizeof s.pend_token, "%s", "123:456:789");
  s.pend_enc = "DBKV\x01\x01\x01\0";
  s.pend_enc_len = 8;
  s.pend_wr = pr;
  s.pend_nwr = 1;
  b.len = 0;
  fstate_encode(&s, &b);
  put("follow_state", "windowed", b.data, b.len);
  dbx_buf_free(&b);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: gen_seeds DIR\n");
    return 2;
  }
  root = argv[1];
  follow_state_seeds();
  const fuzz_nb *nb = fuzz_nb_get();
  wire_seeds(nb);
  op_seeds(nb);
  model_seeds(nb);
  text_seeds();
  compressed_seeds();
  return 0;
}
