/* worker.c -- `dbatch worker`: a worker process joining a coordinator. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/log.h"
#include "util/parse.h"
#include "worker/worker.h"

static const char help[] =
    "Usage: dbatch worker --connect tcp://HOST:PORT [OPTIONS]\n"
    "Join a coordinator started with --listen and run its tasks. Start workers with what your\n"
    "site already runs: ssh, Slurm srun, mpirun, systemd.\n"
    "\n"
    "  -c, --connect ENDPOINT  the coordinator's tcp://HOST:PORT (or ipc://PATH)\n"
    "  -s, --slots S           tasks run at once (default: the number of cores)\n"
    "      --persist           after a job, wait for the next one\n"
    "      --no-shared-fs      this machine cannot read the coordinator's input paths:\n"
    "                          the coordinator sends batch bytes instead\n"
    "      --heartbeat SECS    heartbeat interval until the coordinator sets it (default 1)\n"
    "      --timeout SECS      coordinator silence before waiting for it anew (default 10)\n"
    "      --local             (internal) started by a coordinator on this machine: exit with it\n"
    "  -q, --quiet / -v, --verbose\n"
    "A remote worker whose coordinator goes away waits for it to come back.\n"
    "Exit status: 0 when the job ended, 1 on error (refused, cannot connect), 2 usage error.\n";

int cmd_worker(int argc, char **argv) {
  static const struct option longopts[] = {
      {"connect", required_argument, NULL, 'c'}, {"slots", required_argument, NULL, 's'},
      {"persist", no_argument, NULL, 1},        {"no-shared-fs", no_argument, NULL, 2},
      {"heartbeat", required_argument, NULL, 3}, {"timeout", required_argument, NULL, 4},
      {"local", no_argument, NULL, 5},          {"quiet", no_argument, NULL, 'q'},
      {"parent", required_argument, NULL, 6},
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
  int c;
  uint64_t v;
  while ((c = getopt_long(argc, argv, "c:s:qvh", longopts, NULL)) != -1) {
    switch (c) {
    case 'c': o.connect = optarg; break;
    case 's':
      if (parse_u64(optarg, 1, 4096, &v)) return cli_usage_error("worker", "--slots needs 1..4096, not '%s'", optarg);
      o.slots = (uint32_t)v;
      break;
    case 1: o.persist = 1; break;
    case 2: o.shared_fs = 0; break;
    case 3: case 4: {
      char *end;
      double d = strtod(optarg, &end);
      if (end == optarg || *end || !(d > 0) || d > 86400)
        return cli_usage_error("worker", "bad number of seconds '%s' (more than 0, at most 86400)", optarg);
      if (c == 3) o.heartbeat = d; else o.timeout = d;
      break;
    }
    case 5: o.local = 1; break;
    case 6:
      if (parse_u64(optarg, 1, INT32_MAX, &v)) return cli_usage_error("worker", "--parent needs a process id, not '%s'", optarg);
      o.parent = (int64_t)v;
      break;
    case 'q': log_set_level(LOG_ERROR); break;
    case 'v': log_set_level(LOG_DEBUG); break;
    case 'h': fputs(help, stdout); return EXIT_OK;
    default: return cli_usage_error("worker", "unknown option");
    }
  }
  if (!o.connect) return cli_usage_error("worker", "--connect tcp://HOST:PORT is required");
  if (o.local) o.timeout = 1e9;  /* a local worker follows its parent instead */
  dbx_err err = {0, ""};
  int rc = worker_main(&o, &err);
  return rc ? cli_fail("worker", &err) : EXIT_OK;
}
