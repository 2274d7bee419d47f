/* worker.h -- the worker process role: connect to a coordinator, run tasks, send partials
 * (private). */
#ifndef DBX_WORKER_H
#define DBX_WORKER_H
#include <stdint.h>
#include "dbatch.h"
#include "net/transport.h"

typedef struct worker_opts {
  const char *connect;     /* ipc://... or tcp://HOST:PORT */
  uint32_t slots;          /* tasks run at once (threads) */
  int local;               /* started by a coordinator on this machine: dies with it */
  int64_t parent;          /* local: the coordinator's pid (0: whoever our parent is) */
  int persist;             /* after a job, wait for the next one */
  int shared_fs;           /* can open the coordinator's input paths */
  double heartbeat;        /* seconds between heartbeats */
  double timeout;          /* silence after which the coordinator is presumed gone */
  const tr_keypair *key;   /* CURVE: this worker's key pair, or NULL */
  const char *coordinator_key;  /* with key: the coordinator's public key (Z85) */
  char **allow_read;       /* directories whose files tasks may read by path (realpaths) */
  size_t nallow;
  int restrict_read;       /* 1: only paths under allow_read are read */
  double connect_timeout;  /* give up after this long without a coordinator (0: never) */
  int exit_on_loss;        /* exit when the coordinator goes silent (a cluster rank) */
  const char *rendezvous;  /* re-read while nobody answers: worker_main returns
                              WORKER_RENDEZVOUS_CHANGED when it names another coordinator */
} worker_opts;

#define WORKER_RENDEZVOUS_CHANGED 1

/* Run until the job ends (BYE), the coordinator is refused or, for a local worker, gone.
 * 0 on a normal end, WORKER_RENDEZVOUS_CHANGED (see above), else an error code. */
int worker_main(const worker_opts *o, dbx_err *err);
#endif
