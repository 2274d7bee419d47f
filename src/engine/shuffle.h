/* shuffle.h -- the partitioned reduce of keyed stages (private). See docs/keyed.md.
 *
 * Without partitions, every task's keyed partial goes to the coordinator, which merges them
 * all in memory. With R partitions:
 *   map task i   seals its table and writes it split by key hash into R files
 *                DIR/s<stage>-m<i>-p<r>.kv (atomically: the bytes of a batch's output do not
 *                depend on the attempt, so a retry or a speculative copy writes the same file);
 *                its partial, sent to the coordinator, is empty.
 *   reduce task r (a stage of R tasks without input, scheduled like any other) merges
 *                DIR/s<stage>-m<i>-p<r>.kv for i = 0..M-1, mapped, in one streaming pass
 *                that folds each key's states in the engine's tree over i (engine/agg.c), so
 *                each key's states fold exactly as without partitions: the answer is the same
 *                bytes for any R, in memory that does not grow with the keys. It writes
 *                DIR/s<stage>-r<r>.kv.
 *   the coordinator streams the R reduced files (mapped, not read into memory) in key order
 *                into the sink: partitions hold disjoint keys, so this is a k-way pick.
 * DIR must be reachable at the same path by every worker (local workers always can). */
#ifndef DBX_ENGINE_SHUFFLE_H
#define DBX_ENGINE_SHUFFLE_H
#include <stdint.h>
#include "dbatch.h"
#include "engine/kv.h"

#define SHUFFLE_DIR_MAX 448
#define SHUFFLE_R_MAX 4096

typedef struct kv_part_cfg {
  uint32_t r;                   /* partitions; 0 = every partial merges on the coordinator */
  uint32_t stage;               /* the stage's number in its job: names its files */
  uint32_t shared;              /* workers elsewhere reach dir too (the user gave it: --spill-dir) */
  uint64_t memory;              /* bytes a map task's table may hold before it spills (0: no bound) */
  char dir[SHUFFLE_DIR_MAX];    /* absolute, NUL-terminated */
} kv_part_cfg;

/* Bound a map task's partial by pc->memory (kv_set_budget), spilling into pc->dir. */
void shuffle_budget(const kv_part_cfg *pc, kvpart *p);

/* Check a configuration that came over the wire. */
int shuffle_check(const kv_part_cfg *pc, dbx_err *err);

/* Map side, at the end of a keyed map(): write p's partitions for batch index and empty p.
 * When p spilled (its budget), the spilled records are aggregated level by level (each level
 * a table under the budget, spilling the keys it cannot hold to the next) and each partition
 * file is the merge of the levels' disjoint runs. A full disk is DBX_ENOSPC naming the
 * directory. */
int shuffle_write_map(const kv_part_cfg *pc, kvpart *p, uint32_t index, dbx_err *err);
/* The same files from word count's own table m (counts under spec), when nothing of the
 * batch went into a keyed partial: the same bytes shuffle_write_map writes for those counts. */
int shuffle_write_map_counts(const kv_part_cfg *pc, const kv_spec *spec, const strmap *m, uint32_t index, dbx_err *err);
/* Word count past its memory: each time its table fills, the table is written split into
 * partition runs (a level: temporary files in pc->dir) and emptied; at the end the task's
 * partition files are the merge of the levels' runs (counts of a key add up), the same bytes
 * as one table would give. Spilled bytes are the levels'. */
typedef struct shuffle_levels {
  char lvl[SHUFFLE_DIR_MAX + 64];
  int n;
  uint64_t bytes;
} shuffle_levels;
void shuffle_levels_init(const kv_part_cfg *pc, shuffle_levels *L);
int shuffle_level_counts(const kv_part_cfg *pc, const kv_spec *spec, const strmap *m, shuffle_levels *L, dbx_err *err);
/* Unless rc, merge the levels into batch index's partition files; the levels are removed either way. */
int shuffle_levels_finish(const kv_part_cfg *pc, const kv_spec *spec, uint32_t index, shuffle_levels *L, int rc,
                          dbx_err *err);

/* The empty partitions of map task index (a task skipped under --on-task-failure=skip has no
 * output: its part of the result is missing, not the reduce stage's input). */
int shuffle_write_empty(const kv_part_cfg *pc, const kv_spec *spec, uint32_t index, dbx_err *err);

/* The reduce stage: task r (its batch index) merges partition r of nmap map outputs. */
typedef struct shuffle_cfg {
  kv_spec spec;
  kv_part_cfg pc;
  uint32_t nmap;
  uint32_t by_count;   /* also write the partition by count descending, then key (word count's
                          order): DIR/s<stage>-c<r>.kv, for count_stream_open; the spec is one count */
} shuffle_cfg;
extern const dbx_op op_shuffle_reduce;

/* Keyed entries in key order: the R reduced files of a stage, or one partial. */
typedef struct kv_stream kv_stream;
int kv_stream_open(const kv_part_cfg *pc, const kv_spec *spec, kv_stream **out, dbx_err *err);
int kv_stream_of(kvpart *p, kv_stream **out, dbx_err *err);
/* 1 and *e (valid until the next call), 0 at the end. */
int kv_stream_next(kv_stream *s, kv_entry *e);
void kv_stream_close(kv_stream *s);

/* Entries of the by_count files in count-descending order (then key): a k-way merge of the
 * R files, mapped. A file that is not what a reduce task writes is DBX_ECORRUPT. */
typedef struct count_stream count_stream;
int count_stream_open(const kv_part_cfg *pc, count_stream **out, dbx_err *err);
/* 1 and the next (key, count), valid until the next call; 0 at the end; < 0 corrupt. */
int count_stream_next(count_stream *s, const char **key, size_t *klen, uint64_t *count, dbx_err *err);
void count_stream_close(count_stream *s);

/* The by-count rows formatted on the workers (word count into a file): T output tasks (T = R
 * up to COUNT_OUT_MAX), task t
 * taking the rows between boundary entries t - 1 and t of the global order from every
 * partition, merged and formatted as the sink would (sink_format_row) into
 * DIR/s<stage>-o<t>.rows; the coordinator then copies the files into the sink in task order.
 * count_split walks the by-count files (headers; keys only at the cuts) and fills
 * off[(T + 1) x R]: off[t * R + r] = where task t starts in partition r (t = T: the ends);
 * *rows = the entries of all. */
#define COUNT_OUT_MAX 256
typedef struct count_out_cfg {
  kv_part_cfg pc;
  uint32_t ntasks;
  int32_t fmt;          /* sink_row_format */
} count_out_cfg;
extern const dbx_op op_count_output;
int count_split(const kv_part_cfg *pc, uint32_t ntasks, uint64_t *off, uint64_t *rows, dbx_err *err);
/* The broadcast the output tasks get: the offsets, checked by the operator's bcast_load. */
int count_split_encode(const kv_part_cfg *pc, uint32_t ntasks, const uint64_t *off, dbx_buf *out);
void count_out_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t t);
/* A task's file ends in a trailer: "DBXROWS1", u64 rows, u64 bytes of rows before it. 0 with
 * them when the file at fd is whole, else -1 (cut short, damaged: not to be copied). */
#define COUNT_OUT_TRAILER 24
int count_out_check(int fd, uint64_t *rows, uint64_t *bytes);
/* The entries of [from[r], to[r]) of each partition r (offsets of count_split), merged. */
int count_stream_open_range(const kv_part_cfg *pc, const uint64_t *from, const uint64_t *to, count_stream **out,
                            dbx_err *err);

/* 0 when every reduce task's files are there (with by_count, its by-count file too), else
 * DBX_ELOST naming the first one missing: a stage whose reduce tasks are all in the journal
 * may have lost them since (a spill directory cleared, a resume on another machine). */
int shuffle_check_reduced(const kv_part_cfg *pc, int by_count, dbx_err *err);
/* After a reduce stage failed with DBX_ELOST: maps[i] = 1 for each map task i of nmap whose
 * outputs are not all there (their count is returned), reds[r] = 1 for each reduce task r
 * still to run (its reduced partition, or with by_count its by-count file, is missing). */
uint32_t shuffle_lost(const kv_part_cfg *pc, uint32_t nmap, int by_count, uint8_t *maps, uint8_t *reds);
/* Bytes of a stage's files on disk now (map outputs and reduced partitions). */
uint64_t shuffle_bytes(const kv_part_cfg *pc, uint32_t nmap);
/* Relaying. A worker that cannot reach the spill directory (a remote one without a shared file
 * system) gets a reduce task's inputs in the task and sends a task's outputs back in its
 * result; the coordinator keeps them in its spill directory. The worker runs the task in a
 * private directory of its own (shuffle_use_dir). */
typedef struct shuffle_relay {
  kv_part_cfg pc;
  kv_spec spec;        /* what its partition files hold */
  int reduce;          /* 0: a map stage (task i writes its R partition files); 1: the reduce stage */
  int by_count;        /* the reduce stage also writes the by-count file */
  uint32_t nmap;       /* the reduce stage: map tasks */
} shuffle_relay;
/* In this thread, read and write files in dir instead of a configuration's (NULL: stop). */
void shuffle_use_dir(const char *dir);
/* What a file of task index named name (n bytes) is: 0 .. *required - 1 for the files the task
 * must send back, *required for an optional one (a map task's spilled-bytes note), -1 for a
 * name the task does not write. */
int shuffle_relay_output(const shuffle_relay *rl, uint32_t index, const char *name, size_t n, uint32_t *required);
/* Check the bytes of a relayed file of task index, kind k (what shuffle_relay_output said):
 * a partition file must decode, in order, holding only keys of its partition; a by-count file
 * likewise; a spilled-bytes note is 8 bytes. 0, or DBX_ECORRUPT with why in err. O(n). */
int shuffle_relay_check(const shuffle_relay *rl, uint32_t index, int k, const char *data, size_t n, dbx_err *err);
/* The path of reduce task index's input from map task i; its file name starts at *name_off. */
void shuffle_relay_input(const shuffle_relay *rl, uint32_t i, uint32_t index, char *path, size_t cap, size_t *name_off);
/* Write a relayed file (a checked name) into the configuration's directory, atomically. */
int shuffle_put_file(const kv_part_cfg *pc, const char *name, const char *data, size_t n, dbx_err *err);

/* Remove a stage's map outputs once its partitions are reduced. The reduced partitions stay
 * until the job's outputs are committed (cli_keyed_done): a job killed between its commit and
 * the journal's mark of a finished job is resumed from them, and its sinks then find their
 * rows already there. */
void shuffle_remove(const kv_part_cfg *pc, uint32_t nmap);
#endif
