/* worker.h -- the worker process role: connect to a coordinator, run tasks, send partials
 * (private). */
#ifndef DBX_WORKER_H
#define DBX_WORKER_H
#include <stdint.h>
#include "dbatch.h"

typedef struct worker_opts {
  const char *connect;     /* ipc://... or tcp://HOST:PORT */
  uint32_t slots;          /* tasks run at once (threads) */
  int local;               /* started by a coordinator on this machine: dies with it */
  int64_t parent;          /* local: the coordinator's pid (0: whoever our parent is) */
  int persist;             /* after a job, wait for the next one */
  int shared_fs;           /* can open the coordinator's input paths */
  double heartbeat;        /* seconds between heartbeats */
  double timeout;          /* silence after which the coordinator is presumed gone */
} worker_opts;

/* Run until the job ends (BYE), the coordinator is refused or, for a local worker, gone.
 * 0 on a normal end. */
int worker_main(const worker_opts *o, dbx_err *err);
#endif
