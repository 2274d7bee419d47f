/* jobs.c -- `dbatch jobs [DIR...]`: the history of jobs, newest first, read from their job
 * directories (summary.json when the job ended, status.json while it runs or if it was
 * killed); and `dbatch dashboard [DIR...]`, the same list as a web page with each job's
 * report, as Spark's History Server serves applications. */
#define _GNU_SOURCE  /* strptime, timegm */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <microhttpd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "util/json.h"
#include "util/log.h"

static const char help[] =
    "Usage: dbatch jobs [DIR...]\n"
    "List past jobs, newest first: the job directories under each DIR (default ./dbatch-jobs\n"
    "and $XDG_STATE_HOME/dbatch/jobs), or DIR itself when it is one (a --job-dir), with\n"
    "their start, duration, state, records read and output.\n"
    "States: done, failed, interrupted (resumable with 'dbatch resume DIR' when it has a\n"
    "journal), partial (--on-task-failure=skip left input out), running, or unknown.\n";

typedef struct job_row {
  char *dir;
  char start[32], duration[24], state[16], records[24];
  char *output;
  size_t name_at;  /* where dir's last part starts, under the DIR listed; 0: dir is a DIR given */
  double when;  /* for the order: the start, else the directory's modification time */
} job_row;

/* The whole of a small file (summaries are kilobytes; 64 MiB at most), or NULL. */
static char *slurp(const char *path, size_t *n) {
  /* Only a regular file: a FIFO or a device named summary.json must not block the listing. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);  /* and not a link: dbatch writes none */
  struct stat st;
  if (fd < 0) return NULL;
  FILE *f = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? fdopen(fd, "rb") : NULL;
  if (!f) {
    close(fd);
    return NULL;
  }
  dbx_buf b = {0};
  char chunk[65536];
  size_t k;
  while ((k = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len < (64u << 20))
    if (dbx_buf_append(&b, chunk, k)) break;
  fclose(f);
  if (dbx_buf_append(&b, "", 1)) {
    dbx_buf_free(&b);
    return NULL;
  }
  *n = b.len - 1;
  return b.data;
}

/* Fields of a JSON file's top-level object: vals[k] is NULL when absent (owned by out). */
static int fields(const char *path, const char *const *keys, size_t nk, dbx_buf *out, const char **vals) {
  size_t n = 0, off[8], len[8];
  char *text = slurp(path, &n);
  const char *why;
  for (size_t k = 0; k < nk; k++) vals[k] = NULL;
  if (!text) return -1;
  int rc = json_object_fields(text, n, keys, nk, out, off, len, &why);
  free(text);
  if (rc || dbx_buf_append(out, "", 1)) return -1;
  /* NUL-terminate each value in place: values are back to back, so copy them apart. */
  for (size_t k = 0; k < nk; k++) {
    if (len[k] == SIZE_MAX) continue;
    char *v = malloc(len[k] + 1);
    if (!v) continue;
    memcpy(v, out->data + off[k], len[k]);
    v[len[k]] = 0;
    vals[k] = v;
  }
  return 0;
}

static void human_seconds(double s, char *out, size_t cap) {
  if (!(s >= 0) || s > 1e9) snprintf(out, cap, "?");
  else if (s < 60) snprintf(out, cap, "%.2fs", s);
  else if (s < 3600) snprintf(out, cap, "%dm%02ds", (int)(s / 60), (int)s % 60);
  else snprintf(out, cap, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

/* Read one job directory; 0 when it is not one. */
static int read_job(const char *dir, job_row *r) {
  char p[PATH_MAX];
  struct stat st;
  memset(r, 0, sizeof *r);
  static const char *const skeys[] = {"started_at", "elapsed_seconds", "records", "output", "ok"};
  static const char *const tkeys[] = {"state", "elapsed_seconds", "updated_unix"};
  const char *sv[5], *tv[3];
  dbx_buf sb = {0}, tb = {0};
  snprintf(p, sizeof p, "%s/summary.json", dir);
  int have_s = fields(p, skeys, 5, &sb, sv) == 0;
  snprintf(p, sizeof p, "%s/status.json", dir);
  int have_t = fields(p, tkeys, 3, &tb, tv) == 0;
  dbx_buf_free(&sb);
  dbx_buf_free(&tb);
  if (!have_s && !have_t) {
    /* A job directory whose files do not read (cut short, damaged) is listed, as unknown. */
    struct stat fst;
    snprintf(p, sizeof p, "%s/summary.json", dir);
    int exists = lstat(p, &fst) == 0 && S_ISREG(fst.st_mode);
    snprintf(p, sizeof p, "%s/status.json", dir);
    exists |= lstat(p, &fst) == 0 && S_ISREG(fst.st_mode);
    if (!exists) return 0;
  }
  r->dir = strdup(dir);
  /* Only the words dbatch writes are shown as they are: anything else in a file is not ours. */
  const char *st_in = have_t && tv[0] ? tv[0] : have_s && sv[4] ? (strcmp(sv[4], "true") ? "failed" : "done") : "unknown";
  static const char *const states[] = {"running", "done", "failed", "interrupted", "partial", "lost", "unknown"};
  snprintf(r->state, sizeof r->state, "unknown");
  for (size_t k = 0; k < sizeof states / sizeof states[0]; k++)
    if (!strcmp(st_in, states[k])) snprintf(r->state, sizeof r->state, "%s", states[k]);
  double elapsed = have_s && sv[1] ? strtod(sv[1], NULL) : have_t && tv[1] ? strtod(tv[1], NULL) : -1;
  if (elapsed >= 0) human_seconds(elapsed, r->duration, sizeof r->duration);
  else snprintf(r->duration, sizeof r->duration, "-");
  unsigned long long recs = 0;
  char *rend = NULL;
  if (have_s && sv[2]) recs = strtoull(sv[2], &rend, 10);
  if (have_s && sv[2] && rend && !*rend && sv[2][0] >= '0' && sv[2][0] <= '9') snprintf(r->records, sizeof r->records, "%llu", recs);
  else snprintf(r->records, sizeof r->records, "-");
  r->output = strdup(have_s && sv[3] ? sv[3] : "-");
  r->when = stat(dir, &st) == 0 ? (double)st.st_mtime : 0;
  if (have_s && sv[0]) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (strptime(sv[0], "%Y-%m-%dT%H:%M:%SZ", &tm)) {
      time_t t = timegm(&tm);
      r->when = (double)t;
    }
  } else if (have_t && tv[2]) {
    r->when = strtod(tv[2], NULL) - (elapsed > 0 ? elapsed : 0);
  }
  if (!(r->when >= 0) || r->when > 32503680000.0) r->when = 0;  /* before 1970 or after 3000: not a time */
  time_t t = (time_t)r->when;
  struct tm lt;
  localtime_r(&t, &lt);
  strftime(r->start, sizeof r->start, "%Y-%m-%d %H:%M:%S", &lt);
  for (int k = 0; k < 5; k++) free((char *)sv[k]);
  for (int k = 0; k < 3; k++) free((char *)tv[k]);
  return r->dir && r->output ? 1 : (free(r->dir), free(r->output), 0);
}

static int newest_first(const void *a, const void *b) {
  const job_row *x = a, *y = b;
  return x->when < y->when ? 1 : x->when > y->when ? -1 : strcmp(x->dir, y->dir);
}

/* The jobs of root (a job directory itself, or the job directories in it). nofollow: not a
 * directory in root that is a symbolic link (the dashboard serves only what is there). */
static int add_root(const char *root, job_row **rows, size_t *n, size_t *cap, int named, int nofollow) {
  job_row r;
  if (read_job(root, &r)) {  /* a job directory itself */
    if (*n == *cap) {
      job_row *m = realloc(*rows, (*cap = *cap ? *cap * 2 : 16) * sizeof **rows);
      if (!m) return DBX_ENOMEM;
      *rows = m;
    }
    (*rows)[(*n)++] = r;
    return 0;
  }
  DIR *d = opendir(root);
  if (!d) {
    if (named) {
      fputs("dbatch jobs: ", stderr);
      log_fputs_escaped(root, stderr);
      fprintf(stderr, ": %s\n", strerror(errno));
      return DBX_ENOENT;
    }
    return 0;
  }
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char p[PATH_MAX];
    if ((size_t)snprintf(p, sizeof p, "%s/%s", root, de->d_name) >= sizeof p) continue;
    struct stat lst;
    if (nofollow && (fstatat(dirfd(d), de->d_name, &lst, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(lst.st_mode))) continue;
    if (!read_job(p, &r)) continue;
    r.name_at = strlen(root) + 1;
    if (*n == *cap) {
      job_row *m = realloc(*rows, (*cap = *cap ? *cap * 2 : 16) * sizeof **rows);
      if (!m) {
        closedir(d);
        return DBX_ENOMEM;
      }
      *rows = m;
    }
    (*rows)[(*n)++] = r;
  }
  closedir(d);
  return 0;
}

static void free_rows(job_row *rows, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(rows[i].dir);
    free(rows[i].output);
  }
  free(rows);
}

/* The jobs under roots[0..nroots) (none: the default places), newest first. */
static int collect(char **roots, int nroots, int nofollow, job_row **out, size_t *nout) {
  job_row *rows = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  if (nroots > 0) {
    for (int i = 0; i < nroots && !rc; i++) rc = add_root(roots[i], &rows, &n, &cap, 1, nofollow);
  } else {
    rc = add_root("dbatch-jobs", &rows, &n, &cap, 0, nofollow);
    char state[PATH_MAX];
    const char *x = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    int k = x && x[0] == '/' ? snprintf(state, sizeof state, "%s/dbatch/jobs", x)
            : home && home[0] ? snprintf(state, sizeof state, "%s/.local/state/dbatch/jobs", home) : -1;
    if (!rc && k > 0 && (size_t)k < sizeof state) rc = add_root(state, &rows, &n, &cap, 0, nofollow);
  }
  if (n) qsort(rows, n, sizeof *rows, newest_first);
  *out = rows;
  *nout = n;
  return rc;
}

int cmd_jobs(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(help, stdout);
      return EXIT_OK;
    }
    if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("jobs", "unknown option %s", argv[i]);
  }
  job_row *rows = NULL;
  size_t n = 0;
  int rc = collect(argv + 1, argc - 1, 0, &rows, &n);
  if (rc == DBX_ENOMEM) fputs("dbatch jobs: out of memory\n", stderr);
  if (!rc) {
    if (!n) {
      fputs(argc > 1 ? "no job directories there\n" : "no jobs yet (job directories go to ./dbatch-jobs)\n", stdout);
    } else {
      printf("%-19s  %9s  %-11s  %12s  %-40s  %s\n", "STARTED", "DURATION", "STATE", "RECORDS", "JOB", "OUTPUT");
      for (size_t i = 0; i < n; i++) {
        printf("%-19s  %9s  %-11s  %12s  ", rows[i].start, rows[i].duration, rows[i].state, rows[i].records);
        log_fputs_escaped(rows[i].dir, stdout);
        for (size_t w = strlen(rows[i].dir); w < 40; w++) fputc(' ', stdout);
        fputs("  ", stdout);
        log_fputs_escaped(rows[i].output, stdout);
        fputc('\n', stdout);
      }
    }
  }
  free_rows(rows, n);
  return rc ? EXIT_FAIL : EXIT_OK;
}

/* ---- dbatch dashboard: the history as a web page ---- */

static const char dash_help[] =
    "Usage: dbatch dashboard [OPTIONS] [DIR...]\n"
    "Serve the history of jobs as a web page: the job directories under each DIR (default\n"
    "./dbatch-jobs and $XDG_STATE_HOME/dbatch/jobs), newest first, each with its report, its\n"
    "summary and its status. The list is read again on every request. Runs until Ctrl-C.\n"
    "  --listen HOST:PORT       where to serve (default 127.0.0.1:18080; port 0: any free port)\n"
    "  --dashboard-token FILE   every request must carry the token in FILE's first line (16+\n"
    "                           characters, mode 0600): 'Authorization: Bearer TOKEN' or\n"
    "                           ?token=TOKEN\n"
    "  --dashboard-public       allow a non-loopback address without a token\n";

typedef struct hist {
  char **roots;
  int nroots;
  char token[256];
  int has_token;
} hist;

static int h_same(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  unsigned char d = na != nb;
  for (size_t i = 0; i < na; i++) d |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
  return d == 0;
}

static void html_text(dbx_buf *b, const char *s) {
  for (; *s; s++) {
    const char *e = *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : *s == '&' ? "&amp;" : *s == '"' ? "&quot;" : *s == '\'' ? "&#39;" : NULL;
    if (e) dbx_buf_append(b, e, strlen(e));
    else if ((unsigned char)*s < 0x20) dbx_buf_append(b, "?", 1);
    else dbx_buf_append(b, s, 1);
  }
}

static void url_part(dbx_buf *b, const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-_.~/", c)) {
      dbx_buf_append(b, s, 1);
    } else {
      char t[4];
      snprintf(t, sizeof t, "%%%02X", c);
      dbx_buf_append(b, t, 3);
    }
  }
}

static void index_page(const hist *h, const char *token, dbx_buf *b) {
  job_row *rows = NULL;
  size_t n = 0;
  collect(h->roots, h->nroots, 1, &rows, &n);
  json_raw(b, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dbatch jobs</title>"
              "<meta http-equiv=\"refresh\" content=\"5\"><style>"
              "body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#fafafa;color:#1d1d1f}"
              "header{padding:12px 20px;background:#1d1d1f;color:#fff}h1{font-size:18px;margin:0}"
              "main{padding:16px 20px}table{border-collapse:collapse;width:100%;background:#fff}"
              "th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e3e3;font-variant-numeric:tabular-nums}"
              ".state{padding:1px 6px;border-radius:4px;color:#fff;background:#9aa0a6}.state.done{background:#2e9d57}"
              ".state.failed{background:#d23f31}.state.running{background:#2f6fdb}.state.partial,.state.interrupted"
              "{background:#e0a100;color:#1d1d1f}.state.lost{background:#7b4fa0}"
              "</style></head><body><header><h1>dbatch: jobs</h1></header><main>");
  if (!n) {
    json_raw(b, "<p id=\"empty\">No job directories here yet.</p>");
  } else {
    json_raw(b, "<table id=\"jobs\"><thead><tr><th>started</th><th>duration</th><th>state</th><th>records</th>"
                "<th>job</th><th>output</th><th>files</th></tr></thead><tbody>");
    for (size_t i = 0; i < n; i++) {
      json_raw(b, "<tr><td>");
      html_text(b, rows[i].start);
      json_raw(b, "</td><td>");
      html_text(b, rows[i].duration);
      json_raw(b, "</td><td><span class=\"state ");
      html_text(b, rows[i].state);
      json_raw(b, "\">");
      html_text(b, rows[i].state);
      json_raw(b, "</span></td><td>");
      html_text(b, rows[i].records);
      json_raw(b, "</td><td>");
      static const char *const files[] = {"report.html", "summary.json", "status.txt"};
      for (int f = 0; f < 4; f++) {
        if (f == 1) {
          json_raw(b, "</td><td>");
          html_text(b, rows[i].output);
          json_raw(b, "</td><td>");
        }
        const char *file = files[f == 0 ? 0 : f - 1];
        dbx_buf u = {0};
        json_raw(&u, "/job?dir=");
        url_part(&u, rows[i].dir);
        json_raw(&u, "&file=");
        json_raw(&u, file);
        if (token) {
          json_raw(&u, "&token=");
          url_part(&u, token);
        }
        dbx_buf_append(&u, "", 1);
        json_raw(b, f ? " <a href=\"" : "<a class=\"job\" href=\"");
        html_text(b, u.data);
        json_raw(b, "\">");
        html_text(b, f ? file : rows[i].dir);
        json_raw(b, "</a>");
        dbx_buf_free(&u);
      }
      json_raw(b, "</td></tr>");
    }
    json_raw(b, "</tbody></table>");
  }
  json_raw(b, "</main></body></html>\n");
  free_rows(rows, n);
}

/* A file of a listed job directory: only the directories the list holds now, only the files
 * dbatch writes there, only regular files (not through a symbolic link). */
static int job_file(const hist *h, const char *dir, const char *file, int *out_fd, uint64_t *size, const char **type) {
  static const char *const files[] = {"report.html", "summary.json", "status.json", "status.txt"};
  static const char *const types[] = {"text/html; charset=utf-8", "application/json", "application/json",
                                      "text/plain; charset=utf-8"};
  int f = -1;
  for (int k = 0; k < 4; k++)
    if (file && !strcmp(file, files[k])) f = k;
  if (f < 0 || !dir) return 0;
  job_row *rows = NULL;
  size_t n = 0, k;
  collect(h->roots, h->nroots, 1, &rows, &n);
  for (k = 0; k < n && strcmp(rows[k].dir, dir); k++) {}
  size_t name_at = k < n ? rows[k].name_at : 0;
  int found = k < n;
  free_rows(rows, n);
  if (!found) return 0;
  /* The directory as listed: a DIR given as it is, a directory in one not through a link
   * (it may have been replaced by one since it was listed), then the file, not a link. */
  char p[PATH_MAX];
  if ((size_t)snprintf(p, sizeof p, "%s", dir) >= sizeof p) return 0;
  int dfd;
  if (name_at) {
    p[name_at - 1] = 0;
    int rfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    dfd = rfd < 0 ? -1 : openat(rfd, p + name_at, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (rfd >= 0) close(rfd);
  } else {
    dfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  if (dfd < 0) return 0;
  int fd = openat(dfd, files[f], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  close(dfd);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) close(fd);
    return 0;
  }
  /* Served from the file as it is sent (no copy in memory: a large file read whole for each
   * of several slow clients held hundreds of MB apiece). */
  *out_fd = fd;
  *size = (uint64_t)st.st_size;
  *type = types[f];
  return 1;
}

static enum MHD_Result h_answer(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                const char *version, const char *data, size_t *size, void **state) {
  (void)version; (void)data; (void)size; (void)state;
  const hist *h = cls;
  dbx_buf b = {0};
  const char *type = "text/plain; charset=utf-8";
  unsigned code = MHD_HTTP_OK;
  int fd = -1;
  uint64_t fsize = 0;
  const char *q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "token");
  const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  int ok = !h->has_token || (q && h_same(q, h->token)) || (auth && !strncmp(auth, "Bearer ", 7) && h_same(auth + 7, h->token));
  if (!ok) {
    json_raw(&b, "this dashboard needs its token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN\n");
    code = MHD_HTTP_UNAUTHORIZED;
  } else if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
    json_raw(&b, "the dashboard is read-only: GET / or /job?dir=DIR&file=report.html\n");
    code = MHD_HTTP_METHOD_NOT_ALLOWED;
  } else if (!strcmp(url, "/")) {
    index_page(h, h->has_token ? h->token : NULL, &b);
    type = "text/html; charset=utf-8";
  } else if (!strcmp(url, "/job") &&
             job_file(h, MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "dir"),
                      MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "file"), &fd, &fsize, &type)) {
  } else {
    b.len = 0;
    json_raw(&b, "not found: the list is at /\n");
    code = MHD_HTTP_NOT_FOUND;
    type = "text/plain; charset=utf-8";
  }
  struct MHD_Response *r = fd >= 0 ? MHD_create_response_from_fd64(fsize, fd)
                                   : MHD_create_response_from_buffer(b.len, b.data ? b.data : "", MHD_RESPMEM_MUST_COPY);
  dbx_buf_free(&b);
  if (!r) {
    if (fd >= 0) close(fd);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Cache-Control", "no-store");
  if (code == MHD_HTTP_UNAUTHORIZED) MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"dbatch\"");
  if (code == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, "Allow", "GET, HEAD");
  enum MHD_Result ret = MHD_queue_response(c, code, r);
  MHD_destroy_response(r);
  return ret;
}

static void h_log(void *cls, const char *fmt, va_list ap) { (void)cls; (void)fmt; (void)ap; }

int cmd_dashboard(int argc, char **argv) {
  const char *listen = "127.0.0.1:18080", *token_file = NULL;
  int pub = 0;
  hist h;
  memset(&h, 0, sizeof h);
  char **roots = calloc((size_t)argc + 1, sizeof *roots);
  if (!roots) return EXIT_FAIL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(dash_help, stdout);
      free(roots);
      return EXIT_OK;
    } else if (!strcmp(a, "--listen") || !strcmp(a, "--dashboard-token")) {
      if (i + 1 >= argc) { free(roots); return cli_usage_error("dashboard", "%s needs a value", a); }
      if (!strcmp(a, "--listen")) listen = argv[++i];
      else token_file = argv[++i];
    } else if (!strncmp(a, "--listen=", 9)) {
      listen = a + 9;
    } else if (!strncmp(a, "--dashboard-token=", 18)) {
      token_file = a + 18;
    } else if (!strcmp(a, "--dashboard-public")) {
      pub = 1;
    } else if (a[0] == '-' && a[1]) {
      free(roots);
      return cli_usage_error("dashboard", "unknown option %s", a);
    } else {
      roots[h.nroots++] = argv[i];
    }
  }
  h.roots = roots;
  if (token_file) {
    dbx_err e = {0, ""};
    if (cli_read_token(token_file, h.token, sizeof h.token, &e)) {
      free(roots);
      return cli_usage_error("dashboard", "%s", e.msg);
    }
    h.has_token = 1;
  }
  for (int i = 0; i < h.nroots; i++) {
    struct stat st;
    const char *why = stat(roots[i], &st) != 0 ? strerror(errno) : !S_ISDIR(st.st_mode) ? "not a directory" : NULL;
    if (why) {
      int rc = cli_usage_error("dashboard", "%s: %s", roots[i], why);
      free(roots);
      return rc;
    }
  }
  const char *colon = strrchr(listen, ':');
  char host[64];
  char *end;
  long port = colon ? strtol(colon + 1, &end, 10) : -1;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  if (!colon || (size_t)(colon - listen) >= sizeof host || *end || port < 0 || port > 65535) {
    free(roots);
    return cli_usage_error("dashboard", "--listen %s: give HOST:PORT, as in 127.0.0.1:18080", listen);
  }
  snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
  if (!strcmp(host, "localhost") || !host[0]) snprintf(host, sizeof host, "127.0.0.1");
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    free(roots);
    return cli_usage_error("dashboard", "--listen %s: '%s' is not an IPv4 address", listen, host);
  }
  if ((ntohl(sa.sin_addr.s_addr) >> 24) != 127 && !pub && !h.has_token) {
    free(roots);
    return cli_usage_error("dashboard", "--listen %s is reachable from other machines: give --dashboard-token FILE, "
                           "or --dashboard-public to serve the jobs' reports to anyone who can connect", listen);
  }
  sa.sin_port = htons((uint16_t)port);
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, &old);  /* the server's threads inherit it; this thread waits for them */
  struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port, NULL, NULL,
                                          h_answer, &h, MHD_OPTION_EXTERNAL_LOGGER, h_log, NULL,
                                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                                          MHD_OPTION_END);
  int e = errno;
  if (!d) {
    free(roots);
    fprintf(stderr, "dbatch dashboard: --listen %s: cannot listen: %s\n", listen, strerror(e));
    return e == EADDRINUSE || e == EADDRNOTAVAIL || e == EACCES ? EXIT_USAGE : EXIT_FAIL;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  fprintf(stderr, "dbatch: dashboard of past jobs at http://%s:%u/ (Ctrl-C stops it)\n", host,
          info ? info->port : (unsigned)port);
  int sig = 0;
  sigwait(&set, &sig);
  MHD_stop_daemon(d);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  free(roots);
  return EXIT_OK;
}
