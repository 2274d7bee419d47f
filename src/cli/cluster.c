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
#include "engine/journal.h"
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
    if (!rc && o->cluster) {
      /* Under --cluster with a key of the site's, every rank holds the same pair: it is
       * admitted, with whatever --authorized-keys adds. */
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

/* The value of option name in a command line meant for a job command ("--name V" or
 * "--name=V"), or NULL: a worker rank needs only a few of them, before the job parses any. */
static const char *argv_opt(int argc, char **argv, const char *name) {
  size_t n = strlen(name);
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--")) break;
    if (strncmp(argv[i], name, n)) continue;
    if (argv[i][n] == 0 && i + 1 < argc) return argv[i + 1];
    if (argv[i][n] == '=') return argv[i] + n + 1;
  }
  return NULL;
}

static double argv_secs(int argc, char **argv, const char *name, double dflt) {
  const char *v = argv_opt(argc, argv, name);
  char *end;
  double d = v ? strtod(v, &end) : 0;
  return v && !*end && d > 0 && d <= 86400 ? d : dflt;
}

/* The job directory every rank of the launch shares (name: the command's). */
static void cluster_dir(int argc, char **argv, const rv_env *e, char *out, size_t cap) {
  const char *jd = argv_opt(argc, argv, "--job-dir");
  if (jd) snprintf(out, cap, "%s", jd);
  else snprintf(out, cap, "dbatch-jobs/%s-%s", argv[0], e->launch);
}

/* A worker rank: find rank 0 through the rendezvous (or, on Kubernetes, by the name the
 * manifest gives), then serve it until the job ends. Never returns. It trusts its
 * coordinator as far as the launch's key goes (only this user can read the key): it reads
 * the job's inputs in place, and when its own file system lacks them or holds other files
 * under their names, the coordinator ships the bytes. */
static void worker_rank(int argc, char **argv, const rv_env *e) __attribute__((noreturn));
static void worker_rank(int argc, char **argv, const rv_env *e) {
  dbx_err err = {0, ""};
  char dir[PATH_MAX], rvpath[PATH_MAX + 16], keypath[PATH_MAX + 16];
  cluster_dir(argc, argv, e, dir, sizeof dir);
  snprintf(rvpath, sizeof rvpath, "%s/rendezvous", dir);
  snprintf(keypath, sizeof keypath, "%s/cluster.key", dir);
  const char *key_path = argv_opt(argc, argv, "--key");
  rv_info r;
  memset(&r, 0, sizeof r);
  worker_opts w;
  memset(&w, 0, sizeof w);
  tr_keypair kp;
  int rc = 0;
  if (e->coordinator[0]) {
    rc = tr_endpoint(e->coordinator, "DBATCH_COORDINATOR", r.endpoint, sizeof r.endpoint, &err);
    if (!rc && !key_path) rc = dbx_seterr(&err, DBX_EUSAGE, "--cluster k8s needs --key FILE (a Secret shared by every rank)");
    if (!rc) rc = tr_keypair_load(key_path, &kp, &err);
    if (!rc) memcpy(r.key, kp.pub, sizeof r.key);
  } else {
    rc = rv_wait(rvpath, e->launch, CLUSTER_JOIN_SECONDS, &r, &err);
    /* A launch's coordinator always has a key: a rendezvous without one is not its own. */
    if (!rc && !r.key[0]) rc = dbx_seterr(&err, DBX_EACCES, "%s has no coordinator-key: not a launch's rendezvous", rvpath);
    if (!rc) rc = tr_keypair_load(key_path ? key_path : keypath, &kp, &err);
  }
  if (!rc) {
    w.connect = r.endpoint;
    w.slots = e->slots ? e->slots : 1;
    w.shared_fs = 1;
    w.heartbeat = argv_secs(argc, argv, "--heartbeat", 1.0);
    w.timeout = argv_secs(argc, argv, "--worker-timeout", 10.0);
    w.exit_on_loss = 1;
    w.connect_timeout = CLUSTER_JOIN_SECONDS;
    w.key = &kp;
    w.coordinator_key = r.key;
    log_info("rank %ld of %ld (%s): a worker of %s", e->rank, e->size, e->kind, r.endpoint);
    rc = worker_main(&w, &err);
  }
  int status = rc ? cli_fail("worker", &err) : EXIT_OK;
  fflush(stdout);
  fflush(stderr);
  /* Straight out: this rank's copy of the command is not a job to run. */
  _exit(status);
}

void cli_cluster_early(int argc, char **argv) {
  const char *mode = argv_opt(argc, argv, "--cluster");
  rv_env e;
  dbx_err err = {0, ""};
  /* Errors are the job's to report (cli_cluster_begin meets them again). */
  if (!mode || rv_detect(mode, env_get, NULL, &e, &err) || e.rank == 0 || e.size < 2) return;
  worker_rank(argc, argv, &e);
}

int cli_cluster_begin(cli_job *o, job *j, rv_env *e, dbx_err *err) {
  int rc = rv_detect(o->cluster, env_get, NULL, e, err);
  if (rc) return rc;
  if (e->rank != 0) worker_rank(cli_argc - 1, cli_argv + 1, e);  /* not through dispatch: still a worker */
  if (e->size < 2) return 0;  /* a launch of one: an ordinary job, on this machine */
  /* One directory for every rank: the one given, or one named after the launch. */
  snprintf(o->job_dir_buf, sizeof o->job_dir_buf, "%s", o->job_dir ? o->job_dir : "");
  if (!o->job_dir) cluster_dir(cli_argc - 1, cli_argv + 1, e, o->job_dir_buf, sizeof o->job_dir_buf);
  o->cluster_dir = o->job_dir_buf;
  struct stat st;
  int made = stat(o->cluster_dir, &st) != 0;
  if ((rc = mkdirs(o->cluster_dir, err))) return rc;
  if (made) chmod(o->cluster_dir, 0755);  /* whatever the umask: not writable by others */
  /* Nothing goes into a directory another user could write, and nothing is touched in a
   * directory another job holds: its lock first. */
  if ((rc = rv_dir_trusted(o->cluster_dir, "--job-dir", err))) return rc;
  if (o->job_dir && (rc = journal_lock(o->cluster_dir, err))) return rc;
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
