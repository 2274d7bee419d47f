/* wordcount.c -- `dbatch wordcount`: Unicode word counts over text inputs. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/journal.h"
#include "ops/ops.h"
#include "util/parse.h"
#include "util/timeutil.h"

static const char help[] =
    "Usage: dbatch wordcount [OPTIONS] INPUT...\n"
    "Count words in text. INPUT is a file, a directory (read recursively, in name order,\n"
    "skipping names that start with '.' or '_'), a glob pattern, or - for standard input;\n"
    ".gz and .zst files are decompressed on the fly.\n"
    "A word is a maximal run of Unicode letters, digits and '_' (Python's \\w); invalid UTF-8\n"
    "separates words. Rows are word<TAB>count, by count descending, then word.\n"
    "\n"
    "Word count options:\n"
    "      --case-sensitive    keep case (default: Unicode lowercase, as str.lower())\n"
    "      --top K             keep only the first K rows\n"
    CLI_KEYED_HELP
    CLI_FOLLOW_HELP
    CLI_JOB_HELP;

typedef struct wc_rows_ctx {
  const kv_part_cfg *pc;
  uint64_t top;
  coord *co;
  job *j;
  const cli_job *o;
} wc_rows_ctx;

/* Fewer rows than this are merged here: an output stage costs more than they do. */
#define PARALLEL_OUTPUT_ROWS 100000

/* The rows formatted by output tasks on the workers, each a range of the global order, then
 * copied into the sink in order: the coordinator's merge and formatting of every row was the
 * serial tail of the job (0.7 s of 3.5 s for 10 M distinct words). Only into a file sink,
 * without --top, and with local workers (they read the spill directory). 1 when done, 0 when
 * not taken (the caller merges here), < 0 on failure. */
static int wc_rows_parallel(const wc_rows_ctx *x, sink *out, dbx_err *err) {
  int fmt = sink_row_format(out);
  if (x->top || fmt < 0 || x->o->co.workers <= 0 || x->o->co.listen || !x->co) return 0;
  const kv_part_cfg *pc = x->pc;
  /* As many ranges as partitions: a number of the job's plan, not of this machine, so a
   * journaled job resumes with the same output tasks wherever it runs. */
  uint32_t T = pc->r < COUNT_OUT_MAX ? pc->r : COUNT_OUT_MAX;
  uint64_t rows = 0, *off = calloc((size_t)(T + 1) * pc->r, sizeof *off);
  if (!off) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = count_split(pc, T, off, &rows, err);
  if (rc || rows < PARALLEL_OUTPUT_ROWS) {
    free(off);
    return rc;
  }
  count_out_cfg cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.pc = *pc;
  cfg.ntasks = T;
  cfg.fmt = fmt;
  dbx_buf bc = {0};
  if (count_split_encode(pc, T, off, &bc)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  free(off);
  stage s;
  char opts[64];
  if (!rc) {
    cli_stage_init(&s, x->j, x->o, "output", &op_count_output, &cfg, sizeof cfg, NULL);
    s.in = NULL;
    s.virtual_tasks = T;
    s.never_skip = 1;
    s.bcast_in = bc.data;
    s.bcast_in_len = bc.len;
    snprintf(opts, sizeof opts, "output_tasks=%u format=%d", T, fmt);
    s.plan_opts = opts;
    rc = cli_run_stage(x->co, x->j, &s, err);
    dbx_buf_free(&s.bcast_out);
  }
  dbx_buf_free(&bc);
  /* Every task's file, in order. One missing (a resumed task whose file went with a cleared
   * spill directory) or short is merged here instead, from the by-count files. */
  char path[SHUFFLE_DIR_MAX + 64];
  int fds[COUNT_OUT_MAX];
  uint64_t fbytes[COUNT_OUT_MAX], frows = 0;
  uint32_t opened = 0, ran = !rc;
  for (; !rc && opened < T; opened++) {
    count_out_path(path, sizeof path, pc, opened);
    if ((fds[opened] = open(path, O_RDONLY | O_CLOEXEC)) < 0) break;
    uint64_t fr;
    if (count_out_check(fds[opened], &fr, &fbytes[opened])) {
      opened++;  /* closed and removed below */
      break;
    }
    frows += fr;
  }
  /* Every file whole, and together every row: else the merge here. */
  int whole = !rc && opened == T && frows == rows;
  char *buf = whole ? malloc(1u << 20) : NULL;
  if (whole && !buf) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (uint32_t t = 0; whole && !rc && t < T; t++) {
    for (uint64_t left = fbytes[t]; left && !rc;) {
      ssize_t n = read(fds[t], buf, left < (1u << 20) ? (size_t)left : (1u << 20));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        rc = dbx_seterr(err, DBX_EIO, "output task %u's rows: %s", t, n < 0 ? strerror(errno) : "the file was cut short");
        break;
      }
      left -= (uint64_t)n;
      rc = sink_put_rows(out, buf, (size_t)n, 0, err);
    }
  }
  if (whole && !rc) rc = sink_put_rows(out, NULL, 0, rows, err);
  free(buf);
  for (uint32_t t = 0; t < opened; t++)
    if (fds[t] >= 0) close(fds[t]);
  /* The stage's files, also those after one missing or cut short (the merge here replaces
   * them all). */
  for (uint32_t t = 0; t < (ran ? T : opened); t++) {
    count_out_path(path, sizeof path, pc, t);
    unlink(path);
  }
  if (rc) return rc;
  return whole;
}

/* The rows of a partitioned word count: the reduce tasks' by-count files merged. */
static int wc_rows(void *ctx, kv_stream *st, sink *out, dbx_err *err) {
  (void)st;
  const wc_rows_ctx *x = ctx;
  int done = wc_rows_parallel(x, out, err);
  if (done) return done < 0 ? done : 0;
  count_stream *cs = NULL;
  int rc = count_stream_open(x->pc, &cs, err);
  uint64_t n = 0;
  while (!rc && (!x->top || n < x->top)) {
    const char *w;
    size_t len;
    uint64_t c;
    int r = count_stream_next(cs, &w, &len, &c, err);
    if (r <= 0) {
      rc = r;
      break;
    }
    dbx_value row[2];
    memset(row, 0, sizeof row);
    row[0].s = w, row[0].n = len;
    row[1].i = (int64_t)c;
    rc = sink_row(out, row, err);
    n++;
  }
  count_stream_close(cs);
  return rc;
}

int cmd_wordcount(int argc, char **argv) {
  static const struct option longopts[] = {
      {"case-sensitive", no_argument, NULL, 1},
      {"top", required_argument, NULL, 2},
      CLI_KEYED_OPTIONS,
      CLI_FOLLOW_OPTIONS,
      CLI_JOB_OPTIONS,
      {NULL, 0, NULL, 0},
  };
  cli_job o;
  wc_cfg cfg = {0, 0, 0, 0};
  static wcpart_cfg pcfg;
  memset(&pcfg, 0, sizeof pcfg);
  cli_keyed k;
  memset(&k, 0, sizeof k);
  cli_follow fl;
  memset(&fl, 0, sizeof fl);
  cli_job_defaults(&o, "wordcount");
  optind = 1;
  int c;
  int li = -1;
  while ((c = getopt_long(argc, argv, "o:qvh", longopts, &li)) != -1) {
    int r = cli_keyed_option(&k, c, optarg);
    if (!r) r = cli_follow_option(&fl, c, optarg);
    if (!r) r = cli_job_option(&o, c, optarg);
    if (r < 0) return cli_bad_value("wordcount", longopts, li, c, optarg);
    if (r) continue;
    switch (c) {
    case 1: cfg.case_sensitive = 1; break;
    case 2:
      if (parse_u64(optarg, 1, UINT64_MAX, &cfg.top))
        return cli_usage_error("wordcount", "--top needs a positive count, not '%s'", optarg);
      break;
    case 'h': fputs(help, stdout); return EXIT_OK;
    default: return cli_bad_option("wordcount", longopts, "o:qvh", argv);
    }
  }
  cfg.max_record = o.max_record;
  cfg.bad_fail = o.bad_fail;
  if (optind >= argc) return cli_usage_error("wordcount", "no INPUT given (use - for standard input)");
  int mu = cli_follow_misuse(&fl, "wordcount", argv + optind, (size_t)(argc - optind));
  if (mu) return mu;
  dbx_err err = {0, ""};
  job j;
  memset(&j, 0, sizeof j);
  j.name = "wordcount";
  j.workers = o.workers;
  j.t_start = time_mono();
  sink *out = NULL;
  coord *co = NULL;
  int rc = sink_check(&o.out, &err);
  if (!rc) rc = inputs_expand(argv + optind, (size_t)(argc - optind), &j.in, &err);
  if (!rc) cli_job_size_batches(&o, &j.in);
  if (!rc) rc = cli_job_start(&o, &j, &co, &err);
  /* Word count merges in partitions on the workers like every keyed job (cli_keyed_prepare
   * picks the default): a coordinator merging every partial takes a core from workers that
   * share its machine (bench/scaling: 1.3x from 1 to 2 workers that way, 1.8x this way). */
  if (fl.on) k.partitions_set = 1, k.partitions = 0;  /* a followed job's state is one partial, kept between micro-batches */
  /* A job journaled before word count partitioned by default (its plan has no partitions=)
   * is resumed as it was planned, merged here: else its plan could not be reproduced and
   * the only way on, running it afresh, would append its rows twice. */
  char planned[512];
  if (!rc && !k.partitions_set && journal_planned(j.jr, 0, planned, sizeof planned) && !strstr(planned, "partitions="))
    k.partitions_set = 1, k.partitions = 0;
  if (!rc) rc = cli_keyed_prepare(&k, &j, &o, &pcfg.part, &err);
  if (!rc && !fl.on) rc = sink_open(&o.out, op_wordcount.schema, &out, &err);
  if (!rc && pcfg.part.r) {
    /* Merged on the workers in partitions: the same rows, never all in this process. */
    stage s;
    pcfg.wc = cfg;
    cli_stage_init(&s, &j, &o, "wordcount", &op_wordcount_part, &pcfg, sizeof pcfg, out);
    char opts[200];
    snprintf(opts, sizeof opts, "case_sensitive=%d max_record=%llu on_bad_record=%s partitions=%u", cfg.case_sensitive,
             (unsigned long long)cfg.max_record, cfg.bad_fail ? "fail" : "skip", pcfg.part.r);
    s.plan_opts = opts;
    s.split.max_line = cfg.max_record;
    s.split.max_line_fail = cfg.bad_fail;
    wc_rows_ctx rx = {&pcfg.part, cfg.top, co, &j, &o};
    rc = cli_keyed_stage(co, &j, &o, &s, &pcfg.part, &wc_count_spec, 1, wc_rows, &rx, &err);
    dbx_buf_free(&s.bcast_out);
  } else if (!rc) {
    stage s;
    cli_stage_init(&s, &j, &o, "wordcount", &op_wordcount, &cfg, sizeof cfg, out);
    /* What the partials depend on besides the cut (--top only trims the finished rows). */
    char opts[160];
    snprintf(opts, sizeof opts, "case_sensitive=%d max_record=%llu on_bad_record=%s", cfg.case_sensitive,
             (unsigned long long)cfg.max_record, cfg.bad_fail ? "fail" : "skip");
    s.plan_opts = opts;
    /* Followed: one partial kept between micro-batches, the rows written after each one. */
    rc = fl.on ? cli_follow_run(co, &j, &o, &fl, &s, argv + optind, (size_t)(argc - optind), &err)
               : cli_run_stage(co, &j, &s, &err);
    dbx_buf_free(&s.bcast_out);
  }
  rc = cli_job_end("wordcount", &o, &j, co, out, rc, &err);
  cli_keyed_done(&k, rc != 0 && o.job_dir != NULL);
  return rc;
}
