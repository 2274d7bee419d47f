/* tasks.h -- the coordinator's task table for one stage (private): every task's state and
 * attempts, the queue of tasks to place, retries waiting out their backoff, and the task
 * times that speculation and the default task timeout derive from.
 *
 * Pure bookkeeping: no sockets, no clocks (callers pass `now`), no workers beyond an index
 * and an id, so every transition is unit-tested (tests/unit/test_tasks.c).
 *
 *   PENDING --start--> RUNNING --succeed--> DONE
 *      ^                  |  \--fail (counted) or requeue (innocent)--> PENDING
 *      |                  |      (after a backoff, elsewhere when possible)
 *      +------------------+--fail, max attempts reached--> GIVEN_UP (caller: fail or skip)
 * A task runs at most two attempts at once: the first and a speculative copy. */
#ifndef DBX_COORD_TASKS_H
#define DBX_COORD_TASKS_H
#include <stddef.h>
#include <stdint.h>
#include "io/batch.h"

enum { T_PENDING = 0, T_RUNNING, T_DONE, T_SKIPPED };
#define TT_AVOID 4

typedef struct ctask {
  batchdesc b;
  int state;
  uint32_t attempts;      /* attempts started (the next one is attempts + 1) */
  uint32_t failures;      /* attempts that failed: these count toward --max-attempts */
  uint32_t innocent;      /* attempts lost through no fault of their own (retried free) */
  long run[2];            /* worker index of each running attempt, -1 = none */
  uint32_t run_attempt[2];
  double run_start[2];
  uint64_t run_ticket[2];  /* the dashboard's ticket of each running attempt */
  uint8_t run_relayed[2]; /* each running attempt went with relayed files (its outputs must come back) */
  double not_before;      /* retry backoff */
  uint32_t avoid[TT_AVOID]; /* ids of workers where an attempt failed */
  uint32_t navoid;
} ctask;

typedef struct ttable {
  ctask *t;
  size_t n, cap;
  uint32_t *queue;        /* pending task indices, a ring */
  size_t qhead, qlen, qcap;
  uint32_t *delayed;      /* failed tasks waiting out their backoff */
  size_t ndelayed, delcap;
  size_t done;            /* DONE or SKIPPED */
  size_t undone;          /* materialized tasks not yet DONE or SKIPPED */
  size_t running;         /* attempts running */
  double *dur;            /* wall seconds of successful attempts */
  size_t ndur, durcap;
  double median, p90, stats_at;
} ttable;

void tt_init(ttable *tt);
void tt_free(ttable *tt);

/* A new task for batch b (moved in: the table owns b's segments). OUT: *idx. done = 1 adds
 * it finished already (resumed from the journal). */
int tt_add(ttable *tt, const batchdesc *b, int done, uint32_t *idx);

int tt_push(ttable *tt, uint32_t idx, int front);
uint32_t tt_pop(ttable *tt);
/* Retries whose backoff is over go to the front of the queue. */
int tt_release_due(ttable *tt, double now);

/* Attempt slot k (1: speculative copy) of idx starts on worker wi: returns its number. */
uint32_t tt_start(ttable *tt, uint32_t idx, int k, long wi, double now);
/* The running attempt of idx on worker wi numbered attempt: its slot, or -1 (given up,
 * finished, or never ours: the message is stale). */
int tt_slot(const ttable *tt, uint32_t idx, long wi, uint32_t attempt);
/* Attempt k succeeded: the task is DONE. Returns the slot of the other attempt still
 * running (the caller cancels it), or -1. */
int tt_succeed(ttable *tt, uint32_t idx, int k, double now);

typedef enum { TT_RETRY = 0, TT_OTHER_RUNS, TT_GIVE_UP } tt_verdict;
/* Attempt k failed on worker wid, counting toward max_attempts: retried after a backoff
 * (0.05 s doubling to 3.2 s), away from wid when another worker has room; or the other
 * attempt still runs; or the task is given up (the caller fails the job or tt_skip()s). */
tt_verdict tt_fail(ttable *tt, uint32_t idx, int k, uint32_t wid, uint32_t max_attempts, double now);
/* Attempt k was lost through no fault of its own (its worker died running something else):
 * back to the front of the queue, not counted. */
int tt_requeue(ttable *tt, uint32_t idx, int k);
/* Attempt k stops without an outcome (cancelled because the other attempt won, or
 * reassigned): just forget it. */
void tt_drop(ttable *tt, uint32_t idx, int k);
/* Leave a given-up task out (--on-task-failure=skip). */
void tt_skip(ttable *tt, uint32_t idx);

/* 1 if an attempt of idx failed on worker wid. */
int tt_avoids(const ctask *t, uint32_t wid);

/* Speculation: how long an attempt may run before a copy is worth starting. 1.5x the
 * median of finished attempts once three have finished; before that, 1.5x the longest one
 * or `first` seconds, whichever is more -- so the first tasks of a stage are covered too
 * (a worker that heartbeats but never answers must not hold a task forever). */
double tt_spec_limit(ttable *tt, double now, double first);
/* The default bound on one attempt when the user set none: 10x the stage's 90th
 * percentile task time (10x the longest while fewer than three finished), at least `floor`
 * seconds; 0 (no bound) until an attempt of the stage finished. */
double tt_default_timeout(ttable *tt, double now, double floor);
#endif
