/* agg.h -- the aggregator: merges partials in a fixed binary tree over batch indices (private).
 *
 * Node (s, L) covers indices [s, s + 2^L). A partial is merged into its sibling as soon as
 * both are complete, always as merge(left, right); the right edge of the tree is folded when
 * the number of batches is known. The result depends only on the partials and their indices,
 * never on arrival order, so floating-point sums are bit-identical across runs. Memory holds
 * only the partials whose subtree is not yet complete. */
#ifndef DBX_ENGINE_AGG_H
#define DBX_ENGINE_AGG_H
#include <stdint.h>
#include "dbatch.h"

typedef struct agg agg;

agg *agg_new(const dbx_op *op, const void *cfg);
/* Ordered streaming, for operators whose result is their partials concatenated in batch
 * order (ops_ordered_output: map-only `dbatch run`). Instead of a merge tree, a reorder
 * buffer: the partial of batch i is handed to op->finish(cfg, NULL, partial, emit, emit_ctx,
 * NULL) -- which writes it out -- as soon as batches 0..i-1 have been, and then freed. Memory
 * holds only the partials that arrived ahead of a missing lower one, never the whole output.
 * agg_finish then returns an empty partial (whose finish writes nothing). emit may be NULL. */
agg *agg_new_ordered(const dbx_op *op, const void *cfg, dbx_emit_fn emit, void *emit_ctx);
/* Give the partial of batch index (ownership passes to the aggregator). A second partial for
 * the same index is an engine bug and fails with DBX_EINVAL. */
int agg_add(agg *a, uint32_t index, void *partial, dbx_err *err);
/* The same for an encoded partial (blob: malloc'd, ownership passes). It is decoded only if
 * it must be; as the right side of a merge it goes straight in through op->merge_encoded. */
int agg_add_encoded(agg *a, uint32_t index, char *blob, size_t n, dbx_err *err);
/* Fold everything given n batches (all of 0..n-1 must have been added). OUT *result is owned
 * by the caller (op->partial_free); an empty partial when n is 0. */
int agg_finish(agg *a, uint32_t n, void **result, dbx_err *err);
/* Frees held partials; accepts NULL. */
void agg_free(agg *a);
#endif
