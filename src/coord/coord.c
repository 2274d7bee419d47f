/* coord.c -- the coordinator: a ZeroMQ ROUTER serving local (ipc://) and remote (tcp://)
 * workers. One thread; zmq_poll over the socket and a signalfd, so a local worker's exit
 * and every message are handled as they happen.
 *
 * Results are merged by batch index through the aggregator, so the answer does not depend
 * on which worker ran what or in which order results came back. The first result of a task
 * wins; a later one (from an attempt given up for lost) is discarded. */
#define _GNU_SOURCE 1
#include "coord/coord.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "engine/agg.h"
#include "engine/journal.h"
#include "ui/ui.h"
#include "net/proto.h"
#include "util/log.h"
#include "util/timeutil.h"

extern char **environ;

typedef struct cworker {
  unsigned char rid[256];
  size_t rid_len;
  uint32_t id;
  char host[64];
  int64_t pid;
  pid_t child;              /* local worker process, or 0 */
  int local, alive, welcomed, shared_fs;
  uint32_t slots, inflight;
  uint64_t stage_sent;      /* id of the last STAGE sent */
  double last_heard, mean_task;
  uint64_t tasks, bytes, failures;
  double busy;
  int excluded;             /* --exclude-after reached: no more tasks */
  uint32_t bad[16], nbad;   /* distinct tasks with a failed attempt here */
} cworker;

struct coord {
  coord_opts o;
  void *zctx, *router;
  char ipc_path[108], ipc_ep[128];
  int sigfd;
  sigset_t oldmask;
  cworker *w;
  size_t nw, wcap;
  uint32_t next_id;
  int local_alive;
  sched sch;
  uint64_t stage_seq;
  dbx_buf out;
  unsigned char banned[16][256];
  size_t banned_len[16], nbanned;
  int waiting_logged;
  char *exe;
};

static volatile sig_atomic_t g_interrupted;
static void on_interrupt(int sig) { g_interrupted = sig; }

/* ---- workers ---- */

static int spawn_local(coord *c) {
  char slots[] = "1", hb[32];
  snprintf(hb, sizeof hb, "%g", c->o.heartbeat);
  char *argv[] = {"dbatch", "worker", "--connect", c->ipc_ep, "--local", "--slots", slots,
                  "--heartbeat", hb, NULL};
  pid_t pid;
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  posix_spawnattr_setsigmask(&at, &c->oldmask);  /* the worker gets normal signals */
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
  int rc = posix_spawn(&pid, c->exe, NULL, &at, argv, environ);
  posix_spawnattr_destroy(&at);
  if (rc != 0) {
    log_error("cannot start a local worker (%s): %s", c->exe, strerror(rc));
    return -1;
  }
  c->local_alive++;
  /* Remember the child until it says hello: its record is made then, matched by pid. */
  if (c->nw == c->wcap) {
    size_t nc = c->wcap ? c->wcap * 2 : 8;
    cworker *nw = realloc(c->w, nc * sizeof *nw);
    if (!nw) return -1;
    c->w = nw;
    c->wcap = nc;
  }
  cworker *w = &c->w[c->nw++];
  memset(w, 0, sizeof *w);
  w->child = pid;
  w->local = 1;
  w->alive = 1;
  w->pid = pid;
  w->last_heard = time_mono();
  snprintf(w->host, sizeof w->host, "localhost");
  return 0;
}

static cworker *find_worker(coord *c, const unsigned char *rid, size_t n) {
  for (size_t i = 0; i < c->nw; i++)
    if (c->w[i].alive && c->w[i].rid_len == n && memcmp(c->w[i].rid, rid, n) == 0) return &c->w[i];
  return NULL;
}

static int send_to(coord *c, cworker *w, const dbx_buf *b) {
  if (zmq_send(c->router, w->rid, w->rid_len, ZMQ_SNDMORE) < 0) return -1;
  return zmq_send(c->router, b->data, b->len, 0) < 0 ? -1 : 0;
}

static int send_rid(coord *c, const unsigned char *rid, size_t n, const dbx_buf *b) {
  if (zmq_send(c->router, rid, n, ZMQ_SNDMORE) < 0) return -1;
  return zmq_send(c->router, b->data, b->len, 0) < 0 ? -1 : 0;
}

int coord_new(const coord_opts *o, coord **out, dbx_err *err) {
  coord *c = calloc(1, sizeof *c);
  if (!c) return DBX_ENOMEM;
  c->o = *o;
  c->sigfd = -1;
  if (c->o.heartbeat <= 0) c->o.heartbeat = 1.0;
  if (c->o.worker_timeout <= 0) c->o.worker_timeout = 10.0;
  if (c->o.max_attempts == 0) c->o.max_attempts = 4;
  sched_init(&c->sch, o->policy, o->seed);
  int rc = 0;
  if (o->workers == 0 && !o->listen) { *out = c; return 0; }
  c->exe = realpath("/proc/self/exe", NULL);
  c->zctx = zmq_ctx_new();
  c->router = zmq_socket(c->zctx, ZMQ_ROUTER);
  int one = 1, zero = 0;
  int64_t maxmsg = (int64_t)(o->max_msg ? o->max_msg : (1ull << 30));
  zmq_setsockopt(c->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
  zmq_setsockopt(c->router, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(c->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
  /* Block SIGCHLD into a signalfd: a local worker's death wakes the poll at once. */
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, &c->oldmask);
  c->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  if (o->workers > 0) {
    snprintf(c->ipc_path, sizeof c->ipc_path, "/tmp/dbatch-%d-%lx.sock", (int)getpid(),
             (unsigned long)(time_wall() * 1000) & 0xffffff);
    snprintf(c->ipc_ep, sizeof c->ipc_ep, "ipc://%s", c->ipc_path);
    if (zmq_bind(c->router, c->ipc_ep) != 0) {
      rc = dbx_seterr(err, DBX_EIO, "cannot listen on %s: %s", c->ipc_ep, zmq_strerror(zmq_errno()));
      goto fail;
    }
  }
  if (o->listen && zmq_bind(c->router, o->listen) != 0) {
    rc = dbx_seterr(err, DBX_EUSAGE, "--listen %s: %s", o->listen, zmq_strerror(zmq_errno()));
    goto fail;
  }
  for (int i = 0; i < o->workers; i++)
    if (spawn_local(c)) { rc = dbx_seterr(err, DBX_EIO, "cannot start local workers"); goto fail; }
  *out = c;
  return 0;
fail:
  coord_free(c, NULL);
  return rc;
}

/* ---- one stage ---- */

enum { T_PENDING = 0, T_RUNNING, T_DONE, T_SKIPPED };

/* A task and its attempts. At most two attempts run at once: the first, and a speculative
 * copy of a straggler. */
typedef struct ctask {
  batchdesc b;
  int state;
  uint32_t attempts;      /* attempts started */
  uint32_t failures;      /* attempts that failed or were lost */
  long run[2];            /* worker index of each running attempt, -1 = none */
  uint32_t run_attempt[2];
  double run_start[2];
  double not_before;      /* retry backoff */
  long avoid[4];          /* workers where an attempt failed: a retry goes elsewhere if it can */
  uint32_t navoid;
} ctask;

typedef struct srun {
  coord *c;
  job *j;
  stage *s;
  uint64_t id;
  ctask *t;
  size_t nt, tcap;
  uint32_t *queue;        /* pending task indices, a ring */
  size_t qhead, qlen, qcap;
  uint32_t *delayed;      /* tasks waiting out their retry backoff */
  size_t ndelayed, delcap;
  size_t done, undone_materialized;
  int split_eof;
  splitter *sp;
  uint32_t made;
  agg *ag;
  loader *ld;
  const char **paths;     /* absolute, for remote workers */
  char **abs;
  size_t npaths;
  double *durations;      /* of finished tasks, for the speculation threshold */
  size_t ndur, durcap;
  double median, median_at;
} srun;

static int q_push(srun *r, uint32_t idx, int front) {
  if (r->qlen == r->qcap) {
    size_t nc = r->qcap ? r->qcap * 2 : 64;
    uint32_t *nq = malloc(nc * sizeof *nq);
    if (!nq) return DBX_ENOMEM;
    for (size_t i = 0; i < r->qlen; i++) nq[i] = r->queue[(r->qhead + i) % r->qcap];
    free(r->queue);
    r->queue = nq;
    r->qcap = nc;
    r->qhead = 0;
  }
  if (front) {
    r->qhead = (r->qhead + r->qcap - 1) % r->qcap;
    r->queue[r->qhead] = idx;
  } else {
    r->queue[(r->qhead + r->qlen) % r->qcap] = idx;
  }
  r->qlen++;
  return 0;
}

static uint32_t q_pop(srun *r) {
  uint32_t v = r->queue[r->qhead];
  r->qhead = (r->qhead + 1) % r->qcap;
  r->qlen--;
  return v;
}

/* Tasks a worker may hold beyond its slots: enough to cover about 5 ms of its work per
 * slot, so short tasks are not bound by message latency, and at most --prefetch; a worker
 * whose tasks are long gets one extra, which keeps placement close to its load. */
static uint32_t prefetch_of(const coord *c, const cworker *w) {
  uint32_t max = c->o.prefetch;
  if (max <= 1) return max;
  if (w->mean_task <= 0) return 2 < max ? 2 : max;
  double want = 0.005 / w->mean_task;
  if (want < 1) return 1;
  return want > max ? max : (uint32_t)want;
}

static int usable(const cworker *w) { return w->alive && w->welcomed && !w->excluded; }

static uint32_t total_cap(coord *c) {
  uint32_t t = 0;
  for (size_t i = 0; i < c->nw; i++)
    if (usable(&c->w[i])) t += c->w[i].slots + prefetch_of(c, &c->w[i]);
  return t;
}

/* Keep a bounded window of tasks planned ahead: streamed input is read only as fast as
 * workers take it. */
static int top_up(srun *r, dbx_err *err) {
  size_t window = 4 * (size_t)total_cap(r->c) + 64;
  while (!r->split_eof && r->undone_materialized < window) {
    batchdesc b;
    int rc = stage_next_batch(r->s, r->sp, &r->made, &b, err);
    if (rc < 0) return rc;
    if (rc == 0) { r->split_eof = 1; break; }
    if (r->nt == r->tcap) {
      size_t nc = r->tcap ? r->tcap * 2 : 256;
      ctask *nt = realloc(r->t, nc * sizeof *nt);
      if (!nt) { batchdesc_free(&b); return DBX_ENOMEM; }
      r->t = nt;
      r->tcap = nc;
    }
    ctask *t = &r->t[r->nt];
    memset(t, 0, sizeof *t);
    t->b = b;
    t->run[0] = t->run[1] = -1;
    r->s->st->tasks++;
    /* Resuming: a task the journal holds is done already. */
    if ((rc = engine_resume_task(r->j, r->s, r->ag, (uint32_t)r->nt, err))) {
      if (rc < 0) return rc;
      t->state = T_DONE;
      batchdesc_free(&t->b);
      r->nt++;
      r->done++;
      continue;
    }
    if ((rc = q_push(r, (uint32_t)r->nt, 0))) return rc;
    r->nt++;
    r->undone_materialized++;
  }
  return 0;
}

static void describe(srun *r, const ctask *t, char *out, size_t cap) {
  if (!r->s->in || t->b.nseg == 0) snprintf(out, cap, "no input");
  else batchdesc_describe(&t->b, r->s->in, out, cap);
}

static void cancel_attempt(srun *r, uint32_t idx, int k) {
  ctask *t = &r->t[idx];
  long wi = t->run[k];
  if (wi < 0) return;
  cworker *w = &r->c->w[wi];
  if (w->inflight) w->inflight--;
  if (w->alive && w->welcomed) {
    msg_cancel(&r->c->out, r->id, t->b.index, t->run_attempt[k]);
    send_to(r->c, w, &r->c->out);
  }
  ui_attempt_end(r->j->ui, r->s->seq, idx, t->run_attempt[k], w->id, UI_CANCELLED);
  t->run[k] = -1;
}

/* A task whose attempts all failed: the job stops (--on-task-failure=fail), or the task is
 * left out and reported (skip). */
static int quarantine(srun *r, uint32_t idx, dbx_err *err) {
  ctask *t = &r->t[idx];
  char where[600];
  describe(r, t, where, sizeof where);
  if (!r->c->o.skip_failed) {
    /* The report of what failed where: every attempt of this task. */
    char list[DBX_ERR_LEN / 2] = "";
    size_t k = 0;
    for (size_t i = 0; i < r->j->nfailures && k + 1 < sizeof list; i++) {
      const job_failure *f = &r->j->failures[i];
      if (f->task != idx || strcmp(f->stage, r->s->st->name)) continue;
      int w = snprintf(list + k, sizeof list - k, "; attempt %u on worker %u (%s pid %lld): %s", f->attempt,
                       f->worker, f->host, (long long)f->pid, f->cause);
      if (w < 0) break;
      k += (size_t)w < sizeof list - k ? (size_t)w : sizeof list - k - 1;
    }
    return dbx_seterr(err, DBX_ETASK, "%s task %u (%.300s) failed %u times%s", r->s->st->name, idx, where,
                      t->failures, list);
  }
  t->state = T_SKIPPED;
  batchdesc_free(&t->b);
  r->done++;
  r->undone_materialized--;
  job_add_missing(r->j, r->s->st->name, idx, where);
  void *empty = r->s->op->partial_new(r->s->cfg);
  if (!empty) return DBX_ENOMEM;
  return agg_add(r->ag, idx, empty, err);
}

/* Attempt k of task idx ended without a result. Records where and why; retries after a
 * backoff, on another worker where one exists; excludes a worker that failed too many
 * different tasks. */
static int attempt_failed(srun *r, uint32_t idx, int k, const char *cause, dbx_err *err) {
  coord *c = r->c;
  ctask *t = &r->t[idx];
  long wi = t->run[k];
  if (wi < 0 || t->state != T_RUNNING) return 0;
  cworker *w = &c->w[wi];
  job_failure f;
  memset(&f, 0, sizeof f);
  snprintf(f.stage, sizeof f.stage, "%s", r->s->st->name);
  f.task = idx;
  f.attempt = t->run_attempt[k];
  f.worker = w->id;
  snprintf(f.host, sizeof f.host, "%s", w->host);
  f.pid = w->pid;
  describe(r, t, f.where, sizeof f.where);
  snprintf(f.cause, sizeof f.cause, "%s", cause);
  job_add_failure(r->j, &f);
  ui_attempt_end(r->j->ui, r->s->seq, idx, t->run_attempt[k], w->id, UI_FAILED);
  w->failures++;
  if (w->inflight) w->inflight--;
  t->run[k] = -1;
  t->failures++;
  if (t->navoid < 4) t->avoid[t->navoid++] = wi;
  /* Exclusion: a worker that failed attempts of --exclude-after different tasks. */
  int seen = 0;
  for (uint32_t i = 0; i < w->nbad; i++) seen |= w->bad[i] == idx;
  if (!seen && w->nbad < 16) w->bad[w->nbad++] = idx;
  if (!seen && c->o.exclude_after && w->nbad >= c->o.exclude_after && !w->excluded) {
    w->excluded = 1;
    log_warn("worker %u (%s pid %lld) failed %u different tasks: it gets no more tasks in this job", w->id,
             w->host, (long long)w->pid, w->nbad);
  }
  if (t->run[1 - k] >= 0) return 0;  /* the other attempt may still succeed */
  if (t->failures >= c->o.max_attempts) return quarantine(r, idx, err);
  t->state = T_PENDING;
  double backoff = 0.05 * (double)(1u << (t->failures < 7 ? t->failures - 1 : 6));
  t->not_before = time_mono() + backoff;
  if (r->ndelayed == r->delcap) {
    size_t nc = r->delcap ? r->delcap * 2 : 16;
    uint32_t *nd = realloc(r->delayed, nc * sizeof *nd);
    if (!nd) return DBX_ENOMEM;
    r->delayed = nd;
    r->delcap = nc;
  }
  r->delayed[r->ndelayed++] = idx;
  return 0;
}

static int worker_lost(srun *r, size_t wi, const char *why, dbx_err *err) {
  cworker *w = &r->c->w[wi];
  if (!w->alive) return 0;
  w->alive = 0;
  w->welcomed = 0;
  if (w->local) r->c->local_alive--;
  /* A local worker given up on is ended for sure; reaping it starts a replacement. */
  if (w->child) kill(w->child, SIGKILL);
  log_warn("worker %u (%s pid %lld) %s", w->id, w->host, (long long)w->pid, why);
  int rc = 0;
  char cause[300];
  snprintf(cause, sizeof cause, "worker %s", why);
  /* A worker runs its oldest `slots` tasks and queues the rest (prefetch). Only those that
   * were running count as failed attempts: a batch that kills its worker must not take the
   * tasks queued behind it down too. The others go back to the queue unharmed. */
  for (uint32_t n = 0; n < w->slots && !rc; n++) {
    long bi = -1;
    int bk = 0;
    for (size_t i = 0; i < r->nt; i++)
      for (int k = 0; k < 2; k++)
        if (r->t[i].state == T_RUNNING && r->t[i].run[k] == (long)wi &&
            (bi < 0 || r->t[i].run_start[k] < r->t[bi].run_start[bk])) {
          bi = (long)i;
          bk = k;
        }
    if (bi < 0) break;
    rc = attempt_failed(r, (uint32_t)bi, bk, cause, err);
  }
  for (size_t i = 0; i < r->nt && !rc; i++)
    for (int k = 0; k < 2 && !rc; k++) {
      ctask *t = &r->t[i];
      if (t->state != T_RUNNING || t->run[k] != (long)wi) continue;
      ui_attempt_end(r->j->ui, r->s->seq, (uint32_t)i, t->run_attempt[k], w->id, UI_CANCELLED);
      t->run[k] = -1;
      if (t->run[1 - k] < 0) {
        t->state = T_PENDING;
        rc = q_push(r, (uint32_t)i, 1);
      }
    }
  w->inflight = 0;
  return rc;
}

/* Start an attempt of task idx on worker wi, as attempt slot k (1 = speculative copy). */
static int send_task(srun *r, size_t wi, uint32_t idx, int k) {
  coord *c = r->c;
  cworker *w = &c->w[wi];
  ctask *t = &r->t[idx];
  if (w->stage_sent != r->id) {
    stage *s = r->s;
    if (msg_stage(&c->out, r->id, s->op->name, s->cfg, s->cfg_size, s->bcast_in, s->bcast_in_len,
                  r->paths, (uint32_t)r->npaths) || send_to(c, w, &c->out))
      return -1;
    w->stage_sent = r->id;
  }
  uint32_t attempt = t->attempts + 1;
  int rc;
  if (!t->b.shipped && (c->o.ship || !w->shared_fs)) {
    /* The worker cannot read our files: send the bytes. */
    dbx_batch view;
    batchdesc shipped;
    dbx_err lerr = {0, ""};
    if (loader_load(r->ld, &t->b, r->paths, &view, &lerr)) {
      log_error("cannot read task %u to ship it: %s", t->b.index, lerr.msg);
      return -2;
    }
    if (batchdesc_ship(&shipped, &t->b, &view)) return -1;
    rc = msg_task(&c->out, r->id, attempt, &shipped);
    batchdesc_free(&shipped);
  } else {
    rc = msg_task(&c->out, r->id, attempt, &t->b);
  }
  if (rc || send_to(c, w, &c->out)) return -1;
  t->attempts = attempt;
  r->s->st->attempts++;
  t->state = T_RUNNING;
  t->run[k] = (long)wi;
  t->run_attempt[k] = attempt;
  t->run_start[k] = time_mono();
  w->inflight++;
  ui_attempt_start(r->j->ui, r->s->seq, idx, attempt, w->id);
  return 0;
}

/* Fill sw for the scheduler; workers in avoid[] count as full unless no other has room. */
static size_t sched_view(srun *r, sched_worker *sw, const ctask *t) {
  coord *c = r->c;
  size_t n = c->nw < 256 ? c->nw : 256;
  int other_room = 0;
  for (size_t i = 0; i < n; i++) {
    cworker *w = &c->w[i];
    sw[i].usable = usable(w);
    sw[i].slots = w->slots ? w->slots : 1;
    sw[i].cap = sw[i].slots + prefetch_of(c, w);
    sw[i].inflight = w->inflight;
    sw[i].mean_task = w->mean_task;
    int avoided = 0;
    for (uint32_t a = 0; t && a < t->navoid; a++) avoided |= t->avoid[a] == (long)i;
    if (sw[i].usable && !avoided && sw[i].inflight < sw[i].cap) other_room = 1;
  }
  if (t && other_room)
    for (uint32_t a = 0; a < t->navoid; a++)
      if (t->avoid[a] >= 0 && (size_t)t->avoid[a] < n) sw[t->avoid[a]].usable = 0;
  return n;
}

static int assign(srun *r, dbx_err *err) {
  coord *c = r->c;
  sched_worker sw[256];
  double now = time_mono();
  /* Retries whose backoff is over go first. */
  for (size_t i = 0; i < r->ndelayed;) {
    if (r->t[r->delayed[i]].not_before <= now) {
      int rc = q_push(r, r->delayed[i], 1);
      if (rc) return rc;
      r->delayed[i] = r->delayed[--r->ndelayed];
    } else {
      i++;
    }
  }
  while (r->qlen) {
    uint32_t idx = r->queue[r->qhead];
    size_t n = sched_view(r, sw, &r->t[idx]);
    long wi = sched_pick(&c->sch, sw, n);
    if (wi < 0) return 0;
    q_pop(r);
    int rc = send_task(r, (size_t)wi, idx, 0);
    if (rc == -2) return dbx_seterr(err, DBX_EIO, "cannot read the input of task %u", r->t[idx].b.index);
    if (rc) {
      q_push(r, idx, 1);
      /* Usually a local worker that just died: report how it died when we can tell. */
      char why[96] = "lost its connection (cannot be reached)";
      int st;
      pid_t child = c->w[wi].child;
      if (child && waitpid(child, &st, WNOHANG) == child) {
        if (WIFSIGNALED(st)) snprintf(why, sizeof why, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
        else snprintf(why, sizeof why, "exited with status %d", WEXITSTATUS(st));
        c->w[wi].child = 0;
      }
      if ((rc = worker_lost(r, (size_t)wi, why, err))) return rc;
      if (!child || !c->w[wi].child) {
        if (c->local_alive < c->o.workers && !g_interrupted) spawn_local(c);
      }
    }
  }
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Speculation: with a free slot and nothing queued, copy the attempt that has run longest,
 * once it runs longer than 1.5x the stage's median task time, to another worker. */
static int speculate(srun *r, double now) {
  coord *c = r->c;
  if (!c->o.speculation || r->qlen || r->ndelayed || r->ndur < 3) return 0;
  if (now - r->median_at > 0.2) {
    double *tmp = malloc(r->ndur * sizeof *tmp);
    if (!tmp) return DBX_ENOMEM;
    memcpy(tmp, r->durations, r->ndur * sizeof *tmp);
    qsort(tmp, r->ndur, sizeof *tmp, cmp_double);
    r->median = tmp[r->ndur / 2];
    r->median_at = now;
    free(tmp);
  }
  double limit = 1.5 * r->median;
  if (limit < 0.05) limit = 0.05;  /* not worth a copy: message latency dominates */
  for (size_t i = 0; i < r->nt; i++) {
    ctask *t = &r->t[i];
    if (t->state != T_RUNNING || t->run[0] < 0 || t->run[1] >= 0 || now - t->run_start[0] < limit) continue;
    sched_worker sw[256];
    size_t n = sched_view(r, sw, NULL);
    if ((size_t)t->run[0] < n) sw[t->run[0]].usable = 0;
    /* Only a worker with a free slot: a copy must not queue behind other tasks. */
    for (size_t k = 0; k < n; k++)
      if (sw[k].inflight >= sw[k].slots) sw[k].usable = 0;
    long wi = sched_pick(&c->sch, sw, n);
    if (wi < 0) return 0;
    if (send_task(r, (size_t)wi, (uint32_t)i, 1) == 0) {
      r->j->speculated++;
      log_info("task %zu runs long (%.2f s, median %.2f s): a copy starts on worker %u", i, now - t->run_start[0],
               r->median, c->w[wi].id);
    }
  }
  return 0;
}

/* --task-timeout: an attempt running too long is a failed attempt. */
static int check_timeouts(srun *r, double now, dbx_err *err) {
  coord *c = r->c;
  if (c->o.task_timeout <= 0) return 0;
  for (size_t i = 0; i < r->nt; i++)
    for (int k = 0; k < 2; k++) {
      ctask *t = &r->t[i];
      if (t->state != T_RUNNING || t->run[k] < 0 || now - t->run_start[k] <= c->o.task_timeout) continue;
      long wi = t->run[k];
      char cause[128];
      snprintf(cause, sizeof cause, "timed out after %.1f s (--task-timeout)", now - t->run_start[k]);
      cworker *w = &c->w[wi];
      if (w->alive && w->welcomed) {
        msg_cancel(&c->out, r->id, t->b.index, t->run_attempt[k]);
        send_to(c, w, &c->out);
      }
      int rc = attempt_failed(r, (uint32_t)i, k, cause, err);
      if (rc) return rc;
      /* A local worker's slot stays stuck in the task: replace the worker. */
      if (w->local && w->child) kill(w->child, SIGKILL);
    }
  return 0;
}

static int is_banned(coord *c, const unsigned char *rid, size_t n) {
  for (size_t i = 0; i < c->nbanned && i < 16; i++)
    if (c->banned_len[i] == n && memcmp(c->banned[i], rid, n) == 0) return 1;
  return 0;
}

static void ban(coord *c, const unsigned char *rid, size_t n, const char *why) {
  size_t k = c->nbanned++ % 16;
  memcpy(c->banned[k], rid, n);
  c->banned_len[k] = n;
  log_warn("dropped a peer that sent %s", why);
}

static void on_hello(srun *r, const unsigned char *rid, size_t rn, const msg *m) {
  coord *c = r->c;
  cworker *w = NULL;
  /* A local child we started: match it by pid. */
  for (size_t i = 0; i < c->nw; i++)
    if (c->w[i].alive && c->w[i].child && !c->w[i].welcomed && (uint64_t)c->w[i].child == m->pid) w = &c->w[i];
  if (!w) {
    cworker *old = find_worker(c, rid, rn);
    if (old) w = old;  /* said hello again */
  }
  if (!w) {
    if (c->nw == c->wcap) {
      size_t nc = c->wcap ? c->wcap * 2 : 8;
      cworker *nw = realloc(c->w, nc * sizeof *nw);
      if (!nw) return;
      c->w = nw;
      c->wcap = nc;
    }
    w = &c->w[c->nw++];
    memset(w, 0, sizeof *w);
    w->alive = 1;
    w->pid = (int64_t)m->pid;
    snprintf(w->host, sizeof w->host, "%.*s", (int)m->host_len, m->host);
  }
  if (!w->welcomed) w->id = ++c->next_id;
  memcpy(w->rid, rid, rn);
  w->rid_len = rn;
  w->slots = (uint32_t)m->slots;
  w->shared_fs = m->shared_fs;
  w->welcomed = 1;
  w->stage_sent = 0;
  w->last_heard = time_mono();
  msg_welcome(&c->out, w->id, (uint64_t)(c->o.heartbeat * 1000));
  send_to(c, w, &c->out);
  c->waiting_logged = 0;
  log_info("worker %u joined: %s pid %lld, %u slot(s)%s", w->id, w->host, (long long)w->pid, w->slots,
           w->local ? " (local)" : "");
}

/* Which running attempt of a task this message is about (-1: none, e.g. given up). */
static int attempt_slot(const ctask *t, size_t wi, uint64_t attempt) {
  for (int k = 0; k < 2; k++)
    if (t->run[k] == (long)wi && t->run_attempt[k] == attempt) return k;
  return -1;
}

static int on_result(srun *r, size_t wi, const msg *m, dbx_err *err) {
  coord *c = r->c;
  cworker *w = &c->w[wi];
  if (m->stage != r->id || m->index >= r->nt) { r->j->discarded++; return 0; }
  ctask *t = &r->t[m->index];
  int k = attempt_slot(t, wi, m->attempt);
  /* The first successful attempt wins; a late one, or one given up for lost, is dropped. */
  if (t->state != T_RUNNING || k < 0) {
    r->j->discarded++;
    if (k >= 0 && w->inflight) w->inflight--;
    return 0;
  }
  /* The partial stays encoded until the merge tree needs it (agg_add_encoded). An operator
   * without merge_encoded has it decoded here, where a bad one is blamed on its worker. */
  void *part = NULL;
  char *blob = NULL;
  if (r->s->op->merge_encoded) {
    if (!(blob = malloc(m->partial_len ? m->partial_len : 1))) return DBX_ENOMEM;
    memcpy(blob, m->partial, m->partial_len);
  } else {
    dbx_err derr = {0, ""};
    if (r->s->op->decode(r->s->cfg, m->partial, m->partial_len, &part, &derr)) {
      char why[DBX_ERR_LEN + 32];
      snprintf(why, sizeof why, "sent a bad result: %s", derr.msg);
      return worker_lost(r, wi, why, err);
    }
  }
  if (w->inflight) w->inflight--;
  ui_attempt_end(r->j->ui, r->s->seq, (uint32_t)m->index, t->run_attempt[k], w->id, UI_OK);
  t->run[k] = -1;
  if (t->run[1 - k] >= 0) cancel_attempt(r, (uint32_t)m->index, 1 - k);  /* the other copy lost the race */
  double dt = m->map_seconds;
  w->tasks++;
  w->bytes += m->bytes;
  w->busy += dt;
  w->mean_task = w->mean_task ? 0.8 * w->mean_task + 0.2 * dt : dt;
  double wall = time_mono() - t->run_start[k];
  if (r->ndur == r->durcap) {
    size_t nc = r->durcap ? r->durcap * 2 : 64;
    double *nd = realloc(r->durations, nc * sizeof *nd);
    if (nd) { r->durations = nd; r->durcap = nc; }
  }
  if (r->ndur < r->durcap) r->durations[r->ndur++] = wall;
  t->state = T_DONE;
  batchdesc_free(&t->b);
  r->done++;
  r->undone_materialized--;
  stage_stats *st = r->s->st;
  st->batches++;
  st->bytes += m->bytes;
  st->records += m->records;
  st->bad_records += m->bad_records;
  st->t_map += dt;
  if (m->bad_note_len) job_note_bad(r->j, m->bad_note, m->bad_note_len, m->bad_records);
  int rc = journal_task(r->j->jr, r->s->seq, (uint32_t)m->index, m->partial, m->partial_len, m->records,
                        m->bad_records, m->bytes, err);
  if (rc) {
    if (part) r->s->op->partial_free(part);
    free(blob);
    return rc;
  }
  double t0 = time_mono();
  rc = blob ? agg_add_encoded(r->ag, (uint32_t)m->index, blob, m->partial_len, err)
            : agg_add(r->ag, (uint32_t)m->index, part, err);
  st->t_merge += time_mono() - t0;
  return rc;
}

static int on_failure(srun *r, size_t wi, const msg *m, dbx_err *err) {
  if (m->stage != r->id || m->index >= r->nt) return 0;
  ctask *t = &r->t[m->index];
  int k = attempt_slot(t, wi, m->attempt);
  if (t->state != T_RUNNING || k < 0) return 0;
  char cause[600];
  snprintf(cause, sizeof cause, "%.*s", (int)(m->text_len < 580 ? m->text_len : 580), m->text);
  /* A bad record under --on-bad-record=fail is about the data: no retry can help. */
  if (m->code == DBX_EBADREC) return dbx_seterr(err, DBX_EBADREC, "%s", cause);
  return attempt_failed(r, (uint32_t)m->index, k, cause, err);
}

static int handle_message(srun *r, dbx_err *err) {
  coord *c = r->c;
  zmq_msg_t id, body;
  zmq_msg_init(&id);
  zmq_msg_init(&body);
  int rc = 0;
  if (zmq_msg_recv(&id, c->router, ZMQ_DONTWAIT) < 0) { rc = 1; goto out; }
  int more = zmq_msg_more(&id);
  if (!more) goto out;
  zmq_msg_recv(&body, c->router, 0);
  if (zmq_msg_more(&body)) {  /* a DEALER of ours sends one frame: drain the rest */
    zmq_msg_t x;
    zmq_msg_init(&x);
    do zmq_msg_recv(&x, c->router, 0); while (zmq_msg_more(&x));
    zmq_msg_close(&x);
    ban(c, zmq_msg_data(&id), zmq_msg_size(&id), "a multi-part message");
    goto out;
  }
  const unsigned char *rid = zmq_msg_data(&id);
  size_t rn = zmq_msg_size(&id);
  if (rn > sizeof c->w[0].rid || is_banned(c, rid, rn)) goto out;
  msg m;
  dbx_err merr = {0, ""};
  cworker *w = find_worker(c, rid, rn);
  if (msg_decode(zmq_msg_data(&body), zmq_msg_size(&body), &m, &merr)) {
    if (merr.code == DBX_EVERSION) {
      char why[300];
      snprintf(why, sizeof why, "%.200s; upgrade the worker or the coordinator to the same dbatch version", merr.msg);
      log_warn("refused a worker: %s", why);
      msg_refuse(&c->out, why);
      send_rid(c, rid, rn, &c->out);
      goto out;
    }
    if (w) {
      char why[DBX_ERR_LEN + 16];
      snprintf(why, sizeof why, "sent a %s", merr.msg);
      rc = worker_lost(r, (size_t)(w - c->w), why, err);
    } else {
      ban(c, rid, rn, merr.msg);
    }
    goto out;
  }
  if (m.type == MSG_HELLO) {
    on_hello(r, rid, rn, &m);
  } else if (!w) {
    msg_simple(&c->out, MSG_REHELLO);  /* e.g. a worker from before our restart */
    send_rid(c, rid, rn, &c->out);
  } else {
    size_t wi = (size_t)(w - c->w);
    w->last_heard = time_mono();
    if (m.type == MSG_RESULT) rc = on_result(r, wi, &m, err);
    else if (m.type == MSG_FAILURE) rc = on_failure(r, wi, &m, err);
  }
  msg_free(&m);
out:
  zmq_msg_close(&id);
  zmq_msg_close(&body);
  return rc;
}

static int reap_children(srun *r, dbx_err *err) {
  coord *c = r->c;
  struct signalfd_siginfo si;
  while (read(c->sigfd, &si, sizeof si) == sizeof si) {}
  int status, rc = 0;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (size_t i = 0; i < c->nw; i++) {
      if (c->w[i].child != pid) continue;
      char why[96];
      if (WIFSIGNALED(status)) snprintf(why, sizeof why, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
      else snprintf(why, sizeof why, "exited with status %d", WEXITSTATUS(status));
      c->w[i].child = 0;
      if (c->w[i].alive && (rc = worker_lost(r, i, why, err))) return rc;
      /* Replace it, so the job keeps its parallelism. */
      if (c->local_alive < c->o.workers && !g_interrupted) spawn_local(c);
      break;
    }
  }
  return rc;
}

static void heartbeat(srun *r, double now, dbx_err *err) {
  coord *c = r->c;
  msg_simple(&c->out, MSG_HEARTBEAT);
  for (size_t i = 0; i < c->nw; i++) {
    cworker *w = &c->w[i];
    if (!w->alive || !w->welcomed) continue;
    if (now - w->last_heard > c->o.worker_timeout) {
      char why[96];
      snprintf(why, sizeof why, "was silent for %.1f s (--worker-timeout)", now - w->last_heard);
      worker_lost(r, i, why, err);
      continue;
    }
    if (send_to(c, w, &c->out)) worker_lost(r, i, "lost its connection (cannot be reached)", err);
  }
}

/* The dashboard's view of the workers, a few times a second. */
static void tick_ui(srun *r, double now) {
  coord *c = r->c;
  ui_worker w[256];
  size_t n = 0;
  uint64_t running = 0;
  for (size_t i = 0; i < c->nw && n < 256; i++) {
    const cworker *x = &c->w[i];
    if (!x->id) continue;
    ui_worker *u = &w[n++];
    u->id = x->id;
    u->slots = x->slots;
    u->inflight = x->alive ? x->inflight : 0;
    snprintf(u->host, sizeof u->host, "%s", x->host);
    u->pid = x->pid;
    u->state = !x->alive ? "dead" : x->excluded ? "excluded" : x->welcomed ? "alive" : "joining";
    u->tasks = x->tasks;
    u->failures = x->failures;
    u->heartbeat_age = x->alive ? now - x->last_heard : 0;
    running += u->inflight;
  }
  ui_tick(r->j->ui, r->j, w, n, r->s->st->name, running);
}

static int run_stage(coord *c, job *j, stage *s, dbx_err *err) {
  srun r;
  memset(&r, 0, sizeof r);
  r.c = c;
  r.j = j;
  r.s = s;
  r.id = ++c->stage_seq;
  int rc = 0;
  void *result = NULL, *bcast = NULL;
  r.ag = agg_new(s->op, s->cfg);
  r.ld = loader_new();
  r.npaths = s->in ? s->in->n : 0;
  r.paths = calloc(r.npaths + 1, sizeof *r.paths);
  r.abs = calloc(r.npaths + 1, sizeof *r.abs);
  if (!r.ag || !r.ld || !r.paths || !r.abs) { rc = DBX_ENOMEM; goto done; }
  for (size_t i = 0; i < r.npaths; i++) {
    const char *p = s->in->v[i].path;
    r.abs[i] = strcmp(p, "-") ? realpath(p, NULL) : NULL;
    r.paths[i] = r.abs[i] ? r.abs[i] : p;
  }
  if (s->in && (rc = splitter_new(s->in, &s->split, &r.sp, err))) goto done;
  double last_hb = 0;
  while (!g_interrupted) {
    double t0 = time_mono();
    if ((rc = top_up(&r, err))) goto done;
    s->st->t_read += time_mono() - t0;
    if (r.split_eof && r.done == r.nt) break;
    int nalive = 0, nusable = 0;
    for (size_t i = 0; i < c->nw; i++) {
      nalive += c->w[i].alive && c->w[i].welcomed;
      nusable += usable(&c->w[i]);
    }
    if (nalive && !nusable && !c->o.listen) {
      rc = dbx_seterr(err, DBX_ETASK, "every worker is excluded after failing %u different tasks (--exclude-after)",
                      c->o.exclude_after);
      goto done;
    }
    if (nalive >= (int)c->o.wait_workers) c->o.wait_workers = 0;  /* once per job */
    if (!c->o.wait_workers && (rc = assign(&r, err))) goto done;
    if (!nalive && c->o.listen && !c->waiting_logged && c->local_alive == 0) {
      log_warn("waiting for workers: start them with 'dbatch worker --connect %s'", c->o.listen);
      c->waiting_logged = 1;
    }
    if (!nalive && !c->o.listen && c->local_alive == 0) {
      rc = dbx_seterr(err, DBX_ETASK, "no workers left");
      goto done;
    }
    zmq_pollitem_t items[2] = {{c->router, 0, ZMQ_POLLIN, 0}, {NULL, c->sigfd, ZMQ_POLLIN, 0}};
    /* Short waits while retries back off or copies may be due; half a heartbeat otherwise. */
    long wait_ms = (r.ndelayed || (c->o.speculation && r.ndur >= 3)) ? 20 : (long)(c->o.heartbeat * 1000 / 2);
    int n = zmq_poll(items, 2, wait_ms);
    if (n < 0 && zmq_errno() != EINTR) { rc = dbx_seterr(err, DBX_EIO, "poll: %s", zmq_strerror(zmq_errno())); goto done; }
    if (items[1].revents & ZMQ_POLLIN && (rc = reap_children(&r, err))) goto done;
    if (items[0].revents & ZMQ_POLLIN) {
      for (int k = 0; k < 1024; k++) {
        int h = handle_message(&r, err);
        if (h < 0) { rc = h; goto done; }
        if (h == 1) break;
      }
    }
    double now = time_mono();
    if (now - last_hb >= c->o.heartbeat) {
      heartbeat(&r, now, err);
      last_hb = now;
    }
    if ((rc = check_timeouts(&r, now, err))) goto done;
    if (ui_due(j->ui)) tick_ui(&r, now);
    if ((rc = speculate(&r, now))) goto done;

  }
  if (g_interrupted) {
    rc = dbx_seterr(err, DBX_EINTR, "interrupted by signal %d; no output was written", (int)g_interrupted);
    goto done;
  }
  double t3 = time_mono();
  if ((rc = agg_finish(r.ag, (uint32_t)r.nt, &result, err))) goto done;
  double t4 = time_mono();
  s->st->t_merge += t4 - t3;
  /* finish() may need the stage's broadcast (the vocabulary to name model columns...). */
  if (s->op->bcast_load && s->bcast_in &&
      (rc = s->op->bcast_load(s->cfg, s->bcast_in, s->bcast_in_len, &bcast, err)))
    goto done;
  rc = s->op->finish(s->cfg, bcast, result, s->out ? sink_emit : NULL, s->out, &s->bcast_out, err);
  s->st->t_finish += time_mono() - t4;
done:
  if (result) s->op->partial_free(result);
  if (bcast) s->op->bcast_free(bcast);
  for (size_t i = 0; i < r.nt; i++) batchdesc_free(&r.t[i].b);
  free(r.t);
  free(r.queue);
  free(r.delayed);
  free(r.durations);
  splitter_free(r.sp);
  agg_free(r.ag);
  loader_free(r.ld);
  for (size_t i = 0; i < r.npaths; i++) free(r.abs[i]);
  free(r.abs);
  free(r.paths);
  return rc;
}

int coord_run_stage(coord *c, job *j, stage *s, dbx_err *err) {
  double t0 = time_mono();
  int rc;
  s->skip_failed = c->o.skip_failed;
  s->seq = j->stage_no++;
  if ((rc = journal_stage(j->jr, s->seq, s->in, err))) return rc;
  if (!c->router) {
    rc = engine_run_stage(j, s, err);
  } else {
    j->policy = sched_name(c->o.policy);
    rc = run_stage(c, j, s, err);
    s->st->seconds = time_mono() - t0;
  }
  return rc;
}

void coord_free(coord *c, job *j) {
  if (!c) return;
  if (c->router) {
    msg_simple(&c->out, MSG_BYE);
    for (size_t i = 0; i < c->nw; i++) {
      if (c->w[i].alive && c->w[i].welcomed) send_to(c, &c->w[i], &c->out);
      else if (c->w[i].child) kill(c->w[i].child, SIGKILL);  /* ours, and never needed */
    }
    /* Local workers leave on BYE; give them a moment, then make sure. */
    double t0 = time_mono();
    for (;;) {
      int left = 0;
      for (size_t i = 0; i < c->nw; i++) {
        if (!c->w[i].child) continue;
        int st;
        if (waitpid(c->w[i].child, &st, WNOHANG) == c->w[i].child) c->w[i].child = 0;
        else left++;
      }
      if (!left) break;
      if (time_mono() - t0 > 2.0) {
        for (size_t i = 0; i < c->nw; i++)
          if (c->w[i].child) { kill(c->w[i].child, SIGKILL); waitpid(c->w[i].child, NULL, 0); c->w[i].child = 0; }
        break;
      }
      usleep(2000);
    }
  }
  if (j && c->nw) {
    j->winfo = calloc(c->nw, sizeof *j->winfo);
    for (size_t i = 0; j->winfo && i < c->nw; i++) {
      const cworker *w = &c->w[i];
      if (!w->id) continue;  /* a local worker that never said hello */
      worker_info *x = &j->winfo[j->nwinfo++];
      snprintf(x->host, sizeof x->host, "%s", w->host);
      x->id = w->id;
      x->slots = w->slots;
      x->pid = w->pid;
      x->local = w->local;
      x->tasks = w->tasks;
      x->bytes = w->bytes;
      x->failures = w->failures;
      x->busy_seconds = w->busy;
    }
  }
  if (c->router) zmq_close(c->router);
  if (c->zctx) zmq_ctx_term(c->zctx);
  if (c->ipc_path[0]) unlink(c->ipc_path);
  if (c->sigfd >= 0) {
    close(c->sigfd);
    sigprocmask(SIG_SETMASK, &c->oldmask, NULL);
  }
  dbx_buf_free(&c->out);
  free(c->w);
  free(c->exe);
  free(c);
}
