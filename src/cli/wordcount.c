/* wordcount.c -- `dbatch wordcount`: Unicode word counts over text inputs. */
#include <stdio.h>
#include <string.h>

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
} wc_rows_ctx;

/* The rows of a partitioned word count: the reduce tasks' by-count files merged. */
static int wc_rows(void *ctx, kv_stream *st, sink *out, dbx_err *err) {
  (void)st;
  const wc_rows_ctx *x = ctx;
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
    wc_rows_ctx rx = {&pcfg.part, cfg.top};
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
