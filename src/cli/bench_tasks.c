/* bench_tasks.c -- `dbatch bench-tasks`: no-op tasks through the scheduler, for its rate. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "ops/ops.h"
#include "util/parse.h"
#include "util/timeutil.h"

static const char help[] =
    "Usage: dbatch bench-tasks --tasks N [OPTIONS]\n"
    "Run N no-op tasks through the coordinator and its workers; print the rate.\n"
    "\n"
    "      --tasks N           number of tasks (default 100000)\n"
    "      --task-ms MS        each task sleeps MS milliseconds (default 0)\n";

/* Job options that mean nothing to no-op tasks: there is no input to cut, no row to write. */
static const char *const bt_omit[] = {"batch-bytes", "batch-records", "max-record", "on-bad-record", "out", "format",
                                      "table", "append", "header", NULL};

int cmd_bench_tasks(int argc, char **argv) {
  static const struct option longopts[] = {
      {"tasks", required_argument, NULL, 1},
      {"task-ms", required_argument, NULL, 2},
      CLI_JOB_OPTIONS,
      {NULL, 0, NULL, 0},
  };
  cli_job o;
  uint64_t ntasks = 100000;
  noop_cfg cfg = {0};
  cli_job_defaults(&o, "bench_tasks");
  o.out.dest = "/dev/null";
  optind = 1;
  int c;
  int li = -1;
  while ((c = getopt_long(argc, argv, "o:qvh", longopts, &li)) != -1) {
    if (!cli_option_applies("bench-tasks", longopts, c, bt_omit, " (no-op tasks read and write nothing)")) return EXIT_USAGE;
    int r = cli_job_option(&o, c, optarg);
    if (r < 0) return cli_bad_value("bench-tasks", longopts, li, c, optarg);
    if (r) continue;
    switch (c) {
    case 1:
      if (parse_u64(optarg, 1, UINT32_MAX, &ntasks)) return cli_usage_error("bench-tasks", "--tasks needs a positive count");
      break;
    case 2: {
      char *end;
      cfg.task_ms = strtod(optarg, &end);
      if (*end || !(cfg.task_ms >= 0) || cfg.task_ms > 3600e3)
        return cli_usage_error("bench-tasks", "--task-ms needs milliseconds, not '%s'", optarg);
      break;
    }
    case 'h':
      fputs(help, stdout);
      cli_print_help(stdout, CLI_JOB_HELP, bt_omit);
      return EXIT_OK;
    default: return cli_bad_option("bench-tasks", longopts, "o:qvh", argv);
    }
  }
  dbx_err err = {0, ""};
  job j;
  memset(&j, 0, sizeof j);
  j.name = "bench-tasks";
  j.t_start = time_mono();
  coord *co = NULL;
  sink *out = NULL;
  int rc = cli_job_start(&o, &j, &co, &err);
  if (!rc) rc = sink_open(&o.out, op_noop.schema, &out, &err);
  double t0 = time_mono(), dt = 0;
  stage s;
  memset(&s, 0, sizeof s);
  if (!rc) {
    s.name = "noop";
    s.op = &op_noop;
    s.cfg = &cfg;
    s.cfg_size = sizeof cfg;
    s.virtual_tasks = (uint32_t)ntasks;
    s.split.batch_bytes = 1;
    s.out = out;
    s.st = job_add_stage(&j, "noop");
    char opts[64];
    snprintf(opts, sizeof opts, "tasks=%llu", (unsigned long long)ntasks);
    s.plan_opts = opts;
    rc = cli_run_stage(co, &j, &s, &err);
    dt = time_mono() - t0;
  }
  if (!rc)
    printf("%llu tasks in %.3f s = %.0f tasks/s (%d workers, %s)\n", (unsigned long long)ntasks, dt,
           (double)ntasks / dt, o.workers, sched_name(o.co.policy));
  return cli_job_end("bench-tasks", &o, &j, co, out, rc, &err);
}
