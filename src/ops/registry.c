/* registry.c -- the built-in operators by name, and their checks of partials from peers. */
#include <string.h>

#include "ops/nbayes.h"
#include "ops/ops.h"
#include "engine/shuffle.h"

typedef struct op_entry {
  const dbx_op *op;
  int (*check)(const void *cfg, const void *bcast, const void *partial, dbx_err *err);
  int ordered;  /* map-only output: written in batch order, never merged (see engine/agg.h) */
} op_entry;

static const op_entry builtin[] = {
    {&op_wordcount, NULL, 0},
    {&op_noop, NULL, 0},
    {&op_nb_vocab, NULL, 0},  /* its partials stand alone: merge_encoded/decode check them whole */
    {&op_nb_fit, nb_fit_check, 0},
    {&op_nb_predict, nb_predict_check, 0},
    {&op_exec, NULL, 1},
    {&op_reduce, NULL, 0},
    {&op_reduce_cmd, NULL, 0},
    {&op_groupby, NULL, 0},
    {&op_baskets, NULL, 0},
    {&op_pairs, NULL, 0},
    {&op_shuffle_reduce, NULL, 0},
    {&op_wordcount_part, NULL, 0},
    {&op_count_output, NULL, 0},
};

/* Built-ins only: operators of C plugins are found in their library (ops/plugin.c), which
 * the stage message carries. */
const dbx_op *ops_find(const char *name) {
  for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
    if (strcmp(builtin[i].op->name, name) == 0) return builtin[i].op;
  return NULL;
}

int ops_check_partial(const dbx_op *op, const void *cfg, const void *bcast, const void *partial, dbx_err *err) {
  for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
    if (builtin[i].op == op) return builtin[i].check ? builtin[i].check(cfg, bcast, partial, err) : 0;
  return 0;
}

int ops_check_result(const dbx_op *op, const void *cfg, const void *bcast, const void *partial, uint64_t records,
                     uint64_t bad_records, dbx_err *err) {
  int rc = ops_check_partial(op, cfg, bcast, partial, err);
  if (rc) return rc;
  if (op != &op_nb_vocab && op != &op_nb_fit && op != &op_nb_predict) return 0;
  if (bad_records > records)
    return dbx_seterr(err, DBX_ECORRUPT, "result reports %llu bad records of %llu", (unsigned long long)bad_records,
                      (unsigned long long)records);
  return nb_check_docs(op, partial, records - bad_records, err);
}

int ops_ordered_output(const dbx_op *op) {
  for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
    if (builtin[i].op == op) return builtin[i].ordered;
  return 0;
}
