/* tasks.c -- the task table of one stage: states, attempts, the queue, retry backoff and
 * the task-time statistics behind speculation and the default task timeout. */
#include "coord/tasks.h"

#include <stdlib.h>
#include <string.h>

#include "dbatch.h"

void tt_init(ttable *tt) { memset(tt, 0, sizeof *tt); }

void tt_free(ttable *tt) {
  for (size_t i = 0; i < tt->n; i++) batchdesc_free(&tt->t[i].b);
  free(tt->t);
  free(tt->queue);
  free(tt->delayed);
  free(tt->dur);
  memset(tt, 0, sizeof *tt);
}

int tt_add(ttable *tt, const batchdesc *b, int done, uint32_t *idx) {
  if (tt->n == tt->cap) {
    size_t nc = tt->cap ? tt->cap * 2 : 256;
    ctask *nt = realloc(tt->t, nc * sizeof *nt);
    if (!nt) return DBX_ENOMEM;
    tt->t = nt;
    tt->cap = nc;
  }
  ctask *t = &tt->t[tt->n];
  memset(t, 0, sizeof *t);
  t->b = *b;
  t->run[0] = t->run[1] = -1;
  *idx = (uint32_t)tt->n++;
  if (done) {
    t->state = T_DONE;
    batchdesc_free(&t->b);
    tt->done++;
    return 0;
  }
  tt->undone++;
  return tt_push(tt, *idx, 0);
}

int tt_push(ttable *tt, uint32_t idx, int front) {
  if (tt->qlen == tt->qcap) {
    size_t nc = tt->qcap ? tt->qcap * 2 : 64;
    uint32_t *nq = malloc(nc * sizeof *nq);
    if (!nq) return DBX_ENOMEM;
    for (size_t i = 0; i < tt->qlen; i++) nq[i] = tt->queue[(tt->qhead + i) % tt->qcap];
    free(tt->queue);
    tt->queue = nq;
    tt->qcap = nc;
    tt->qhead = 0;
  }
  if (front) {
    tt->qhead = (tt->qhead + tt->qcap - 1) % tt->qcap;
    tt->queue[tt->qhead] = idx;
  } else {
    tt->queue[(tt->qhead + tt->qlen) % tt->qcap] = idx;
  }
  tt->qlen++;
  return 0;
}

uint32_t tt_pop(ttable *tt) {
  uint32_t v = tt->queue[tt->qhead];
  tt->qhead = (tt->qhead + 1) % tt->qcap;
  tt->qlen--;
  return v;
}

int tt_release_due(ttable *tt, double now) {
  for (size_t i = 0; i < tt->ndelayed;) {
    if (tt->t[tt->delayed[i]].not_before <= now) {
      int rc = tt_push(tt, tt->delayed[i], 1);
      if (rc) return rc;
      tt->delayed[i] = tt->delayed[--tt->ndelayed];
    } else {
      i++;
    }
  }
  return 0;
}

uint32_t tt_start(ttable *tt, uint32_t idx, int k, long wi, double now) {
  ctask *t = &tt->t[idx];
  uint32_t a = ++t->attempts;
  t->state = T_RUNNING;
  t->run[k] = wi;
  t->run_attempt[k] = a;
  t->run_start[k] = now;
  tt->running++;
  return a;
}

int tt_slot(const ttable *tt, uint32_t idx, long wi, uint32_t attempt) {
  if (idx >= tt->n) return -1;
  const ctask *t = &tt->t[idx];
  if (t->state != T_RUNNING) return -1;
  for (int k = 0; k < 2; k++)
    if (t->run[k] == wi && t->run_attempt[k] == attempt) return k;
  return -1;
}

void tt_drop(ttable *tt, uint32_t idx, int k) {
  ctask *t = &tt->t[idx];
  if (t->run[k] < 0) return;
  t->run[k] = -1;
  tt->running--;
}

int tt_succeed(ttable *tt, uint32_t idx, int k, double now) {
  ctask *t = &tt->t[idx];
  double wall = now - t->run_start[k];
  tt_drop(tt, idx, k);
  t->state = T_DONE;
  batchdesc_free(&t->b);
  tt->done++;
  tt->undone--;
  if (tt->ndur == tt->durcap) {
    size_t nc = tt->durcap ? tt->durcap * 2 : 64;
    double *nd = realloc(tt->dur, nc * sizeof *nd);
    if (nd) { tt->dur = nd; tt->durcap = nc; }
  }
  if (tt->ndur < tt->durcap) tt->dur[tt->ndur++] = wall;
  return t->run[1 - k] >= 0 ? 1 - k : -1;
}

int tt_avoids(const ctask *t, uint32_t wid) {
  for (uint32_t a = 0; a < t->navoid; a++)
    if (t->avoid[a] == wid) return 1;
  return 0;
}

static int delay(ttable *tt, uint32_t idx, double not_before) {
  if (tt->ndelayed == tt->delcap) {
    size_t nc = tt->delcap ? tt->delcap * 2 : 16;
    uint32_t *nd = realloc(tt->delayed, nc * sizeof *nd);
    if (!nd) return DBX_ENOMEM;
    tt->delayed = nd;
    tt->delcap = nc;
  }
  tt->t[idx].not_before = not_before;
  tt->delayed[tt->ndelayed++] = idx;
  return 0;
}

tt_verdict tt_fail(ttable *tt, uint32_t idx, int k, uint32_t wid, uint32_t max_attempts, double now) {
  ctask *t = &tt->t[idx];
  tt_drop(tt, idx, k);
  t->failures++;
  if (!tt_avoids(t, wid)) {
    if (t->navoid < TT_AVOID) t->avoid[t->navoid++] = wid;
    else t->avoid[(t->failures - 1) % TT_AVOID] = wid;
  }
  if (t->run[1 - k] >= 0) return TT_OTHER_RUNS;  /* the other attempt may still succeed */
  if (t->failures >= max_attempts) return TT_GIVE_UP;
  t->state = T_PENDING;
  double backoff = 0.05 * (double)(1u << (t->failures < 7 ? t->failures - 1 : 6));
  /* Out of memory here would lose the task: keep it runnable at once instead. */
  if (delay(tt, idx, now + backoff)) return tt_push(tt, idx, 1) ? TT_GIVE_UP : TT_RETRY;
  return TT_RETRY;
}

int tt_requeue(ttable *tt, uint32_t idx, int k) {
  ctask *t = &tt->t[idx];
  tt_drop(tt, idx, k);
  t->innocent++;
  if (t->run[1 - k] >= 0) return 0;
  t->state = T_PENDING;
  return tt_push(tt, idx, 1);
}

void tt_skip(ttable *tt, uint32_t idx) {
  ctask *t = &tt->t[idx];
  for (int k = 0; k < 2; k++) tt_drop(tt, idx, k);
  t->state = T_SKIPPED;
  batchdesc_free(&t->b);
  tt->done++;
  tt->undone--;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median and 90th percentile of finished attempts, recomputed at most 5 times a second
 * (a sort of the stage's durations: O(n log n)). */
#define TT_STATS_WINDOW 8192

static void stats(ttable *tt, double now) {
  if (tt->ndur == 0 || (tt->stats_at > 0 && now - tt->stats_at < 0.2)) return;
  /* The most recent attempts only: a stage of a million tasks sorts a few thousand
   * durations, not all of them, and the limits follow how the stage runs now. */
  size_t from = tt->ndur > TT_STATS_WINDOW ? tt->ndur - TT_STATS_WINDOW : 0, n = tt->ndur - from;
  double *tmp = malloc(n * sizeof *tmp);
  if (!tmp) return;
  memcpy(tmp, tt->dur + from, n * sizeof *tmp);
  qsort(tmp, n, sizeof *tmp, cmp_double);
  tt->median = tmp[n / 2];
  tt->p90 = tmp[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1];
  tt->stats_at = now;
  free(tmp);
}

double tt_spec_limit(ttable *tt, double now, double first) {
  double limit;
  if (tt->ndur >= 3) {
    stats(tt, now);
    limit = 1.5 * tt->median;
    if (limit < 0.05) limit = 0.05;  /* not worth a copy: message latency dominates */
  } else {
    double longest = 0;
    for (size_t i = 0; i < tt->ndur; i++)
      if (tt->dur[i] > longest) longest = tt->dur[i];
    limit = 1.5 * longest > first ? 1.5 * longest : first;
  }
  return limit;
}

double tt_default_timeout(ttable *tt, double now, double floor) {
  if (tt->ndur == 0) return 0;
  double limit;
  if (tt->ndur < 3) {
    double longest = 0;
    for (size_t i = 0; i < tt->ndur; i++)
      if (tt->dur[i] > longest) longest = tt->dur[i];
    limit = 10 * longest;
  } else {
    stats(tt, now);
    limit = 10 * tt->p90;
  }
  return limit > floor ? limit : floor;
}
