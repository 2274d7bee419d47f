/* ops.h -- the built-in operators and their configurations (private). */
#ifndef DBX_OPS_OPS_H
#define DBX_OPS_OPS_H
#include <stdint.h>
#include "dbatch.h"

/* Word count: rows (word TEXT, count INT), by count descending then word. */
typedef struct wc_cfg {
  int case_sensitive;
  uint64_t top;          /* 0 = all */
  uint64_t max_record;   /* longer lines are bad records (0 = no limit) */
  int bad_fail;          /* a bad record fails the job instead of being skipped */
} wc_cfg;
extern const dbx_op op_wordcount;

/* No-op: for scheduler benchmarks and tests; partial = number of batches seen. Each task
 * sleeps task_ms milliseconds (0: returns at once), like a task waiting on I/O. */
typedef struct noop_cfg {
  double task_ms;
} noop_cfg;
extern const dbx_op op_noop;

/* Look an operator up by name (NULL if unknown). */
const dbx_op *ops_find(const char *name);

/* Check a partial decoded from a peer against what the stage knows: its configuration and
 * its broadcast as loaded by op->bcast_load (may be NULL). decode() already checks every
 * shape it can see alone; this adds what needs the broadcast (class and input indices of
 * the classifier). 0 when the partial fits, or DBX_ECORRUPT with a message: blame the
 * attempt that sent it. Operators with nothing to check pass. */
int ops_check_partial(const dbx_op *op, const void *cfg, const void *bcast, const void *partial, dbx_err *err);
#endif
