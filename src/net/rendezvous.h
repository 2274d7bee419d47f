/* rendezvous.h -- how the ranks of one launch find each other (private): which rank this
 * process is under Slurm, MPI or a Kubernetes Indexed Job, and the rendezvous file in the
 * job directory where rank 0 says where it listens and what its public key is.
 *
 * The rendezvous file (written atomically by rank 0; docs/cluster.md):
 *   # comment lines
 *   launch ID            the launch it belongs to (a stale file of another launch is ignored)
 *   endpoint tcp://ADDR:PORT
 *   coordinator-key Z85
 */
#ifndef DBX_NET_RENDEZVOUS_H
#define DBX_NET_RENDEZVOUS_H
#include <stddef.h>
#include "dbatch.h"
#include "net/transport.h"

#define RV_LAUNCH_LEN 96
#define RV_ENDPOINT_LEN 256

typedef struct rv_env {
  char kind[8];                 /* "slurm", "mpi" or "k8s" */
  long rank, size;
  unsigned slots;               /* task slots of a worker rank: DBATCH_SLOTS, else
                                   SLURM_CPUS_PER_TASK, else 1 */
  char launch[RV_LAUNCH_LEN];   /* this launch's id, the same in every rank: [A-Za-z0-9._-] */
  char coordinator[RV_ENDPOINT_LEN];  /* k8s: DBATCH_COORDINATOR (HOST:PORT of rank 0) */
} rv_env;

/* The environment, by name (getenv, or a table in tests). */
typedef const char *(*rv_getenv)(const char *name, void *ctx);

/* Which rank this is, under mode "auto", "slurm", "mpi" or "k8s". Errors say which
 * variables were missing or malformed. */
int rv_detect(const char *mode, rv_getenv get, void *ctx, rv_env *e, dbx_err *err);

typedef struct rv_info {
  char launch[RV_LAUNCH_LEN];
  char endpoint[RV_ENDPOINT_LEN];
  char key[TR_KEY_LEN + 1];     /* "" when the coordinator uses no keys */
} rv_info;

int rv_write(const char *path, const rv_info *r, dbx_err *err);
/* Parse a rendezvous file's text (fuzzed); what names it in errors. */
int rv_parse(const char *text, size_t len, const char *what, rv_info *r, dbx_err *err);
/* Read the rendezvous at path once. It must be a regular file of this user's in a directory
 * of this user's that others cannot write (whoever can write it chooses the coordinator a
 * worker trusts with its tasks): else DBX_EACCES naming it. DBX_ENOENT when absent. */
int rv_read(const char *path, rv_info *r, dbx_err *err);
/* Wait (polling, at most timeout seconds; 0: forever) until path holds the rendezvous of
 * launch (NULL: any). DBX_ETIMEDOUT when it did not come; DBX_EACCES at once for a file or
 * directory that cannot be trusted. */
int rv_wait(const char *path, const char *launch, double timeout, rv_info *r, dbx_err *err);
/* 0 when dir is this user's and others cannot write it, else DBX_EACCES naming what (a
 * job directory that is to hold a launch's keys and rendezvous). */
int rv_dir_trusted(const char *dir, const char *what, dbx_err *err);

/* An IPv4 address of this host others can reach: the first one, not loopback, of an
 * interface that is up (127.0.0.1 when there is none). */
void rv_local_address(char *out, size_t cap);
#endif
