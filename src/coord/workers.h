/* workers.h -- the coordinator's worker records (private): local worker processes (start,
 * reap, replace, crash evidence) and workers known by their ZeroMQ routing id.
 *
 * There is no fixed cap. A record whose worker is gone (and, for a local one, reaped) is
 * archived -- only what the summary and the report need -- and its slot is reused, so peers
 * that join and vanish cost nothing for long. Records are addressed by index while alive;
 * the task table refers to a worker by index only while one of its attempts runs there, and
 * the coordinator clears those references before a record is released. */
#ifndef DBX_COORD_WORKERS_H
#define DBX_COORD_WORKERS_H
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "engine/job.h"
#include "net/evidence.h"

typedef struct cworker {
  unsigned char rid[256];   /* ZeroMQ routing id */
  size_t rid_len;
  uint32_t id;              /* 1, 2, ... in join order; 0 until it says hello */
  char host[64];
  int64_t pid;
  pid_t child;              /* local worker process not yet reaped, or 0 */
  int local, alive, welcomed, shared_fs, excluded;
  uint32_t slots, inflight;
  uint64_t stage_sent;      /* id of the last STAGE sent */
  double last_heard, mean_task;
  uint64_t tasks, bytes, failures;
  double busy;
  uint64_t cpu_ms, rss, peak_rss;  /* its resource use, from its heartbeats */
  uint32_t bad[16], nbad;   /* distinct tasks with a failed attempt here */
  uint32_t overtaken;       /* its attempts that a copy elsewhere finished first */
  double unshared_at;       /* when it stopped reading our files in place (it refused one) */
  const char *end;          /* how it ended: "killed", "exited", "lost", "excluded"; NULL alive */
  evidence_page *ev;        /* local workers: what it runs (shared memory), or NULL */
} cworker;

/* A worker that is gone, as the summary and the report show it. */
typedef struct wgone {
  worker_info info;
  const char *end;
} wgone;

typedef struct wtable {
  cworker *w;
  size_t n, cap;
  wgone *gone;              /* archived records, in the order they went */
  size_t ngone, gonecap;
  uint32_t next_id;
  int local_procs;          /* local worker processes started and not yet reaped */
  uint32_t early_deaths;    /* local workers in a row that died before saying hello */
  uint32_t *ridx;           /* routing id -> record index + 1, open addressing; entries of
                               records since gone or reused are left, and never match */
  size_t ridcap, ridused;
  int ridbad;               /* the index is incomplete: look up by scanning */
} wtable;

void wt_init(wtable *t);
void wt_free(wtable *t);   /* kills nothing: the caller reaps its children first */

/* Start one local worker (`exe worker --connect ep --local ...`) with the signal mask
 * `mask`, and a record for it (matched by pid when it says hello). 0 or -1 (logged). */
int wt_spawn_local(wtable *t, const char *exe, const char *ep, double heartbeat, const sigset_t *mask);

/* A record for a new peer: a released slot or a new one. NULL on allocation failure. */
cworker *wt_add(wtable *t);
/* The live record with this routing id, or NULL. O(records). */
/* Index w by its routing id (after setting w->rid): wt_find_rid finds it in O(1). */
void wt_index_rid(wtable *t, cworker *w);
cworker *wt_find_rid(wtable *t, const unsigned char *rid, size_t n);
/* Our local child with this pid that has not said hello yet, or NULL. */
cworker *wt_find_child(wtable *t, int64_t pid);

/* Mark w gone (alive = 0) with how it ended; a record without a process to reap is archived
 * and released at once, a local one when it is reaped (wt_reaped). */
void wt_gone(wtable *t, cworker *w, const char *end);
/* The local child pid exited with status: its record (or NULL). Releases the record when
 * it is gone already; the caller decides about a replacement. */
cworker *wt_reaped(wtable *t, pid_t pid, int status, char *why, size_t cap);

/* Attempts the local worker w was running when it died, from its evidence page: up to max
 * (stage, index, attempt) triples into out. -1 when w keeps no evidence (a remote worker,
 * or one that never mapped its page). */
int wt_evidence(const cworker *w, uint64_t stage_id, uint32_t (*out)[2], int max);

/* Everything the summary needs, live and gone, in join order. OUT: *v (owned), *n. */
int wt_summary(const wtable *t, worker_info **v, size_t *n);
#endif
