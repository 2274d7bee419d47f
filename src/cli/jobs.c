/* jobs.c -- `dbatch jobs [DIR...]`: the history of jobs, newest first, read from their job
 * directories (summary.json when the job ended, status.json while it runs or if it was
 * killed), as Spark's History Server lists applications. */
#define _GNU_SOURCE  /* strptime, timegm */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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
  double when;  /* for the order: the start, else the directory's modification time */
} job_row;

/* The whole of a small file (summaries are kilobytes; 64 MiB at most), or NULL. */
static char *slurp(const char *path, size_t *n) {
  /* Only a regular file: a FIFO or a device named summary.json must not block the listing. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
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
    int exists = stat(p, &fst) == 0 && S_ISREG(fst.st_mode);
    snprintf(p, sizeof p, "%s/status.json", dir);
    exists |= stat(p, &fst) == 0 && S_ISREG(fst.st_mode);
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

static int add_root(const char *root, job_row **rows, size_t *n, size_t *cap, int named) {
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
    if (!read_job(p, &r)) continue;
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

int cmd_jobs(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(help, stdout);
      return EXIT_OK;
    }
    if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("jobs", "unknown option %s", argv[i]);
  }
  job_row *rows = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  if (argc > 1) {
    for (int i = 1; i < argc && !rc; i++) rc = add_root(argv[i], &rows, &n, &cap, 1);
  } else {
    rc = add_root("dbatch-jobs", &rows, &n, &cap, 0);
    char state[PATH_MAX];
    const char *x = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    int k = x && x[0] == '/' ? snprintf(state, sizeof state, "%s/dbatch/jobs", x)
            : home && home[0] ? snprintf(state, sizeof state, "%s/.local/state/dbatch/jobs", home) : -1;
    if (!rc && k > 0 && (size_t)k < sizeof state) rc = add_root(state, &rows, &n, &cap, 0);
  }
  if (rc == DBX_ENOMEM) fputs("dbatch jobs: out of memory\n", stderr);
  if (n) qsort(rows, n, sizeof *rows, newest_first);
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
  for (size_t i = 0; i < n; i++) {
    free(rows[i].dir);
    free(rows[i].output);
  }
  free(rows);
  return rc ? EXIT_FAIL : EXIT_OK;
}
