/* job.h -- a job: stages, their options, and what happened while running them (private).
 * The CLI fills a job, the engine runs its stages, the summary reports it. */
#ifndef DBX_ENGINE_JOB_H
#define DBX_ENGINE_JOB_H
#include <stdint.h>
#include "dbatch.h"
#include "io/batch.h"
#include "io/input.h"
#include "sink/sink.h"

#define STAGE_MAX 4

typedef struct stage_stats {
  char name[32];
  uint64_t batches, tasks, attempts, records, bad_records, bytes;
  double seconds;     /* wall time of the stage */
  double t_read;      /* coordinator: planning and reading streamed input */
  double t_map;       /* summed over tasks */
  double t_merge;     /* aggregator */
  double t_finish;    /* finish + sink */
} stage_stats;

typedef struct stage {
  const char *name;
  const dbx_op *op;
  const void *cfg;         /* plain data, no pointers: it is shipped to workers as bytes */
  size_t cfg_size;
  const inputs *in;
  split_opts split;
  const char *bcast_in;    /* the previous stage's broadcast blob (may be NULL) */
  size_t bcast_in_len;
  sink *out;               /* rows go here, or NULL to drop them */
  dbx_buf bcast_out;       /* OUT: this stage's broadcast blob */
  stage_stats *st;         /* OUT */
} stage;

typedef struct job {
  const char *name;
  int workers;             /* 0 = run tasks in this process */
  inputs in;
  stage_stats stages[STAGE_MAX];
  int nstages;
  double t_start, elapsed;
  uint64_t rows_out;
  const char *out_dest;
} job;

/* Run one stage: split, map every batch, merge in tree order, finish into st->out.
 * Errors name the batch (file and byte/line range) that failed. */
int engine_run_stage(job *j, stage *st, dbx_err *err);

/* A new stage_stats slot in j for a stage called name (NULL when full). */
stage_stats *job_add_stage(job *j, const char *name);

/* Write the machine-readable summary (atomically). */
int job_write_summary(const job *j, const char *path, int ok, const dbx_err *failure, dbx_err *err);
#endif
