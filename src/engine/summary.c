/* summary.c -- the job summary as JSON (--summary-json). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine/job.h"
#include "util/afile.h"
#include "util/json.h"

static int kv_int(dbx_buf *b, const char *k, uint64_t v) {
  return json_key(b, k, 0) | json_int(b, (int64_t)v);
}

static int kv_real(dbx_buf *b, const char *k, double v) {
  return json_key(b, k, 0) | json_real(b, v);
}

int job_render_summary(const job *j, int ok, const dbx_err *failure, dbx_buf *out) {
  dbx_buf b = *out;
  int oom = 0; /* any append that ran out of memory: never hand out a truncated summary */
  uint64_t bytes = 0, records = 0, bad = 0, batches = 0, tasks = 0, attempts = 0;
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    if (!s->recompute) {  /* a recompute read records already counted */
      bytes += s->bytes;
      records += s->records;
      bad += s->bad_records;
    }
    batches += s->batches;
    tasks += s->tasks;
    attempts += s->attempts;
  }
  oom |= json_raw(&b, "{");
  oom |= json_key(&b, "job", 1);
  oom |= json_cstr(&b, j->name);
  oom |= json_key(&b, "dbatch_version", 0);
  oom |= json_cstr(&b, DBX_VERSION);
  oom |= json_key(&b, "ok", 0);
  oom |= json_raw(&b, ok ? "true" : "false");
  if (j->started_wall > 0) {
    char when[40];
    time_t t = (time_t)j->started_wall;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    oom |= json_key(&b, "started_at", 0);
    oom |= json_cstr(&b, when);
  }
  if (j->out_dest) {
    oom |= json_key(&b, "output", 0);
    oom |= json_cstr(&b, j->out_dest);
  }
  if (!ok && failure) {
    oom |= json_key(&b, "error", 0);
    oom |= json_cstr(&b, failure->msg);
  }
  oom |= json_key(&b, "inputs", 0);
  oom |= json_raw(&b, "[");
  for (size_t i = 0; i < j->in.n; i++) {
    oom |= json_raw(&b, i ? ",{" : "{");
    oom |= json_key(&b, "path", 1);
    oom |= json_cstr(&b, j->in.v[i].path);
    oom |= kv_int(&b, "size", j->in.v[i].size);
    oom |= json_raw(&b, "}");
  }
  oom |= json_raw(&b, "]");
  oom |= kv_int(&b, "workers", (uint64_t)j->workers);
  oom |= kv_int(&b, "bytes_read", bytes);
  oom |= kv_int(&b, "records", records);
  oom |= kv_int(&b, "bad_records", bad);
  oom |= kv_int(&b, "batches", batches);
  oom |= kv_int(&b, "tasks", tasks);
  oom |= kv_int(&b, "attempts", attempts);
  oom |= kv_int(&b, "resumed_tasks", j->resumed);
  oom |= kv_int(&b, "rows_out", j->rows_out);
  oom |= kv_int(&b, "spilled_bytes", j->spilled_bytes);
  if (j->follow) {
    oom |= json_key(&b, "follow", 0);
    oom |= json_raw(&b, "{");
    oom |= json_key(&b, "micro_batches", 1) | json_int(&b, (int64_t)j->follow_epochs);
    oom |= kv_int(&b, "files", j->follow_files);
    oom |= kv_int(&b, "lag_bytes", j->follow_lag_bytes);
    oom |= kv_real(&b, "lag_seconds", j->follow_lag_seconds);
    oom |= kv_real(&b, "input_bytes_per_second", j->follow_rate);
    oom |= kv_real(&b, "last_commit_unix", j->follow_last_commit);
    oom |= kv_real(&b, "micro_batch_seconds_p50", j->follow_p50);
    oom |= kv_real(&b, "micro_batch_seconds_p99", j->follow_p99);
    oom |= json_raw(&b, "}");
  }
  if (j->left_out_what[0]) {
    oom |= json_key(&b, "left_out", 0);
    oom |= json_raw(&b, "{");
    oom |= json_key(&b, "what", 1);
    oom |= json_cstr(&b, j->left_out_what);
    oom |= kv_int(&b, "count", j->left_out);
    oom |= json_raw(&b, "}");
  }
  oom |= kv_real(&b, "elapsed_seconds", j->elapsed);
  oom |= kv_int(&b, "discarded_results", j->discarded);
  oom |= json_key(&b, "policy", 0);
  oom |= j->policy ? json_cstr(&b, j->policy) : json_raw(&b, "null");
  oom |= json_key(&b, "worker_stats", 0);
  oom |= json_raw(&b, "[");
  for (size_t i = 0; i < j->nwinfo; i++) {
    const worker_info *w = &j->winfo[i];
    oom |= json_raw(&b, i ? ",{" : "{");
    oom |= json_key(&b, "id", 1);
    oom |= json_int(&b, w->id);
    oom |= json_key(&b, "host", 0);
    oom |= json_cstr(&b, w->host);
    oom |= kv_int(&b, "pid", (uint64_t)w->pid);
    oom |= json_key(&b, "local", 0);
    oom |= json_raw(&b, w->local ? "true" : "false");
    oom |= kv_int(&b, "slots", w->slots);
    oom |= kv_int(&b, "tasks", w->tasks);
    oom |= kv_int(&b, "bytes", w->bytes);
    oom |= kv_int(&b, "failures", w->failures);
    oom |= kv_real(&b, "busy_seconds", w->busy_seconds);
    oom |= kv_real(&b, "cpu_seconds", w->cpu_seconds);
    oom |= kv_int(&b, "peak_rss_bytes", w->peak_rss);
    oom |= json_key(&b, "state", 0);
    oom |= json_cstr(&b, w->state[0] ? w->state : "finished");
    oom |= json_raw(&b, "}");
  }
  oom |= json_raw(&b, "]");
  oom |= kv_int(&b, "speculative_attempts", j->speculated);
  oom |= json_key(&b, "failures", 0);
  oom |= json_raw(&b, "[");
  for (size_t i = 0; i < j->nfailures; i++) {
    const job_failure *f = &j->failures[i];
    oom |= json_raw(&b, i ? ",{" : "{");
    oom |= json_key(&b, "stage", 1);
    oom |= json_cstr(&b, f->stage);
    oom |= kv_int(&b, "task", f->task);
    oom |= kv_int(&b, "attempt", f->attempt);
    oom |= kv_int(&b, "worker", f->worker);
    oom |= json_key(&b, "host", 0);
    oom |= json_cstr(&b, f->host);
    oom |= kv_int(&b, "pid", (uint64_t)f->pid);
    oom |= json_key(&b, "input", 0);
    oom |= json_cstr(&b, f->where);
    oom |= json_key(&b, "cause", 0);
    oom |= json_cstr(&b, f->cause);
    oom |= json_raw(&b, "}");
  }
  oom |= json_raw(&b, "]");
  oom |= json_key(&b, "missing", 0);
  oom |= json_raw(&b, "[");
  for (size_t i = 0; i < j->nmissing; i++) {
    oom |= json_raw(&b, i ? ",{" : "{");
    oom |= json_key(&b, "stage", 1);
    oom |= json_cstr(&b, j->missing[i].stage);
    oom |= kv_int(&b, "task", j->missing[i].task);
    oom |= json_key(&b, "input", 0);
    oom |= json_cstr(&b, j->missing[i].where);
    oom |= json_raw(&b, "}");
  }
  oom |= json_raw(&b, "]");
  oom |= json_key(&b, "stages", 0);
  oom |= json_raw(&b, "[");
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    oom |= json_raw(&b, i ? ",{" : "{");
    oom |= json_key(&b, "name", 1);
    oom |= json_cstr(&b, s->name);
    oom |= kv_int(&b, "batches", s->batches);
    oom |= kv_int(&b, "tasks", s->tasks);
    oom |= kv_int(&b, "attempts", s->attempts);
    oom |= kv_int(&b, "bytes", s->bytes);
    oom |= kv_int(&b, "records", s->records);
    oom |= kv_int(&b, "bad_records", s->bad_records);
    if (s->recompute) oom |= json_raw(&b, ",\"recompute\":true");
    oom |= kv_real(&b, "seconds", s->seconds);
    oom |= kv_real(&b, "read_seconds", s->t_read);
    oom |= kv_real(&b, "map_seconds", s->t_map);
    oom |= kv_real(&b, "merge_seconds", s->t_merge);
    oom |= kv_real(&b, "finish_seconds", s->t_finish);
    /* The plan the stage ran with: the same for any worker count, and on resume. */
    oom |= json_key(&b, "plan", 0);
    oom |= json_raw(&b, "{");
    oom |= json_key(&b, "batch_bytes", 1);
    oom |= json_int(&b, (int64_t)s->plan_batch_bytes);
    oom |= kv_int(&b, "batch_records", s->plan_batch_records);
    oom |= json_key(&b, "whole_files", 0);
    oom |= json_raw(&b, s->plan_whole_files ? "true" : "false");
    oom |= json_key(&b, "options", 0);
    oom |= json_cstr(&b, s->plan_opts);
    oom |= json_raw(&b, "}}");
  }
  oom |= json_raw(&b, "]}\n");
  *out = b;
  return oom || !b.data ? DBX_ENOMEM : 0;
}

int job_write_summary(const job *j, const char *path, int ok, const dbx_err *failure, dbx_err *err) {
  dbx_buf b = {0};
  int rc = job_render_summary(j, ok, failure, &b);
  if (rc) return dbx_seterr(err, rc, "%s: out of memory writing the summary", path);
  afile f;
  rc = afile_open(&f, path, err);
  if (!rc) {
    if (fwrite(b.data, 1, b.len, f.fp) != b.len) {
      afile_abort(&f);
      rc = dbx_seterr(err, DBX_EIO, "%s: write failed", path);
    } else {
      rc = afile_commit(&f, err);
    }
  }
  dbx_buf_free(&b);
  return rc;
}
