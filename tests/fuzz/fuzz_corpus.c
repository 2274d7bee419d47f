/* fuzz_corpus.c -- the labelled-corpus document readers (label<TAB>text lines of a .tsv,
 * {"label": ..., "text": ...} objects of a .jsonl) through the whole classifier: the fuzz
 * bytes are the corpus file, trained on (vocabulary, then class sums with that vocabulary)
 * and predicted (with the model those make), each partial passing through encode/decode as
 * between a worker and the coordinator. Built per format (-DFUZZ_FORMAT=CORPUS_TSV|JSONL).
 * Invariants: every stage that finishes makes a broadcast the next stage loads, and the
 * predictions are one per document read. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#ifndef FUZZ_FORMAT
#error "build with -DFUZZ_FORMAT=CORPUS_TSV or CORPUS_JSONL"
#endif

/* map one batch under op, pass the partial through encode + decode, finish it. 0 when the
 * stage finished (*bout holds its broadcast), else nonzero. OUT *docs: records read. */
static int stage(const dbx_op *op, const nb_cfg *cfg, const void *bc, const fuzz_batch *fb, dbx_buf *bout,
                 uint64_t *docs, uint64_t *rows) {
  dbx_err err = {0, ""};
  dbx_stats st = {0, 0, ""};
  void *part = op->partial_new(cfg), *back = NULL;
  dbx_buf enc = {0};
  fuzz_rows fr = {op == &op_nb_predict ? 2 : 0, 0};
  if (!part) fuzz_fail("out of memory");
  int rc = op->map(cfg, bc, &fb->view, part, &st, &err);
  if (!rc) {
    fuzz_touch(st.bad_note, strlen(st.bad_note));
    if (st.bad_records > st.records) fuzz_fail("%s: more bad records than records", op->name);
    if (op->encode(cfg, part, &enc, &err) || op->decode(cfg, enc.data, enc.len, &back, &err))
      fuzz_fail("%s: a mapped partial does not survive encode + decode: %s", op->name, err.msg);
    rc = op->finish(cfg, bc, back, fuzz_emit, &fr, bout, &err);
  } else if (err.code == 0) {
    fuzz_fail("%s: map failed without saying why", op->name);
  }
  *docs = st.records - st.bad_records;
  *rows = fr.rows;
  op->partial_free(part);
  op->partial_free(back);
  dbx_buf_free(&enc);
  return rc;
}

static void *load_next(const dbx_op *next, const nb_cfg *cfg, const dbx_buf *payload) {
  dbx_buf env = {0};
  dbx_err err = {0, ""};
  void *bc = NULL;
  fuzz_envelope(1, payload->data, payload->len, &env);
  if (next->bcast_load(cfg, env.data, env.len, &bc, &err))
    fuzz_fail("%s cannot load the broadcast the previous stage made: %s", next->name, err.msg);
  dbx_buf_free(&env);
  return bc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fuzz_nb_get();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const fuzz_nb *nb = fuzz_nb_get();
  nb_cfg cfg = {FUZZ_FORMAT, 0, 0};
  nb_cfg strict = {FUZZ_FORMAT, 1, 1};  /* probabilities; a bad record fails the task */
  fuzz_batch fb = {0};
  fuzz_batch_make(&fb, (const char *)data, size, FUZZ_FORMAT == CORPUS_TSV ? "corpus.tsv" : "corpus.jsonl");
  dbx_buf vocab = {0}, model = {0}, conf = {0};
  uint64_t docs = 0, rows = 0, d2, r2;
  void *bc_vocab = NULL, *bc_model = NULL;

  /* The fuzz corpus predicted with the fixed model. */
  if (stage(&op_nb_predict, &cfg, nb->bc_model, &fb, &conf, &docs, &rows) == 0 && rows != docs)
    fuzz_fail("%llu predictions for %llu documents", (unsigned long long)rows, (unsigned long long)docs);
  conf.len = 0;
  stage(&op_nb_predict, &strict, nb->bc_model, &fb, &conf, &d2, &r2);

  /* The fuzz corpus trained on, then predicted with what it trained. */
  if (stage(&op_nb_vocab, &cfg, nb->bc_none, &fb, &vocab, &d2, &r2)) goto done;
  bc_vocab = load_next(&op_nb_fit, &cfg, &vocab);
  if (stage(&op_nb_fit, &cfg, bc_vocab, &fb, &model, &d2, &r2)) goto done;
  bc_model = load_next(&op_nb_predict, &cfg, &model);
  conf.len = 0;
  if (stage(&op_nb_predict, &strict, bc_model, &fb, &conf, &docs, &rows) == 0 && rows != docs)
    fuzz_fail("%llu predictions for %llu documents", (unsigned long long)rows, (unsigned long long)docs);
done:
  if (bc_vocab) op_nb_fit.bcast_free(bc_vocab);
  if (bc_model) op_nb_predict.bcast_free(bc_model);
  dbx_buf_free(&vocab);
  dbx_buf_free(&model);
  dbx_buf_free(&conf);
  fuzz_batch_free(&fb);
  return 0;
}
