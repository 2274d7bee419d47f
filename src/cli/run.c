/* run.c -- `dbatch run --map CMD`: the user's own command over every batch (Hadoop Streaming's
 * map-only job). The output is the command's output over each batch, in batch order.
 * `dbatch run --op LIB.so[:NAME]`: an operator from a C plugin library (ops/plugin.c); its
 * rows go to any sink, like a built-in operator's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "cli/cli.h"
#include "ops/ops.h"
#include "ops/plugin.h"
#include "sink/sink_raw.h"
#include "util/log.h"
#include "util/timeutil.h"

static const char help[] =
    "Usage: dbatch run --map CMD [--reduce AGG[,AGG...] | --reduce-cmd RCMD] [OPTIONS] INPUT...\n"
    "       dbatch run --op LIB.so[:NAME] [--op-arg TEXT] [OPTIONS] INPUT...\n"
    "Run your own command over the input, in parallel: INPUT is cut into batches of whole\n"
    "lines and CMD runs once per batch as /bin/sh -c CMD, the batch's lines on its standard\n"
    "input. The output is the outputs of the batches concatenated in input order, byte for\n"
    "byte: a command that works line by line (grep, tr, awk, sed, cut, a script) gives exactly\n"
    "what it gives on the whole input, whatever the workers, policy or retries. Each input\n"
    "file's last line is ended with a newline if it lacks one (lines never join across files).\n"
    "\n"
    "The command's environment has DBATCH_TASK (the batch's number, from 0), DBATCH_ATTEMPT\n"
    "and DBATCH_INPUT (the batch's first input file). A non-zero exit, a signal or\n"
    "--task-timeout fails the attempt: the failure names the task, its input range, the exit\n"
    "status or signal and the last lines of the command's standard error; it is retried like\n"
    "any failed attempt. The command runs in a process group of its own, killed when it ends,\n"
    "times out, or its worker dies (a command that leaves its group, e.g. with setsid, is\n"
    "out of reach).\n"
    "\n"
    "Example:\n"
    "  dbatch run --map \"grep -i error | cut -f1,3\" --workers 4 -o errors.txt logs/\n"
    "\n"
    "Key-value jobs (Hadoop Streaming's reduce): with --reduce, the command's output lines\n"
    "are KEY<TAB>VALUE (split at the first tab; a line without one is a key with an empty\n"
    "value) and the output is one row per key, sorted by key bytewise: the key, then each\n"
    "reducer given, in order:\n"
    "  count  sum  min  max  mean    sum is exact in 64-bit integers while every value is\n"
    "                                one (an overflow fails the job), else a double\n"
    "  first  last                   the first or last value in input order\n"
    "  distinct                      the number of distinct values\n"
    "  top:K                         the K most frequent values: v1=c1,v2=c2,...\n"
    "A value that is not a number for sum, min, max or mean is a bad record (the line is\n"
    "skipped and counted, or fails the job with --on-bad-record fail). Rows go to -o as\n"
    "TSV, CSV, JSONL or sqlite:PATH like any job's. The answer does not depend on workers,\n"
    "batches or failures: partial results merge in a fixed order.\n"
    "  dbatch run --map 'cut -f2,5' --reduce count,sum,mean,top:3 --workers 4 sales.tsv\n"
    "With --reduce-cmd RCMD, every KEY<TAB>VALUE line, sorted by key (the values of a key in\n"
    "input order), goes to RCMD's standard input, run once; its output is the job's.\n"
    "\n"
    "With --op, the operator NAME of the C plugin library LIB.so (built against dbatch.h:\n"
    "cc -shared -fPIC $(pkg-config --cflags dbatch), exporting dbatch_plugin) maps every\n"
    "batch and merges the results; its rows go to -o like any job's (TSV, CSV, JSONL,\n"
    "sqlite:PATH, with the row-output options of 'dbatch wordcount --help': format, table,\n"
    "append). NAME may be left out when the library has one operator. The library is read\n"
    "once and sent to every worker, remote ones included, so nothing has to be installed\n"
    "there. A plugin that crashes kills only its worker: the attempt is retried like any\n"
    "failed attempt.\n"
    "  dbatch run --op ./keysum.so --workers 4 -o sums.csv sales/\n"
    "\n"
    "Run options:\n"
    "      --map CMD           the command run over each batch\n"
    "      --op LIB.so[:NAME]  the plugin operator run over each batch (instead of --map)\n"
    "      --op-arg TEXT       the operator's configuration (a string it interprets)\n"
    "      --reduce AGG[,AGG...]  per-key results of the command's KEY<TAB>VALUE lines\n"
    "      --reduce-cmd RCMD   or your own reducer over them, sorted by key (see above)\n"
    "      --on-bad-record skip|fail  with --reduce: a value a numeric reducer cannot read\n"
    "                          is skipped and counted (default) or fails the job\n"
    "      --partitions R, --spill-dir DIR, --memory SIZE  with --reduce: merge on the\n"
    "                          workers in R partitions, each task within SIZE of memory\n"
    "                          (see 'dbatch groupby --help')\n"
    "      --follow, --interval SECS, --until-idle SECS, --window SECS  with --reduce: keep running over\n"
    "                          data as it arrives (see 'dbatch groupby --help')\n"
    "Batching and execution:\n"
    "      --batch-bytes SIZE  cut inputs into batches of about SIZE bytes, aligned to lines\n"
    "                          (default: the input size / 16, within 8M..64M; units K, M, G)\n"
    "      --batch-records N   cut inputs into batches of N lines instead\n"
    "      --workers N         local worker processes (default: the number of cores;\n"
    "                          0 = run every task in this process)\n"
    "      --listen tcp://HOST:PORT  also accept workers started elsewhere with\n"
    "                          'dbatch worker --connect tcp://HOST:PORT'\n"
    "      --wait-workers N    start the first task once N workers have joined\n"
    "      --policy P          least-loaded (default), round-robin or random\n"
    "      --seed N            seed of the random policy\n"
    "      --ship              send batch bytes to workers instead of file references\n"
    "      --prefetch N        most tasks a worker may hold beyond its slots (default 16)\n"
    "      --heartbeat SECS    heartbeat interval (default 1)\n"
    "      --worker-timeout SECS  silence before a worker is dead (default 10)\n"
    "      --max-message SIZE  largest message accepted from a worker, so the largest output\n"
    "                          of one batch (default 1G)\n"
    "Failures:\n"
    "      --max-attempts N    attempts per task (default 4)\n"
    "      --on-task-failure fail|skip  a task whose attempts all failed stops the job\n"
    "                          (fail, default) or its output is left out and reported\n"
    "                          (skip: exit 3)\n"
    "      --task-timeout SECS bound on one run of the command (default: none)\n"
    "      --exclude-after N   a worker failing N different tasks gets no more (default 3)\n"
    "      --[no-]speculation  copy a straggling attempt to a free worker (default on)\n"
    "Output:\n"
    "  -o, --out FILE          - (standard output, default) or a file, replaced atomically\n"
    "                          when the job succeeds. Standard output is written as the\n"
    "                          batches finish, in order. With --op or --reduce: also FILE.csv,\n"
    "                          FILE.jsonl or sqlite:PATH\n"
    "      --summary-json FILE write a summary of the run\n"
    "Watching:\n"
    "      --dashboard HOST:PORT  serve a live dashboard, /api/status and /metrics\n"
    "      --dashboard-public  allow a non-loopback dashboard address\n"
    "      --job-dir DIR       report, summary and a journal: 'dbatch resume DIR' finishes\n"
    "                          the job if the coordinator dies, reusing finished batches\n"
    "      --no-job-dir        no job directory (no report)\n"
    "  -q, --quiet             only errors on standard error\n"
    "  -v, --verbose           more detail on standard error\n"
    "  -h, --help              this help\n"
    "Exit status: 0 success, 1 the job failed, 2 usage error (also a plugin that does not\n"
    "load), 3 finished without the output of skipped tasks (--on-task-failure=skip).\n";

/* "LIB.so[:NAME]": the whole text when it names a file (paths may contain ':'), else split
 * at the last ':'. OUT path (owned by the caller, free), OUT *name (points into spec, or NULL). */
static char *split_op(const char *spec, const char **name) {
  struct stat sb;
  const char *colon = strrchr(spec, ':');
  *name = NULL;
  if (!colon || stat(spec, &sb) == 0) return strdup(spec);
  *name = colon + 1;
  return strndup(spec, (size_t)(colon - spec));
}

/* One line, exit 2: a plugin that cannot be used is the user's to fix, before any work. */
static int plugin_error(const dbx_err *err) {
  char safe[4 * DBX_ERR_LEN];
  log_escape(safe, sizeof safe, err->msg, strlen(err->msg));
  fprintf(stderr, "dbatch run: --op %s\n", safe);
  return EXIT_USAGE;
}

/* `dbatch run --op`: load and check the plugin here, before anything starts; then one stage
 * whose cfg is the --op-arg text with its NUL. */
static int run_op(cli_job *o, const char *spec, const char *arg, int nin, char **in) {
  const char *name = NULL;
  char *path = split_op(spec, &name);
  if (!path) return cli_usage_error("run", "out of memory");
  if (!path[0] || (name && !name[0])) {
    free(path);
    return cli_usage_error("run", "--op needs LIB.so or LIB.so:NAME, not '%s'", spec);
  }
  dbx_err err = {0, ""};
  plugin *pl = NULL;
  if (plugin_open_file(path, name, &pl, &err)) {
    free(path);
    return plugin_error(&err);
  }
  const dbx_op *op = plugin_op(pl);
  if (!arg) arg = "";
  job j;
  memset(&j, 0, sizeof j);
  j.name = "run";
  j.workers = o->workers;
  j.t_start = time_mono();
  sink *out = NULL;
  coord *co = NULL;
  int rc = sink_check(&o->out, &err);
  if (!rc) rc = inputs_expand(in, (size_t)nin, &j.in, &err);
  if (!rc) cli_job_size_batches(o, &j.in);
  if (!rc) rc = cli_job_start(o, &j, &co, &err);
  if (!rc) rc = sink_open(&o->out, op->schema, &out, &err);
  if (!rc) {
    stage s;
    /* The configuration is the text and its NUL: what workers check for plugins. */
    cli_stage_init(&s, &j, o, "op", op, arg, strlen(arg) + 1, out);
    /* The partials depend on the library's exact bytes, the operator and its argument: a
     * resume with a rebuilt library or another --op-arg is refused, not mixed. */
    char opts[200];
    snprintf(opts, sizeof opts, "op_lib_xxh64=%016llx op=%s op_arg_xxh64=%016llx",
             (unsigned long long)plugin_xxh64(pl), op->name, (unsigned long long)XXH64(arg, strlen(arg), 0));
    s.plan_opts = opts;
    rc = cli_run_stage(co, &j, &s, &err);
    dbx_buf_free(&s.bcast_out);
  }
  rc = cli_job_end("run", o, &j, co, out, rc, &err);
  plugin_close(pl);  /* after the coordinator and its workers are gone */
  free(path);
  return rc;
}

/* `dbatch run --map CMD --reduce AGG,...` (rows to any sink) or `--reduce-cmd RCMD` (the
 * reduce command's bytes). */
static int run_reduce(cli_job *o, cli_keyed *k, const cli_follow *fl, const char *map, const char *reduce,
                      const char *reduce_cmd, int bad_fail, int nin, char **in) {
  static reduce_cfg rcfg;
  static reduce_cmd_cfg ccfg;
  memset(&rcfg, 0, sizeof rcfg);
  memset(&ccfg, 0, sizeof ccfg);
  dbx_err err = {0, ""};
  const char *names[1 + KV_AGG_MAX];
  dbx_coltype types[1 + KV_AGG_MAX];
  dbx_schema schema = {0, names, types};
  if (strlen(map) >= sizeof rcfg.map.cmd) return cli_usage_error("run", "--map: the command is longer than %zu bytes; put it in a script", sizeof rcfg.map.cmd - 1);
  if (reduce) {
    if (kv_spec_parse(&rcfg.spec, reduce, NULL, NULL, &err)) return cli_usage_error("run", "--reduce %s: %s", reduce, err.msg);
    snprintf(rcfg.map.cmd, sizeof rcfg.map.cmd, "%s", map);
    rcfg.map.timeout = o->co.task_timeout;
    rcfg.bad_fail = bad_fail;
    names[0] = "key";
    types[0] = DBX_COL_TEXT;
    for (uint32_t i = 0; i < rcfg.spec.nagg; i++) {
      names[1 + i] = rcfg.spec.agg[i].name;
      types[1 + i] = kv_agg_type(&rcfg.spec, i);
    }
    schema.ncol = 1 + rcfg.spec.nagg;
  } else {
    if (!reduce_cmd[0]) return cli_usage_error("run", "--reduce-cmd needs a command");
    if (strlen(reduce_cmd) >= sizeof ccfg.reduce.cmd)
      return cli_usage_error("run", "--reduce-cmd: the command is longer than %zu bytes; put it in a script", sizeof ccfg.reduce.cmd - 1);
    if (!strncmp(o->out.dest, "sqlite:", 7))
      return cli_usage_error("run", "--out %s: --reduce-cmd writes the reduce command's bytes; SQLite output is not available for it",
                             o->out.dest);
    snprintf(ccfg.map.cmd, sizeof ccfg.map.cmd, "%s", map);
    snprintf(ccfg.reduce.cmd, sizeof ccfg.reduce.cmd, "%s", reduce_cmd);
    ccfg.map.timeout = ccfg.reduce.timeout = o->co.task_timeout;
  }
  job j;
  memset(&j, 0, sizeof j);
  j.name = "run";
  j.workers = o->workers;
  j.t_start = time_mono();
  sink *out = NULL;
  coord *co = NULL;
  int rc = reduce ? sink_check(&o->out, &err) : 0;
  if (!rc) rc = inputs_expand(in, (size_t)nin, &j.in, &err);
  if (!rc) cli_job_size_batches(o, &j.in);
  if (!rc) rc = cli_job_start(o, &j, &co, &err);
  if (fl->on) k->partitions = 0, k->partitions_set = 1;  /* a followed job's state is one partial */
  if (!rc && reduce) rc = cli_keyed_prepare(k, &j, o, &rcfg.part, &err);
  if (!rc && !fl->on)
    rc = reduce ? sink_open(&o->out, &schema, &out, &err) : sink_raw_open(o->out.dest, o->out.append, &out, &err);
  if (!rc) {
    stage s;
    if (reduce) cli_stage_init(&s, &j, o, "reduce", &op_reduce, &rcfg, sizeof rcfg, out);
    else cli_stage_init(&s, &j, o, "reduce-cmd", &op_reduce_cmd, &ccfg, sizeof ccfg, out);
    char opts[256];
    snprintf(opts, sizeof opts, "map_cmd_xxh64=%016llx %s_xxh64=%016llx bad_fail=%d partitions=%u",
             (unsigned long long)XXH64(map, strlen(map), 0), reduce ? "reduce" : "reduce_cmd",
             (unsigned long long)(reduce ? XXH64(&rcfg.spec, sizeof rcfg.spec, 0) : XXH64(reduce_cmd, strlen(reduce_cmd), 0)),
             bad_fail, rcfg.part.r);
    s.plan_opts = opts;
    cli_keyed_rows_ctx rx = {&rcfg.spec, 1};
    cli_follow f = *fl;
    f.schema = &schema;
    if (fl->on) rc = cli_follow_run(co, &j, o, &f, &s, in, (size_t)nin, &err);
    else rc = reduce ? cli_keyed_stage(co, &j, o, &s, &rcfg.part, &rcfg.spec, 0, cli_keyed_rows, &rx, &err)
                     : cli_run_stage(co, &j, &s, &err);
    dbx_buf_free(&s.bcast_out);
  }
  rc = cli_job_end("run", o, &j, co, out, rc, &err);
  cli_keyed_done(k, rc != 0 && o->job_dir != NULL);
  return rc;
}

int cmd_run(int argc, char **argv) {
  static const struct option longopts[] = {
      {"map", required_argument, NULL, 1},
      {"reduce", required_argument, NULL, 2},
      {"reduce-cmd", required_argument, NULL, 3},
      {"op", required_argument, NULL, 4},
      {"op-arg", required_argument, NULL, 5},
      CLI_KEYED_OPTIONS,
      CLI_FOLLOW_OPTIONS,
      CLI_JOB_OPTIONS,
      {NULL, 0, NULL, 0},
  };
  cli_job o;
  cli_keyed k;
  memset(&k, 0, sizeof k);
  cli_follow fl;
  memset(&fl, 0, sizeof fl);
  static exec_cfg cfg;  /* 4 KiB: not on the stack; plain bytes shipped to workers */
  memset(&cfg, 0, sizeof cfg);
  const char *map = NULL, *opspec = NULL, *oparg = NULL, *reduce = NULL, *reduce_cmd = NULL;
  int bad_fail = -1;
  const char *row_opt = NULL;  /* a row-output option seen (valid with --op only) */
  cli_job_defaults(&o, "run");
  optind = 1;
  int c;
  int li = -1;
  while ((c = getopt_long(argc, argv, "o:qvh", longopts, &li)) != -1) {
    /* Options of row outputs apply to --op only (a command's output is its own bytes);
     * record checks are the operator's own business in both cases. */
    if (c == 1024 && optarg) bad_fail = !strcmp(optarg, "fail") ? 1 : !strcmp(optarg, "skip") ? 0 : -2;
    const char *na = c == 1023 ? "--max-record" : c == 1024 && !reduce ? "--on-bad-record" : NULL;
    if (na) return cli_usage_error("run", "%s does not apply to dbatch run (the command or operator decides what a bad record is)", na);
    if (c == 1003 || c == 1004 || c == 1033) row_opt = c == 1003 ? "--format" : c == 1004 ? "--table" : "--header";
    int r = cli_keyed_option(&k, c, optarg);
    if (!r) r = cli_follow_option(&fl, c, optarg);
    if (!r) r = cli_job_option(&o, c, optarg);
    if (r < 0) return cli_bad_value("run", longopts, li, c, optarg);
    if (r) continue;
    switch (c) {
    case 1: map = optarg; break;
    case 4: opspec = optarg; break;
    case 5: oparg = optarg; break;
    case 2: reduce = optarg; break;
    case 3: reduce_cmd = optarg; break;
    case 'h': fputs(help, stdout); return EXIT_OK;
    default: return cli_bad_option("run", longopts, "o:qvh", argv);
    }
  }
  if (map && opspec) return cli_usage_error("run", "--map and --op are exclusive: give one");
  if ((fl.on || fl.interval > 0 || fl.until_idle > 0 || fl.window > 0) && (!reduce || reduce_cmd || opspec))
    return cli_usage_error("run", "--follow%s goes with --map CMD --reduce AGG (a running result by key)",
                           fl.on ? "" : fl.interval > 0 ? "'s --interval" : fl.until_idle > 0 ? "'s --until-idle" : "'s --window");
  if (oparg && !opspec) return cli_usage_error("run", "--op-arg needs --op LIB.so[:NAME]");
  if (opspec) {
    if (optind >= argc) return cli_usage_error("run", "no INPUT given (use - for standard input)");
    return run_op(&o, opspec, oparg, argc - optind, argv + optind);
  }
  if ((reduce || reduce_cmd) && opspec) return cli_usage_error("run", "--reduce and --reduce-cmd go with --map CMD, not --op");
  if (reduce && reduce_cmd) return cli_usage_error("run", "--reduce and --reduce-cmd are exclusive: give one");
  if (bad_fail == -2) return cli_usage_error("run", "--on-bad-record takes skip or fail");
  if (reduce || reduce_cmd) {
    if (!map || !map[0]) return cli_usage_error("run", "%s needs --map CMD (the command whose KEY<TAB>VALUE lines it reduces)",
                                                reduce ? "--reduce" : "--reduce-cmd");
    if (reduce_cmd && row_opt)
      return cli_usage_error("run", "%s does not apply to --reduce-cmd (its output is the reduce command's own bytes)", row_opt);
    if (optind >= argc) return cli_usage_error("run", "no INPUT given (use - for standard input)");
    if (reduce_cmd && (k.partitions_set || k.spill_dir || k.memory))
      return cli_usage_error("run", "--partitions, --spill-dir and --memory apply to --reduce, not --reduce-cmd");
    int mu = cli_follow_misuse(&fl, "run", argv + optind, (size_t)(argc - optind));
    if (mu) return mu;
    return run_reduce(&o, &k, &fl, map, reduce, reduce_cmd, bad_fail == 1, argc - optind, argv + optind);
  }
  if (k.partitions_set || k.spill_dir || k.memory)
    return cli_usage_error("run", "--partitions, --spill-dir and --memory apply to --reduce only");
  if (row_opt) return cli_usage_error("run", "%s does not apply to dbatch run --map (its output is the command's own bytes)", row_opt);
  if (!map) return cli_usage_error("run", "--map CMD is required (the command to run over each batch), or --op LIB.so[:NAME] for a plugin operator");
  if (!map[0]) return cli_usage_error("run", "--map needs a command");
  if (strlen(map) >= sizeof cfg.cmd) return cli_usage_error("run", "--map: the command is longer than %zu bytes; put it in a script", sizeof cfg.cmd - 1);
  if (optind >= argc) return cli_usage_error("run", "no INPUT given (use - for standard input)");
  if (!strncmp(o.out.dest, "sqlite:", 7) || !strncmp(o.out.dest, "postgres", 8))
    return cli_usage_error("run", "--out %s: a map-only job writes the command's bytes, not rows; give a file (or "
                           "--reduce to make rows)", o.out.dest);
  snprintf(cfg.cmd, sizeof cfg.cmd, "%s", map);
  cfg.timeout = o.co.task_timeout;  /* also enforced by the worker itself, remote ones included */
  dbx_err err = {0, ""};
  job j;
  memset(&j, 0, sizeof j);
  j.name = "run";
  j.workers = o.workers;
  j.t_start = time_mono();
  sink *out = NULL;
  coord *co = NULL;
  int rc = inputs_expand(argv + optind, (size_t)(argc - optind), &j.in, &err);
  if (!rc) cli_job_size_batches(&o, &j.in);
  if (!rc) rc = cli_job_start(&o, &j, &co, &err);
  if (!rc) rc = sink_raw_open(o.out.dest, o.out.append, &out, &err);
  if (!rc) {
    stage s;
    cli_stage_init(&s, &j, &o, "map", &op_exec, &cfg, sizeof cfg, out);
    /* The outputs depend on the command (the timeout only decides whether one comes). */
    char opts[64];
    snprintf(opts, sizeof opts, "map_cmd_xxh64=%016llx", (unsigned long long)XXH64(cfg.cmd, strlen(cfg.cmd), 0));
    s.plan_opts = opts;
    rc = cli_run_stage(co, &j, &s, &err);
    dbx_buf_free(&s.bcast_out);
  }
  return cli_job_end("run", &o, &j, co, out, rc, &err);
}
