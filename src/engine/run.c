/* run.c -- running a stage's tasks. With workers = 0 every task runs in this process: the
 * reference path every distributed run must equal. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/agg.h"
#include "engine/job.h"
#include "engine/journal.h"
#include "ops/ops.h"
#include "ui/ui.h"
#include "util/log.h"
#include "util/timeutil.h"

void job_add_failure(job *j, const job_failure *f) {
  log_warn("%s task %u attempt %u failed on worker %u (%s pid %lld): %s; input: %s", f->stage, f->task,
           f->attempt, f->worker, f->host, (long long)f->pid, f->cause, f->where);
  job_failure *n = realloc(j->failures, (j->nfailures + 1) * sizeof *n);
  if (!n) return;
  j->failures = n;
  j->failures[j->nfailures++] = *f;
}

void job_add_missing(job *j, const char *stage_name, uint32_t task, const char *where) {
  log_warn("%s task %u skipped (--on-task-failure=skip): missing from the result: %s", stage_name, task, where);
  job_missing *n = realloc(j->missing, (j->nmissing + 1) * sizeof *n);
  if (!n) return;
  j->missing = n;
  job_missing *m = &j->missing[j->nmissing++];
  snprintf(m->stage, sizeof m->stage, "%s", stage_name);
  m->task = task;
  snprintf(m->where, sizeof m->where, "%s", where);
}

void job_note_bad(job *j, const char *note, size_t n, uint64_t count) {
  if (j->bad_shown >= 5) return;
  if (++j->bad_shown == 5)
    log_warn("bad record skipped: %.*s (further bad records are only counted)", (int)n, note);
  else
    log_warn("bad record skipped: %.*s%s", (int)n, note, count > 1 ? " (and more in this batch)" : "");
}

void job_free_records(job *j) {
  free(j->failures);
  free(j->missing);
  j->failures = NULL;
  j->missing = NULL;
  j->nfailures = j->nmissing = 0;
}

stage_stats *job_add_stage(job *j, const char *name) {
  for (int i = 0; i < j->nstages; i++)
    if (j->stages[i].state == STAGE_PLANNED && !strncmp(j->stages[i].name, name, sizeof j->stages[i].name - 1)) {
      j->stages[i].state = STAGE_RUNNING;
      return &j->stages[i];
    }
  if (j->nstages == STAGE_MAX) return NULL;
  stage_stats *s = &j->stages[j->nstages++];
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", name);
  s->state = STAGE_RUNNING;
  return s;
}

void job_plan_stage(job *j, const char *name) {
  for (int i = 0; i < j->nstages; i++)
    if (j->stages[i].state == STAGE_PLANNED && !strncmp(j->stages[i].name, name, sizeof j->stages[i].name - 1)) return;
  if (j->nstages == STAGE_MAX) return;
  stage_stats *s = &j->stages[j->nstages++];
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", name);
  s->state = STAGE_PLANNED;
}

double job_progress(const job *j) {
  double sum = 0;
  int n = 0;
  for (int i = 0; i < j->nstages; i++) {
    const stage_stats *s = &j->stages[i];
    if (s->recompute) continue;  /* work done again, not more of the job */
    n++;
    if (s->state == STAGE_DONE) sum += 1;
    else if (s->state == STAGE_PLANNED) continue;
    else if (s->planned_bytes) sum += s->bytes >= s->planned_bytes ? 0.99 : 0.99 * (double)s->bytes / (double)s->planned_bytes;
    else if (s->tasks) sum += 0.99 * (double)(s->batches < s->tasks ? s->batches : s->tasks) / (double)s->tasks;
  }
  return n ? sum / n : 0;
}

void engine_describe_task(const batchdesc *b, const inputs *in, char *out, size_t cap) {
  char where[512];
  if (!in || b->nseg == 0) snprintf(where, sizeof where, "no input");
  else batchdesc_describe(b, in, where, sizeof where);
  snprintf(out, cap, "task %u (%s)", b->index, where);
}

/* Prefix err's message with where the batch came from. */
static int locate(int rc, const batchdesc *b, const inputs *in, dbx_err *err) {
  if (!err) return rc;
  char where[640], msg[DBX_ERR_LEN];
  engine_describe_task(b, in, where, sizeof where);
  snprintf(msg, sizeof msg, "%s", err->msg);
  return dbx_seterr(err, rc, "%s: %s", where, msg);
}

void (*engine_fault_hook)(const dbx_batch *b);

uint64_t engine_default_batch_bytes(uint64_t total) {
  /* About 16 batches: enough to balance a few workers, few partials to merge; 8M..64M so
   * a task is worth its overhead and its memory stays bounded. */
  uint64_t per = total / 16, lo = 8u << 20, hi = 64u << 20;
  return per < lo ? lo : per > hi ? hi : per;
}

int engine_plan_stage(job *j, stage *s, dbx_err *err) {
  /* The partials also depend on the broadcast the stage gets (a vocabulary, a model read
   * from a file): its hash is part of the plan, so a changed model is not mixed in. */
  char opts[sizeof s->st->plan_opts];
  int n = snprintf(opts, sizeof opts, "%s%sbroadcast=%016llx", s->plan_opts ? s->plan_opts : "",
                   s->plan_opts && s->plan_opts[0] ? " " : "",
                   (unsigned long long)(s->bcast_in_len ? XXH64(s->bcast_in, s->bcast_in_len, 0) : 0));
  if (n < 0 || (size_t)n >= sizeof opts)
    return dbx_seterr(err, DBX_EINVAL, "stage %s: its options are too long to record", s->name);
  int rc = journal_plan(j->jr, j->stage_no, s->name, opts, &s->split, err);
  if (rc) return rc;
  if (s->st && s->in) {
    uint64_t total = 0;
    int known = 1;
    for (size_t i = 0; i < s->in->n; i++) {
      if (s->in->v[i].kind != IN_PLAIN) known = 0;
      total += s->in->v[i].size;
    }
    s->st->planned_bytes = known ? total : 0;
  }
  if (s->st) {
    s->st->plan_batch_bytes = s->split.batch_records ? 0 : s->split.batch_bytes;
    s->st->plan_batch_records = s->split.batch_records;
    s->st->plan_whole_files = s->split.whole_files;
    snprintf(s->st->plan_opts, sizeof s->st->plan_opts, "%s", opts);
  }
  return 0;
}

int engine_resume_task(job *j, stage *s, agg *ag, uint32_t index, dbx_err *err) {
  if (s->only && (index >= s->nonly || !s->only[index])) {
    void *empty = s->op->partial_new(s->cfg);
    if (!empty) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
    if (s->st && s->st->tasks) s->st->tasks--;  /* both callers counted it: it is not a task of this run */
    int rc = agg_add(ag, index, empty, err);
    return rc ? rc : 1;
  }
  if (s->only) return 0;  /* a recompute: its outputs are files, which the journal does not hold */
  char *p = NULL;
  size_t n = 0;
  uint64_t records, bad, bytes;
  if (!journal_lookup(j->jr, s->seq, index, &p, &n, &records, &bad, &bytes)) return 0;
  void *part = NULL;
  int rc = s->op->decode(s->cfg, p, n, &part, err);
  free(p);
  if (rc) return 0;  /* a damaged entry: run the task again */
  if ((rc = agg_add(ag, index, part, err))) return rc;
  s->st->batches++;
  s->st->records += records;
  s->st->bad_records += bad;
  s->st->bytes += bytes;
  j->resumed++;
  return 1;
}

/* Record a finished task in the journal (encoding its partial). */
static int journal_partial(job *j, stage *s, uint32_t index, const void *part, const dbx_stats *bs, uint64_t bytes,
                           dbx_buf *enc, dbx_err *err) {
  if (!j->jr) return 0;
  enc->len = 0;
  int rc = s->op->encode(s->cfg, part, enc, err);
  if (!rc) rc = journal_task(j->jr, s->seq, index, enc->data, enc->len, bs->records, bs->bad_records, bytes, err);
  return rc;
}

int engine_map_task(const dbx_op *op, const void *cfg, const void *bcast, loader *ld,
                    const batchdesc *b, const char *const *paths, void **partial, dbx_stats *st,
                    uint64_t *bytes, dbx_err *err) {
  dbx_batch view;
  /* A batch of whole documents names each once, in input order, as the splitter cut it: a
   * task that names one twice would count it twice (and its partial be refused). */
  for (uint32_t i = 1; b->whole && i < b->nseg; i++)
    if (b->seg[i].input <= b->seg[i - 1].input)
      return dbx_seterr(err, DBX_EPROTO, "task %u names its documents out of order or one twice (input %u after %u)",
                        b->index, b->seg[i].input, b->seg[i - 1].input);
  void *part = op->partial_new(cfg);
  if (!part) return DBX_ENOMEM;
  int rc = loader_load(ld, b, paths, &view, err);
  if (!rc && engine_fault_hook) engine_fault_hook(&view);
  if (!rc) rc = op->map(cfg, bcast, &view, part, st, err);
  if (rc) {
    op->partial_free(part);
    return rc;
  }
  *bytes = view.size;
  *partial = part;
  return 0;
}

int stage_next_batch(stage *s, splitter *sp, uint32_t *made, batchdesc *b, dbx_err *err) {
  if (!sp) {
    memset(b, 0, sizeof *b);
    if (*made >= s->virtual_tasks) return 0;
    b->index = (*made)++;
    b->shipped = 1;
    return 1;
  }
  return splitter_next(sp, b, err);
}

static int run_local(job *j, stage *s, dbx_err *err) {
  stage_stats *st = s->st;
  const dbx_op *op = s->op;
  splitter *sp = NULL;
  loader *ld = loader_new();
  /* Map-only output (exec) streams out in batch order instead of being merged in memory. */
  agg *ag = ops_ordered_output(op) ? agg_new_ordered(op, s->cfg, s->out ? sink_emit : NULL, s->out)
                                   : agg_new(op, s->cfg);
  size_t npaths = s->in ? s->in->n : 0;
  const char **paths = calloc(npaths ? npaths : 1, sizeof *paths);
  void *bcast = NULL, *result = NULL;
  batchdesc b = {0};
  dbx_buf enc = {0};
  int rc = 0;
  if (!ld || !ag || !paths) { rc = DBX_ENOMEM; goto done; }
  loader_expect(ld, s->in);
  for (size_t i = 0; i < npaths; i++) paths[i] = s->in->v[i].path;
  if (op->bcast_load && s->bcast_in &&
      (rc = op->bcast_load(s->cfg, s->bcast_in, s->bcast_in_len, &bcast, err)))
    goto done;
  if (s->in && (rc = splitter_new(s->in, &s->split, &sp, err))) goto done;
  if (sp) splitter_csv_quotes(sp, s->csv_quotes);
  uint32_t made = 0;
  for (;;) {
    double t0 = time_mono();
    rc = stage_next_batch(s, sp, &made, &b, err);
    double t1 = time_mono();
    st->t_read += t1 - t0;
    if (rc <= 0) break;
    dbx_stats bs = {0, 0, ""};
    void *part = NULL;
    uint64_t bytes = 0;
    st->tasks++;
    if ((rc = engine_resume_task(j, s, ag, b.index, err))) {
      if (rc < 0) break;
      rc = 0;
      batchdesc_free(&b);
      continue;
    }
    st->attempts++;
    uint64_t ticket = ui_attempt_start(j->ui, s->seq, b.index, 1, 0);
    ops_task_attempt = 1;  /* tasks in this process are not retried */
    rc = engine_map_task(op, s->cfg, bcast, ld, &b, paths, &part, &bs, &bytes, err);
    ui_attempt_end(j->ui, ticket, s->seq, b.index, 1, 0, rc ? UI_FAILED : UI_OK);
    if (ui_due(j->ui)) {
      ui_worker self = {0, 1, 1, "this process", (int64_t)getpid(), "alive", st->batches + 1, j->nfailures, 0, 0, 0, 0};
      ui_tick(j->ui, j, &self, 1, st->name, 0);
    }
    double t2 = time_mono();
    st->t_map += t2 - t1;
    if (rc) {
      job_failure f;
      memset(&f, 0, sizeof f);
      snprintf(f.stage, sizeof f.stage, "%s", st->name);
      f.task = b.index;
      f.attempt = 1;
      snprintf(f.host, sizeof f.host, "this process");
      f.pid = (int64_t)getpid();
      if (s->in && b.nseg) batchdesc_describe(&b, s->in, f.where, sizeof f.where);
      snprintf(f.cause, sizeof f.cause, "%.500s", err ? err->msg : dbx_strerror(rc));
      job_add_failure(j, &f);
      if (!s->skip_failed || rc == DBX_EBADREC || rc == DBX_ECHANGED) {
        rc = locate(rc, &b, s->in, err);
        break;
      }
      /* Skipped: an empty partial keeps the merge tree whole. */
      job_add_missing(j, st->name, b.index, f.where);
      if (!(part = op->partial_new(s->cfg)) || (rc = agg_add(ag, b.index, part, err))) {
        if (!rc) rc = DBX_ENOMEM;
        break;
      }
      st->batches++;
      batchdesc_free(&b);
      continue;
    }
    st->batches++;
    st->bytes += bytes;
    st->records += bs.records;
    st->bad_records += bs.bad_records;
    if (bs.bad_note[0]) job_note_bad(j, bs.bad_note, strlen(bs.bad_note), bs.bad_records);
    if ((rc = journal_partial(j, s, b.index, part, &bs, bytes, &enc, err))) {
      op->partial_free(part);
      break;
    }
    rc = agg_add(ag, b.index, part, err);
    st->t_merge += time_mono() - t2;
    if (rc) break;
    batchdesc_free(&b);
  }
  batchdesc_free(&b);
  if (rc < 0) goto done;
  if (s->in && (rc = inputs_check_unchanged(s->in, err))) goto done;
  double t3 = time_mono();
  if ((rc = agg_finish(ag, (uint32_t)st->batches, &result, err))) goto done;
  double t4 = time_mono();
  st->t_merge += t4 - t3;
  if (s->keep) *s->keep = result, result = NULL;
  else rc = op->finish(s->cfg, bcast, result, s->out ? sink_emit : NULL, s->out, &s->bcast_out, err);
  st->t_finish += time_mono() - t4;
done:
  if (result) op->partial_free(result);
  if (bcast) op->bcast_free(bcast);
  splitter_free(sp);
  loader_free(ld);
  agg_free(ag);
  free(paths);
  dbx_buf_free(&enc);
  return rc < 0 ? rc : 0;
}

int engine_run_stage(job *j, stage *s, dbx_err *err) {
  double t0 = time_mono();
  int rc = run_local(j, s, err);
  s->st->seconds = time_mono() - t0;
  if (!rc) s->st->state = STAGE_DONE;
  return rc;
}
