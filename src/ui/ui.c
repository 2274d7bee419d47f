/* ui.c -- progress line, dashboard server (libmicrohttpd), status file and report.
 * The coordinator stays single-threaded: it builds a snapshot of the job a few times a
 * second (ui_tick); the HTTP thread only copies the latest snapshot under a mutex, so
 * watching a job costs the scheduler one JSON rendering per tick, whatever the traffic. */
#include "ui/ui.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <utf8proc.h>

#include "engine/job.h"
#include "util/afile.h"
#include "util/json.h"
#include "util/log.h"
#include "util/timeutil.h"

extern const unsigned char ui_dashboard_html[];

#define ATT_MAX 5000
#define ATT_SHOW 1500

/* The last state of every worker seen, so the final report keeps how each one ended. */
typedef struct ui_wrec {
  ui_worker w;
  char state[16];
} ui_wrec;

typedef struct ui_att {
  uint32_t stage, task, attempt, worker;
  double start, end;
  int outcome;
} ui_att;

#define UI_DUR_BUCKETS 14
#define UI_SERIES 512
static const double dur_le[UI_DUR_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

struct ui {
  ui_opts o;
  char *name, *job_dir;
  double t0;
  pthread_mutex_t mu;       /* guards status and metrics, read by the HTTP thread */
  dbx_buf status, metrics, text;
  struct MHD_Daemon *d;
  int starting;             /* libmicrohttpd's own words while starting: the error says it */
  char url[96];
  ui_att *att;              /* ring of the latest attempts */
  size_t att_head, natt;
  uint64_t att_started;     /* attempts ever started: tickets of ui_attempt_start */
  double last_draw, last_snap, last_file, last_log;
  int tty, drawn;
  char state[16];           /* the job's state as last published (guarded by mu) */
  char coordinator[128];    /* "PID@HOST": lets `dbatch status` tell a lost job from a live one */
  ui_wrec *wr;              /* sorted by id */
  size_t nwr, wrcap;
  double progress;          /* the highest job_progress shown: it never goes back */
  /* Durations of finished attempts, cumulative over the job (the timeline keeps only the
   * latest): a Prometheus histogram and the report's percentiles. */
  uint64_t dur_bucket[UI_DUR_BUCKETS + 1], dur_count;
  double dur_sum;
  /* The job over time, for the charts: every `every` seconds the input bytes so far and the
   * share of worker slots busy; when full, every other point goes and the interval doubles,
   * so a job of any length keeps its whole history in UI_SERIES points. */
  struct { double t, busy; uint64_t bytes; } series[UI_SERIES];
  size_t nseries;
  double every, last_sample;
};

/* The job's progress (0..1, never decreasing) and the seconds left at the rate so far (-1
 * while too little is done to say). A finished job is 1 and 0. */
static double ui_progress(ui *u, const job *j, const char *state, double *eta) {
  double p = job_progress(j);
  if (state && (!strcmp(state, "done") || !strcmp(state, "partial"))) p = 1;
  if (p > u->progress) u->progress = p;
  p = u->progress;
  double el = time_mono() - u->t0;
  *eta = p >= 1 ? 0 : p >= 0.005 && el > 0 ? el * (1 - p) / p : -1;
  return p;
}

static const char *stage_state(const stage_stats *s, const char *job_state) {
  int live = !strcmp(job_state, "running") || !strcmp(job_state, "starting");
  if (s->state == STAGE_DONE) return "done";
  if (s->state == STAGE_PLANNED) return live ? "planned" : "not run";
  return live ? "running" : "stopped";
}

/* ---- HTTP ---- */

/* Equal, in time that does not depend on where they differ. */
static int same_secret(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  unsigned char d = na != nb;
  for (size_t i = 0; i < na; i++) d |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
  return d == 0;
}

/* With --dashboard-token: "Authorization: Bearer TOKEN" or ?token=TOKEN. */
static int authorized(const ui *u, struct MHD_Connection *c) {
  if (!u->o.token) return 1;
  const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  if (h && !strncmp(h, "Bearer ", 7) && same_secret(h + 7, u->o.token)) return 1;
  const char *q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "token");
  return q && same_secret(q, u->o.token);
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *data, size_t *size, void **state) {
  ui *u = cls;
  struct MHD_Response *r;
  char jstate[16] = "";
  const char *type = "text/plain; charset=utf-8";
  unsigned code = MHD_HTTP_OK;
  if (!authorized(u, c)) {
    static const char no[] = "this dashboard needs its token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN\n";
    r = MHD_create_response_from_buffer(sizeof no - 1, (void *)no, MHD_RESPMEM_PERSISTENT);
    code = MHD_HTTP_UNAUTHORIZED;
    if (r) MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"dbatch\"");
  } else if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
    static const char na[] = "the dashboard is read-only: GET /, /api/status, /status.txt or /metrics\n";
    r = MHD_create_response_from_buffer(sizeof na - 1, (void *)na, MHD_RESPMEM_PERSISTENT);
    code = MHD_HTTP_METHOD_NOT_ALLOWED;
    if (r) MHD_add_response_header(r, "Allow", "GET, HEAD");
  } else if (!strcmp(url, "/")) {
    r = MHD_create_response_from_buffer(strlen((const char *)ui_dashboard_html), (void *)ui_dashboard_html,
                                        MHD_RESPMEM_PERSISTENT);
    type = "text/html; charset=utf-8";
  } else if (!strcmp(url, "/api/status") || !strcmp(url, "/metrics") || !strcmp(url, "/status.txt")) {
    int st = !strcmp(url, "/api/status"), txt = !strcmp(url, "/status.txt");
    pthread_mutex_lock(&u->mu);
    const dbx_buf *b = st ? &u->status : txt ? &u->text : &u->metrics;
    r = MHD_create_response_from_buffer(b->len, b->data ? b->data : "", MHD_RESPMEM_MUST_COPY);
    snprintf(jstate, sizeof jstate, "%s", u->state);
    pthread_mutex_unlock(&u->mu);
    type = st ? "application/json" : txt ? "text/plain; charset=utf-8" : "text/plain; version=0.0.4; charset=utf-8";
  } else {
    static const char nf[] = "not found: try /, /api/status or /metrics\n";
    r = MHD_create_response_from_buffer(sizeof nf - 1, (void *)nf, MHD_RESPMEM_PERSISTENT);
    code = MHD_HTTP_NOT_FOUND;
  }
  if (!r) return MHD_NO;
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Cache-Control", "no-store");
  /* The job's state apart from the body, for `dbatch status URL`'s exit status. */
  if (jstate[0]) MHD_add_response_header(r, "X-Dbatch-State", jstate);
  enum MHD_Result ret = MHD_queue_response(c, code, r);
  MHD_destroy_response(r);
  return ret;
}

/* libmicrohttpd's own messages (a client that went away, a full connection table) go to our
 * log as warnings: escaped, prefixed, and silent under -q like every other warning. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
  if (((ui *)cls)->starting) return;
  char line[1024];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
  if (n) log_warn("dashboard: %s", line);
}

static int start_http(ui *u, dbx_err *err) {
  const char *spec = u->o.dashboard;
  const char *colon = strrchr(spec, ':');
  if (!colon) return dbx_seterr(err, DBX_EUSAGE, "--dashboard %s: give HOST:PORT, as in 127.0.0.1:8080", spec);
  char host[64];
  snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
  if (!strcmp(host, "localhost") || !host[0]) snprintf(host, sizeof host, "127.0.0.1");
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535) return dbx_seterr(err, DBX_EUSAGE, "--dashboard %s: bad port", spec);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    return dbx_seterr(err, DBX_EUSAGE, "--dashboard %s: '%s' is not an IPv4 address", spec, host);
  int loopback = (ntohl(sa.sin_addr.s_addr) >> 24) == 127;
  if (!loopback && !u->o.dashboard_public && !u->o.token)
    return dbx_seterr(err, DBX_EUSAGE, "--dashboard %s: not a loopback address: give --dashboard-token FILE (clients "
                      "send it as a bearer token or ?token=), or --dashboard-public to serve %s without "
                      "authentication", spec, host);
  /* The server's thread starts with every signal blocked, and keeps them blocked: a process
   * signal must reach the coordinator's thread. SIGCHLD taken (and dropped) by this thread
   * would leave a killed local worker a zombie, unnoticed and not replaced. */
  sigset_t all, old;
  sigfillset(&all);
  int prc = pthread_sigmask(SIG_BLOCK, &all, &old);
  if (prc) return dbx_seterr(err, DBX_EIO, "--dashboard %s: cannot block signals: %s", spec, strerror(prc));
  u->starting = 1;
  u->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port, NULL, NULL, answer, u,
                          MHD_OPTION_EXTERNAL_LOGGER, mhd_log, (void *)u,  /* first, or MHD warns on stderr */
                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                          MHD_OPTION_END);
  int e = errno;
  u->starting = 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  /* A port taken or an address not ours is the command line's problem, as for --listen. */
  if (!u->d)
    return dbx_seterr(err, e == EADDRINUSE || e == EADDRNOTAVAIL || e == EACCES ? DBX_EUSAGE : DBX_EIO,
                      "--dashboard %s: cannot listen: %s", spec, strerror(e));
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(u->d, MHD_DAEMON_INFO_BIND_PORT);
  snprintf(u->url, sizeof u->url, "http://%s:%u/", host, info ? info->port : (unsigned)port);
  if (!u->o.quiet) fprintf(stderr, "dbatch: dashboard at %s\n", u->url);
  return 0;
}

/* ---- lifecycle ---- */

static void build_status(ui *u, dbx_buf *b, const job *j, const ui_worker *w, size_t nw, const char *cur,
                         uint64_t running, const char *state, const char *error);
static void build_metrics(ui *u, dbx_buf *b, const job *j, const ui_worker *w, size_t nw, uint64_t running,
                          const char *state);
static void build_text(ui *u, dbx_buf *b, const job *j, const ui_worker *w, size_t nw, const char *state,
                       const char *error);

int ui_new(const ui_opts *o, const char *job_name, ui **out, dbx_err *err) {
  ui *u = calloc(1, sizeof *u);
  if (!u) return dbx_seterr(err, DBX_ENOMEM, "out of memory starting the job's status and report");
  int mrc = pthread_mutex_init(&u->mu, NULL);
  if (mrc) {
    free(u);
    return dbx_seterr(err, DBX_ENOMEM, "cannot create a mutex for the dashboard: %s", strerror(mrc));
  }
  u->o = *o;
  u->name = strdup(job_name);
  u->job_dir = o->job_dir ? strdup(o->job_dir) : NULL;
  u->t0 = time_mono();
  u->last_log = u->t0;
  u->tty = !o->quiet && isatty(STDERR_FILENO);
  snprintf(u->state, sizeof u->state, "starting");
  char host[96] = "";
  if (gethostname(host, sizeof host - 1) != 0) host[0] = 0;
  snprintf(u->coordinator, sizeof u->coordinator, "%lld@%s", (long long)getpid(), host);
  u->att = calloc(ATT_MAX, sizeof *u->att);
  if (!u->name || !u->att || (o->job_dir && !u->job_dir)) {
    ui_free(u);
    return dbx_seterr(err, DBX_ENOMEM, "out of memory starting the job's status and report");
  }
  /* Something valid to serve before the first tick. */
  job none;
  memset(&none, 0, sizeof none);
  build_status(u, &u->status, &none, NULL, 0, NULL, 0, "starting", NULL);
  build_metrics(u, &u->metrics, &none, NULL, 0, 0, "starting");
  build_text(u, &u->text, &none, NULL, 0, "starting", NULL);
  if (o->dashboard) {
    int rc = start_http(u, err);
    if (rc) { ui_free(u); return rc; }
  }
  *out = u;
  return 0;
}

void ui_free(ui *u) {
  if (!u) return;
  if (u->d) MHD_stop_daemon(u->d);
  if (u->drawn) fputs("\r\033[K", stderr);
  pthread_mutex_destroy(&u->mu);
  dbx_buf_free(&u->status);
  dbx_buf_free(&u->metrics);
  dbx_buf_free(&u->text);
  free(u->att);
  free(u->wr);
  free(u->name);
  free(u->job_dir);
  free(u);
}

const char *ui_url(const ui *u) { return u && u->d ? u->url : NULL; }

/* ---- attempts ---- */

uint64_t ui_attempt_start(ui *u, uint32_t stg, uint32_t task, uint32_t attempt, uint32_t worker) {
  if (!u) return 0;
  size_t k = (u->att_head + u->natt) % ATT_MAX;
  if (u->natt == ATT_MAX) u->att_head = (u->att_head + 1) % ATT_MAX;
  else u->natt++;
  u->att[k] = (ui_att){stg, task, attempt, worker, time_mono() - u->t0, -1, UI_RUNNING};
  /* The ticket: how many attempts started before this one, plus one. It finds the entry
   * again in one step while the ring still holds it. */
  return ++u->att_started;
}

void ui_attempt_end(ui *u, uint64_t ticket, uint32_t stg, uint32_t task, uint32_t attempt, uint32_t worker,
                    int outcome) {
  if (!u || !ticket || ticket > u->att_started || u->att_started - ticket >= u->natt) return;  /* overwritten */
  size_t age = (size_t)(u->att_started - ticket);  /* 0: the newest */
  ui_att *a = &u->att[(u->att_head + u->natt - 1 - age) % ATT_MAX];
  if (a->stage == stg && a->task == task && a->attempt == attempt && a->worker == worker && a->outcome == UI_RUNNING) {
    a->end = time_mono() - u->t0;
    a->outcome = outcome;
    double d = a->end - a->start;
    size_t k = 0;
    while (k < UI_DUR_BUCKETS && d > dur_le[k]) k++;
    u->dur_bucket[k]++;
    u->dur_count++;
    u->dur_sum += d;
  }
}

/* ---- snapshots ---- */

static const char *outcome_name(int o) {
  return o == UI_OK ? "ok" : o == UI_FAILED ? "failed" : o == UI_CANCELLED ? "cancelled" : "running";
}

static void kv_u(dbx_buf *b, const char *k, uint64_t v) { json_key(b, k, 0); json_int(b, (int64_t)v); }
static void kv_d(dbx_buf *b, const char *k, double v) { json_key(b, k, 0); json_ms(b, v); }
static void kv_s(dbx_buf *b, const char *k, const char *v) { json_key(b, k, 0); json_cstr(b, v); }

/* What a job finished under --on-task-failure=skip lacks, in one line. */
static void partial_note(const job *j, char *out, size_t cap) {
  snprintf(out, cap, "done with skipped input: %zu task(s) failed and were left out (--on-task-failure=skip); "
           "their input is missing from the result", j->nmissing);
}

static void build_status(ui *u, dbx_buf *b, const job *j, const ui_worker *w, size_t nw, const char *cur,
                         uint64_t running, const char *state, const char *error) {
  double now = time_mono() - u->t0;
  b->len = 0;
  json_raw(b, "{");
  json_key(b, "job", 1);
  json_cstr(b, u->name);
  kv_s(b, "state", state);
  if (error) kv_s(b, "error", error);
  if (!strcmp(state, "partial")) {
    char note[160];
    partial_note(j, note, sizeof note);
    kv_s(b, "warning", note);
  }
  kv_s(b, "coordinator", u->coordinator);
  if (j->command) kv_s(b, "command", j->command);
  if (j->out_dest) kv_s(b, "output", j->out_dest);
  if (j->results) kv_s(b, "results", j->results);
  if (j->started_wall > 0) {
    json_key(b, "started_unix", 0);
    json_ms(b, j->started_wall);
  }
  json_key(b, "updated_unix", 0);
  json_ms(b, time_wall());
  kv_d(b, "elapsed_seconds", now);
  kv_s(b, "stage", cur ? cur : "");
  double eta, progress = ui_progress(u, j, state, &eta);
  json_key(b, "progress", 0);
  json_real(b, progress);
  json_key(b, "eta_seconds", 0);
  if (eta < 0) json_raw(b, "null");
  else json_ms(b, eta);
  kv_s(b, "policy", j->policy ? j->policy : "in-process");
  if (j->follow) {
    json_key(b, "follow", 0);
    json_raw(b, "{");
    json_key(b, "micro_batches", 1);
    json_int(b, (int64_t)j->follow_epochs);
    kv_u(b, "files", j->follow_files);
    kv_u(b, "lag_bytes", j->follow_lag_bytes);
    kv_d(b, "lag_seconds", j->follow_lag_seconds);
    kv_d(b, "input_bytes_per_second", j->follow_rate);
    json_key(b, "last_commit_unix", 0);
    if (j->follow_last_commit > 0) json_ms(b, j->follow_last_commit);
    else json_raw(b, "null");
    kv_d(b, "micro_batch_seconds_p50", j->follow_p50);
    kv_d(b, "micro_batch_seconds_p99", j->follow_p99);
    json_raw(b, "}");
  }
  uint64_t tasks = 0, done = 0, attempts = 0, records = 0, bytes = 0, bad = 0;
  json_key(b, "stages", 0);
  json_raw(b, "[");
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    json_raw(b, i ? ",{" : "{");
    json_key(b, "name", 1);
    json_cstr(b, s->name);
    kv_s(b, "state", stage_state(s, state));
    kv_u(b, "planned_bytes", s->planned_bytes);
    kv_u(b, "tasks", s->tasks);
    kv_u(b, "done", s->batches);
    kv_u(b, "attempts", s->attempts);
    kv_u(b, "records", s->records);
    kv_u(b, "bad_records", s->bad_records);
    kv_u(b, "bytes", s->bytes);
    kv_d(b, "seconds", s->seconds);
    /* Where its time went: the coordinator reading and planning, the tasks' own time
     * (summed over workers), merging partial results, finishing and writing the output. */
    kv_d(b, "read_seconds", s->t_read);
    kv_d(b, "map_seconds", s->t_map);
    kv_d(b, "merge_seconds", s->t_merge);
    kv_d(b, "finish_seconds", s->t_finish);
    json_raw(b, "}");
    tasks += s->tasks;
    done += s->batches;
    attempts += s->attempts;
    records += s->records;
    bytes += s->bytes;
    bad += s->bad_records;
  }
  json_raw(b, "]");
  json_key(b, "totals", 0);
  json_raw(b, "{");
  json_key(b, "tasks", 1);
  json_int(b, (int64_t)tasks);
  kv_u(b, "done", done);
  kv_u(b, "running", running);
  kv_u(b, "attempts", attempts);
  kv_u(b, "failures", j->nfailures);
  kv_u(b, "records", records);
  kv_u(b, "bad_records", bad);
  kv_u(b, "bytes", bytes);
  kv_u(b, "speculative_attempts", j->speculated);
  kv_u(b, "discarded_results", j->discarded);
  json_raw(b, "}");
  json_key(b, "workers", 0);
  json_raw(b, "[");
  for (size_t i = 0; i < nw; i++) {
    json_raw(b, i ? ",{" : "{");
    json_key(b, "id", 1);
    json_int(b, w[i].id);
    kv_s(b, "host", w[i].host);
    kv_u(b, "pid", (uint64_t)w[i].pid);
    kv_s(b, "state", w[i].state);
    kv_u(b, "slots", w[i].slots);
    kv_u(b, "inflight", w[i].inflight);
    kv_u(b, "tasks", w[i].tasks);
    kv_u(b, "failures", w[i].failures);
    kv_d(b, "heartbeat_age", w[i].heartbeat_age);
    kv_d(b, "cpu_seconds", w[i].cpu_seconds);
    kv_u(b, "rss_bytes", w[i].rss);
    kv_u(b, "peak_rss_bytes", w[i].peak_rss);
    json_raw(b, "}");
  }
  json_raw(b, "]");
  /* The whole job in aggregate (the timeline below holds only the latest attempts). */
  json_key(b, "task_durations", 0);
  json_raw(b, "{\"le\":[");
  for (size_t k = 0; k < UI_DUR_BUCKETS; k++) {
    if (k) json_raw(b, ",");
    json_real(b, dur_le[k]);
  }
  json_raw(b, "],\"counts\":[");
  for (size_t k = 0; k <= UI_DUR_BUCKETS; k++) {
    if (k) json_raw(b, ",");
    json_int(b, (int64_t)u->dur_bucket[k]);
  }
  json_raw(b, "]");
  kv_u(b, "count", u->dur_count);
  kv_d(b, "sum", u->dur_sum);
  json_raw(b, "}");
  json_key(b, "series", 0);
  json_raw(b, "[");
  for (size_t i = 0; i < u->nseries; i++) {
    json_raw(b, i ? ",[" : "[");
    json_ms(b, u->series[i].t);
    json_raw(b, ",");
    json_int(b, (int64_t)u->series[i].bytes);
    json_raw(b, ",");
    json_real(b, u->series[i].busy);
    json_raw(b, "]");
  }
  json_raw(b, "]");
  kv_u(b, "attempts_total", u->att_started);
  /* The timeline: the latest attempts only, so a snapshot stays cheap on a long job. */
  json_key(b, "attempts", 0);
  json_raw(b, "[");
  size_t first = u->natt > ATT_SHOW ? u->natt - ATT_SHOW : 0;
  for (size_t i = first; i < u->natt; i++) {
    const ui_att *a = &u->att[(u->att_head + i) % ATT_MAX];
    json_raw(b, i > first ? ",{" : "{");
    json_key(b, "worker", 1);
    json_int(b, a->worker);
    kv_u(b, "stage", a->stage);
    kv_u(b, "task", a->task);
    kv_u(b, "attempt", a->attempt);
    kv_d(b, "start", a->start);
    kv_d(b, "end", a->end < 0 ? now : a->end);
    kv_s(b, "outcome", outcome_name(a->outcome));
    json_raw(b, "}");
  }
  json_raw(b, "]");
  json_key(b, "failures", 0);
  json_raw(b, "[");
  for (size_t i = 0; i < j->nfailures; i++) {
    const job_failure *f = &j->failures[i];
    json_raw(b, i ? ",{" : "{");
    json_key(b, "stage", 1);
    json_cstr(b, f->stage);
    kv_u(b, "task", f->task);
    kv_u(b, "attempt", f->attempt);
    kv_u(b, "worker", f->worker);
    kv_s(b, "host", f->host);
    kv_s(b, "input", f->where);
    kv_s(b, "cause", f->cause);
    json_raw(b, "}");
  }
  json_raw(b, "]");
  json_key(b, "missing", 0);
  json_raw(b, "[");
  for (size_t i = 0; i < j->nmissing; i++) {
    json_raw(b, i ? "," : "");
    json_cstr(b, j->missing[i].where);
  }
  json_raw(b, "]}\n");
}

static void pr(dbx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line of status text: formatted, then escaped (log.h), so a host or file name holding
 * terminal escape sequences is shown, not obeyed; the final newline is kept. */
static void tx(dbx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tx(dbx_buf *b, const char *fmt, ...) {
  char t[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(t, sizeof t, fmt, ap);
  va_end(ap);
  if (n <= 0) return;
  size_t len = (size_t)n < sizeof t ? (size_t)n : sizeof t - 1;
  int nl = t[len - 1] == '\n';
  log_escape_buf(b, t, len - (size_t)nl);
  if (nl) dbx_buf_append(b, "\n", 1);
}

/* The same state as a few lines of text, for `dbatch status`. */
static void build_text(ui *u, dbx_buf *b, const job *j, const ui_worker *w, size_t nw, const char *state,
                       const char *error) {
  b->len = 0;
  double eta, progress = ui_progress(u, j, state, &eta);
  tx(b, "job %s: %s after %.1f s (policy %s), %.0f%% done", u->name, state, time_mono() - u->t0,
     j->policy ? j->policy : "in-process", 100 * progress);
  if (eta > 0) tx(b, ", about %.0f s left", eta);
  tx(b, "\n");
  if (error) tx(b, "error: %.1000s\n", error);
  if (!strcmp(state, "partial")) {
    char note[160];
    partial_note(j, note, sizeof note);
    tx(b, "warning: %s\n", note);
  }
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    tx(b, "stage %-12s %-8s %6llu/%-6llu tasks done  %6llu attempts  %10llu records  %9.1f MB  %llu bad records\n",
       s->name, stage_state(s, state), (unsigned long long)s->batches, (unsigned long long)s->tasks,
       (unsigned long long)s->attempts, (unsigned long long)s->records, (double)s->bytes / 1048576.0,
       (unsigned long long)s->bad_records);
  }
  if (nw) tx(b, "%-6s %-9s %-20s %8s %5s %7s %7s %8s %9s %8s %8s\n", "worker", "state", "host", "pid", "slots", "load",
             "tasks", "failures", "heartbeat", "cpu", "peak MB");
  for (size_t i = 0; i < nw; i++)
    tx(b, "%-6u %-9s %-20.20s %8lld %5u %3u/%-3u %7llu %8llu %8.1fs %7.1fs %8.0f\n", w[i].id, w[i].state, w[i].host,
       (long long)w[i].pid, w[i].slots, w[i].inflight, w[i].slots, (unsigned long long)w[i].tasks,
       (unsigned long long)w[i].failures, w[i].heartbeat_age, w[i].cpu_seconds, (double)w[i].peak_rss / 1048576.0);
  tx(b, "failures: %zu\n", j->nfailures);
  for (size_t i = 0; i < j->nfailures && i < 10; i++) {
    const job_failure *f = &j->failures[i];
    tx(b, "  %s task %u attempt %u on worker %u (%s): %.300s; input: %.300s\n", f->stage, f->task, f->attempt,
       f->worker, f->host, f->cause, f->where);
  }
  for (size_t i = 0; i < j->nmissing; i++) tx(b, "missing from the result: %.500s\n", j->missing[i].where);
}

static void prom_label(dbx_buf *b, const char *s) {
  /* The exposition is UTF-8: a byte that is not (a worker's host name as it sent it, or cut
   * short in the middle of a character) is U+FFFD, or a scraper rejects the whole page. */
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x80) {
      utf8proc_int32_t cp;
      utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
      if (k < 0) { dbx_buf_append(b, "\xef\xbf\xbd", 3); i++; }
      else { dbx_buf_append(b, s + i, (size_t)k); i += (size_t)k; }
      continue;
    }
    if (c == '\\' || c == '"') dbx_buf_append(b, "\\", 1);
    if (c == '\n') dbx_buf_append(b, "\\n", 2);
    else dbx_buf_append(b, s + i, 1);
    i++;
  }
}

static void pr(dbx_buf *b, const char *fmt, ...) {
  char t[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(t, sizeof t, fmt, ap);
  va_end(ap);
  if (n > 0) dbx_buf_append(b, t, (size_t)n < sizeof t ? (size_t)n : sizeof t - 1);
}

/* One sample: NAME{job="...",LABELS} VALUE (labels given pre-escaped, may be ""). */
static void sample(ui *u, dbx_buf *b, const char *name, const char *labels, const char *value) {
  dbx_buf_append(b, name, strlen(name));
  dbx_buf_append(b, "{job=\"", 6);
  prom_label(b, u->name);
  dbx_buf_append(b, "\"", 1);
  if (labels[0]) {
    dbx_buf_append(b, ",", 1);
    dbx_buf_append(b, labels, strlen(labels));
  }
  pr(b, "} %s\n", value);
}

static void family(dbx_buf *b, const char *name, const char *type, const char *help) {
  pr(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u(ui *u, dbx_buf *b, const char *name, const char *labels, uint64_t v) {
  char t[32];
  snprintf(t, sizeof t, "%llu", (unsigned long long)v);
  sample(u, b, name, labels, t);
}

static void sample_d(ui *u, dbx_buf *b, const char *name, const char *labels, double v) {
  char t[48];
  snprintf(t, sizeof t, "%.6g", v);
  sample(u, b, name, labels, t);
}

/* A label value escaped, as stage="..." or worker="...",host="...". */
static void lbl(char *out, size_t cap, const char *k1, const char *v1, const char *k2, const char *v2) {
  dbx_buf t = {0};
  pr(&t, "%s=\"", k1);
  prom_label(&t, v1);
  dbx_buf_append(&t, "\"", 1);
  if (k2) {
    pr(&t, ",%s=\"", k2);
    prom_label(&t, v2);
    dbx_buf_append(&t, "\"", 1);
  }
  snprintf(out, cap, "%.*s", t.data ? (int)t.len : 0, t.data ? t.data : "");
  dbx_buf_free(&t);
}

/* Prometheus text exposition format 0.0.4. Every sample carries job="NAME" (the job's
 * command); a scraper's own job label, if it sets one, is kept apart as exported_job. */
static void build_metrics(ui *u, dbx_buf *b, const job *j, const ui_worker *w, size_t nw, uint64_t running,
                          const char *state) {
  char l[512], id[16];
  b->len = 0;
  family(b, "dbatch_job_state", "gauge", "1 for the job's state now (it stays until the process exits).");
  static const char *const states[] = {"starting", "running", "done", "partial", "failed", "interrupted"};
  for (size_t i = 0; i < sizeof states / sizeof *states; i++) {
    lbl(l, sizeof l, "state", states[i], NULL, NULL);
    sample_u(u, b, "dbatch_job_state", l, !strcmp(state, states[i]));
  }
  double eta, p = ui_progress(u, j, state, &eta);
  family(b, "dbatch_progress", "gauge", "How far the job is, 0 to 1 (from input bytes where known).");
  sample_d(u, b, "dbatch_progress", "", p);
  if (eta >= 0) {
    family(b, "dbatch_eta_seconds", "gauge", "Seconds left at the rate so far.");
    sample_d(u, b, "dbatch_eta_seconds", "", eta);
  }
  if (j->follow) {
    family(b, "dbatch_follow_micro_batches_total", "counter", "Micro-batches committed (--follow).");
    sample_u(u, b, "dbatch_follow_micro_batches_total", "", j->follow_epochs);
    family(b, "dbatch_follow_lag_bytes", "gauge", "Bytes of the followed files not consumed yet.");
    sample_u(u, b, "dbatch_follow_lag_bytes", "", j->follow_lag_bytes);
    family(b, "dbatch_follow_lag_seconds", "gauge", "How long data has waited unconsumed (0: none waits).");
    sample_d(u, b, "dbatch_follow_lag_seconds", "", j->follow_lag_seconds);
    family(b, "dbatch_follow_input_bytes_per_second", "gauge", "Bytes per second consumed by the last micro-batches.");
    sample_d(u, b, "dbatch_follow_input_bytes_per_second", "", j->follow_rate);
    if (j->follow_last_commit > 0) {
      family(b, "dbatch_follow_last_commit_timestamp_seconds", "gauge", "Unix time of the last commit.");
      sample_d(u, b, "dbatch_follow_last_commit_timestamp_seconds", "", j->follow_last_commit);
    }
    family(b, "dbatch_follow_micro_batch_seconds", "gauge", "Seconds from a micro-batch's scan to its commit.");
    char ql[64];
    lbl(ql, sizeof ql, "quantile", "0.5", NULL, NULL);
    sample_d(u, b, "dbatch_follow_micro_batch_seconds", ql, j->follow_p50);
    lbl(ql, sizeof ql, "quantile", "0.99", NULL, NULL);
    sample_d(u, b, "dbatch_follow_micro_batch_seconds", ql, j->follow_p99);
  }
  family(b, "dbatch_tasks", "gauge", "Tasks of each stage by state.");
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    uint64_t left = s->tasks > s->batches ? s->tasks - s->batches : 0;
    lbl(l, sizeof l, "stage", s->name, "state", "done");
    sample_u(u, b, "dbatch_tasks", l, s->batches);
    lbl(l, sizeof l, "stage", s->name, "state", "planned");
    sample_u(u, b, "dbatch_tasks", l, left);
  }
  uint64_t attempts = 0, records = 0, bytes = 0, bad = 0;
  for (int i = 0; i < j->nstages; i++) {
    attempts += j->stages[i].attempts;
    if (j->stages[i].recompute) continue;  /* records read again, counted once */
    records += j->stages[i].records;
    bytes += j->stages[i].bytes;
    bad += j->stages[i].bad_records;
  }
  family(b, "dbatch_tasks_running", "gauge", "Attempts running now.");
  sample_u(u, b, "dbatch_tasks_running", "", running);
  family(b, "dbatch_attempts_total", "counter", "Task attempts started.");
  sample_u(u, b, "dbatch_attempts_total", "", attempts);
  family(b, "dbatch_failures_total", "counter", "Failed task attempts.");
  sample_u(u, b, "dbatch_failures_total", "", j->nfailures);
  family(b, "dbatch_bytes_total", "counter", "Input bytes processed.");
  sample_u(u, b, "dbatch_bytes_total", "", bytes);
  family(b, "dbatch_records_total", "counter", "Input records processed.");
  sample_u(u, b, "dbatch_records_total", "", records);
  family(b, "dbatch_bad_records_total", "counter", "Bad records skipped.");
  sample_u(u, b, "dbatch_bad_records_total", "", bad);
  family(b, "dbatch_elapsed_seconds", "gauge", "Seconds since the job started.");
  sample_d(u, b, "dbatch_elapsed_seconds", "", time_mono() - u->t0);
  family(b, "dbatch_task_duration_seconds", "histogram", "Wall time of finished task attempts.");
  uint64_t cum = 0;
  for (size_t k = 0; k <= UI_DUR_BUCKETS; k++) {
    char le[32];
    cum += u->dur_bucket[k];
    if (k < UI_DUR_BUCKETS) snprintf(le, sizeof le, "%g", dur_le[k]);
    else snprintf(le, sizeof le, "+Inf");
    lbl(l, sizeof l, "le", le, NULL, NULL);
    sample_u(u, b, "dbatch_task_duration_seconds_bucket", l, cum);
  }
  sample_d(u, b, "dbatch_task_duration_seconds_sum", "", u->dur_sum);
  sample_u(u, b, "dbatch_task_duration_seconds_count", "", u->dur_count);
  family(b, "dbatch_worker_load", "gauge", "Attempts in flight per slot, per worker.");
  for (size_t i = 0; i < nw; i++) {
    snprintf(id, sizeof id, "%u", w[i].id);
    lbl(l, sizeof l, "worker", id, "host", w[i].host);
    sample_d(u, b, "dbatch_worker_load", l, w[i].slots ? (double)w[i].inflight / w[i].slots : 0.0);
  }
  family(b, "dbatch_worker_tasks_total", "counter", "Tasks finished per worker.");
  for (size_t i = 0; i < nw; i++) {
    snprintf(id, sizeof id, "%u", w[i].id);
    lbl(l, sizeof l, "worker", id, "host", w[i].host);
    sample_u(u, b, "dbatch_worker_tasks_total", l, w[i].tasks);
  }
  family(b, "dbatch_worker_cpu_seconds_total", "counter", "CPU time of each worker process and its children.");
  for (size_t i = 0; i < nw; i++) {
    snprintf(id, sizeof id, "%u", w[i].id);
    lbl(l, sizeof l, "worker", id, "host", w[i].host);
    sample_d(u, b, "dbatch_worker_cpu_seconds_total", l, w[i].cpu_seconds);
  }
  family(b, "dbatch_worker_rss_bytes", "gauge", "Resident memory of each live worker process.");
  for (size_t i = 0; i < nw; i++) {
    snprintf(id, sizeof id, "%u", w[i].id);
    lbl(l, sizeof l, "worker", id, "host", w[i].host);
    sample_u(u, b, "dbatch_worker_rss_bytes", l, w[i].rss);
  }
  size_t alive = 0;
  for (size_t i = 0; i < nw; i++) alive += !strcmp(w[i].state, "alive");
  family(b, "dbatch_workers_alive", "gauge", "Workers taking tasks.");
  sample_u(u, b, "dbatch_workers_alive", "", alive);
}

static int write_file(const char *dir, const char *name, const char *data, size_t n, dbx_err *err) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  afile f;
  int rc = afile_open(&f, path, err);
  if (rc) return rc;
  if (fwrite(data, 1, n, f.fp) != n) {
    afile_abort(&f);
    return dbx_seterr(err, DBX_EIO, "%s: write failed", path);
  }
  return afile_commit(&f, err);
}

int ui_due(ui *u) {
  if (!u) return 0;
  double now = time_mono();
  return (u->tty && now - u->last_draw >= 0.2) || (u->d && now - u->last_snap >= 0.25) ||
         (u->job_dir && now - u->last_file >= 1.0) || (!u->tty && !u->o.quiet && now - u->last_log >= 5.0);
}

static void progress(ui *u, const job *j, size_t nw_alive, const char *cur, int line) {
  const stage_stats *s = NULL;
  for (int i = 0; i < j->nstages; i++)
    if (cur && !strcmp(j->stages[i].name, cur)) s = &j->stages[i];
  if (!s) return;
  double el = time_mono() - u->t0;
  double mbs = el > 0 ? (double)s->bytes / 1048576.0 / el : 0;
  /* How far the whole job is, from bytes where the inputs' size is known (the batch count
   * grows while inputs are cut, so it cannot say). */
  double left, p = ui_progress(u, j, "running", &left);
  char eta[32] = "?";
  if (left >= 0) {
    if (left < 100) snprintf(eta, sizeof eta, "%.0fs", left);
    else if (left < 6000) snprintf(eta, sizeof eta, "%.0fm%02.0fs", floor(left / 60), fmod(left, 60));
    else snprintf(eta, sizeof eta, "%.0fh%02.0fm", floor(left / 3600), fmod(floor(left / 60), 60));
  }
  char text[512];
  int n = snprintf(text, sizeof text, "%s%s %3.0f%%  %.2fM records  %.1f MB/s  ETA %s  workers %zu  failures %zu",
                   line ? "dbatch: progress: " : "", s->name, floor(100 * p), (double)s->records / 1e6, mbs, eta,
                   nw_alive, j->nfailures);
  size_t len = n < 0 ? 0 : (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
  if (!line) {
    /* The line never wraps (a wrapped line cannot be redrawn in place): the fields that
     * matter least go first, then it is cut to the terminal's width. */
    struct winsize ws;
    size_t width = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
    static const char *const drop[] = {"  failures ", "  workers ", "M records", "  ETA "};
    for (size_t k = 0; k < sizeof drop / sizeof drop[0] && len >= width; k++) {
      char *at = strstr(text, drop[k]);
      if (!at) continue;
      char *end = k == 2 ? at + strlen(drop[k]) : strstr(at + 2, "  ");
      if (k == 2) {  /* "  1.23M records": back to the two spaces before the number */
        while (at > text && at[-1] != ' ') at--;
        if (at - text >= 2) at -= 2;
      }
      if (!end) end = text + len;
      memmove(at, end, (size_t)(text + len - end) + 1);
      len = strlen(text);
    }
    if (len >= width) len = width > 1 ? width - 1 : 0;
  }
  fprintf(stderr, "%s%.*s%s", line ? "" : "\r", (int)len, text, line ? "\n" : "\033[K");
  u->drawn = !line;
}

/* Index of worker id in u->wr, or where it would go (*found = 0). O(log n). */
static size_t wrec_find(const ui *u, uint32_t id, int *found) {
  size_t lo = 0, hi = u->nwr;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (u->wr[mid].w.id < id) lo = mid + 1;
    else hi = mid;
  }
  *found = lo < u->nwr && u->wr[lo].w.id == id;
  return lo;
}

/* Keep the latest record of every worker shown. Memory grows with the workers ever seen. */
static void remember_workers(ui *u, const ui_worker *w, size_t nw) {
  for (size_t i = 0; i < nw; i++) {
    int found;
    size_t k = wrec_find(u, w[i].id, &found);
    if (!found) {
      if (u->nwr == u->wrcap) {
        size_t nc = u->wrcap ? u->wrcap * 2 : 16;
        ui_wrec *nr = realloc(u->wr, nc * sizeof *nr);
        if (!nr) return;  /* the report then shows fewer workers; the job is unharmed */
        u->wr = nr;
        u->wrcap = nc;
      }
      memmove(u->wr + k + 1, u->wr + k, (u->nwr - k) * sizeof *u->wr);
      u->nwr++;
    }
    ui_wrec *r = &u->wr[k];
    r->w = w[i];
    snprintf(r->state, sizeof r->state, "%s", w[i].state ? w[i].state : "unknown");
    r->w.state = r->state;
  }
}

/* A worker still taking part when it was last seen: at the end of the job it left normally. */
static int state_is_live(const char *s) { return !strcmp(s, "alive") || !strcmp(s, "joining"); }

static void set_state(ui *u, const char *state) {
  pthread_mutex_lock(&u->mu);
  snprintf(u->state, sizeof u->state, "%s", state);
  pthread_mutex_unlock(&u->mu);
}

static uint64_t job_bytes(const job *j) {
  uint64_t b = 0;
  for (int i = 0; i < j->nstages; i++)
    if (!j->stages[i].recompute) b += j->stages[i].bytes;
  return b;
}

static void sample_series(ui *u, const job *j, const ui_worker *w, size_t nw, double now, int force) {
  if (!u->every) u->every = 1.0;
  if (!force && u->nseries && now - u->last_sample < u->every) return;
  if (u->nseries == UI_SERIES) {
    for (size_t i = 0; i < UI_SERIES / 2; i++) u->series[i] = u->series[2 * i + 1];
    u->nseries = UI_SERIES / 2;
    u->every *= 2;
  }
  uint64_t slots = 0, busy = 0;
  for (size_t i = 0; i < nw; i++)
    if (!strcmp(w[i].state, "alive")) slots += w[i].slots, busy += w[i].inflight;
  u->series[u->nseries].t = now - u->t0;
  u->series[u->nseries].bytes = job_bytes(j);
  u->series[u->nseries].busy = slots ? (double)(busy < slots ? busy : slots) / (double)slots : 0;
  u->nseries++;
  u->last_sample = now;
}

void ui_tick(ui *u, const job *j, const ui_worker *w, size_t nw, const char *cur, uint64_t running) {
  if (!u) return;
  remember_workers(u, w, nw);
  double now = time_mono();
  sample_series(u, j, w, nw, now, 0);
  size_t alive = 0;
  for (size_t i = 0; i < nw; i++) alive += !strcmp(w[i].state, "alive");
  if (u->tty && now - u->last_draw >= 0.2) {
    progress(u, j, alive, cur, 0);
    u->last_draw = now;
  } else if (!u->tty && !u->o.quiet && now - u->last_log >= 5.0) {
    progress(u, j, alive, cur, 1);
    u->last_log = now;
  }
  int snap = u->d && now - u->last_snap >= 0.25, file = u->job_dir && now - u->last_file >= 1.0;
  if (!snap && !file) return;
  if (strcmp(u->state, "running")) set_state(u, "running");
  dbx_buf s = {0}, m = {0}, x = {0};
  build_status(u, &s, j, w, nw, cur, running, "running", NULL);
  build_text(u, &x, j, w, nw, "running", NULL);
  if (file) {
    write_file(u->job_dir, "status.json", s.data, s.len, NULL);
    write_file(u->job_dir, "status.txt", x.data, x.len, NULL);
    u->last_file = now;
  }
  if (snap) {
    build_metrics(u, &m, j, w, nw, running, "running");
    pthread_mutex_lock(&u->mu);
    dbx_buf t = u->status;
    u->status = s;
    s = t;
    t = u->metrics;
    u->metrics = m;
    m = t;
    t = u->text;
    u->text = x;
    x = t;
    pthread_mutex_unlock(&u->mu);
    u->last_snap = now;
  }
  dbx_buf_free(&s);
  dbx_buf_free(&m);
  dbx_buf_free(&x);
}

/* The final worker list: every worker of the job's summary, and any other worker the job
 * showed (one whose record the coordinator dropped). A worker that was alive when last
 * seen left normally ("finished"); one already killed, exited, lost or excluded keeps that
 * state: the report must never turn a dead worker into a finished one. OUT *nout; the
 * array is the caller's (free). */
static ui_worker *final_workers(const ui *u, const job *j, size_t *nout) {
  size_t cap = j->nwinfo + u->nwr, n = 0;
  ui_worker *w = calloc(cap + 1, sizeof *w);
  if (!w) return NULL;
  for (size_t i = 0; i < j->nwinfo; i++) {
    const worker_info *x = &j->winfo[i];
    int found;
    size_t k = wrec_find(u, x->id, &found);
    ui_worker *o = &w[n++];
    o->id = x->id;
    o->slots = x->slots;
    snprintf(o->host, sizeof o->host, "%s", x->host);
    o->pid = x->pid;
    /* How it ended, as the coordinator recorded it (killed, exited, lost, excluded), over what
     * the last refresh saw: a worker killed between two refreshes still shows as killed. */
    o->state = x->state[0] && strcmp(x->state, "finished") ? x->state
             : found && !state_is_live(u->wr[k].state) ? u->wr[k].state : "finished";
    o->tasks = x->tasks;
    o->failures = x->failures;
    o->cpu_seconds = x->cpu_seconds;
    o->peak_rss = x->peak_rss;
  }
  for (size_t k = 0; k < u->nwr; k++) {
    int known = 0;
    for (size_t i = 0; i < j->nwinfo && !known; i++) known = j->winfo[i].id == u->wr[k].w.id;
    /* Worker 0 is this process (tasks run in the coordinator): its counters were only
     * sampled, so it is left out, as the job's summary leaves it out. */
    if (known || u->wr[k].w.id == 0) continue;
    ui_worker *o = &w[n++];
    *o = u->wr[k].w;
    /* Dropped by the coordinator while it looked alive here: it went away unseen. */
    o->state = !state_is_live(u->wr[k].state) ? u->wr[k].state : "lost";
    o->inflight = 0;
    o->heartbeat_age = 0;
  }
  *nout = n;
  return w;
}

int ui_finish(ui *u, const job *j, int ok, const dbx_err *failure, dbx_err *err) {
  if (!u) return 0;
  if (u->drawn) {
    fputs("\r\033[K", stderr);
    u->drawn = 0;
  }
  size_t nw = 0;
  ui_worker *w = final_workers(u, j, &nw);
  if (!w) return dbx_seterr(err, DBX_ENOMEM, "out of memory writing the job's report");
  /* Exit status 3 (--on-task-failure=skip left input out) is not a plain success. */
  /* Ctrl-C or SIGTERM: stopped cleanly, resumable from its journal; not a failure. */
  const char *state = !ok ? (failure && failure->code == DBX_EINTR ? "interrupted" : "failed")
                      : j->nmissing ? "partial" : "done";
  const char *error = NULL;
  if (!ok) {
    error = failure && failure->msg[0] ? failure->msg
            : failure && failure->code ? dbx_strerror(failure->code) : "the job failed (no detail was recorded)";
  }
  set_state(u, state);
  dbx_buf s = {0}, m = {0}, x = {0};
  sample_series(u, j, w, nw, time_mono(), 1);
  build_status(u, &s, j, w, nw, NULL, 0, state, error);
  build_metrics(u, &m, j, w, nw, 0, state);
  build_text(u, &x, j, w, nw, state, error);
  free(w);
  int rc = 0;
  if (u->job_dir) {
    /* report.html: the dashboard page with the final data inside; '<' escaped so no string
     * in the data can close the script element. */
    dbx_buf html = {0};
    const char *page = (const char *)ui_dashboard_html, *mark = strstr(page, "<!--DBX_DATA-->");
    size_t head = mark ? (size_t)(mark - page) : 0;
    dbx_buf_append(&html, page, head);
    json_raw(&html, "<script>window.DBX_STATUS = ");
    for (size_t i = 0; i < s.len; i++) {
      if (s.data[i] == '<') json_raw(&html, "\\u003c");
      else dbx_buf_append(&html, s.data + i, 1);
    }
    json_raw(&html, ";</script>");
    /* The badge is in the page itself too, readable without scripts. */
    static const char badge[] = "<span id=\"state\" class=\"state\">";
    const char *rest = page + head, *bm = strstr(rest, badge), *bend = bm ? strstr(bm, "</span>") : NULL;
    if (bm && bend) {
      dbx_buf_append(&html, rest, (size_t)(bm - rest));
      json_raw(&html, "<span id=\"state\" class=\"state ");
      json_raw(&html, state);
      json_raw(&html, "\">");
      json_raw(&html, !strcmp(state, "partial") ? "done with skipped input" : state);
      rest = bend;
    }
    json_raw(&html, rest);
    rc = write_file(u->job_dir, "report.html", html.data, html.len, err);
    if (!rc) rc = write_file(u->job_dir, "status.json", s.data, s.len, err);
    if (!rc) rc = write_file(u->job_dir, "status.txt", x.data, x.len, err);
    dbx_buf_free(&html);
  }
  pthread_mutex_lock(&u->mu);
  dbx_buf t = u->status;
  u->status = s;
  s = t;
  t = u->metrics;
  u->metrics = m;
  m = t;
  t = u->text;
  u->text = x;
  x = t;
  pthread_mutex_unlock(&u->mu);
  dbx_buf_free(&s);
  dbx_buf_free(&m);
  dbx_buf_free(&x);
  return rc;
}
