/* cluster.c -- the security of a job's links (--key, --authorized-keys, --insecure) and
 * --cluster: every rank of srun, mpirun or an Indexed Job runs the same command; rank 0
 * becomes the coordinator and writes the rendezvous, the others become its workers. */
#define _GNU_SOURCE 1
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "net/rendezvous.h"
#include "util/log.h"
#include "worker/worker.h"

/* Seconds a cluster rank waits for the others: rank 0 for its first worker (and for all of
 * them before the first task), a worker for the rendezvous. */
#define CLUSTER_JOIN_SECONDS 120.0

static const char *env_get(const char *name, void *ctx) {
  (void)ctx;
  return getenv(name);
}

static int mkdirs(const char *path, dbx_err *err) {
  char p[PATH_MAX];
  if ((size_t)snprintf(p, sizeof p, "%s", path) >= sizeof p) return dbx_seterr(err, DBX_EINVAL, "%s: too long", path);
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return dbx_seterr(err, DBX_EIO, "cannot create %s: %s", p, strerror(errno));
    *s = '/';
  }
  if (mkdir(p, 0755) != 0 && errno != EEXIST) return dbx_seterr(err, DBX_EIO, "cannot create %s: %s", p, strerror(errno));
  return 0;
}

int cli_job_security(cli_job *o, dbx_err *err) {
  if (o->co.listen && o->co.listen != o->listen_buf) {
    int rc = tr_endpoint(o->co.listen, "--listen", o->listen_buf, sizeof o->listen_buf, err);
    if (rc) return rc;
    o->co.listen = o->listen_buf;
  }
  if (o->authz_path && !o->key_path)
    return dbx_seterr(err, DBX_EUSAGE, "--authorized-keys needs --key FILE (the coordinator's own key pair)");
  if (o->key_path) {
    if (!o->co.listen && !o->cluster) return dbx_seterr(err, DBX_EUSAGE, "--key secures --listen: give --listen HOST:PORT too");
    if (!o->authz_path && !o->cluster)
      return dbx_seterr(err, DBX_EUSAGE, "--key needs --authorized-keys FILE: the public keys of the workers to admit");
    int rc = tr_keypair_load(o->key_path, &o->key, err);
    if (!rc && o->authz_path) rc = tr_authz_load(o->authz_path, &o->authz, err);
    if (!rc && !o->authz_path) {
      /* Under --cluster with a key of the site's: every rank holds the same pair. */
      rc = tr_authz_add(&o->authz, o->key.pub, "cluster", err);
      tr_authz_seal(&o->authz);
    }
    if (rc) {
      char m[DBX_ERR_LEN];
      snprintf(m, sizeof m, "%s", err->msg);
      return dbx_seterr(err, DBX_EUSAGE, "%s", m);
    }
    o->co.key = &o->key;
    o->co.authz = &o->authz;
    return 0;
  }
  if (o->co.listen && !o->cluster && !tr_endpoint_loopback(o->co.listen) && !o->insecure)
    return dbx_seterr(err, DBX_EUSAGE,
                      "--listen %s accepts workers from the network: give --key FILE and --authorized-keys FILE "
                      "('dbatch keygen' makes keys), or --insecure to let anyone who reaches the port join",
                      o->co.listen);
  return 0;
}

/* The directories a worker rank may read: those of the job's inputs, as this rank sees
 * them (every rank runs the same command on the same shared file system). */
static int inputs_dirs(const inputs *in, worker_opts *w, dbx_err *err) {
  w->allow_read = calloc(in->n ? in->n : 1, sizeof *w->allow_read);
  if (!w->allow_read) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (size_t i = 0; i < in->n; i++) {
    const char *p = in->v[i].path;
    if (!p || !strcmp(p, "-")) continue;
    char rp[PATH_MAX];
    if (!realpath(p, rp)) continue;
    struct stat st;
    if (stat(rp, &st) == 0 && !S_ISDIR(st.st_mode)) {
      char *slash = strrchr(rp, '/');
      if (slash == rp) rp[1] = 0;
      else if (slash) *slash = 0;
    }
    size_t k = 0;
    while (k < w->nallow && strcmp(w->allow_read[k], rp)) k++;
    if (k < w->nallow) continue;
    if (!(w->allow_read[w->nallow] = strdup(rp))) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
    w->nallow++;
  }
  return 0;
}

/* A worker rank: find rank 0 through the rendezvous, then serve it until the job ends.
 * Never returns: the process ends with the worker (0 when the job ended, whatever its
 * result: the job's status is rank 0's). */
static void worker_rank(cli_job *o, job *j, const rv_env *e, const char *dir) __attribute__((noreturn));
static void worker_rank(cli_job *o, job *j, const rv_env *e, const char *dir) {
  dbx_err err = {0, ""};
  char rvpath[PATH_MAX], keypath[PATH_MAX];
  snprintf(rvpath, sizeof rvpath, "%s/rendezvous", dir);
  snprintf(keypath, sizeof keypath, "%s/cluster.key", dir);
  rv_info r;
  worker_opts w;
  memset(&w, 0, sizeof w);
  tr_keypair kp;
  int rc = 0;
  if (e->coordinator[0]) {
    /* k8s: no shared file system; the address and the keys come from the manifest. */
    rc = tr_endpoint(e->coordinator, "DBATCH_COORDINATOR", r.endpoint, sizeof r.endpoint, &err);
    if (!rc && !o->key_path) rc = dbx_seterr(&err, DBX_EUSAGE, "--cluster k8s needs --key FILE (a Secret shared by every rank)");
    if (!rc) rc = tr_keypair_load(o->key_path, &kp, &err);
    if (!rc) memcpy(r.key, kp.pub, sizeof r.key);
  } else {
    rc = rv_wait(rvpath, e->launch, CLUSTER_JOIN_SECONDS, &r, &err);
    if (!rc && r.key[0]) rc = tr_keypair_load(o->key_path ? o->key_path : keypath, &kp, &err);
  }
  if (!rc) {
    w.connect = r.endpoint;
    w.slots = e->slots ? e->slots : 1;
    w.shared_fs = 1;
    w.restrict_read = 1;
    w.heartbeat = o->co.heartbeat;
    w.timeout = o->co.worker_timeout;
    w.exit_on_loss = 1;
    w.connect_timeout = CLUSTER_JOIN_SECONDS;
    w.key = r.key[0] ? &kp : NULL;
    w.coordinator_key = r.key;
    rc = inputs_dirs(&j->in, &w, &err);
  }
  if (!rc) {
    log_info("rank %ld of %ld (%s): a worker of %s", e->rank, e->size, e->kind, r.endpoint);
    rc = worker_main(&w, &err);
  }
  for (size_t i = 0; i < w.nallow; i++) free(w.allow_read[i]);
  free(w.allow_read);
  int status = EXIT_OK;
  if (rc) status = cli_fail("worker", &err);
  fflush(stdout);
  fflush(stderr);
  /* Straight out: this rank's copy of the job (inputs, options) is not a job to finish. */
  _exit(status == EXIT_USAGE ? EXIT_USAGE : rc ? EXIT_FAIL : EXIT_OK);
}

int cli_cluster_begin(cli_job *o, job *j, rv_env *e, dbx_err *err) {
  int rc = rv_detect(o->cluster, env_get, NULL, e, err);
  if (rc) return rc;
  /* One directory for every rank: the one given, or one named after the launch. */
  if (!o->job_dir) {
    snprintf(o->job_dir_buf, sizeof o->job_dir_buf, "dbatch-jobs/%s-%s", j->name, e->launch);
    o->cluster_dir = o->job_dir_buf;
  } else {
    o->cluster_dir = o->job_dir;
  }
  if (e->rank != 0) worker_rank(o, j, e, o->cluster_dir);
  if ((rc = mkdirs(o->cluster_dir, err))) return rc;
  char rvpath[PATH_MAX];
  snprintf(rvpath, sizeof rvpath, "%s/rendezvous", o->cluster_dir);
  unlink(rvpath);  /* a launch before this one's: never read as ours */
  if (!o->workers_set) o->workers = 0;  /* rank 0 coordinates; the other ranks work */
  if (!o->co.wait_workers) o->co.wait_workers = (uint32_t)(e->size - 1);
  o->co.join_timeout = CLUSTER_JOIN_SECONDS;
  o->co.waiting_hint = "waiting for the other ranks of the launch to join";
  if (!o->co.listen) {
    /* k8s: the port of DBATCH_COORDINATOR; else any free port, told through the rendezvous. */
    const char *colon = e->coordinator[0] ? strrchr(e->coordinator, ':') : NULL;
    snprintf(o->listen_buf, sizeof o->listen_buf, "tcp://0.0.0.0:%s", colon ? colon + 1 : "*");
    o->co.listen = o->listen_buf;
  }
  if (!o->key_path) {
    if (e->coordinator[0]) return dbx_seterr(err, DBX_EUSAGE, "--cluster k8s needs --key FILE (a Secret shared by every rank)");
    /* A fresh pair for this launch, readable by this user only, on the shared file system:
     * every rank holds it, nobody else. */
    char keypath[PATH_MAX];
    snprintf(keypath, sizeof keypath, "%s/cluster.key", o->cluster_dir);
    if ((rc = tr_keypair_new(&o->key, err)) || (rc = tr_keypair_save(&o->key, keypath, e->launch, 1, err))) return rc;
    if ((rc = tr_authz_add(&o->authz, o->key.pub, "cluster", err))) return rc;
    o->co.key = &o->key;
    o->co.authz = &o->authz;
  }
  return 0;
}

int cli_cluster_ready(cli_job *o, coord *c, const rv_env *e, dbx_err *err) {
  char bound[RV_ENDPOINT_LEN];
  if (coord_listen_endpoint(c, bound, sizeof bound) != 0)
    return dbx_seterr(err, DBX_EIO, "cannot tell which port --listen %s was given", o->co.listen);
  if (e->coordinator[0]) return 0;  /* k8s: the Service names rank 0 */
  const char *colon = strrchr(bound, ':');
  const char *host = bound + 6;  /* after tcp:// */
  rv_info r;
  memset(&r, 0, sizeof r);
  char addr[128];
  const char *env_addr = getenv("DBATCH_ADDR");
  if (env_addr && *env_addr) snprintf(addr, sizeof addr, "%s", env_addr);
  else if (!strncmp(host, "0.0.0.0:", 8) || !strncmp(host, "*:", 2) || !strncmp(host, "[::]:", 5)) rv_local_address(addr, sizeof addr);
  else snprintf(addr, sizeof addr, "%.*s", (int)(colon - host), host);
  snprintf(r.launch, sizeof r.launch, "%s", e->launch);
  snprintf(r.endpoint, sizeof r.endpoint, "tcp://%s%s", addr, colon);
  if (o->co.key) memcpy(r.key, o->co.key->pub, sizeof r.key);
  char rvpath[PATH_MAX];
  snprintf(rvpath, sizeof rvpath, "%s/rendezvous", o->cluster_dir);
  int rc = rv_write(rvpath, &r, err);
  /* What messages name from now on: the address the other ranks use. */
  snprintf(o->listen_buf, sizeof o->listen_buf, "%s", r.endpoint);
  if (!rc) log_info("rank 0 of %ld (%s): coordinator on %s", e->size, e->kind, r.endpoint);
  return rc;
}
