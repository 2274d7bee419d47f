/* worker.c -- `dbatch worker`: a worker process joining a coordinator. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "net/rendezvous.h"
#include "util/log.h"
#include "util/parse.h"
#include "worker/worker.h"

static const char help[] =
    "Usage: dbatch worker --connect HOST:PORT [OPTIONS]\n"
    "       dbatch worker --rendezvous FILE [OPTIONS]\n"
    "Join a coordinator started with --listen and run its tasks. Start workers with what your\n"
    "site already runs: ssh, Slurm srun, mpirun, systemd (or let --cluster do it).\n"
    "\n"
    "  -c, --connect ENDPOINT  the coordinator's HOST:PORT (or tcp://HOST:PORT, ipc://PATH)\n"
    "      --rendezvous FILE   read the coordinator's address and public key from the\n"
    "                          rendezvous a --cluster coordinator wrote in its job directory\n"
    "                          (waits for it); the key pair beside it (cluster.key) is used\n"
    "                          unless --key is given\n"
    "      --key FILE          this worker's key pair (dbatch keygen): the link is\n"
    "                          authenticated both ways and encrypted\n"
    "      --coordinator-key PUB  the coordinator's public key: its FILE.pub, or the key\n"
    "      --insecure          connect to an address other than loopback without keys\n"
    "      --allow-read DIR    tasks may read input files under DIR in place (repeatable);\n"
    "                          without it this worker reads no file by path: the\n"
    "                          coordinator sends batch bytes instead\n"
    "      --connect-timeout SECS  give up when no coordinator answered this long\n"
    "                          (default: keep trying)\n"
    "  -s, --slots S           tasks run at once (default: the number of cores)\n"
    "      --persist           after a job, wait for the next one\n"
    "      --no-shared-fs      read no file by path (the default without --allow-read)\n"
    "      --heartbeat SECS    heartbeat interval until the coordinator sets it (default 1)\n"
    "      --timeout SECS      coordinator silence before waiting for it anew (default 10)\n"
    "      --local             (internal) started by a coordinator on this machine: exit with it\n"
    "  -q, --quiet / -v, --verbose  (-v also says every 10 s that the coordinator is not\n"
    "                          answering yet)\n"
    "A remote worker whose coordinator goes away waits for it to come back. A refused key, a\n"
    "wrong --coordinator-key or a coordinator that wants keys is said at once, exit 1.\n"
    "Exit status: 0 when the job ended, 1 on error (refused, cannot connect), 2 usage error.\n";

static int parse_secs(const char *arg, double *out) {
  char *end;
  double d = strtod(arg, &end);
  if (end == arg || *end || !(d > 0) || d > 86400 * 365) return -1;
  *out = d;
  return 0;
}

/* Where to connect and with which keys, then run the worker once. EXIT_USAGE (message
 * printed) for a usage error, WORKER_RENDEZVOUS_CHANGED, or worker_main's result. */
static int connect_once(worker_opts *o, const char *connect, const char *rendezvous, const char *key_path,
                        const char *coord_key, int insecure, dbx_err *err) {
  char ep[RV_ENDPOINT_LEN], pub[TR_KEY_LEN + 1] = "", keybuf[PATH_MAX];
  tr_keypair kp;
  int rc = 0;
  if (rendezvous) {
    rv_info r;
    if ((rc = rv_wait(rendezvous, NULL, o->connect_timeout, &r, err))) return rc;
    snprintf(ep, sizeof ep, "%s", r.endpoint);
    memcpy(pub, r.key, sizeof pub);
    if (!key_path && r.key[0]) {
      /* The cluster's key pair beside the rendezvous. */
      const char *slash = strrchr(rendezvous, '/');
      snprintf(keybuf, sizeof keybuf, "%.*scluster.key", slash ? (int)(slash - rendezvous + 1) : 0, rendezvous);
      key_path = keybuf;
    }
    o->rendezvous = rendezvous;
  } else if (tr_endpoint(connect, "--connect", ep, sizeof ep, err)) {
    return cli_usage_error("worker", "%s", err->msg);
  }
  if (coord_key && (rc = tr_pubkey_load(coord_key, pub, err))) return cli_usage_error("worker", "--coordinator-key: %s", err->msg);
  if (!key_path != !pub[0])
    return cli_usage_error("worker", key_path ? "--key needs --coordinator-key PUB (the coordinator's public key)"
                                              : "--coordinator-key needs --key FILE (this worker's key pair)");
  if (key_path && (rc = tr_keypair_load(key_path, &kp, err))) return cli_usage_error("worker", "--key: %s", err->msg);
  if (!key_path && !o->local && !insecure && !tr_endpoint_loopback(ep))
    return cli_usage_error("worker",
                           "%s is reached over the network: give --key FILE and --coordinator-key PUB, or --insecure "
                           "(then anyone on that port can send this worker tasks)", ep);
  o->connect = ep;
  o->key = key_path ? &kp : NULL;
  o->coordinator_key = pub;
  return worker_main(o, err);
}

int cmd_worker(int argc, char **argv) {
  static const struct option longopts[] = {
      {"connect", required_argument, NULL, 'c'}, {"slots", required_argument, NULL, 's'},
      {"persist", no_argument, NULL, 1},        {"no-shared-fs", no_argument, NULL, 2},
      {"heartbeat", required_argument, NULL, 3}, {"timeout", required_argument, NULL, 4},
      {"local", no_argument, NULL, 5},          {"quiet", no_argument, NULL, 'q'},
      {"parent", required_argument, NULL, 6},   {"key", required_argument, NULL, 7},
      {"coordinator-key", required_argument, NULL, 8}, {"insecure", no_argument, NULL, 9},
      {"allow-read", required_argument, NULL, 10}, {"connect-timeout", required_argument, NULL, 11},
      {"rendezvous", required_argument, NULL, 12},
      {"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  worker_opts o;
  memset(&o, 0, sizeof o);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  o.slots = ncpu > 0 ? (uint32_t)ncpu : 1;
  o.shared_fs = 1;
  o.heartbeat = 1.0;
  o.timeout = 10.0;
  optind = 1;
  int c, no_shared = 0, insecure = 0;
  uint64_t v;
  const char *key_path = NULL, *coord_key = NULL, *rendezvous = NULL, *connect = NULL;
  char *allow[64];
  size_t nallow = 0;
  while ((c = getopt_long(argc, argv, "c:s:qvh", longopts, NULL)) != -1) {
    switch (c) {
    case 'c': connect = optarg; break;
    case 's':
      if (parse_u64(optarg, 1, 4096, &v)) return cli_usage_error("worker", "--slots needs 1..4096, not '%s'", optarg);
      o.slots = (uint32_t)v;
      break;
    case 1: o.persist = 1; break;
    case 2: no_shared = 1; break;
    case 3: case 4:
      if (parse_secs(optarg, c == 3 ? &o.heartbeat : &o.timeout) || (c == 3 ? o.heartbeat : o.timeout) > 86400)
        return cli_usage_error("worker", "bad number of seconds '%s' for %s (more than 0, at most 86400)", optarg,
                               c == 3 ? "--heartbeat" : "--timeout");
      break;
    case 5: o.local = 1; break;
    case 6:
      if (parse_u64(optarg, 1, INT32_MAX, &v)) return cli_usage_error("worker", "--parent needs a process id, not '%s'", optarg);
      o.parent = (int64_t)v;
      break;
    case 7: key_path = optarg; break;
    case 8: coord_key = optarg; break;
    case 9: insecure = 1; break;
    case 10:
      if (nallow == sizeof allow / sizeof *allow) return cli_usage_error("worker", "more than 64 --allow-read directories");
      allow[nallow++] = optarg;
      break;
    case 11:
      if (parse_secs(optarg, &o.connect_timeout))
        return cli_usage_error("worker", "bad number of seconds '%s' for --connect-timeout", optarg);
      break;
    case 12: rendezvous = optarg; break;
    case 'q': log_set_level(LOG_ERROR); break;
    case 'v': log_set_level(LOG_DEBUG); break;
    case 'h': fputs(help, stdout); return EXIT_OK;
    default: return cli_bad_option("worker", longopts, "c:s:qvh", argv);
    }
  }
  if (optind < argc) return cli_usage_error("worker", "unexpected argument '%s'", argv[optind]);
  if (!connect == !rendezvous) return cli_usage_error("worker", "give one of --connect HOST:PORT and --rendezvous FILE");
  dbx_err err = {0, ""};
  /* What tasks may read by path: everything for a local worker (its coordinator is its
   * parent), the --allow-read directories for a remote one, else nothing. */
  char *dirs[64];
  size_t ndirs = 0;
  if (!o.local) {
    o.restrict_read = 1;
    for (size_t i = 0; i < nallow; i++) {
      char rp[PATH_MAX];
      if (!realpath(allow[i], rp)) {
        int e = errno;
        for (size_t k = 0; k < ndirs; k++) free(dirs[k]);
        return cli_usage_error("worker", "--allow-read %s: %s", allow[i], strerror(e));
      }
      if (!(dirs[ndirs] = strdup(rp))) return cli_usage_error("worker", "out of memory");
      ndirs++;
    }
    o.allow_read = dirs;
    o.nallow = ndirs;
    if (!ndirs) o.shared_fs = 0;
  }
  if (no_shared) o.shared_fs = 0;
  if (o.local) o.timeout = 1e9;  /* a local worker follows its parent instead */
  int rc;
  /* With --rendezvous, the worker follows the file: when nobody answers at the endpoint it
   * names and it comes to name another (a new launch's coordinator), the worker goes there. */
  do {
    rc = connect_once(&o, connect, rendezvous, key_path, coord_key, insecure, &err);
  } while (rc == WORKER_RENDEZVOUS_CHANGED);
  for (size_t i = 0; i < ndirs; i++) free(dirs[i]);
  if (rc == EXIT_USAGE) return EXIT_USAGE;
  return rc ? cli_fail("worker", &err) : EXIT_OK;
}
