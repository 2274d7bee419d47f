/* fuzz_op.c -- an operator's partial-result decoders on hostile bytes: decode, merge_encoded,
 * then merge into a valid partial and finish with the stage's valid broadcast, as the
 * coordinator does with a RESULT from a worker. Built once per operator (-DFUZZ_OP=...).
 *
 * Invariants checked besides memory safety: what decode accepts, encode turns into bytes
 * decode accepts again; what finish produces as a broadcast, the next stage can load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#define OP_WORDCOUNT 1
#define OP_NOOP 2
#define OP_NB_VOCAB 3
#define OP_NB_FIT 4
#define OP_NB_PREDICT 5
#define OP_REDUCE_CMD 6
#ifndef FUZZ_OP
#error "build with -DFUZZ_OP=OP_..."
#endif

typedef struct ctx {
  const dbx_op *op;
  const void *cfg, *cfg2;  /* cfg2: a second configuration finish is also run with */
  const void *bcast;
  dbx_buf base;            /* a valid encoded partial */
  uint32_t ntext;          /* text columns of a result row */
  const dbx_op *next;      /* the next stage, which must load this stage's broadcast */
  int no_finish;           /* finish runs a command (run --reduce-cmd): not per input */
} ctx;

static ctx C;

static void setup(void) {
  dbx_err err __attribute__((unused)) = {0, ""};
  memset(&C, 0, sizeof C);
#if FUZZ_OP == OP_WORDCOUNT
  static wc_cfg wc = {0, 0, 0, 0};
  static const char text[] = "the quick brown fox\njumps over the lazy dog\nthe end\n";
  C.op = &op_wordcount;
  C.cfg = &wc;
  C.ntext = 1;
  void *p = C.op->partial_new(&wc);
  dbx_batch b = {0, 0, NULL, text, sizeof text - 1};
  dbx_stats st = {0, 0, ""};
  if (!p || C.op->map(&wc, NULL, &b, p, &st, &err) || C.op->encode(&wc, p, &C.base, &err))
    fuzz_fail("word count setup: %s", err.msg);
  C.op->partial_free(p);
#elif FUZZ_OP == OP_REDUCE_CMD
  /* Sorted KEY<TAB>VALUE lines: "DBRC", u64 count, [u32 len][line]... */
  static reduce_cmd_cfg rc;
  snprintf(rc.map.cmd, sizeof rc.map.cmd, "cat");
  snprintf(rc.reduce.cmd, sizeof rc.reduce.cmd, "cat");
  C.op = &op_reduce_cmd;
  C.cfg = &rc;
  C.no_finish = 1;
  static const char base[] = "DBRC\x03\0\0\0\0\0\0\0"
                             "\x03\0\0\0a\t1" "\x03\0\0\0a\t2" "\x04\0\0\0b\t10";
  dbx_buf_append(&C.base, base, sizeof base - 1);
#elif FUZZ_OP == OP_NOOP
  static noop_cfg nc = {0};
  C.op = &op_noop;
  C.cfg = &nc;
  void *p = C.op->partial_new(&nc);
  *(uint64_t *)p = 3;
  if (C.op->encode(&nc, p, &C.base, &err)) fuzz_fail("noop setup");
  C.op->partial_free(p);
#else
  const fuzz_nb *nb = fuzz_nb_get();
  C.cfg = &nb->cfg;
#if FUZZ_OP == OP_NB_VOCAB
  C.op = &op_nb_vocab;
  C.bcast = nb->bc_none;
  C.next = &op_nb_fit;
  dbx_buf_append(&C.base, nb->part_vocab.data, nb->part_vocab.len);
#elif FUZZ_OP == OP_NB_FIT
  C.op = &op_nb_fit;
  C.bcast = nb->bc_vocab;
  C.next = &op_nb_predict;
  dbx_buf_append(&C.base, nb->part_fit.data, nb->part_fit.len);
#elif FUZZ_OP == OP_NB_PREDICT
  static nb_cfg proba;
  C.op = &op_nb_predict;
  C.bcast = nb->bc_model;
  C.ntext = 2;
  proba = nb->cfg;
  proba.proba = 1;
  C.cfg2 = &proba;
  dbx_buf_append(&C.base, nb->part_predict.data, nb->part_predict.len);
#endif
#endif
  if (!C.base.data) fuzz_fail("setup: no base partial");
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  setup();
  return 0;
}

/* finish(part); the broadcast it makes must load as the next stage's. */
static void finish(const void *cfg, void *part) {
  if (C.no_finish) return;
  dbx_err err = {0, ""};
  dbx_buf out = {0}, env = {0};
  fuzz_rows rows = {C.ntext, 0};
  int rc = C.op->finish(cfg, C.bcast, part, fuzz_emit, &rows, &out, &err);
  fuzz_touch(out.data, out.len);
  if (!rc && C.next) {
    void *bc = NULL;
    fuzz_envelope(1, out.data, out.len, &env);
    if (C.next->bcast_load(cfg, env.data, env.len, &bc, &err))
      fuzz_fail("%s finished a partial it decoded into a broadcast %s cannot load: %s", C.op->name,
                C.next->name, err.msg);
    C.next->bcast_free(bc);
  }
  dbx_buf_free(&out);
  dbx_buf_free(&env);
}

static void *decode_base(void) {
  void *p = NULL;
  dbx_err err = {0, ""};
  if (C.op->decode(C.cfg, C.base.data, C.base.len, &p, &err)) fuzz_fail("the valid partial no longer decodes");
  return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  dbx_err err = {0, ""};
  void *part = NULL;
  if (C.op->decode(C.cfg, p, size, &part, &err) == 0) {
    dbx_buf enc = {0};
    void *again = NULL;
    if (C.op->encode(C.cfg, part, &enc, &err) || C.op->decode(C.cfg, enc.data, enc.len, &again, &err))
      fuzz_fail("%s: a decoded partial does not survive encode + decode: %s", C.op->name, err.msg);
    C.op->partial_free(again);
    dbx_buf_free(&enc);
    finish(C.cfg, part);
    if (C.cfg2) finish(C.cfg2, part);
    /* left = a valid partial, right = the decoded one: the coordinator's tree merge. */
    void *base = decode_base();
    if (C.op->merge(C.cfg, base, part, &err) == 0) {
      finish(C.cfg, base);
      if (C.cfg2) finish(C.cfg2, base);
    }
    C.op->partial_free(base);
    C.op->partial_free(part);
  }
  if (C.op->merge_encoded) {
    void *base = decode_base();
    if (C.op->merge_encoded(C.cfg, base, p, size, &err) == 0) finish(C.cfg, base);
    C.op->partial_free(base);
  }
  return 0;
}
