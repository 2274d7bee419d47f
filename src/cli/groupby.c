/* groupby.c -- `dbatch groupby` (group CSV, TSV or JSONL records by key columns, with
 * aggregates, no code) and `dbatch cooccur` (items bought together, as two generic keyed
 * stages: orders -> baskets per user -> pairs counted -> top K per item). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli/cli.h"
#include "io/records.h"
#include "ops/ops.h"
#include "sink/sink_raw.h"
#include "util/parse.h"
#include "util/timeutil.h"

#define REC_OPTIONS_HELP                                                                      \
  "Records:\n"                                                                                \
  "      --input-format csv|tsv|jsonl  how to read the inputs (default: from their names:\n"  \
  "                          .csv, .tsv, .jsonl or .ndjson, also before .gz or .zst)\n"       \
  "  CSV is RFC 4180: a header row, fields quoted with \" may hold commas, quotes (\"\") and\n" \
  "  newlines; CRLF line ends are fine. TSV has a header row and no quoting. JSONL has one\n"  \
  "  object per line; fields are found by name at its top level. Every CSV or TSV input\n"   \
  "  must have the same header. An empty field, a JSON null or an absent field is no\n"     \
  "  value. A malformed record is a bad record (--on-bad-record skip|fail).\n"

static const char gb_help[] =
    "Usage: dbatch groupby INPUT... --key COL[,COL...] --agg SPEC[,SPEC...] [OPTIONS]\n"
    "Group the records of CSV, TSV or JSONL inputs by the key columns and aggregate the\n"
    "others, in parallel, with no code. Rows: the key columns, then the aggregates in the\n"
    "order given, sorted by key (each column compared bytewise). CSV output has a header.\n"
    "\n"
    "SPEC (--agg may be given several times):\n"
    "  count           rows in the group\n"
    "  sum:COL         sum; exact 64-bit integers while every value is an integer (an\n"
    "                  overflow fails the job), else a double\n"
    "  mean:COL  min:COL  max:COL   numeric; a value that is not a number is a bad record\n"
    "  first:COL  last:COL         the first or last value in input order\n"
    "  distinct:COL    the number of distinct values\n"
    "  top:K:COL       the K most frequent values with their counts: v1=c1,v2=c2,...\n"
    "Every aggregate but count skips missing values; one that saw none is empty (null).\n"
    "\n"
    "Example:\n"
    "  dbatch groupby sales.csv --key region,product --agg count,sum:qty,mean:price -o out.csv\n"
    "\n"
    "Group-by options:\n"
    "      --key COL[,COL...]  the key columns\n"
    "      --agg SPEC[,SPEC...]  the aggregates\n"
    REC_OPTIONS_HELP
    CLI_KEYED_HELP
    CLI_FOLLOW_HELP
    CLI_JOB_HELP;

static const char co_help[] =
    "Usage: dbatch cooccur ORDERS... --user COL --item COL [--top K] [--max-basket N] [OPTIONS]\n"
    "Customers who bought X also bought Y: for each item, the K items bought by the most\n"
    "distinct users who also bought it. ORDERS are CSV, TSV or JSONL records with a user and\n"
    "an item column. Rows: item<TAB>other<TAB>users, by item, then users descending, then\n"
    "other. Users with more than --max-basket distinct items (bots, resellers) are left out\n"
    "and counted in the summary.\n"
    "It runs as two distributed stages: orders are grouped by user into baskets of distinct\n"
    "items; baskets are cut into batches whose tasks count the pairs of items they hold;\n"
    "the counts merge and the top K per item are kept.\n"
    "\n"
    "Example:\n"
    "  dbatch cooccur orders.csv --user customer_id --item product_id --top 5 -o also.tsv\n"
    "\n"
    "Co-occurrence options:\n"
    "      --user COL          the user column\n"
    "      --item COL          the item column\n"
    "      --top K             other items per item (default 10)\n"
    "      --max-basket N      leave out users with more than N distinct items (default 1000)\n"
    REC_OPTIONS_HELP
    CLI_KEYED_HELP
    CLI_FOLLOW_HELP
    CLI_JOB_HELP;

/* ---- records: format and header ---- */

typedef struct rec_setup {
  rec_format fmt;
  rec_names header;         /* CSV/TSV: the common header */
  int have_header;
} rec_setup;

/* Decide the format and read the header every CSV/TSV input must share. */
static int rec_prepare(const char *cmd, const char *fmt_opt, const inputs *in, rec_setup *rs, dbx_err *err) {
  memset(rs, 0, sizeof *rs);
  if (fmt_opt) {
    if (!(rs->fmt = (rec_format)rec_format_parse(fmt_opt)))
      return dbx_seterr(err, DBX_EUSAGE, "--input-format takes csv, tsv or jsonl, not '%s'", fmt_opt);
  }
  for (size_t i = 0; i < in->n && !fmt_opt; i++) {
    rec_format f = rec_format_of(in->v[i].path);
    if (!f)
      return dbx_seterr(err, DBX_EUSAGE, "%s: cannot tell its format from its name; give --input-format csv|tsv|jsonl",
                        in->v[i].path);
    if (rs->fmt && f != rs->fmt)
      return dbx_seterr(err, DBX_EUSAGE, "%s and %s are not of the same format; give --input-format", in->v[0].path,
                        in->v[i].path);
    rs->fmt = f;
  }
  if (!rs->fmt) rs->fmt = REC_JSONL;
  if (rs->fmt == REC_JSONL) return 0;
  const char *first = NULL;
  for (size_t i = 0; i < in->n; i++) {
    if (in->v[i].kind == IN_STREAM)
      return dbx_seterr(err, DBX_EUSAGE, "%s: %s reads the header of CSV and TSV inputs before it starts; give a file, "
                        "not a pipe or standard input", in->v[i].path, cmd);
    rec_names h = {0, NULL};
    int rc = rec_read_header(rs->fmt, in->v[i].path, &h, err);
    if (rc) {
      rec_names_free(&rs->header);
      return rc;
    }
    if (!h.n) continue;  /* an empty input: no header, no rows */
    if (!rs->have_header) {
      rs->header = h;
      rs->have_header = 1;
      first = in->v[i].path;
      continue;
    }
    int same = h.n == rs->header.n;
    for (uint32_t c = 0; same && c < h.n; c++) same = !strcmp(h.name[c], rs->header.name[c]);
    rec_names_free(&h);
    if (!same) {
      rec_names_free(&rs->header);
      return dbx_seterr(err, DBX_EUSAGE, "%s and %s have different headers; every input must have the same columns", first,
                        in->v[i].path);
    }
  }
  return 0;
}

/* Index of column name in the header, or a usage error naming the columns there are. */
static int header_index(const rec_setup *rs, const char *name, size_t n, uint32_t *out, dbx_err *err) {
  if (rs->fmt == REC_JSONL || !rs->have_header) { *out = 0; return 0; }
  for (uint32_t c = 0; c < rs->header.n; c++)
    if (strlen(rs->header.name[c]) == n && !memcmp(rs->header.name[c], name, n)) { *out = c; return 0; }
  char list[600] = "";
  size_t o = 0;
  for (uint32_t c = 0; c < rs->header.n && o < sizeof list - 80; c++)
    o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", c ? ", " : "", rs->header.name[c]);
  if (o >= sizeof list - 80) snprintf(list + o, sizeof list - o, ", ...");
  return dbx_seterr(err, DBX_EUSAGE, "no column '%.*s'; the columns are: %s", (int)n, name, list);
}

/* Add column name to cols (once); OUT *idx its position. */
static int cols_add(rec_cols *cols, const rec_setup *rs, const char *name, size_t n, uint32_t *idx, int dedupe,
                    dbx_err *err) {
  if (!n) return dbx_seterr(err, DBX_EUSAGE, "an empty column name");
  if (n >= KV_NAME_MAX) return dbx_seterr(err, DBX_EUSAGE, "column name '%.*s' is too long", (int)n, name);
  for (uint32_t i = 0; dedupe && i < cols->n; i++)
    if (strlen(cols->name[i]) == n && !memcmp(cols->name[i], name, n)) { *idx = i; return 0; }
  if (cols->n >= REC_COLS_MAX) return dbx_seterr(err, DBX_EUSAGE, "more than %d columns", REC_COLS_MAX);
  int rc = header_index(rs, name, n, &cols->col[cols->n], err);
  if (rc) return rc;
  memcpy(cols->name[cols->n], name, n);
  cols->name[cols->n][n] = 0;
  *idx = cols->n++;
  return 0;
}

typedef struct agg_cols_ctx {
  rec_cols *cols;
  const rec_setup *rs;
  uint32_t nkey;
} agg_cols_ctx;

static int agg_col(void *ctxp, const char *name, size_t n, dbx_err *err) {
  agg_cols_ctx *x = ctxp;
  /* Value columns come after the key columns; a key column may be aggregated too. */
  for (uint32_t i = x->nkey; i < x->cols->n; i++)
    if (strlen(x->cols->name[i]) == n && !memcmp(x->cols->name[i], name, n)) return (int)(i - x->nkey);
  uint32_t idx;
  int rc = cols_add(x->cols, x->rs, name, n, &idx, 0, err);
  return rc ? rc : (int)(idx - x->nkey);
}

static void plan_cols(char *out, size_t cap, const rec_cols *c) {
  size_t o = (size_t)snprintf(out, cap, "format=%u cols=", c->format);
  for (uint32_t i = 0; i < c->n && o < cap; i++) o += (size_t)snprintf(out + o, cap - o, "%s%u", i ? "," : "", c->col[i]);
}

int cmd_groupby(int argc, char **argv) {
  static const struct option longopts[] = {
      {"key", required_argument, NULL, 1},
      {"agg", required_argument, NULL, 2},
      {"input-format", required_argument, NULL, 3},
      CLI_KEYED_OPTIONS,
      CLI_FOLLOW_OPTIONS,
      CLI_JOB_OPTIONS,
      {NULL, 0, NULL, 0},
  };
  static groupby_cfg cfg;
  memset(&cfg, 0, sizeof cfg);
  cli_keyed k;
  memset(&k, 0, sizeof k);
  cli_job o;
  cli_follow fl;
  memset(&fl, 0, sizeof fl);
  const char *keys = NULL, *fmt = NULL;
  char aggs[4096] = "";
  cli_job_defaults(&o, "groupby");
  optind = 1;
  int c;
  int li = -1;
  while ((c = getopt_long(argc, argv, "o:qvh", longopts, &li)) != -1) {
    if (c == 1023) return cli_usage_error("groupby", "--max-record does not apply to groupby");
    int r = cli_keyed_option(&k, c, optarg);
    if (!r) r = cli_follow_option(&fl, c, optarg);
    if (!r) r = cli_job_option(&o, c, optarg);
    if (r < 0) return cli_bad_value("groupby", longopts, li, c, optarg);
    if (r) continue;
    switch (c) {
    case 1: keys = optarg; break;
    case 2:
      if (strlen(aggs) + strlen(optarg) + 2 > sizeof aggs) return cli_usage_error("groupby", "too many aggregates");
      if (aggs[0]) strcat(aggs, ",");
      strcat(aggs, optarg);
      break;
    case 3: fmt = optarg; break;
    case 'h': fputs(gb_help, stdout); return EXIT_OK;
    default: return cli_bad_option("groupby", longopts, "o:qvh", argv);
    }
  }
  if (!keys || !keys[0]) return cli_usage_error("groupby", "--key COL[,COL...] is required (the columns to group by)");
  if (!aggs[0]) return cli_usage_error("groupby", "--agg SPEC is required (count, sum:COL, mean:COL, ...)");
  if (optind >= argc) return cli_usage_error("groupby", "no INPUT given (use - for standard input)");
  dbx_err err = {0, ""};
  job j;
  memset(&j, 0, sizeof j);
  j.name = "groupby";
  j.workers = o.workers;
  j.t_start = time_mono();
  rec_setup rs;
  memset(&rs, 0, sizeof rs);
  int mu = cli_follow_misuse(&fl, "groupby", argv + optind, (size_t)(argc - optind));
  if (mu) return mu;
  int rc = inputs_expand(argv + optind, (size_t)(argc - optind), &j.in, &err);
  if (rc) return cli_fail("groupby", &err);
  if ((rc = rec_prepare("groupby", fmt, &j.in, &rs, &err))) {
    inputs_free(&j.in);
    return rc == DBX_EUSAGE ? cli_usage_error("groupby", "%s", err.msg) : cli_fail("groupby", &err);
  }
  cfg.cols.format = rs.fmt;
  for (const char *kc = keys;;) {
    const char *e = strchr(kc, ',');
    size_t n = e ? (size_t)(e - kc) : strlen(kc);
    uint32_t idx;
    if ((rc = cols_add(&cfg.cols, &rs, kc, n, &idx, 0, &err))) break;
    if (!e) break;
    kc = e + 1;
  }
  cfg.nkey = cfg.cols.n;
  agg_cols_ctx ax = {&cfg.cols, &rs, cfg.nkey};
  if (!rc) rc = kv_spec_parse(&cfg.spec, aggs, agg_col, &ax, &err);
  rec_names_free(&rs.header);
  if (rc) {
    inputs_free(&j.in);
    return cli_usage_error("groupby", "%s", err.msg);
  }
  cfg.bad_fail = o.bad_fail;
  const char *names[REC_COLS_MAX + KV_AGG_MAX];
  dbx_coltype types[REC_COLS_MAX + KV_AGG_MAX];
  for (uint32_t i = 0; i < cfg.nkey; i++) names[i] = cfg.cols.name[i], types[i] = DBX_COL_TEXT;
  for (uint32_t i = 0; i < cfg.spec.nagg; i++) {
    names[cfg.nkey + i] = cfg.spec.agg[i].name;
    types[cfg.nkey + i] = kv_agg_type(&cfg.spec, i);
  }
  dbx_schema schema = {cfg.nkey + cfg.spec.nagg, names, types};
  sink *out = NULL;
  coord *co = NULL;
  rc = sink_check(&o.out, &err);
  if (!rc) cli_job_size_batches(&o, &j.in);
  if (!rc) rc = cli_job_start(&o, &j, &co, &err);
  if (fl.on) k.partitions = 0, k.partitions_set = 1;  /* a followed job's state is one partial */
  if (!rc) rc = cli_keyed_prepare(&k, &j, &o, &cfg.part, &err);
  if (!rc && !fl.on) rc = sink_open(&o.out, &schema, &out, &err);
  if (!rc) {
    stage s;
    cli_stage_init(&s, &j, &o, "groupby", &op_groupby, &cfg, sizeof cfg, out);
    s.csv_quotes = rs.fmt == REC_CSV;
    char opts[256], colsd[160];
    plan_cols(colsd, sizeof colsd, &cfg.cols);
    snprintf(opts, sizeof opts, "%s spec_xxh64=%016llx on_bad_record=%s partitions=%u", colsd,
             (unsigned long long)XXH64(&cfg.spec, sizeof cfg.spec, 0), cfg.bad_fail ? "fail" : "skip", cfg.part.r);
    s.plan_opts = opts;
    cli_keyed_rows_ctx rx = {&cfg.spec, cfg.nkey};
    fl.header = rs.fmt != REC_JSONL;
    fl.schema = &schema;
    if (fl.on) rc = cli_follow_run(co, &j, &o, &fl, &s, argv + optind, (size_t)(argc - optind), &err);
    else rc = cli_keyed_stage(co, &j, &o, &s, &cfg.part, &cfg.spec, 0, cli_keyed_rows, &rx, &err);
    dbx_buf_free(&s.bcast_out);
  }
  rc = cli_job_end("groupby", &o, &j, co, out, rc, &err);
  cli_keyed_done(&k, rc != 0 && o.job_dir != NULL);
  return rc;
}

/* ---- cooccur ---- */

/* Move PATH.new over PATH unless PATH holds the same bytes already (then PATH.new goes). */
static int replace_if_changed(const char *path, dbx_err *err) {
  char npath[1100];
  snprintf(npath, sizeof npath, "%s.new", path);
  FILE *a = fopen(path, "rb"), *b = fopen(npath, "rb");
  int same = a && b;
  while (same) {
    char x[65536], y[65536];
    size_t m = fread(x, 1, sizeof x, a), n = fread(y, 1, sizeof y, b);
    if (m != n || memcmp(x, y, m)) same = 0;
    if (!m || !n) break;
  }
  if (a) fclose(a);
  if (b) fclose(b);
  if (same) return unlink(npath) == 0 ? 0 : dbx_seterr(err, DBX_EIO, "%s: %s", npath, strerror(errno));
  if (rename(npath, path) != 0) return dbx_seterr(err, DBX_EIO, "%s: %s", path, strerror(errno));
  return 0;
}

static int pair_rows(void *ctx, kv_stream *st, sink *out, dbx_err *err) {
  return cooccur_rows(ctx, st, sink_emit, out, err);
}

/* --follow: the rows of the baskets so far (a partial of op_baskets): its finish writes them
 * to the baskets file, the pairs stage runs over that file, its rows go through emit. */
typedef struct co_render {
  coord *co;
  job *j;
  const stage *pairs;
  const baskets_cfg *bcfg;
  const dbx_schema *schema;
  char bpath[1024];
} co_render;

static int cooccur_render(void *ctx, void *baskets, dbx_emit_fn emit, void *emit_ctx, dbx_err *err) {
  co_render *x = ctx;
  sink *bout = NULL, *cb = NULL;
  inputs bin;
  memset(&bin, 0, sizeof bin);
  char npath[1100];
  snprintf(npath, sizeof npath, "%s.new", x->bpath);
  int rc = sink_raw_open(npath, 0, &bout, err);
  if (!rc) rc = op_baskets.finish(x->bcfg, NULL, baskets, sink_emit, bout, NULL, err);
  if (!rc) {
    sink *b = bout;
    bout = NULL;
    rc = sink_commit(b, err);
  }
  x->j->left_out = cooccur_left_out();
  if (!rc && rename(npath, x->bpath) != 0) rc = dbx_seterr(err, DBX_EIO, "%s: %s", x->bpath, strerror(errno));
  if (!rc) rc = inputs_expand((char *[]){x->bpath}, 1, &bin, err);
  if (!rc) rc = sink_callback_open(emit, emit_ctx, x->schema, &cb) ? dbx_seterr(err, DBX_ENOMEM, "out of memory") : 0;
  if (!rc) {
    stage s = *x->pairs;
    stage_stats mb;
    memset(&mb, 0, sizeof mb);
    snprintf(mb.name, sizeof mb.name, "%s", x->pairs->st->name);
    s.st = &mb;
    s.in = &bin;
    s.out = cb;
    uint64_t size = bin.n ? bin.v[0].size : 0;
    s.split.batch_records = 0;
    s.split.batch_bytes = size / 8 < (256u << 10) ? (256u << 10) : size / 8;
    rc = cli_run_stage(x->co, x->j, &s, err);
    stage_stats *cum = x->pairs->st;
    cum->batches += mb.batches, cum->tasks += mb.tasks, cum->attempts += mb.attempts, cum->records += mb.records;
    cum->bytes += mb.bytes, cum->seconds += mb.seconds, cum->t_map += mb.t_map, cum->t_merge += mb.t_merge;
    cum->t_finish += mb.t_finish, cum->state = STAGE_DONE;
  }
  if (bout) sink_abort(bout);
  if (cb) rc ? sink_abort(cb) : (void)sink_commit(cb, NULL);
  inputs_free(&bin);
  return rc;
}

int cmd_cooccur(int argc, char **argv) {
  static const struct option longopts[] = {
      {"user", required_argument, NULL, 1},
      {"item", required_argument, NULL, 2},
      {"top", required_argument, NULL, 3},
      {"max-basket", required_argument, NULL, 4},
      {"input-format", required_argument, NULL, 5},
      CLI_KEYED_OPTIONS,
      CLI_FOLLOW_OPTIONS,
      CLI_JOB_OPTIONS,
      {NULL, 0, NULL, 0},
  };
  static baskets_cfg bcfg;
  static pairs_cfg pcfg;
  memset(&bcfg, 0, sizeof bcfg);
  memset(&pcfg, 0, sizeof pcfg);
  pcfg.top = 10;
  bcfg.max_basket = 1000;
  cli_keyed k, bk;  /* bk: the private directory of the baskets, without a job directory */
  memset(&k, 0, sizeof k);
  memset(&bk, 0, sizeof bk);
  cli_job o;
  cli_follow fl;
  memset(&fl, 0, sizeof fl);
  const char *user = NULL, *item = NULL, *fmt = NULL;
  cli_job_defaults(&o, "cooccur");
  optind = 1;
  int c;
  int li = -1;
  while ((c = getopt_long(argc, argv, "o:qvh", longopts, &li)) != -1) {
    if (c == 1023) return cli_usage_error("cooccur", "--max-record does not apply to cooccur");
    int r = cli_keyed_option(&k, c, optarg);
    if (!r) r = cli_follow_option(&fl, c, optarg);
    if (!r) r = cli_job_option(&o, c, optarg);
    if (r < 0) return cli_bad_value("cooccur", longopts, li, c, optarg);
    if (r) continue;
    switch (c) {
    case 1: user = optarg; break;
    case 2: item = optarg; break;
    case 3:
      if (parse_u64(optarg, 1, 1000000, &pcfg.top)) return cli_usage_error("cooccur", "--top needs a count 1..1000000, not '%s'", optarg);
      break;
    case 4:
      if (parse_u64(optarg, 2, UINT32_MAX, &bcfg.max_basket))
        return cli_usage_error("cooccur", "--max-basket needs a count of at least 2, not '%s'", optarg);
      break;
    case 5: fmt = optarg; break;
    case 'h': fputs(co_help, stdout); return EXIT_OK;
    default: return cli_bad_option("cooccur", longopts, "o:qvh", argv);
    }
  }
  if (!user || !user[0] || !item || !item[0]) return cli_usage_error("cooccur", "--user COL and --item COL are required");
  if (optind >= argc) return cli_usage_error("cooccur", "no ORDERS input given");
  if (o.batch_records) return cli_usage_error("cooccur", "--batch-records does not apply to cooccur (use --batch-bytes)");
  dbx_err err = {0, ""};
  job j;
  memset(&j, 0, sizeof j);
  j.name = "cooccur";
  j.workers = o.workers;
  j.t_start = time_mono();
  rec_setup rs;
  int mu = cli_follow_misuse(&fl, "cooccur", argv + optind, (size_t)(argc - optind));
  if (mu) return mu;
  int rc = inputs_expand(argv + optind, (size_t)(argc - optind), &j.in, &err);
  if (rc) return cli_fail("cooccur", &err);
  if ((rc = rec_prepare("cooccur", fmt, &j.in, &rs, &err))) {
    inputs_free(&j.in);
    return rc == DBX_EUSAGE ? cli_usage_error("cooccur", "%s", err.msg) : cli_fail("cooccur", &err);
  }
  bcfg.cols.format = rs.fmt;
  uint32_t idx;
  rc = cols_add(&bcfg.cols, &rs, user, strlen(user), &idx, 0, &err);
  if (!rc) rc = cols_add(&bcfg.cols, &rs, item, strlen(item), &idx, 0, &err);
  rec_names_free(&rs.header);
  if (rc) {
    inputs_free(&j.in);
    return cli_usage_error("cooccur", "%s", err.msg);
  }
  bcfg.bad_fail = o.bad_fail;
  snprintf(j.left_out_what, sizeof j.left_out_what, "users with more than %llu distinct items (--max-basket)",
           (unsigned long long)bcfg.max_basket);
  static const char *const names[] = {"item", "other", "users"};
  static const dbx_coltype types[] = {DBX_COL_TEXT, DBX_COL_TEXT, DBX_COL_INT};
  static const dbx_schema schema = {3, names, types};
  sink *out = NULL, *bout = NULL;
  coord *co = NULL;
  inputs bin;
  memset(&bin, 0, sizeof bin);
  char bpath[1024] = "";
  int tmpfile_made = 0;
  rc = sink_check(&o.out, &err);
  if (!rc) cli_job_size_batches(&o, &j.in);
  if (!rc) rc = cli_job_start(&o, &j, &co, &err);
  if (fl.on) {
    /* Followed: the state is the baskets so far; each output is the pairs stage over them. */
    k.partitions = 0, k.partitions_set = 1;
    if (!rc) rc = cli_keyed_prepare(&k, &j, &o, &pcfg.part, &err);
    if (!rc) {
      stage s, ps;
      cli_stage_init(&s, &j, &o, "baskets", &op_baskets, &bcfg, sizeof bcfg, NULL);
      s.csv_quotes = rs.fmt == REC_CSV;
      char opts[256], colsd[160];
      plan_cols(colsd, sizeof colsd, &bcfg.cols);
      snprintf(opts, sizeof opts, "%s max_basket=%llu on_bad_record=%s top=%llu", colsd,
               (unsigned long long)bcfg.max_basket, bcfg.bad_fail ? "fail" : "skip", (unsigned long long)pcfg.top);
      s.plan_opts = opts;
      cli_stage_init(&ps, &j, &o, "pairs", &op_pairs, &pcfg, sizeof pcfg, NULL);
      co_render rx = {co, &j, &ps, &bcfg, &schema, ""};
      if (j.job_dir) snprintf(rx.bpath, sizeof rx.bpath, "%s/baskets.tsv", j.job_dir);
      else if (!(rc = cli_keyed_private_tmp(&bk, NULL, &err))) snprintf(rx.bpath, sizeof rx.bpath, "%s/baskets.tsv", bk.dir);
      fl.header = rs.fmt != REC_JSONL;
      fl.schema = &schema;
      fl.render = cooccur_render;
      fl.render_ctx = &rx;
      if (!rc) rc = cli_follow_run(co, &j, &o, &fl, &s, argv + optind, (size_t)(argc - optind), &err);
      if (!j.job_dir && rx.bpath[0]) unlink(rx.bpath);
    }
    rc = cli_job_end("cooccur", &o, &j, co, NULL, rc, &err);
    cli_keyed_done(&k, rc != 0 && o.job_dir != NULL);
    cli_keyed_done(&bk, 0);
    return rc;
  }
  /* The baskets between the stages: in the job directory (a resume finds them there), or a
   * private temporary file. */
  if (!rc) {
    if (j.job_dir) {
      snprintf(bpath, sizeof bpath, "%s/baskets.tsv", j.job_dir);
    } else if (!(rc = cli_keyed_private_tmp(&bk, NULL, &err))) {
      /* In a private directory held while the job runs: a later job removes it if this one
       * is killed (cli_keyed_private_tmp). */
      snprintf(bpath, sizeof bpath, "%s/baskets.tsv", bk.dir);
      tmpfile_made = 1;
      /* The pairs stage's partitions go there too, unless --spill-dir says where (k does not
       * own it: bk removes it, after k has removed its files). */
      if (!k.spill_dir) snprintf(k.dir, sizeof k.dir, "%s", bk.dir);
    }
    char npath[1100];
    snprintf(npath, sizeof npath, "%s.new", bpath);
    if (!rc) rc = sink_raw_open(npath, 0, &bout, &err);
  }
  if (!rc) {
    stage s;
    cli_stage_init(&s, &j, &o, "baskets", &op_baskets, &bcfg, sizeof bcfg, bout);
    job_plan_stage(&j, "pairs");  /* listed from the start (its reduce, once its partitions are known) */
    s.csv_quotes = rs.fmt == REC_CSV;
    char opts[256], colsd[160];
    plan_cols(colsd, sizeof colsd, &bcfg.cols);
    snprintf(opts, sizeof opts, "%s max_basket=%llu on_bad_record=%s", colsd, (unsigned long long)bcfg.max_basket,
             bcfg.bad_fail ? "fail" : "skip");
    s.plan_opts = opts;
    rc = cli_run_stage(co, &j, &s, &err);
    dbx_buf_free(&s.bcast_out);
    j.left_out = cooccur_left_out();
    if (!rc) {
      sink *b = bout;
      bout = NULL;
      rc = sink_commit(b, &err);
    }
    /* A resume makes the same baskets again: keep the file the journal planned stage 2
     * over (its identity is checked) when the bytes are the same. */
    if (!rc) rc = replace_if_changed(bpath, &err);
  }
  if (!rc) rc = sink_open(&o.out, &schema, &out, &err);
  if (!rc) rc = inputs_expand((char *[]){bpath}, 1, &bin, &err);
  if (!rc) rc = cli_keyed_prepare(&k, &j, &o, &pcfg.part, &err);
  if (!rc) {
    stage s;
    cli_stage_init(&s, &j, &o, "pairs", &op_pairs, &pcfg, sizeof pcfg, out);
    s.in = &bin;
    /* Pairs grow with the square of a basket: smaller batches than the orders' (8 of them,
     * at least 256 KiB each), a function of the baskets' size alone (so a resume cuts them
     * the same). More batches would spread the work thinner and leave more runs to merge. */
    uint64_t size = bin.n ? bin.v[0].size : 0;
    s.split.batch_records = 0;
    s.split.batch_bytes = size / 8 < (256u << 10) ? (256u << 10) : size / 8;
    char opts[64];
    snprintf(opts, sizeof opts, "top=%llu partitions=%u", (unsigned long long)pcfg.top, pcfg.part.r);
    s.plan_opts = opts;
    rc = cli_keyed_stage(co, &j, &o, &s, &pcfg.part, &cooccur_pair_spec, 0, pair_rows, &pcfg, &err);
    dbx_buf_free(&s.bcast_out);
  }
  if (bout) sink_abort(bout);
  rc = cli_job_end("cooccur", &o, &j, co, out, rc, &err);
  if (j.left_out && !o.quiet)
    fprintf(stderr, "dbatch cooccur: %llu %s left out\n", (unsigned long long)j.left_out, j.left_out_what);
  inputs_free(&bin);
  if (tmpfile_made) unlink(bpath);
  if (rc) {
    char npath[1100];
    snprintf(npath, sizeof npath, "%s.new", bpath);
    unlink(npath);
  }
  cli_keyed_done(&k, rc != 0 && o.job_dir != NULL);
  cli_keyed_done(&bk, 0);
  return rc;
}
