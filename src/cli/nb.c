/* nb.c -- `dbatch nb train|test|run`: the distributed TF-IDF + naive Bayes text classifier. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "ops/nbayes.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/timeutil.h"

static const char help[] =
    "Usage: dbatch nb train --corpus CORPUS --model FILE [OPTIONS]\n"
    "       dbatch nb test  --model FILE --corpus CORPUS [OPTIONS]\n"
    "       dbatch nb run   --train CORPUS --test CORPUS [OPTIONS]\n"
    "Text classification with scikit-learn's CountVectorizer -> TfidfTransformer ->\n"
    "MultinomialNB defaults, trained and evaluated as dbatch stages on workers.\n"
    "CORPUS is a directory ROOT/<label>/<document> (as load_files reads it) or a .tsv file\n"
    "of label<TAB>text lines or a .jsonl file of {\"label\": ..., \"text\": ...} lines.\n"
    "Documents are UTF-8; invalid bytes act as separators. Lines that are not a document\n"
    "are counted as bad records and skipped.\n"
    "\n"
    "Classifier options:\n"
    "      --corpus CORPUS     the documents to train on (train) or to classify (test)\n"
    "      --train CORPUS / --test CORPUS   both, for run\n"
    "  -m, --model FILE        model file to write (train, run) or read (test); also\n"
    "                          sqlite:PATH or postgresql://URI (table nb_model)\n"
    "      --predictions DEST  one row per test document: path, predicted label\n"
    "                          (TSV, CSV, JSONL by name, or sqlite:PATH or postgresql://URI,\n"
    "                          table 'predictions' unless --table)\n"
    "      --proba             add the probability of each class, in class order: columns\n"
    "                          p_<label> (named in CSV, TSV --header, JSONL and tables)\n"
    "      --metrics DEST      per-label precision, recall, f1 and support (table 'metrics')\n"
    "      --digits N          digits in the report (default 2)\n"
    "      --batch-docs N      documents per batch (default: a directory's documents / 16,\n"
    "                          within 1..2000, or 1000 lines of a .tsv/.jsonl corpus; the\n"
    "                          same for any --workers)\n";

/* Job options that mean nothing to nb: its batches are documents (--batch-docs), its output
 * is --predictions (-o is kept as its short form). */
static const char *const nb_omit[] = {"batch-bytes", "batch-records", "max-record", "out", NULL};

static void nb_help(FILE *f) {
  fputs(help, f);
  cli_print_help(f, CLI_JOB_HELP, nb_omit);
}

typedef struct nb_opts {
  const char *corpus, *train, *test, *model, *metrics;
  int proba, digits;
  uint64_t batch_docs;
} nb_opts;

/* One stage of the classifier over corpus c. */
static int run_nb_stage(job *j, coord *co, const nb_opts *no, const dbx_op *op, const nb_cfg *cfg,
                        const corpus *c, const dbx_buf *payload, sink *out, const char *name, dbx_buf *result,
                        dbx_err *err) {
  dbx_buf env = {0};
  int rc = nb_envelope(c, payload ? payload->data : NULL, payload ? payload->len : 0, &env);
  if (rc) return rc;
  stage s;
  memset(&s, 0, sizeof s);
  s.name = name;
  s.op = op;
  s.cfg = cfg;
  s.cfg_size = sizeof *cfg;
  s.in = &c->in;
  /* The default depends on the corpus alone, never on the workers: the same batches, so
   * the same floating-point sums, for any worker count. */
  uint64_t per = no->batch_docs;
  if (!per) {
    per = c->in.n / 16;
    if (c->format != CORPUS_DIR) per = 1000;  /* a line-per-document file */
    per = per < 1 ? 1 : per > 2000 ? 2000 : per;
  }
  s.split.whole_files = c->format == CORPUS_DIR;
  s.split.batch_records = per;
  s.bcast_in = env.data;
  s.bcast_in_len = env.len;
  s.out = out;
  s.st = job_add_stage(j, name);
  char opts[96];
  snprintf(opts, sizeof opts, "format=%d proba=%d on_bad_record=%s", cfg->format, cfg->proba,
           cfg->bad_fail ? "fail" : "skip");
  s.plan_opts = opts;
  rc = cli_run_stage(co, j, &s, err);
  dbx_buf_free(&env);
  if (!rc && result) {
    result->len = 0;
    rc = dbx_buf_append(result, s.bcast_out.data, s.bcast_out.len);
  }
  dbx_buf_free(&s.bcast_out);
  return rc;
}

/* Code points in a UTF-8 string (for Python's len() in the report layout). */
static size_t ncp(const char *s) {
  size_t n = 0;
  for (; *s; s++) n += ((unsigned char)*s & 0xc0) != 0x80;
  return n;
}

static void pad_right_align(dbx_buf *b, const char *s, size_t width) {
  for (size_t k = ncp(s); k < width; k++) dbx_buf_append(b, " ", 1);
  dbx_buf_append(b, s, strlen(s));
}

static void put(dbx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(dbx_buf *b, const char *fmt, ...) {
  char t[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(t, sizeof t, fmt, ap);
  va_end(ap);
  if (n > 0) dbx_buf_append(b, t, (size_t)n < sizeof t ? (size_t)n : sizeof t - 1);
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* scikit-learn's classification_report, character for character, from confusion counts.
 * Labels are the sorted union of true and predicted labels; 0/0 counts as 0. */
static int report(const nb_confusion *cf, size_t ncf, int digits, sink *metrics, dbx_buf *out, dbx_err *err) {
  char **labels = calloc(2 * ncf + 1, sizeof *labels), **disp = NULL;
  size_t nl = 0;
  if (!labels) return DBX_ENOMEM;
  for (size_t i = 0; i < ncf; i++) {
    labels[nl++] = cf[i].truth;
    labels[nl++] = cf[i].pred;
  }
  qsort(labels, nl, sizeof *labels, cmp_cstr);
  size_t u = 0;
  for (size_t i = 0; i < nl; i++)
    if (!u || strcmp(labels[u - 1], labels[i])) labels[u++] = labels[i];
  nl = u;
  double *p = calloc(nl + 1, sizeof *p), *r = calloc(nl + 1, sizeof *r), *f = calloc(nl + 1, sizeof *f);
  uint64_t *sup = calloc(nl + 1, sizeof *sup), total = 0, correct = 0;
  int rc = 0;
  if (!p || !r || !f || !sup) { rc = DBX_ENOMEM; goto done; }
  for (size_t k = 0; k < nl; k++) {
    uint64_t tp = 0, pred = 0, truth = 0;
    for (size_t i = 0; i < ncf; i++) {
      int t = !strcmp(cf[i].truth, labels[k]), q = !strcmp(cf[i].pred, labels[k]);
      if (t) truth += cf[i].count;
      if (q) pred += cf[i].count;
      if (t && q) tp += cf[i].count;
    }
    p[k] = pred ? (double)tp / (double)pred : 0.0;
    r[k] = truth ? (double)tp / (double)truth : 0.0;
    double denom = p[k] + r[k];
    f[k] = denom == 0.0 ? 0.0 : 2 * p[k] * r[k] / denom;
    sup[k] = truth;
  }
  for (size_t i = 0; i < ncf; i++) {
    total += cf[i].count;
    if (!strcmp(cf[i].truth, cf[i].pred)) correct += cf[i].count;
  }
  /* Labels come from data: on the terminal they appear escaped as the logs escape text (a
   * normal label is unchanged), and the columns are as wide as the escaped text. */
  if (!(disp = calloc(nl + 1, sizeof *disp))) { rc = DBX_ENOMEM; goto done; }
  for (size_t k = 0; k < nl; k++) {
    dbx_buf e = {0};
    if (log_escape_buf(&e, labels[k], strlen(labels[k])) || dbx_buf_append(&e, "", 1)) {
      dbx_buf_free(&e);
      rc = DBX_ENOMEM;
      goto done;
    }
    disp[k] = e.data;
  }
  size_t width = 12;  /* len("weighted avg") */
  for (size_t k = 0; k < nl; k++) width = ncp(disp[k]) > width ? ncp(disp[k]) : width;
  if ((size_t)digits > width) width = (size_t)digits;
  pad_right_align(out, "", width);
  put(out, "  precision    recall  f1-score   support\n\n");
  for (size_t k = 0; k < nl; k++) {
    pad_right_align(out, disp[k], width);
    put(out, "  %9.*f %9.*f %9.*f %9llu\n", digits, p[k], digits, r[k], digits, f[k], (unsigned long long)sup[k]);
    if (metrics) {
      dbx_value row[5] = {{labels[k], strlen(labels[k]), 0, 0}, {NULL, 0, 0, p[k]}, {NULL, 0, 0, r[k]},
                          {NULL, 0, 0, f[k]}, {NULL, 0, (int64_t)sup[k], 0}};
      if ((rc = sink_row(metrics, row, err))) goto done;
    }
  }
  put(out, "\n");
  double acc = total ? (double)correct / (double)total : 0.0;
  pad_right_align(out, "accuracy", width);
  put(out, "  %9s %9s %9.*f %9llu\n", "", "", digits, acc, (unsigned long long)total);
  double mp = 0, mr = 0, mf = 0, wp = 0, wr = 0, wf = 0;
  for (size_t k = 0; k < nl; k++) {
    mp += p[k];
    mr += r[k];
    mf += f[k];
    wp += p[k] * (double)sup[k];
    wr += r[k] * (double)sup[k];
    wf += f[k] * (double)sup[k];
  }
  if (nl) { mp /= (double)nl; mr /= (double)nl; mf /= (double)nl; }
  if (total) { wp /= (double)total; wr /= (double)total; wf /= (double)total; }
  pad_right_align(out, "macro avg", width);
  put(out, "  %9.*f %9.*f %9.*f %9llu\n", digits, mp, digits, mr, digits, mf, (unsigned long long)total);
  pad_right_align(out, "weighted avg", width);
  put(out, "  %9.*f %9.*f %9.*f %9llu\n", digits, wp, digits, wr, digits, wf, (unsigned long long)total);
  if (!out->data) rc = DBX_ENOMEM;
done:
  for (size_t k = 0; disp && k < nl; k++) free(disp[k]);
  free(disp);
  free(labels);
  free(p);
  free(r);
  free(f);
  free(sup);
  return rc;
}

static const char *const metric_names[] = {"label", "precision", "recall", "f1", "support"};
static const dbx_coltype metric_types[] = {DBX_COL_TEXT, DBX_COL_REAL, DBX_COL_REAL, DBX_COL_REAL, DBX_COL_INT};
static const dbx_schema metric_schema = {5, metric_names, metric_types};

/* The outputs of an nb job, committed together by nb_commit. */
typedef struct nb_outputs {
  const char *model_dest;   /* the model to save (train, run), or NULL */
  const dbx_buf *model;
  sink *pred, *met;         /* owned until committed or aborted */
  const char *metrics;      /* --metrics DEST */
  const char *pred_dest;    /* --predictions DEST */
  dbx_schema sch;           /* the predictions' columns */
  job *j;                   /* the job (its journal) */
  const nb_confusion *cf;   /* for late metrics */
  size_t ncf;
  int digits;
} nb_outputs;

/* Is dest an existing file that is not a regular one (written straight, not renamed)? */
static int straight(const char *dest) {
  struct stat st;
  return dest && strncmp(dest, "sqlite:", 7) && strcmp(dest, "-") && stat(dest, &st) == 0 && !S_ISREG(st.st_mode);
}

/* Commit the model, the predictions and the metrics (commit = 1), stopping at the first
 * failure and discarding the rest; or discard them all (commit = 0). The destinations were
 * checked when the job started, the rows are all written: what is left is to make them
 * visible. */
static int nb_commit(void *ctx, int commit, dbx_err *err) {
  nb_outputs *x = ctx;
  int rc = commit ? 0 : DBX_EINVAL;
  /* Predictions and metrics written out and synced (their write errors show now) before
   * the model or either of them becomes visible. */
  if (!rc && x->pred) rc = sink_prepare(x->pred, err);
  if (!rc && x->met) rc = sink_prepare(x->met, err);
  if (!rc && x->model_dest) rc = nb_model_save(x->model_dest, x->model->data, x->model->len, err);
  /* A destination that is a device or a pipe is written straight and shows its write
   * errors (/dev/full) only when committed: commit such a one first, while nothing else is
   * visible yet. */
  sink **order[2] = {&x->met, &x->pred};
  int index[2] = {1, 0};
  if (x->pred && straight(x->pred_dest) && !(x->met && straight(x->metrics))) {
    order[0] = &x->pred;
    order[1] = &x->met;
    index[0] = 0;
    index[1] = 1;
  }
  for (int k = 0; k < 2; k++) {
    if (rc || !*order[k]) continue;
    rc = cli_commit_output(x->j, index[k], *order[k], err);
    *order[k] = NULL;
  }
  sink_abort(x->met);
  sink_abort(x->pred);
  x->met = x->pred = NULL;
  return commit ? rc : 0;
}

int cmd_nb(int argc, char **argv) {
  static const struct option longopts[] = {
      {"corpus", required_argument, NULL, 1}, {"train", required_argument, NULL, 2},
      {"test", required_argument, NULL, 3},   {"model", required_argument, NULL, 'm'},
      {"predictions", required_argument, NULL, 4}, {"proba", no_argument, NULL, 5},
      {"digits", required_argument, NULL, 6}, {"batch-docs", required_argument, NULL, 7},
      {"metrics", required_argument, NULL, 8},
      CLI_JOB_OPTIONS,
      {NULL, 0, NULL, 0},
  };
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    nb_help(argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_USAGE : EXIT_OK;
  }
  const char *mode = argv[1];
  if (strcmp(mode, "train") && strcmp(mode, "test") && strcmp(mode, "run"))
    return cli_usage_error("nb", "unknown mode '%s' (train, test or run)", mode);
  cli_job o;
  nb_opts no;
  memset(&no, 0, sizeof no);
  no.digits = 2;
  cli_job_defaults(&o, "predictions");
  o.out.dest = NULL;
  argc--;
  argv++;
  optind = 1;
  int c;
  uint64_t v;
  int li = -1;
  while ((c = getopt_long(argc, argv, "o:m:qvh", longopts, &li)) != -1) {
    if (c != 'o' && !cli_option_applies("nb", longopts, c, nb_omit, " (documents are batched by --batch-docs)"))
      return EXIT_USAGE;
    int r = cli_job_option(&o, c, optarg);
    if (r < 0) return cli_bad_value("nb", longopts, li, c, optarg);
    if (r) continue;
    switch (c) {
    case 1: no.corpus = optarg; break;
    case 2: no.train = optarg; break;
    case 3: no.test = optarg; break;
    case 'm': no.model = optarg; break;
    case 4: o.out.dest = optarg; break;
    case 5: no.proba = 1; break;
    case 6:
      if (parse_u64(optarg, 0, 17, &v)) return cli_usage_error("nb", "--digits needs 0..17");
      no.digits = (int)v;
      break;
    case 7:
      if (parse_u64(optarg, 1, UINT32_MAX, &no.batch_docs)) return cli_usage_error("nb", "--batch-docs needs a positive count");
      break;
    case 8: no.metrics = optarg; break;
    case 'h': nb_help(stdout); return EXIT_OK;
    default: return cli_bad_option("nb", longopts, "o:m:qvh", argv);
    }
  }
  if (optind < argc) return cli_usage_error("nb", "unexpected argument '%s'", argv[optind]);
  int train = strcmp(mode, "test") != 0, test = strcmp(mode, "train") != 0;
  const char *train_path = !strcmp(mode, "run") ? no.train : no.corpus;
  const char *test_path = !strcmp(mode, "run") ? no.test : no.corpus;
  if (!strcmp(mode, "run") && (!no.train || !no.test)) return cli_usage_error("nb", "run needs --train CORPUS and --test CORPUS");
  if (strcmp(mode, "run") && !no.corpus) return cli_usage_error("nb", "%s needs --corpus CORPUS", mode);
  if (strcmp(mode, "run") && !no.model) return cli_usage_error("nb", "%s needs --model FILE", mode);
  if (!test && (o.out.dest || no.metrics || no.proba)) return cli_usage_error("nb", "--predictions, --proba and --metrics belong to test and run");

  dbx_err err = {0, ""};
  job j;
  memset(&j, 0, sizeof j);
  j.name = "nb";
  j.t_start = time_mono();
  corpus ctr, cte;
  memset(&ctr, 0, sizeof ctr);
  memset(&cte, 0, sizeof cte);
  coord *co = NULL;
  dbx_buf vocab = {0}, model = {0}, summary = {0}, rep = {0};
  char **classes = NULL;
  uint32_t C = 0, V = 0;
  nb_cfg cfg = {0, no.proba, o.bad_fail};
  const char **names = NULL;
  dbx_coltype *types = NULL;
  char **pnames = NULL;
  nb_confusion *cf = NULL;
  size_t ncf = 0;
  nb_outputs outs;
  memset(&outs, 0, sizeof outs);
  outs.digits = no.digits;
  outs.metrics = no.metrics;
  outs.pred_dest = o.out.dest;
  outs.model_dest = train ? no.model : NULL;
  outs.model = &model;
  outs.j = &j;
  /* Every destination is checked before any work, and all are committed together at the
   * end (nb_commit): the model, the predictions, the metrics. */
  int rc = 0;
  if (o.out.dest) rc = sink_check(&o.out, &err);
  if (!rc && o.out.dest) rc = cli_check_dest("--predictions", o.out.dest, &err);
  /* --append and --header apply to the metrics too (--header where it can: a TSV file). */
  sink_opts mo = {no.metrics, NULL, "metrics", o.out.append, 0};
  if (no.metrics) mo.header = o.out.header && sink_takes_header(&mo);
  if (!rc && o.out.dest && no.metrics && strcmp(o.out.dest, "-")) {
    /* Two outputs into one place would overwrite each other. */
    struct stat a, b;
    const char *pt = strrchr(o.out.table, '.') ? strrchr(o.out.table, '.') + 1 : o.out.table;
    int db = (sink_is_postgres(o.out.dest) && sink_is_postgres(no.metrics)) ||
             (!strncmp(o.out.dest, "sqlite:", 7) && !strncmp(no.metrics, "sqlite:", 7));
    if (db ? !strcmp(pt, "metrics")
           : !strcmp(o.out.dest, no.metrics) ||
                 (stat(o.out.dest, &a) == 0 && stat(no.metrics, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino &&
                  S_ISREG(a.st_mode)))
      return cli_usage_error("nb", "--predictions and --metrics go to the same %s; give each its own",
                             db ? "table ('metrics')" : "file");
  }
  if (!rc && no.metrics) rc = sink_check(&mo, &err);
  if (!rc && no.metrics) rc = cli_check_dest("--metrics", no.metrics, &err);
  if (!rc && outs.model_dest) rc = cli_check_dest("--model", outs.model_dest, &err);
  /* The model is stored by its own connection, which cannot write while the predictions'
   * and metrics' transaction holds the same file. */
  if (!rc && outs.model_dest && !strncmp(outs.model_dest, "sqlite:", 7) &&
      ((o.out.dest && !strcmp(o.out.dest, outs.model_dest)) || (no.metrics && !strcmp(no.metrics, outs.model_dest))))
    return cli_usage_error("nb", "--model %s: store the model in another database file than the predictions and "
                           "metrics", outs.model_dest);
  if (!rc && train) rc = corpus_open(train_path, &ctr, &err);
  if (!rc && test) rc = corpus_open(test_path, &cte, &err);
  if (!rc && !train) rc = nb_model_load(no.model, &model, &err);
  if (!rc) rc = cli_job_start(&o, &j, &co, &err);
  /* Opened now: a bad destination fails before any work. Predictions into the same SQLite
   * file share its transaction (src/sink/sink_sqlite.c): both appear, or neither. */
  if (!rc && no.metrics) rc = sink_open(&mo, &metric_schema, &outs.met, &err);
  double t_train = 0, t_test = 0;
  if (!rc) {  /* the stages to come, listed from the start */
    if (train) job_plan_stage(&j, "vocabulary"), job_plan_stage(&j, "fit");
    if (test) job_plan_stage(&j, "predict");
  }
  if (!rc && train) {
    double t0 = time_mono();
    cfg.format = ctr.format;
    rc = run_nb_stage(&j, co, &no, &op_nb_vocab, &cfg, &ctr, NULL, NULL, "vocabulary", &vocab, &err);
    if (!rc) rc = run_nb_stage(&j, co, &no, &op_nb_fit, &cfg, &ctr, &vocab, NULL, "fit", &model, &err);
    t_train = time_mono() - t0;
  }
  if (!rc) rc = nb_model_classes(model.data, model.len, &classes, &C, &V, &err);
  if (!rc && train)
    printf("trained on %llu documents, %u classes, vocabulary of %u terms\n",
           (unsigned long long)(j.stages[0].records - j.stages[0].bad_records), C, V);
  if (!rc && train && !test) printf("trained in %.3f s\n", t_train);
  if (!rc && test) {
    double t0 = time_mono();
    names = calloc(2 + C, sizeof *names);
    types = calloc(2 + C, sizeof *types);
    pnames = calloc(C + 1, sizeof *pnames);
    outs.sch.ncol = no.proba ? 2 + C : 2;
    outs.sch.names = names;
    outs.sch.types = types;
    if (!names || !types || !pnames) rc = DBX_ENOMEM;
    if (!rc) {
      names[0] = "path";
      names[1] = "predicted";
      types[0] = types[1] = DBX_COL_TEXT;
      /* Column names are unique ignoring ASCII case, as SQLite compares them: a later class
       * whose p_<label> collides with an earlier name gets _<class index> appended (again,
       * until unique). The same names go to every kind of sink. */
      for (uint32_t k = 0; k < C && !rc; k++) {
        size_t n = strlen(classes[k]) + 3;
        pnames[k] = malloc(n);
        if (!pnames[k]) { rc = DBX_ENOMEM; break; }
        snprintf(pnames[k], n, "p_%s", classes[k]);
        for (;;) {
          uint32_t i = 0;
          while (i < 2 + k && strcasecmp(i < 2 ? names[i] : pnames[i - 2], pnames[k])) i++;
          if (i == 2 + k) break;
          size_t m = strlen(pnames[k]) + 12;
          char *nn = malloc(m);
          if (!nn) { rc = DBX_ENOMEM; break; }
          snprintf(nn, m, "%s_%u", pnames[k], k);
          free(pnames[k]);
          pnames[k] = nn;
        }
        names[2 + k] = pnames[k];
        types[2 + k] = DBX_COL_REAL;
      }
      if (o.out.dest) rc = sink_open(&o.out, &outs.sch, &outs.pred, &err);
    }
    cfg.format = cte.format;
    if (!rc) rc = run_nb_stage(&j, co, &no, &op_nb_predict, &cfg, &cte, &model, outs.pred, "predict", &summary, &err);
    t_test = time_mono() - t0;
    uint64_t ndocs = 0;
    if (!rc) rc = nb_read_confusion(summary.data, summary.len, &cf, &ncf, &ndocs, &err);
    outs.cf = cf;
    outs.ncf = ncf;
    if (!rc && outs.pred) j.rows_out = sink_rows(outs.pred);
    if (!rc) rc = report(cf, ncf, no.digits, outs.met, &rep, &err);
    if (!rc) fwrite(rep.data, 1, rep.len, stdout);
    if (!rc && !dbx_buf_append(&rep, "", 1)) j.results = rep.data;  /* the report shows it too */
    if (!rc) {
      uint64_t bytes = 0;
      for (int k = 0; k < j.nstages; k++) bytes += j.stages[k].bytes;
      printf("\n");
      for (int k = 0; k < j.nstages; k++)
        printf("%-10s %6llu batches %9llu documents %8.3f s\n", j.stages[k].name, (unsigned long long)j.stages[k].batches,
               (unsigned long long)(j.stages[k].records - j.stages[k].bad_records), j.stages[k].seconds);
      if (train) printf("trained in %.3f s\n", t_train);
      printf("classified %llu documents in %.3f s (%.0f documents/s); total %.3f s, %.1f MB read, %d workers\n",
             (unsigned long long)ndocs, t_test, t_test > 0 ? (double)ndocs / t_test : 0.0, time_mono() - j.t_start,
             (double)bytes / 1048576.0, o.workers);
    }
  }
  /* The job summary lists the training corpus' inputs (or the test corpus' for test). */
  j.in = train ? ctr.in : cte.in;
  if (train) { ctr.in.v = NULL; ctr.in.n = 0; } else { cte.in.v = NULL; cte.in.n = 0; }
  cli_outputs co_outs = {{NULL}, 0, nb_commit, &outs};
  int status = cli_job_finish("nb", &o, &j, co, &co_outs, rc, &err);
  for (size_t k = 0; k < ncf; k++) { free(cf[k].truth); free(cf[k].pred); }
  free(cf);
  for (uint32_t k = 0; pnames && k < C; k++) free(pnames[k]);
  free(pnames);
  free(names);
  free(types);
  for (uint32_t k = 0; classes && k < C; k++) free(classes[k]);
  free(classes);
  dbx_buf_free(&vocab);
  dbx_buf_free(&model);
  dbx_buf_free(&summary);
  dbx_buf_free(&rep);
  corpus_free(&ctr);
  corpus_free(&cte);
  return status;
}
