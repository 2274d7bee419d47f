/* ops.h -- the built-in operators and their configurations (private). */
#ifndef DBX_OPS_OPS_H
#define DBX_OPS_OPS_H
#include <stdint.h>
#include "dbatch.h"
#include "util/strmap.h"
#include "engine/kv.h"
#include "engine/shuffle.h"

/* Word count: rows (word TEXT, count INT), by count descending then word. */
typedef struct wc_cfg {
  int case_sensitive;
  uint64_t top;          /* 0 = all */
  uint64_t max_record;   /* longer lines are bad records (0 = no limit) */
  int bad_fail;          /* a bad record fails the job instead of being skipped */
} wc_cfg;
extern const dbx_op op_wordcount;
/* Word count's map into m, handing m to drain (which must empty it) whenever it holds more
 * than max bytes: the batch's words in bounded memory. What m holds at the end is the
 * caller's. */
int wc_map_draining(const wc_cfg *cfg, const dbx_batch *b, strmap *m, size_t max,
                    int (*drain)(void *ctx, strmap *m, dbx_err *err), void *ctx, dbx_stats *st, dbx_err *err);

/* The largest count one word count partial may hold: a task reads less than 2^48 bytes, and
 * a word takes at least 2 (itself and a separator). With it, 2^16 partials merge without
 * overflow; a sum that would overflow anyway is refused as malformed. */
#define WC_COUNT_MAX (1ull << 48)

/* 1 if p[0..n) is a word an honest tokenizer (tokenize.h) can emit: not empty, valid UTF-8
 * (no overlong forms, surrogates or code points past U+10FFFF), and its ASCII bytes letters,
 * digits or '_' (so never NUL, TAB, CR, LF or any other separator). Partials from peers are
 * checked with it. */
int ops_word_ok(const char *p, size_t n);

/* No-op: for scheduler benchmarks and tests; partial = number of batches seen. Each task
 * sleeps task_ms milliseconds (0: returns at once), like a task waiting on I/O. */
typedef struct noop_cfg {
  double task_ms;
} noop_cfg;
extern const dbx_op op_noop;

/* Exec: `dbatch run --map CMD` runs `/bin/sh -c cmd` once per batch (records on its standard
 * input); the partial is its standard output, and partials concatenate in batch order. A
 * failed command (exit status, signal, timeout) fails the attempt with its stderr's tail. */
#define EXEC_CMD_MAX 4096
typedef struct exec_cfg {
  char cmd[EXEC_CMD_MAX];   /* NUL-terminated (checked on the worker) */
  double timeout;           /* seconds one run may take, then its process group is killed (0: none) */
} exec_cfg;
extern const dbx_op op_exec;

/* Key-value reduce: `dbatch run --map CMD --reduce AGG,...`. The command's output lines are
 * KEY<TAB>VALUE (split at the first tab; no tab: an empty value), aggregated per key with
 * the engine's keyed partials (engine/kv.h); rows: key, then each aggregate, by key. */
typedef struct reduce_cfg {
  exec_cfg map;
  kv_spec spec;
  int bad_fail;             /* a value a numeric reducer cannot read fails the job */
  kv_part_cfg part;         /* partitioned reduce (engine/shuffle.h), or part.r = 0 */
} reduce_cfg;
extern const dbx_op op_reduce;

/* Word count with a partitioned reduce: word count's own map, its counts moved onto keyed
 * partials (one count, "count") written as partitions; the rows come from the reduce
 * stage's by-count files (engine/shuffle.h), in word count's order. */
typedef struct wcpart_cfg {
  wc_cfg wc;
  kv_part_cfg part;
} wcpart_cfg;
extern const kv_spec wc_count_spec;
extern const dbx_op op_wordcount_part;

/* `dbatch run --map CMD --reduce-cmd RCMD`: the map outputs' KEY<TAB>VALUE lines, stably
 * sorted by key (sorted per batch on the workers, merged in batch order), go to RCMD's
 * standard input; its standard output is the job's output. */
typedef struct reduce_cmd_cfg {
  exec_cfg map;
  exec_cfg reduce;
} reduce_cmd_cfg;
extern const dbx_op op_reduce_cmd;

/* Columns a record operator reads: CSV/TSV by index (from the header), JSONL by name. */
#define REC_COLS_MAX 40
typedef struct rec_cols {
  uint32_t format;                       /* rec_format (io/records.h) */
  uint32_t n;                            /* columns read */
  uint32_t col[REC_COLS_MAX];
  char name[REC_COLS_MAX][KV_NAME_MAX];  /* NUL-terminated */
} rec_cols;

/* `dbatch groupby`: columns 0..nkey-1 of cols are the key, the others feed the aggregates
 * (spec.agg[i].col indexes them after the key columns). Rows: key columns, aggregates. */
typedef struct groupby_cfg {
  rec_cols cols;
  uint32_t nkey;
  kv_spec spec;
  int bad_fail;
  kv_part_cfg part;
} groupby_cfg;
extern const dbx_op op_groupby;

/* `dbatch cooccur`, stage 1: orders (cols: user, item) -> each user's distinct items. Its
 * rows are baskets, one line each: items escaped (\\, \t, \n, \r) and joined by TAB;
 * users with more than max_basket items are left out (cooccur_left_out counts them).
 * Stage 2: basket lines -> for each item the top other items by users in common. */
typedef struct baskets_cfg {
  rec_cols cols;
  uint64_t max_basket;
  int bad_fail;
} baskets_cfg;
extern const dbx_op op_baskets;
typedef struct pairs_cfg {
  uint64_t top;
  kv_part_cfg part;
} pairs_cfg;
/* The pair counts' aggregates (one count, "users"), for the reduce stage of cooccur. */
extern const kv_spec cooccur_pair_spec;
/* Rows of cooccur from pair counts in key order (a NUL b -> users): the top per item. */
int cooccur_rows(const pairs_cfg *cfg, kv_stream *st, dbx_emit_fn emit, void *ctx, dbx_err *err);
extern const dbx_op op_pairs;
/* Users left out by the last op_baskets finish (coordinator side). */
uint64_t cooccur_left_out(void);

/* 1 for operators whose result is their partials concatenated in batch order (exec): the
 * engine writes each partial out as soon as all lower batches are written (agg_new_ordered)
 * instead of merging them in memory. */
int ops_ordered_output(const dbx_op *op);

/* The attempt number of the task the calling thread maps (1-based; 0 when the runner did not
 * say): exec hands it to the command as DBATCH_ATTEMPT. Set by the task runner before map(). */
extern _Thread_local uint32_t ops_task_attempt;

/* Look an operator up by name (NULL if unknown). */
const dbx_op *ops_find(const char *name);

/* Check a partial decoded from a peer against what the stage knows: its configuration and
 * its broadcast as loaded by op->bcast_load (may be NULL). decode() already checks every
 * shape it can see alone; this adds what needs the broadcast (class and input indices of
 * the classifier). 0 when the partial fits, or DBX_ECORRUPT with a message: blame the
 * attempt that sent it. Operators with nothing to check pass. */
int ops_check_partial(const dbx_op *op, const void *cfg, const void *bcast, const void *partial, dbx_err *err);

/* ops_check_partial, then the partial against the result message it came in: an honest
 * worker's partial covers exactly the documents it reports (records - bad_records), so a
 * classifier partial with a row, a document or a class count more or less is refused
 * (DBX_ECORRUPT with a message). Operators whose partials do not count records pass. */
int ops_check_result(const dbx_op *op, const void *cfg, const void *bcast, const void *partial, uint64_t records,
                     uint64_t bad_records, dbx_err *err);
#endif
