/* coord.h -- the coordinator role: local and remote workers over ZeroMQ, the task table,
 * placement by policy, retries, and the deterministic merge of results (private). */
#ifndef DBX_COORD_H
#define DBX_COORD_H
#include <stdint.h>
#include "engine/job.h"
#include "engine/sched.h"
#include "net/transport.h"

typedef struct coord_opts {
  int workers;              /* local worker processes to start */
  const char *listen;       /* tcp://HOST:PORT for remote workers, or NULL */
  sched_policy policy;
  uint64_t seed;
  int ship;                 /* send batch bytes even to workers sharing the file system */
  uint32_t prefetch;        /* tasks a worker may hold beyond its slots */
  double heartbeat;         /* seconds */
  double worker_timeout;    /* seconds of silence before a remote worker is dead */
  uint32_t max_attempts;
  uint64_t max_msg;         /* largest message accepted from a peer */
  uint32_t wait_workers;    /* hold the first task until this many workers joined */
  double task_timeout;      /* seconds one attempt may run (0: no limit) */
  uint32_t exclude_after;   /* exclude a worker after failures of this many different tasks (0: never) */
  int speculation;          /* copy stragglers to free workers */
  int skip_failed;          /* --on-task-failure=skip */
  const tr_keypair *key;    /* CURVE on --listen: the coordinator's key pair, or NULL */
  tr_authz *authz;          /* with key: the workers admitted (taken over by coord_new) */
  const char *waiting_hint;  /* said once while no worker has joined (NULL: how to start one) */
  double join_timeout;      /* with listen: fail after this long without any worker, and
                               stop holding for --wait-workers (0: wait forever) */
} coord_opts;

typedef struct coord coord;

/* Start the coordinator: bind, spawn local workers. *out is owned by the caller. */
int coord_new(const coord_opts *o, coord **out, dbx_err *err);
/* Run one stage on the workers (or in this process when there are none and none can join). */
int coord_run_stage(coord *c, job *j, stage *s, dbx_err *err);
/* The endpoint --listen was bound to (the port chosen when it said '*'), into out. */
int coord_listen_endpoint(coord *c, char *out, size_t cap);
/* Tell workers the job is over, reap local workers, fill j's per-worker summary. NULL ok. */
void coord_free(coord *c, job *j);
/* The signal (SIGINT, SIGTERM) that stopped the job, or 0. */
int coord_interrupt_signal(void);
/* From now on Ctrl-C and SIGTERM do not stop a stage: they are only recorded, for
 * coord_stop_signal (a followed job finishes its micro-batch, commits it, then stops). */
void coord_defer_interrupts(void);
int coord_stop_signal(void);
/* Has the job workers (local or --listen), which need heartbeats between stages too? */
int coord_has_workers(const coord *c);
#endif
