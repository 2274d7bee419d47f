/* ui.h -- watching a job: the terminal progress line, the HTTP dashboard (/, /api/status,
 * /metrics), the live status file and the final HTML report (private). */
#ifndef DBX_UI_H
#define DBX_UI_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"

struct job;

typedef struct ui_opts {
  const char *dashboard;   /* HOST:PORT, or NULL */
  int dashboard_public;    /* allow a non-loopback address */
  int quiet;               /* no progress line, no log lines */
  const char *job_dir;     /* status.json while running; report.html, summary.json at the end */
  const char *token;       /* every request must carry it (bearer or ?token=), or NULL */
} ui_opts;

/* A worker as the dashboard shows it. */
typedef struct ui_worker {
  uint32_t id, slots, inflight;
  char host[64];
  int64_t pid;
  const char *state;       /* "alive", "joining", "excluded", "dead" */
  uint64_t tasks, failures;
  double heartbeat_age;
  double cpu_seconds;      /* from its heartbeats (0: not reported) */
  uint64_t rss, peak_rss;  /* bytes: now (0 once gone) and at the peak */
} ui_worker;

enum { UI_RUNNING = 0, UI_OK, UI_FAILED, UI_CANCELLED };

typedef struct ui ui;

/* Start watching; with a dashboard, the HTTP server runs from here on. *out is owned by the
 * caller (ui_free). A non-loopback dashboard address needs dashboard_public. */
int ui_new(const ui_opts *o, const char *job_name, ui **out, dbx_err *err);
void ui_free(ui *u);

/* Task attempts, for the timeline. NULL ui is fine. */
/* An attempt started; returns its ticket, which ui_attempt_end takes to find it in O(1). */
uint64_t ui_attempt_start(ui *u, uint32_t stg, uint32_t task, uint32_t attempt, uint32_t worker);
void ui_attempt_end(ui *u, uint64_t ticket, uint32_t stg, uint32_t task, uint32_t attempt, uint32_t worker,
                    int outcome);

/* 1 when ui_tick would do something now (callers skip gathering workers otherwise). */
int ui_due(ui *u);
/* Refresh what is shown: the progress line, the dashboard's data, the status file. */
void ui_tick(ui *u, const struct job *j, const ui_worker *w, size_t nw, const char *cur, uint64_t running);
/* The job ended (ok or not): final data, report.html and summary.json in the job directory. */
int ui_finish(ui *u, const struct job *j, int ok, const dbx_err *failure, dbx_err *err);
/* The dashboard's address once listening ("http://127.0.0.1:PORT/"), or NULL. */
const char *ui_url(const ui *u);
#endif
