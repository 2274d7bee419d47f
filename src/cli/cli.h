/* cli.h -- shared pieces of the command-line interface (private). */
#ifndef DBX_CLI_H
#define DBX_CLI_H
#include <getopt.h>
#include <stdint.h>
#include "coord/coord.h"
#include "engine/job.h"
#include "util/afile.h"
#include "engine/shuffle.h"
#include "net/transport.h"

/* Exit statuses: documented in --help and the man page. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_PARTIAL = 3 };

/* Options every job command takes. */
typedef struct cli_job {
  int workers;
  coord_opts co;
  uint64_t batch_bytes, batch_records;
  sink_opts out;
  const char *summary_json;
  int quiet, verbose;
  int batch_set;          /* the user chose a batch size */
  const char *job_dir;    /* --job-dir: journal here */
  uint64_t max_record;    /* --max-record */
  const char *dashboard;  /* --dashboard HOST:PORT */
  int dashboard_public;
  int no_job_dir;         /* --no-job-dir: no report, no status file */
  char job_dir_buf[512];  /* the default job directory's name */
  int bad_fail;           /* --on-bad-record=fail */
  afile summary;          /* --summary-json, opened when the job starts, committed with its outputs */
  int summary_open;
  const char *key_path;   /* --key */
  const char *authz_path; /* --authorized-keys */
  int insecure;           /* --insecure */
  const char *cluster;    /* --cluster MODE, or NULL */
  tr_keypair key;         /* loaded from key_path */
  tr_authz authz;         /* loaded from authz_path */
  char listen_buf[256];   /* --listen as an endpoint */
  int workers_set;        /* --workers was given */
  const char *cluster_dir;  /* --cluster: the job directory every rank shares */
  const char *token_path; /* --dashboard-token */
  char token[256];        /* its token */
  int dir_made;           /* the job directory was made by this job (removed after a usage error) */
  char dirs_made[2048];   /* the parents made for it, each NUL-terminated, in the order made */
  size_t ndirs_made;      /* bytes of dirs_made in use */
  char out_shown[600];    /* the output as reports show it (sink_redact) */
  char command_shown[2048]; /* the command line as reports show it (cli_command_line) */
  int table_set;          /* --table was given */
} cli_job;

/* Outputs of a job, committed together at its end (cli_job_finish). */
typedef struct cli_outputs {
  sink *sinks[4];         /* committed in order; owned until then */
  size_t n;
  /* Another output (a model file...), committed first, or NULL. It must leave nothing
   * visible when it fails, and release what it holds when called with commit = 0. */
  int (*save)(void *ctx, int commit, dbx_err *err);
  void *save_ctx;
} cli_outputs;

/* The command line being run (for the journal) and whether it is a resume. Set by main. */
extern int cli_argc;
extern int cli_typed_argc;      /* argv as typed (before getopt reorders it), for reports */
extern char **cli_typed_argv;
extern char **cli_argv;
extern int cli_resume;

/* Long options of cli_job, ids >= 1000; append them to a command's own table. */
#define CLI_JOB_OPTIONS                                       \
  {"workers", required_argument, NULL, 1000},                 \
  {"batch-bytes", required_argument, NULL, 1001},             \
  {"batch-records", required_argument, NULL, 1002},           \
  {"out", required_argument, NULL, 'o'},                      \
  {"format", required_argument, NULL, 1003},                  \
  {"table", required_argument, NULL, 1004},                   \
  {"append", no_argument, NULL, 1005},                        \
  {"summary-json", required_argument, NULL, 1006},            \
  {"quiet", no_argument, NULL, 'q'},                          \
  {"verbose", no_argument, NULL, 'v'},                        \
  {"help", no_argument, NULL, 'h'},                          \
  {"listen", required_argument, NULL, 1007},                  \
  {"policy", required_argument, NULL, 1008},                  \
  {"seed", required_argument, NULL, 1009},                    \
  {"ship", no_argument, NULL, 1010},                          \
  {"prefetch", required_argument, NULL, 1011},                \
  {"heartbeat", required_argument, NULL, 1012},               \
  {"worker-timeout", required_argument, NULL, 1013},          \
  {"max-attempts", required_argument, NULL, 1014},            \
  {"max-message", required_argument, NULL, 1015},             \
  {"wait-workers", required_argument, NULL, 1016},            \
  {"task-timeout", required_argument, NULL, 1017},            \
  {"exclude-after", required_argument, NULL, 1018},           \
  {"speculation", no_argument, NULL, 1019},                   \
  {"no-speculation", no_argument, NULL, 1020},                \
  {"on-task-failure", required_argument, NULL, 1021},         \
  {"job-dir", required_argument, NULL, 1022},                 \
  {"max-record", required_argument, NULL, 1023},              \
  {"on-bad-record", required_argument, NULL, 1024},           \
  {"dashboard", required_argument, NULL, 1025},               \
  {"dashboard-public", no_argument, NULL, 1026},              \
  {"no-job-dir", no_argument, NULL, 1027},                   \
  {"key", required_argument, NULL, 1028},                     \
  {"authorized-keys", required_argument, NULL, 1029},         \
  {"insecure", no_argument, NULL, 1030},                      \
  {"cluster", required_argument, NULL, 1031},                \
  {"dashboard-token", required_argument, NULL, 1032},         \
  {"header", no_argument, NULL, 1033}

#define CLI_JOB_HELP \
  "Batching and execution:\n" \
  "      --batch-bytes SIZE  cut inputs into batches of about SIZE bytes, aligned to lines\n" \
  "                          (default: the input size / 16, within 8M..64M, the same on\n" \
  "                          any machine and for any --workers; units K, M, G)\n" \
  "      --batch-records N   cut inputs into batches of N lines instead\n" \
  "      --workers N         local worker processes (default: the number of cores;\n" \
  "                          0 = run every task in this process)\n" \
  "      --listen HOST:PORT  also accept workers started elsewhere with\n" \
  "                          'dbatch worker --connect HOST:PORT'; an address other than\n" \
  "                          loopback needs --key and --authorized-keys (or --insecure)\n" \
  "      --key FILE          this coordinator's key pair (dbatch keygen): workers on\n" \
  "                          --listen are authenticated and every byte is encrypted\n" \
  "      --authorized-keys FILE  public keys of the workers admitted, one per line\n" \
  "      --insecure          --listen on a network address without keys: anyone who\n" \
  "                          reaches the port can join, read tasks and send results\n" \
  "      --cluster auto|slurm|mpi|k8s  every rank of srun, mpirun or an Indexed Job runs\n" \
  "                          this same command: rank 0 is the coordinator, the others its\n" \
  "                          workers, found through the job directory, with a fresh key\n" \
  "                          pair per launch (k8s: --key from a Secret; examples/k8s)\n" \
  "      --wait-workers N    start the first task once N workers have joined\n" \
  "      --policy P          least-loaded (default), round-robin or random\n" \
  "      --seed N            seed of the random policy (reproducible placement)\n" \
  "      --ship              send batch bytes to workers instead of file references\n" \
  "      --prefetch N        most tasks a worker may hold beyond its slots (default 16;\n" \
  "                          used only while its tasks are shorter than a few ms)\n" \
  "      --heartbeat SECS    heartbeat interval (default 1)\n" \
  "      --worker-timeout SECS  silence before a worker is dead (default 10)\n" \
  "      --max-message SIZE  largest message accepted from a worker (default 1G)\n" \
  "Failures:\n" \
  "      --max-attempts N    attempts per task, retried with backoff on another worker\n" \
  "                          where one exists (default 4)\n" \
  "      --on-task-failure fail|skip  a task whose attempts all failed stops the job\n" \
  "                          (fail, default) or is left out and reported (skip: exit 3)\n" \
  "      --task-timeout SECS bound on one attempt (default: none)\n" \
  "      --exclude-after N   a worker failing N different tasks gets no more (default 3)\n" \
  "      --[no-]speculation  copy an attempt running 1.5x the median to a free worker\n" \
  "                          (default on)\n" \
  "      --on-bad-record skip|fail  a bad record (a line over --max-record, an unreadable\n" \
  "                          document line) is counted and skipped, or fails the job\n" \
  "      --max-record SIZE   longest line accepted (word count; default: no limit)\n" \
  "Output:\n" \
  "  -o, --out DEST          - (standard output, default), FILE.tsv (or .txt, or no\n" \
  "                          extension), FILE.csv, FILE.jsonl (or .ndjson), each also\n" \
  "                          .gz or .zst (compressed); sqlite:PATH; postgresql://URI\n" \
  "                          (PG* variables and ~/.pgpass apply). Files and tables are\n" \
  "                          replaced atomically: a failed job leaves them as they were\n" \
  "      --format F          tsv, csv or jsonl, whatever the file name says\n" \
  "      --header            TSV: a first line of column names (CSV always has one)\n" \
  "      --table NAME        database table (default: the job's name; PostgreSQL:\n" \
  "                          SCHEMA.NAME too)\n" \
  "      --append            add to the table or file instead of replacing it, once: a\n" \
  "                          commit retried or resumed does not add the rows again\n" \
  "      --summary-json FILE write a summary of the run (inputs, records, tasks, timings)\n" \
  "Watching:\n" \
  "      --dashboard HOST:PORT  serve a live dashboard (/), /api/status and /metrics\n" \
  "                          (Prometheus); loopback only unless --dashboard-token or\n" \
  "      --dashboard-token FILE  clients must send the token in FILE (its first line, 16+\n" \
  "                          characters, mode 0600) as 'Authorization: Bearer TOKEN' or\n" \
  "                          ?token=TOKEN; needed to serve on a network address\n" \
  "      --dashboard-public  serve a network address without a token\n" \
  "      --job-dir DIR       where report.html, summary.json and status.json go (default:\n" \
  "                          ./dbatch-jobs/NAME-TIME-PID); a DIR given here also keeps a\n" \
  "                          journal, so 'dbatch resume DIR' finishes the job if the\n" \
  "                          coordinator dies, without redoing finished tasks (the\n" \
  "                          journal keeps the batch plan; one job at a time per DIR)\n" \
  "      --no-job-dir        no job directory (no report)\n" \
  "  -q, --quiet             only errors on standard error\n" \
  "  -v, --verbose           more detail on standard error\n" \
  "  -h, --help              this help\n" \
  "Exit status: 0 success, 1 the job failed (nothing was written), 2 usage error,\n" \
  "3 finished without the input of skipped tasks (--on-task-failure=skip; see the summary),\n" \
  "130 or 143 stopped by Ctrl-C or SIGTERM (resumable with --job-dir).\n"

/* Commit output k of job j: an append to a file that an interrupted run of this job (being
 * resumed) already committed is not made twice (see sink_append_token). */
int cli_commit_output(job *j, int k, sink *s, dbx_err *err);

/* getopt_long said '?': one message, naming the option as typed, with the closest option
 * when there is one ("unknown option --wrokers (did you mean --workers?)"), or saying that
 * it needs a value. opterr is 0 (main): getopt prints nothing of its own. */
int cli_bad_option(const char *cmd, const struct option *lo, const char *shortopts, char **argv);
/* Print a help text, leaving out the options named in omit (NULL-terminated long names)
 * with their continuation lines, and a heading left with no option. */
void cli_print_help(FILE *f, const char *text, const char *const *omit);
/* 1 when option c (an id of lo) is not one of omit; else a usage error is printed ("--X does
 * not apply to dbatch CMD" and hint) and 0 returned. */
int cli_option_applies(const char *cmd, const struct option *lo, int c, const char *const *omit, const char *hint);
/* A value an option does not take: what was given and what is expected. */
int cli_bad_value(const char *cmd, const struct option *lo, int li, int c, const char *arg);
/* The name among names closest to word (edit distance), or NULL when none is close. */
const char *cli_closest(const char *word, const char *const *names, size_t n);

void cli_job_defaults(cli_job *o, const char *job_name);
/* Without --batch-bytes/--batch-records: engine_default_batch_bytes of the input's size,
 * never of the worker count or the machine (a resume takes the journal's plan anyway). */
/* The command line as reports show it (quoted, a URI's password hidden) into out. */
void cli_command_line(char *out, size_t cap);
void cli_job_size_batches(cli_job *o, const inputs *in);
/* Check before the job runs that dest (a file, sqlite:PATH or -) given to option opt can
 * be written: its directory takes a new file (probed), an existing SQLite file opens for
 * writing. A clear error naming opt and dest otherwise. */
int cli_check_dest(const char *opt, const char *dest, dbx_err *err);
/* Plan and run one stage (engine_plan_stage, then coord_run_stage). */
/* The one stage of a single-stage job over the job's inputs, cut as o says, rows into out:
 * fills s (zeroed first) and its statistics slot in j. */
void cli_stage_init(stage *s, job *j, const cli_job *o, const char *name, const dbx_op *op, const void *cfg,
                    size_t cfg_size, sink *out);
int cli_run_stage(coord *co, job *j, stage *s, dbx_err *err);
/* Handle one common option. 1 if handled, 0 if not ours, EXIT_USAGE-worthy error < 0
 * (message already printed). */
int cli_job_option(cli_job *o, int c, const char *arg);
/* Print "dbatch: error: msg" (and a usage hint for usage errors); return the exit status. */
int cli_fail(const char *cmd, const dbx_err *err);
/* "--name" of the option getopt_long just returned (c, with li its long index, or -1), or
 * "-x" for a short one. Static storage. */
const char *cli_opt_name(const struct option *lo, int li, int c);
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The token of --dashboard-token FILE into token[cap]: a regular file only its owner reads,
 * its first line of 16+ printable ASCII characters without '&', '%' or '#'; DBX_EUSAGE. */
int cli_read_token(const char *path, char *token, size_t cap, dbx_err *err);

/* ---- links (cluster.c) ---- */
/* --listen as an endpoint, the keys loaded, and a network --listen without keys refused
 * unless --insecure. */
int cli_job_security(cli_job *o, dbx_err *err);
struct rv_env;
/* --cluster: which rank this is. A worker rank serves rank 0 and exits the process here;
 * rank 0 gets its job directory, keys and listener set up. */
int cli_cluster_begin(cli_job *o, job *j, struct rv_env *e, dbx_err *err);
/* --cluster in a job command's argv (argv[0]: the command): a worker rank serves rank 0
 * and ends the process here, before the job reads its inputs; any other process returns. */
void cli_cluster_early(int argc, char **argv);
/* Rank 0, once listening: write the rendezvous for the other ranks. */
int cli_cluster_ready(cli_job *o, coord *c, const struct rv_env *e, dbx_err *err);

/* Start the job's coordinator (and its local workers). */
int cli_job_start(cli_job *o, job *j, coord **c, dbx_err *err);
/* Finish: stop the coordinator; when rc is 0, write the summary and commit every output
 * together (the summary synced first, then outs in order, the summary renamed last), else
 * abort them all; report. rc is the job's status so far; returns the exit status. */
int cli_job_finish(const char *cmd, cli_job *o, job *j, coord *c, const cli_outputs *outs, int rc, dbx_err *err);
/* cli_job_finish with one sink (or none). */
int cli_job_end(const char *cmd, cli_job *o, job *j, coord *c, sink *out, int rc, dbx_err *err);

/* ---- keyed commands (keyed.c): the partitioned reduce ---- */
typedef struct cli_keyed {
  uint32_t partitions;     /* --partitions R (0: merge on the coordinator) */
  int partitions_set;
  const char *spill_dir;   /* --spill-dir */
  uint64_t memory;         /* --memory SIZE (0: a share of this machine's RAM) */
  char dir[SHUFFLE_DIR_MAX];  /* the spill directory in use */
  int made_tmp;            /* dir is a private temporary directory, removed at the end */
  int locked, lock_fd;     /* locked: lock_fd holds an flock on dir/.lock (cli_keyed_prepare) */
} cli_keyed;
#define CLI_KEYED_OPTIONS                                     \
  {"partitions", required_argument, NULL, 1100},              \
  {"spill-dir", required_argument, NULL, 1101},               \
  {"memory", required_argument, NULL, 1102}
#define CLI_KEYED_HELP                                                                      \
  "Partitioned reduce:\n"                                                                  \
  "      --partitions R      merge on the workers in R partitions by key hash, the result\n" \
  "                          streamed to the output from files, never held by this\n"      \
  "                          process; 0 merges here, in memory. The same bytes for any R\n" \
  "                          (default: 8 with local workers; 0 with --listen, with\n"   \
  "                          --workers 0 and with --follow)\n"                          \
  "      --spill-dir DIR     where partitions are written (default: JOB_DIR/spill, else a\n" \
  "                          private directory under $TMPDIR). Naming it says remote\n"   \
  "                          workers reach it too; a worker that cannot gets its files\n"  \
  "                          relayed over its connection\n"                              \
  "      --memory SIZE       memory of one task (a local worker runs one at a time): past\n" \
  "                          it, keys spill to the spill directory and merge from disk,\n" \
  "                          the same bytes out (default: RAM / (workers + 1) / 2)\n"
#define CLI_KEYED_DEFAULT_R 8

/* --follow (cli/follow.c, docs/follow.md): a job that goes on over data as it arrives. */
typedef struct cli_follow {
  int on;
  double interval;     /* --interval: seconds between micro-batches (default 5) */
  double until_idle;   /* --until-idle: stop after this long without new data (0: never) */
  double window;       /* --window: tumbling windows of this many seconds by arrival (0: a running result) */
  int header;          /* the inputs' first line is a header (CSV, TSV): one per file */
  const dbx_schema *schema;  /* the rows' schema, when the operator has none of its own */
  /* The rows of a state (a partial of the stage's operator, the caller's to keep) through
   * emit; NULL: the operator's finish. cooccur runs its second stage here. */
  int (*render)(void *ctx, void *state, dbx_emit_fn emit, void *emit_ctx, dbx_err *err);
  void *render_ctx;
} cli_follow;
#define CLI_FOLLOW_OPTIONS                          \
  {"follow", no_argument, NULL, 1200},              \
  {"interval", required_argument, NULL, 1201},      \
  {"until-idle", required_argument, NULL, 1202},     \
  {"window", required_argument, NULL, 1203}
#define CLI_FOLLOW_HELP                                                                    \
  "Following data as it arrives:\n"                                                         \
  "      --follow            keep running: files appended to and files added to a watched\n" \
  "                          directory are read in micro-batches; the output holds the\n"   \
  "                          result over everything so far, committed after each one,\n"    \
  "                          exactly once (with --job-dir, a killed job goes on where its\n" \
  "                          last commit left off). Ctrl-C or SIGTERM: finish, commit, exit 0\n" \
  "      --interval SECS     a micro-batch every SECS (default 5; 30s, 2m, 1h are fine)\n"   \
  "      --until-idle SECS   stop after SECS without new data; lines without their newline\n" \
  "                          then count, as in a batch run\n"                               \
  "      --window SECS       tumbling windows by arrival time instead (whole seconds; 1m,\n" \
  "                          1h): each window's rows, with a first column window_start,\n"  \
  "                          are appended once it closes, exactly once\n"
/* 1 handled, 0 not a --follow option, < 0 a bad value. */
int cli_follow_option(cli_follow *f, int c, const char *arg);
/* After the options: a usage error's exit status (printed) when they do not go together, else 0. */
int cli_follow_misuse(const cli_follow *f, const char *cmd, char *const *args, size_t nargs);
/* Run tmpl (a stage whose merged partial can be kept: s->keep) over args as they grow, until
 * stopped. Rows go to o->out, written again after each micro-batch. */
int cli_follow_run(coord *co, job *j, cli_job *o, const cli_follow *f, stage *tmpl, char *const *args, size_t nargs,
                   dbx_err *err);
/* Times lost map outputs are recomputed before the job gives up. */
#define KEYED_RECOMPUTE_ROUNDS 3
/* 1 handled, 0 not a keyed option, < 0 a bad value. */
int cli_keyed_option(cli_keyed *k, int c, const char *arg);
/* The partition configuration of the job's next stage (call after cli_job_start). */
int cli_keyed_prepare(cli_keyed *k, const job *j, const cli_job *o, kv_part_cfg *pc, dbx_err *err);
/* A private directory $TMPDIR/dbatch-spill-XXXXXX held by an flock (removed by a later job
 * once its holder is gone) as k->dir, and pc's (pc may be NULL). cli_keyed_done removes it. */
int cli_keyed_private_tmp(cli_keyed *k, kv_part_cfg *pc, dbx_err *err);
/* Rows of a keyed result, in key order, into out. */
typedef int (*cli_rows_fn)(void *ctx, kv_stream *st, sink *out, dbx_err *err);
typedef struct cli_keyed_rows_ctx {
  const kv_spec *spec;
  uint32_t nkeycol;
} cli_keyed_rows_ctx;
int cli_keyed_rows(void *ctx, kv_stream *st, sink *out, dbx_err *err);  /* ctx: cli_keyed_rows_ctx */
/* Run keyed stage s: as any stage without partitions (its finish writes the rows), else
 * the map stage, a reduce stage of pc->r tasks, and rows(ctx, stream, s->out); with
 * by_count the reduce tasks also write by-count files and the stream is NULL (rows reads
 * count_stream_open instead). */
int cli_keyed_stage(coord *co, job *j, const cli_job *o, stage *s, const kv_part_cfg *pc, const kv_spec *spec,
                    int by_count, cli_rows_fn rows, void *ctx, dbx_err *err);
/* At the job's end: remove what is left in the spill directory (unless keep: a failed
 * journaled job, whose resume reuses its map outputs), and a private one itself. */
void cli_keyed_done(cli_keyed *k, int keep);

int cmd_wordcount(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_groupby(int argc, char **argv);
int cmd_cooccur(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_bench_tasks(int argc, char **argv);
int cmd_nb(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
int cmd_dashboard(int argc, char **argv);
#endif
