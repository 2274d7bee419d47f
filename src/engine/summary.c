/* summary.c -- the job summary as JSON (--summary-json). */
#include <stdio.h>
#include <string.h>

#include "engine/job.h"
#include "util/afile.h"
#include "util/json.h"

static void kv_int(dbx_buf *b, const char *k, uint64_t v) {
  json_key(b, k, 0);
  json_int(b, (int64_t)v);
}

static void kv_real(dbx_buf *b, const char *k, double v) {
  json_key(b, k, 0);
  json_real(b, v);
}

int job_write_summary(const job *j, const char *path, int ok, const dbx_err *failure, dbx_err *err) {
  dbx_buf b = {0};
  uint64_t bytes = 0, records = 0, bad = 0, batches = 0, tasks = 0, attempts = 0;
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    bytes += s->bytes;
    records += s->records;
    bad += s->bad_records;
    batches += s->batches;
    tasks += s->tasks;
    attempts += s->attempts;
  }
  json_raw(&b, "{");
  json_key(&b, "job", 1);
  json_cstr(&b, j->name);
  json_key(&b, "dbatch_version", 0);
  json_cstr(&b, DBX_VERSION);
  json_key(&b, "ok", 0);
  json_raw(&b, ok ? "true" : "false");
  if (!ok && failure) {
    json_key(&b, "error", 0);
    json_cstr(&b, failure->msg);
  }
  json_key(&b, "inputs", 0);
  json_raw(&b, "[");
  for (size_t i = 0; i < j->in.n; i++) {
    json_raw(&b, i ? ",{" : "{");
    json_key(&b, "path", 1);
    json_cstr(&b, j->in.v[i].path);
    kv_int(&b, "size", j->in.v[i].size);
    json_raw(&b, "}");
  }
  json_raw(&b, "]");
  kv_int(&b, "workers", (uint64_t)j->workers);
  kv_int(&b, "bytes_read", bytes);
  kv_int(&b, "records", records);
  kv_int(&b, "bad_records", bad);
  kv_int(&b, "batches", batches);
  kv_int(&b, "tasks", tasks);
  kv_int(&b, "attempts", attempts);
  kv_int(&b, "rows_out", j->rows_out);
  kv_real(&b, "elapsed_seconds", j->elapsed);
  kv_int(&b, "discarded_results", j->discarded);
  json_key(&b, "policy", 0);
  if (j->policy) json_cstr(&b, j->policy); else json_raw(&b, "null");
  json_key(&b, "worker_stats", 0);
  json_raw(&b, "[");
  for (size_t i = 0; i < j->nwinfo; i++) {
    const worker_info *w = &j->winfo[i];
    json_raw(&b, i ? ",{" : "{");
    json_key(&b, "id", 1);
    json_int(&b, w->id);
    json_key(&b, "host", 0);
    json_cstr(&b, w->host);
    kv_int(&b, "pid", (uint64_t)w->pid);
    json_key(&b, "local", 0);
    json_raw(&b, w->local ? "true" : "false");
    kv_int(&b, "slots", w->slots);
    kv_int(&b, "tasks", w->tasks);
    kv_int(&b, "bytes", w->bytes);
    kv_int(&b, "failures", w->failures);
    kv_real(&b, "busy_seconds", w->busy_seconds);
    json_key(&b, "state", 0);
    json_cstr(&b, w->state[0] ? w->state : "finished");
    json_raw(&b, "}");
  }
  json_raw(&b, "]");
  kv_int(&b, "speculative_attempts", j->speculated);
  json_key(&b, "failures", 0);
  json_raw(&b, "[");
  for (size_t i = 0; i < j->nfailures; i++) {
    const job_failure *f = &j->failures[i];
    json_raw(&b, i ? ",{" : "{");
    json_key(&b, "stage", 1);
    json_cstr(&b, f->stage);
    kv_int(&b, "task", f->task);
    kv_int(&b, "attempt", f->attempt);
    kv_int(&b, "worker", f->worker);
    json_key(&b, "host", 0);
    json_cstr(&b, f->host);
    kv_int(&b, "pid", (uint64_t)f->pid);
    json_key(&b, "input", 0);
    json_cstr(&b, f->where);
    json_key(&b, "cause", 0);
    json_cstr(&b, f->cause);
    json_raw(&b, "}");
  }
  json_raw(&b, "]");
  json_key(&b, "missing", 0);
  json_raw(&b, "[");
  for (size_t i = 0; i < j->nmissing; i++) {
    json_raw(&b, i ? ",{" : "{");
    json_key(&b, "stage", 1);
    json_cstr(&b, j->missing[i].stage);
    kv_int(&b, "task", j->missing[i].task);
    json_key(&b, "input", 0);
    json_cstr(&b, j->missing[i].where);
    json_raw(&b, "}");
  }
  json_raw(&b, "]");
  json_key(&b, "stages", 0);
  json_raw(&b, "[");
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    json_raw(&b, i ? ",{" : "{");
    json_key(&b, "name", 1);
    json_cstr(&b, s->name);
    kv_int(&b, "batches", s->batches);
    kv_int(&b, "tasks", s->tasks);
    kv_int(&b, "attempts", s->attempts);
    kv_int(&b, "bytes", s->bytes);
    kv_int(&b, "records", s->records);
    kv_int(&b, "bad_records", s->bad_records);
    kv_real(&b, "seconds", s->seconds);
    kv_real(&b, "read_seconds", s->t_read);
    kv_real(&b, "map_seconds", s->t_map);
    kv_real(&b, "merge_seconds", s->t_merge);
    kv_real(&b, "finish_seconds", s->t_finish);
    json_raw(&b, "}");
  }
  json_raw(&b, "]}\n");
  afile f;
  int rc = afile_open(&f, path, err);
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
