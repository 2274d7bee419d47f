/* fuzz_model_file.c -- the naive Bayes model-file loader (nb_model_load) on hostile files,
 * and what the loaded model is then used for: its class names (nb_model_classes), the
 * prediction stage's broadcast built around it, and predictions of a few documents.
 * A model the loader accepts must be one the prediction stage loads and runs.
 * The fuzz bytes are tried twice: as the file, and as the payload of a file with a valid
 * header and checksum (else the checksum would stop nearly every mutation of the payload). */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "fuzz_common.h"

static const char docs[] =
    "spam\tcheap pills now\nham\tproject review monday\neggs\teggs eggs toast\nfish\tunknown words only\n";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fuzz_nb_get();
  return 0;
}

static void load(const uint8_t *data, size_t size) {
  const char *path = fuzz_file(data, size);
  dbx_buf model = {0}, env = {0};
  dbx_err err = {0, ""};
  if (nb_model_load(path, &model, &err) == 0) {
    char **names = NULL;
    uint32_t nclass = 0, nvocab = 0;
    if (nb_model_classes(model.data, model.len, &names, &nclass, &nvocab, &err))
      fuzz_fail("a model nb_model_load accepted has no class names: %s", err.msg);
    for (uint32_t c = 0; c < nclass; c++) {
      fuzz_touch(names[c], strlen(names[c]));
      free(names[c]);
    }
    free(names);
    const fuzz_nb *nb = fuzz_nb_get();
    nb_cfg cfg = nb->cfg;
    cfg.proba = 1;
    void *bc = NULL;
    fuzz_envelope(1, model.data, model.len, &env);
    if (op_nb_predict.bcast_load(&cfg, env.data, env.len, &bc, &err))
      fuzz_fail("a model nb_model_load accepted does not load as a broadcast: %s", err.msg);
    fuzz_batch fb = {0};
    fuzz_batch_make(&fb, docs, sizeof docs - 1, "test.tsv");
    void *part = op_nb_predict.partial_new(&cfg);
    dbx_stats st = {0, 0, ""};
    if (!part) fuzz_fail("out of memory");
    if (op_nb_predict.map(&cfg, bc, &fb.view, part, &st, &err) == 0) {
      dbx_buf out = {0};
      fuzz_rows rows = {2, 0};
      op_nb_predict.finish(&cfg, bc, part, fuzz_emit, &rows, &out, &err);
      dbx_buf_free(&out);
    }
    op_nb_predict.partial_free(part);
    op_nb_predict.bcast_free(bc);
    fuzz_batch_free(&fb);
  } else if (err.code == 0 || !strstr(err.msg, path)) {
    fuzz_fail("nb_model_load failed without naming the file: '%s'", err.msg);
  }
  dbx_buf_free(&model);
  dbx_buf_free(&env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  load(data, size);
  dbx_buf file = {0};
  unsigned char head[16], tail[8];
  uint64_t h = XXH64(data, size, 0);
  memcpy(head, "DBXNBM01", 8);
  for (int i = 0; i < 8; i++) {
    head[8 + i] = (unsigned char)((uint64_t)size >> (8 * i));
    tail[i] = (unsigned char)(h >> (8 * i));
  }
  if (dbx_buf_append(&file, head, 16) || dbx_buf_append(&file, size ? (const char *)data : "", size) ||
      dbx_buf_append(&file, tail, 8))
    fuzz_fail("out of memory");
  load((const uint8_t *)file.data, file.len);
  dbx_buf_free(&file);
  return 0;
}
