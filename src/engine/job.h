/* job.h -- a job: stages, their options, and what happened while running them (private).
 * The CLI fills a job, the engine runs its stages, the summary reports it. */
#ifndef DBX_ENGINE_JOB_H
#define DBX_ENGINE_JOB_H
#include <stdint.h>
#include "dbatch.h"
#include "io/batch.h"
#include "io/input.h"
#include "sink/sink.h"

#define STAGE_MAX 16  /* the classifier has 4; a keyed job 2 per stage plus 2 per recompute round */

typedef struct stage_stats {
  char name[32];
  uint64_t batches, tasks, attempts, records, bad_records, bytes;
  double seconds;     /* wall time of the stage */
  double t_read;      /* coordinator: planning and reading streamed input */
  double t_map;       /* summed over tasks */
  double t_merge;     /* aggregator */
  double t_finish;    /* finish + sink */
  /* The stage's plan, as run (engine_plan_stage): how its inputs were cut and the options
   * its partials depend on. Reported in the summary; recorded in the journal. */
  uint64_t plan_batch_bytes, plan_batch_records;
  int plan_whole_files;
  char plan_opts[256];
  int recompute;      /* it ran tasks of an earlier stage again: its records are not new */
  /* Progress: the bytes of its plain-file inputs (0 when it has none, or some are compressed
   * or streamed: then its tasks count), and whether it has not started yet, is running or
   * is done (STAGE_PLANNED, STAGE_RUNNING, STAGE_DONE). */
  uint64_t planned_bytes;
  int state;
} stage_stats;

enum { STAGE_PLANNED = 0, STAGE_RUNNING, STAGE_DONE };

typedef struct stage {
  const char *name;
  const dbx_op *op;
  const void *cfg;         /* plain data, no pointers: it is shipped to workers as bytes */
  size_t cfg_size;
  const inputs *in;        /* NULL with virtual_tasks */
  uint32_t virtual_tasks;  /* tasks without input (scheduler benchmark) */
  split_opts split;
  int csv_quotes;          /* CSV inputs: batches end at record ends outside quotes */
  const char *bcast_in;    /* the previous stage's broadcast blob (may be NULL) */
  size_t bcast_in_len;
  sink *out;               /* rows go here, or NULL to drop them */
  int skip_failed;         /* a failed task is left out and reported instead of failing */
  int never_skip;          /* not even under --on-task-failure=skip (a reduce task: leaving
                              one out would drop a whole partition of keys unreported) */
  uint32_t seq;            /* the stage's number in its job (journal key) */
  const char *plan_opts;   /* every option the stage's partials depend on, as canonical text
                              ("case_sensitive=0 max_record=0 ..."); see engine_plan_stage */
  const uint8_t *only;     /* or NULL: run only the tasks i < nonly with only[i] set; the others
                              count as done with empty partials (a recompute of lost outputs) */
  uint32_t nonly;
  const struct shuffle_relay *relay;  /* or NULL: the partitioned-reduce files its tasks read and
                                         write, relayed for workers that cannot reach them */
  double hold_until;       /* > 0: a stage without tasks that keeps the workers company (their
                              heartbeats, workers joining) until this time (time_mono) or a
                              deferred stop signal (coord_defer_interrupts) */
  void **keep;             /* or NULL: the merged partial is handed here (owned by the caller)
                              instead of being finished into rows */
  dbx_buf bcast_out;       /* OUT: this stage's broadcast blob */
  stage_stats *st;         /* OUT */
} stage;

typedef struct worker_info {
  char host[64];
  uint32_t id, slots;
  int64_t pid;
  int local;
  uint64_t tasks, bytes, failures;
  double busy_seconds;
  double cpu_seconds;      /* its process's and its children's, as last reported (0: unknown) */
  uint64_t peak_rss;       /* bytes, as last reported (0: unknown) */
  char state[16];          /* at the end: "finished", "killed", "exited", "lost", "excluded" */
} worker_info;

/* One failed attempt, where and why: printed when it happens, listed in the summary. */
typedef struct job_failure {
  char stage[32];
  uint32_t task, attempt, worker;   /* worker 0: this process */
  char host[64];
  int64_t pid;
  char where[512];                  /* input file(s) and byte/line range */
  char cause[512];                  /* exit status or signal, operator error, timeout, lost connection */
} job_failure;

/* A task given up under --on-task-failure=skip: its input is missing from the result. */
typedef struct job_missing {
  char stage[32];
  uint32_t task;
  char where[512];
} job_missing;

typedef struct job {
  const char *name;
  int workers;             /* 0 = run tasks in this process */
  inputs in;
  stage_stats stages[STAGE_MAX];
  int nstages;
  double t_start, elapsed;
  uint64_t rows_out;
  const char *out_dest;    /* the output as shown (a URI's password hidden), or NULL */
  const char *command;     /* the command line as shown (quoted, passwords hidden), or NULL */
  const char *results;     /* what the job reports besides its output (the classifier's
                              metrics), as text for the report, or NULL */
  double started_wall;     /* when the job started (seconds since the epoch) */
  const char *policy;      /* NULL when tasks ran in this process */
  worker_info *winfo;      /* filled by the coordinator; owned by the job */
  size_t nwinfo;
  uint64_t discarded;      /* late duplicate results thrown away */
  job_failure *failures;   /* owned */
  size_t nfailures;
  job_missing *missing;    /* owned */
  size_t nmissing;
  uint64_t speculated;     /* speculative copies started */
  struct journal *jr;      /* --job-dir journal, or NULL */
  uint32_t stage_no;       /* stages started so far (journal numbering) */
  uint64_t resumed;        /* tasks taken from the journal */
  unsigned bad_shown;      /* bad-record notes printed so far */
  struct ui *ui;           /* progress, dashboard, report (NULL: none) */
  const char *job_dir;     /* where the report goes (NULL: none) */
  uint64_t spilled_bytes;  /* partition files written by keyed stages (engine/shuffle.h) */
  /* --follow: micro-batches committed, bytes seen and not yet consumed, the wall-clock time
   * of the last commit, and the seconds from a micro-batch's scan to its commit (p50, p99). */
  int follow;
  uint64_t follow_epochs, follow_lag_bytes, follow_files;
  double follow_last_commit, follow_p50, follow_p99;
  double follow_rate;        /* bytes per second consumed by the last micro-batches */
  double follow_lag_seconds; /* how long data has waited unconsumed (0: none waits) */
  uint64_t left_out;       /* records the job left out by design (cooccur: users over --max-basket) */
  char left_out_what[96];  /* what they are ("users with more than 1000 items"), "" when none */
} job;

/* Record (and print) a failed attempt. */
void job_add_failure(job *j, const job_failure *f);
void job_add_missing(job *j, const char *stage_name, uint32_t task, const char *where);
void job_free_records(job *j);
/* A batch had bad records (skipped); the first few of the job are shown with where. */
void job_note_bad(job *j, const char *note, size_t n, uint64_t count);

/* Run one stage in this process: split, map every batch, merge in tree order, finish into
 * st->out. Errors name the batch (file and byte/line range) that failed. */
int engine_run_stage(job *j, stage *st, dbx_err *err);

/* One task: load b's bytes, map them into a new partial (OUT *partial, owned by the caller).
 * OUT *bytes: the bytes mapped. Used by the in-process runner and by workers alike. */
int engine_map_task(const dbx_op *op, const void *cfg, const void *bcast, loader *ld,
                    const batchdesc *b, const char *const *paths, void **partial, dbx_stats *st,
                    uint64_t *bytes, dbx_err *err);

/* Fix the plan of the job's next stage s (call just before coord_run_stage): with a journal,
 * a new job records s->split and s->plan_opts; a resumed one takes s->split from the journal
 * (so the stage is cut exactly as when the job started, on any machine) and refuses
 * (DBX_ECHANGED) options that differ from the record. Copies the plan into s->st. */
int engine_plan_stage(job *j, stage *s, dbx_err *err);

/* The default bytes per batch for inputs of total bytes: a function of the input alone
 * (never of workers or the machine), so a job cuts the same batches, and so gives the
 * same bytes, whatever runs it. */
uint64_t engine_default_batch_bytes(uint64_t total);

/* With a journal: take task b's result from it (1: done, partial added to ag), else 0.
 * Records its counters in st. */
struct agg;
int engine_resume_task(job *j, stage *s, struct agg *ag, uint32_t index, dbx_err *err);

/* Fault injection for tests (docs/faults.md): when set, called with every loaded batch just
 * before map(). Set once at process start, by worker processes only. */
extern void (*engine_fault_hook)(const dbx_batch *b);

/* The next batch of a stage: from the splitter, or an empty one while virtual tasks remain
 * (st->virtual_tasks, used by bench-tasks). 1, 0 at the end, or an error. */
int stage_next_batch(stage *st, splitter *sp, uint32_t *made, batchdesc *b, dbx_err *err);

/* "task 12 (file bytes 0-100)": where a batch came from, into out. */
void engine_describe_task(const batchdesc *b, const inputs *in, char *out, size_t cap);

/* A new stage_stats slot in j for a stage called name (NULL when full). */
stage_stats *job_add_stage(job *j, const char *name);
/* Name a stage the job will run later, so the dashboard and the report list it before it
 * starts; job_add_stage of that name then takes this entry. */
void job_plan_stage(job *j, const char *name);
/* How far the job is, 0..1: each stage counts the same, a stage by its bytes read when its
 * inputs' size is known, else by its tasks done. */
double job_progress(const job *j);

/* Write the machine-readable summary (atomically). */
int job_write_summary(const job *j, const char *path, int ok, const dbx_err *failure, dbx_err *err);
/* The summary as JSON text, appended to out. */
int job_render_summary(const job *j, int ok, const dbx_err *failure, dbx_buf *out);
#endif
