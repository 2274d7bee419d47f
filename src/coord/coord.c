/* coord.c -- the coordinator: a ZeroMQ ROUTER serving local (ipc://) and remote (tcp://)
 * workers. One thread; zmq_poll over the socket and a signalfd, so a local worker's exit
 * and every message are handled as they happen. Worker records live in coord/workers.c,
 * the task state machine in coord/tasks.c; this file moves messages between them.
 *
 * Results are merged by batch index through the aggregator, so the answer does not depend
 * on which worker ran what or in which order results came back. The first result of a task
 * wins; a later one (from an attempt given up for lost) is discarded. Every path that loses
 * an attempt ends in a retry or a failed job: nothing waits for an answer that cannot come. */
#define _GNU_SOURCE 1
#include "coord/coord.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "coord/tasks.h"
#include "coord/workers.h"
#include "engine/agg.h"
#include "engine/journal.h"
#include "engine/shuffle.h"
#include "ui/ui.h"
#include "net/proto.h"
#include "net/rendezvous.h"
#include "ops/ops.h"
#include "ops/plugin.h"
#include "util/log.h"
#include "util/timeutil.h"

/* Local workers in a row that may die before saying hello before the job gives up on
 * starting them (a broken binary or environment, not bad luck). */
#define EARLY_DEATHS_MAX 8
/* Speculation before any task of the stage finished: copy an attempt after this long. */
#define SPEC_FIRST_SECONDS 5.0
/* libzmq's context option ZMQ_ZERO_COPY_RECV (a draft option of 4.3, not in zmq.h). */
#define DBX_ZMQ_ZERO_COPY_RECV 10
/* Tasks prefetched beyond the slots, over all workers together. */
#define PREFETCH_TOTAL 4096
/* Seconds between two looks for workers silent past --worker-timeout. */
#define SILENCE_SECONDS 0.1
/* Seconds between the passes looking for attempts past their timeout or due a copy. */
#define SCAN_SECONDS 0.02
/* The default task timeout never goes below this. */
#define TASK_TIMEOUT_FLOOR 60.0

struct coord {
  coord_opts o;
  void *zctx, *router;
  char ipc_ep[128];
  int sigfd;
  sigset_t oldmask;
  wtable wt;
  sched sch;
  sched_worker *sw;         /* the scheduler's view, one per record */
  size_t swcap;
  uint64_t stage_seq;
  dbx_buf out;
  unsigned char banned[16][256];
  size_t banned_len[16], nbanned;
  int waiting_logged;
  uint32_t nalive;          /* workers alive and welcomed, as of the last loop turn */
  char *exe;
  tr_guard *guard;          /* admits keyed workers on --listen (NULL without keys) */
};

static volatile sig_atomic_t g_interrupted, g_defer, g_stop;
static void on_interrupt(int sig) {
  if (g_defer) g_stop = sig;
  else g_interrupted = sig;
}
int coord_interrupt_signal(void) { return (int)g_interrupted; }
void coord_defer_interrupts(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* A signal that came while the job started (workers spawned, a restart's output committed)
   * is deferred too: it would fail the first stage, as an interrupted batch job ('dbatch resume
   * finishes it', which a followed job cannot do). Blocked, so none comes in between. */
  sigset_t both, was;
  sigemptyset(&both);
  sigaddset(&both, SIGINT);
  sigaddset(&both, SIGTERM);
  sigprocmask(SIG_BLOCK, &both, &was);
  g_defer = 1;
  if (g_interrupted) g_stop = g_interrupted, g_interrupted = 0;
  sigprocmask(SIG_SETMASK, &was, NULL);
}
int coord_stop_signal(void) { return (int)g_stop; }
int coord_has_workers(const coord *c) { return c && c->router; }

static int send_rid(coord *c, const unsigned char *rid, size_t n, const dbx_buf *b) {
  if (zmq_send(c->router, rid, n, ZMQ_SNDMORE) < 0) return -1;
  return zmq_send(c->router, b->data, b->len, 0) < 0 ? -1 : 0;
}

static int send_to(coord *c, cworker *w, const dbx_buf *b) { return send_rid(c, w->rid, w->rid_len, b); }

static int spawn_local(coord *c) {
  return wt_spawn_local(&c->wt, c->exe, c->ipc_ep, c->o.heartbeat, &c->oldmask);
}

int coord_new(const coord_opts *o, coord **out, dbx_err *err) {
  coord *c = calloc(1, sizeof *c);
  if (!c) return DBX_ENOMEM;
  c->o = *o;
  c->sigfd = -1;
  wt_init(&c->wt);
  if (c->o.heartbeat <= 0) c->o.heartbeat = 1.0;
  if (c->o.worker_timeout <= 0) c->o.worker_timeout = 10.0;
  if (c->o.max_attempts == 0) c->o.max_attempts = 4;
  sched_init(&c->sch, o->policy, o->seed);
  int rc = 0;
  if (o->workers == 0 && !o->listen) { *out = c; return 0; }
  /* Workers run this very program: /proc/self/exe is the binary we were started from, even
   * when its path has been replaced since or is not searchable by this user (a build under
   * a 0700 home run as another user). */
  if (!(c->exe = strdup("/proc/self/exe"))) { rc = DBX_ENOMEM; goto fail; }
  if ((c->zctx = zmq_ctx_new()) != NULL)
    /* A received message is copied out of libzmq's read buffer instead of holding all of
     * it (8 KB and more) while it waits for this loop: with thousands of workers sending,
     * the difference is hundreds of megabytes. A libzmq without the option keeps its way. */
    zmq_ctx_set(c->zctx, DBX_ZMQ_ZERO_COPY_RECV, 0);
  if (!c->zctx || !(c->router = zmq_socket(c->zctx, ZMQ_ROUTER))) {
    rc = dbx_seterr(err, DBX_EIO, "cannot start messaging: %s", zmq_strerror(zmq_errno()));
    goto fail;
  }
  int one = 1, zero = 0;
  int64_t maxmsg = (int64_t)(o->max_msg ? o->max_msg : (1ull << 30));
  zmq_setsockopt(c->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
  zmq_setsockopt(c->router, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(c->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
  /* Block SIGCHLD into a signalfd: a local worker's death wakes the poll at once. Threads
   * started before this point (the dashboard's) block every signal themselves. */
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &mask, &c->oldmask) != 0 ||
      (c->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
    rc = dbx_seterr(err, DBX_EIO, "cannot watch local workers (signalfd): %s", strerror(errno));
    goto fail;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* Local workers talk over a unix socket, which only processes of this user may connect
   * to (the kernel's peer credentials, checked by libzmq); --listen's endpoint, bound after
   * this, gets CURVE when there are keys. Options apply to the endpoints bound after them. */
  int uid = (int)getuid();
  if (zmq_setsockopt(c->router, ZMQ_IPC_FILTER_UID, &uid, sizeof uid) != 0)
    log_debug("this libzmq cannot filter local connections by user: %s", zmq_strerror(zmq_errno()));
  if (o->workers > 0) {
    /* Linux's abstract socket namespace: no file to leave behind when we are killed. */
    snprintf(c->ipc_ep, sizeof c->ipc_ep, "ipc://@dbatch-%d-%lx", (int)getpid(),
             (unsigned long)(time_wall() * 1000) & 0xffffff);
    if (zmq_bind(c->router, c->ipc_ep) != 0) {
      rc = dbx_seterr(err, DBX_EIO, "cannot listen on %s: %s", c->ipc_ep, zmq_strerror(zmq_errno()));
      goto fail;
    }
  }
  if (o->listen && o->key && (rc = tr_guard_start(c->zctx, c->router, o->key, o->authz, &c->guard, err))) goto fail;
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

int coord_listen_endpoint(coord *c, char *out, size_t cap) {
  size_t n = cap;
  if (!c->router || !c->o.listen || cap == 0) return -1;
  /* The last endpoint bound is --listen's (the local one is bound before it). */
  return zmq_getsockopt(c->router, ZMQ_LAST_ENDPOINT, out, &n);
}

/* How to start a worker for this coordinator, said once while none has joined: an address
 * other machines can use (not 0.0.0.0), and the keys when there are some. */
static void waiting_hint(coord *c) {
  char bound[256] = "", addr[300];
  if (coord_listen_endpoint(c, bound, sizeof bound) != 0) snprintf(bound, sizeof bound, "%s", c->o.listen);
  const char *colon = strrchr(bound, ':');
  if (!strncmp(bound, "tcp://0.0.0.0:", 14) || !strncmp(bound, "tcp://[::]:", 11) || !strncmp(bound, "tcp://*:", 8)) {
    char ip[64];
    rv_local_address(ip, sizeof ip);
    snprintf(addr, sizeof addr, "%s%s", ip, colon);
  } else {
    snprintf(addr, sizeof addr, "%s", !strncmp(bound, "tcp://", 6) ? bound + 6 : bound);
  }
  if (c->o.key)
    log_warn("waiting for workers: start them with 'dbatch worker --connect %s --key WORKER.key --coordinator-key %s' "
             "(their public keys listed in --authorized-keys)", addr, c->o.key->pub);
  else
    log_warn("waiting for workers: start them with 'dbatch worker --connect %s'", addr);
}

/* ---- one stage ---- */

typedef struct srun {
  coord *c;
  job *j;
  stage *s;
  uint64_t id;
  ttable tt;
  int split_eof;
  splitter *sp;
  uint32_t made;
  agg *ag;
  loader *ld;
  const char **paths;     /* absolute, for remote workers */
  char **abs;
  size_t npaths;
  void *bcast;            /* the stage's broadcast, loaded once: partials are checked against it */
  uint64_t *idsize;       /* per path: the size planned with (UINT64_MAX: a stream) */
  int64_t *idmtime;       /* per path: the modification time planned with */
  int ui_dirty;           /* a worker was lost since the dashboard's view was refreshed */
  size_t gone_ticked;     /* archived workers the dashboard's view has seen */
} srun;

/* Tasks a worker may hold beyond its slots: enough to cover about 5 ms of its work per
 * slot, so short tasks are not bound by message latency, and at most --prefetch; a worker
 * whose tasks are long gets one extra, which keeps placement close to its load. */
static uint32_t prefetch_of(const coord *c, const cworker *w) {
  uint32_t max = c->o.prefetch;
  /* Tasks held beyond the slots, over all workers, stay within PREFETCH_TOTAL: with
   * thousands of workers, deep queues would only delay every answer (and the notice of a
   * worker gone silent) behind results waiting to be read. */
  if (c->nalive > 0 && max > PREFETCH_TOTAL / c->nalive) max = PREFETCH_TOTAL / c->nalive ? PREFETCH_TOTAL / c->nalive : 1;
  if (max <= 1) return max;
  if (w->mean_task <= 0) return 2 < max ? 2 : max;
  double want = 0.005 / w->mean_task;
  if (want < 1) return 1;
  return want > max ? max : (uint32_t)want;
}

static int usable(const cworker *w) { return w->alive && w->welcomed && !w->excluded; }

static uint32_t total_cap(coord *c) {
  uint32_t t = 0;
  for (size_t i = 0; i < c->wt.n; i++)
    if (usable(&c->wt.w[i])) t += c->wt.w[i].slots + prefetch_of(c, &c->wt.w[i]);
  return t;
}

/* Keep a bounded window of tasks planned ahead: streamed input is read only as fast as
 * workers take it. */
static int top_up(srun *r, dbx_err *err) {
  size_t window = 4 * (size_t)total_cap(r->c) + 64;
  while (!r->split_eof && r->tt.undone < window) {
    batchdesc b;
    int rc = stage_next_batch(r->s, r->sp, &r->made, &b, err);
    if (rc < 0) return rc;
    if (rc == 0) { r->split_eof = 1; break; }
    r->s->st->tasks++;
    /* Resuming: a task the journal holds is done already. */
    int done = engine_resume_task(r->j, r->s, r->ag, (uint32_t)r->tt.n, err);
    if (done < 0) { batchdesc_free(&b); return done; }
    uint32_t idx;
    if ((rc = tt_add(&r->tt, &b, done, &idx))) { batchdesc_free(&b); return rc; }
  }
  return 0;
}

static void describe(srun *r, const ctask *t, char *out, size_t cap) {
  if (!r->s->in || t->b.nseg == 0) snprintf(out, cap, "no input");
  else batchdesc_describe(&t->b, r->s->in, out, cap);
}

/* Attempt k of task idx stops without an outcome: tell its worker, forget it. */
static void cancel_attempt(srun *r, uint32_t idx, int k) {
  ctask *t = &r->tt.t[idx];
  long wi = t->run[k];
  if (wi < 0) return;
  cworker *w = &r->c->wt.w[wi];
  if (w->inflight) w->inflight--;
  if (w->alive && w->welcomed) {
    msg_cancel(&r->c->out, r->id, t->b.index, t->run_attempt[k]);
    send_to(r->c, w, &r->c->out);
  }
  ui_attempt_end(r->j->ui, t->run_ticket[k], r->s->seq, idx, t->run_attempt[k], w->id, UI_CANCELLED);
  tt_drop(&r->tt, idx, k);
}

/* A task whose attempts all failed: the job stops (--on-task-failure=fail), or the task is
 * left out and reported (skip). */
static int give_up(srun *r, uint32_t idx, dbx_err *err) {
  ctask *t = &r->tt.t[idx];
  char where[600];
  describe(r, t, where, sizeof where);
  if (!r->s->skip_failed) {
    /* The report of what failed where: every failed attempt of this task, the same ones
     * the count says. */
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
    char innocent[96] = "";
    if (t->innocent)
      snprintf(innocent, sizeof innocent, " (and %u attempt(s) lost with a worker that died running another task)",
               t->innocent);
    return dbx_seterr(err, DBX_ETASK, "%s task %u (%.300s): %u attempt(s) failed%s%s", r->s->st->name, idx, where,
                      t->failures, innocent, list);
  }
  tt_skip(&r->tt, idx);
  job_add_missing(r->j, r->s->st->name, idx, where);
  void *empty = r->s->op->partial_new(r->s->cfg);
  if (!empty) return DBX_ENOMEM;
  return agg_add(r->ag, idx, empty, err);
}

/* Attempt k of task idx ended without a result, by its fault (or its worker's). Records
 * where and why; retries after a backoff, on another worker where one exists; excludes a
 * worker that failed too many different tasks. */
/* The record of attempt k of task idx, failed (what the summary and the report list). */
static void record_failure(srun *r, uint32_t idx, int k, const char *cause) {
  ctask *t = &r->tt.t[idx];
  long wi = t->run[k];
  if (wi < 0) return;
  cworker *w = &r->c->wt.w[wi];
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
  ui_attempt_end(r->j->ui, t->run_ticket[k], r->s->seq, idx, t->run_attempt[k], w->id, UI_FAILED);
}

static int attempt_failed(srun *r, uint32_t idx, int k, const char *cause, dbx_err *err) {
  coord *c = r->c;
  ctask *t = &r->tt.t[idx];
  long wi = t->run[k];
  if (wi < 0 || t->state != T_RUNNING) return 0;
  cworker *w = &c->wt.w[wi];
  record_failure(r, idx, k, cause);
  w->failures++;
  if (w->inflight) w->inflight--;
  /* Exclusion: a worker that failed attempts of --exclude-after different tasks. */
  int seen = 0;
  for (uint32_t i = 0; i < w->nbad; i++) seen |= w->bad[i] == idx;
  if (!seen && w->nbad < 16) w->bad[w->nbad++] = idx;
  if (!seen && c->o.exclude_after && w->nbad >= c->o.exclude_after && !w->excluded) {
    w->excluded = 1;
    log_warn("worker %u (%s pid %lld) failed %u different tasks: it gets no more tasks in this job", w->id,
             w->host, (long long)w->pid, w->nbad);
  }
  tt_verdict v = tt_fail(&r->tt, idx, k, w->id, c->o.max_attempts, time_mono());
  return v == TT_GIVE_UP ? give_up(r, idx, err) : 0;
}

/* Attempt k of idx was lost with its worker, which died running something else. */
static int attempt_innocent(srun *r, uint32_t idx, int k) {
  ctask *t = &r->tt.t[idx];
  cworker *w = &r->c->wt.w[t->run[k]];
  ui_attempt_end(r->j->ui, t->run_ticket[k], r->s->seq, idx, t->run_attempt[k], w->id, UI_CANCELLED);
  if (w->inflight) w->inflight--;
  return tt_requeue(&r->tt, idx, k);
}

static void tick_ui(srun *r, double now);

/* Worker wi is gone (end: "killed", "exited", "lost"; why: for people). Its attempts end:
 * the ones it was running fail -- known exactly from a local worker's evidence page, and
 * for a remote worker taken to be its oldest `slots` ones -- and the rest (queued behind
 * them, or finished with results that died in its send queue) go back to the queue
 * without counting against their tasks. Every attempt is settled even when giving one up
 * fails the job: the first error is returned. */
static int worker_lost(srun *r, size_t wi, const char *end, const char *why, dbx_err *err) {
  coord *c = r->c;
  cworker *w = &c->wt.w[wi];
  if (!w->alive) return 0;
  /* A local worker given up on is ended for sure; reaping it starts a replacement. */
  if (w->child) kill(w->child, SIGKILL);
  log_warn("worker %u (%s pid %lld) %s", w->id, w->host, (long long)w->pid, why);
  char cause[300];
  snprintf(cause, sizeof cause, "worker %s", why);
  uint32_t ev[EVIDENCE_MAX_SLOTS][2];
  int nev = wt_evidence(w, r->id, ev, (int)EVIDENCE_MAX_SLOTS);
  /* The attempts it held, oldest first. */
  size_t nheld = 0, cap = 0;
  struct held { uint32_t idx; int k; double start; } *h = NULL;
  /* From the newest task back, until every attempt it holds is found: attempts run near the
   * end of the table, which grows with the stage. */
  for (size_t i = r->tt.n; i-- > 0 && nheld < w->inflight;)
    for (int k = 0; k < 2; k++) {
      const ctask *t = &r->tt.t[i];
      if (t->state != T_RUNNING || t->run[k] != (long)wi) continue;
      if (nheld == cap) {
        size_t nc = cap ? cap * 2 : 16;
        struct held *nh = realloc(h, nc * sizeof *nh);
        if (!nh) { free(h); return DBX_ENOMEM; }
        h = nh;
        cap = nc;
      }
      h[nheld++] = (struct held){(uint32_t)i, k, t->run_start[k]};
    }
  for (size_t a = 1; a < nheld; a++)  /* insertion sort: a worker holds a few tasks */
    for (size_t b = a; b > 0 && h[b].start < h[b - 1].start; b--) {
      struct held x = h[b];
      h[b] = h[b - 1];
      h[b - 1] = x;
    }
  int rc = 0;
  uint32_t guessed = 0;
  for (size_t a = 0; a < nheld; a++) {
    const ctask *t = &r->tt.t[h[a].idx];
    int guilty = 0;
    if (nev >= 0) {
      for (int e = 0; e < nev; e++) guilty |= ev[e][0] == h[a].idx && ev[e][1] == t->run_attempt[h[a].k];
    } else {
      guilty = guessed < (w->slots ? w->slots : 1);
      guessed += (uint32_t)guilty;
    }
    int x = guilty ? attempt_failed(r, h[a].idx, h[a].k, cause, err) : attempt_innocent(r, h[a].idx, h[a].k);
    if (x && !rc) rc = x;
  }
  free(h);
  w->inflight = 0;
  wt_gone(&c->wt, w, end);
  /* The report keeps how each worker ended, even one lost between two refreshes: the
   * dashboard's view is refreshed once this loop turn is over. */
  r->ui_dirty = 1;
  return rc;
}

/* A partitioned reduce's files go through us for a worker that cannot reach the spill
 * directory: one that reads nothing by path, or a remote one when the directory is not one the
 * user said the workers share (--spill-dir). */
static int relays(const cworker *w, const stage *s) {
  return s->relay && (!w->shared_fs || (!w->local && !s->relay->pc.shared));
}

/* Encode task t's attempt with its relayed files in c->out: none for a map task (it sends its
 * outputs back), a reduce task's partition of every map output. A batch with input goes
 * shipped. 0, -1 (cannot encode), -2 (a file cannot be read: err, DBX_ELOST when a map output
 * is missing, so the caller runs its map task again). */
static int send_relayed(srun *r, const ctask *t, uint32_t attempt, dbx_err *err) {
  const shuffle_relay *rl = r->s->relay;
  batchdesc shipped;
  const batchdesc *b = &t->b;
  int have_ship = 0, rc = 0;
  if (!t->b.shipped && t->b.nseg) {
    dbx_batch view;
    dbx_err lerr = {0, ""};
    if (loader_load(r->ld, &t->b, r->paths, &view, &lerr)) {
      dbx_seterr(err, lerr.code ? lerr.code : DBX_EIO, "cannot read task %u to ship it: %s", t->b.index, lerr.msg);
      return -2;
    }
    if (batchdesc_ship(&shipped, &t->b, &view)) return -1;
    b = &shipped;
    have_ship = 1;
  }
  uint32_t n = rl->reduce ? rl->nmap : 0;
  msg_file *files = n ? calloc(n, sizeof *files) : NULL;
  char (*names)[PROTO_FILE_NAME_MAX + 1] = n ? calloc(n, sizeof *names) : NULL;
  if (n && (!files || !names)) rc = -1;
  uint32_t mapped = 0;
  for (; mapped < n && !rc; mapped++) {
    char path[SHUFFLE_DIR_MAX + 128];
    size_t off;
    shuffle_relay_input(rl, mapped, t->b.index, path, sizeof path, &off);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
      int e = errno;
      if (fd >= 0) close(fd);
      dbx_seterr(err, e == ENOENT ? DBX_ELOST : DBX_EIO, "map output %s: %s", path, strerror(e));
      rc = -2;
      break;
    }
    void *m = sb.st_size ? mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (m == MAP_FAILED) {
      dbx_seterr(err, DBX_EIO, "map output %s: %s", path, strerror(errno));
      rc = -2;
      break;
    }
    snprintf(names[mapped], sizeof names[mapped], "%s", path + off);
    files[mapped] = (msg_file){names[mapped], strlen(names[mapped]), m, (size_t)sb.st_size};
  }
  if (!rc && msg_task_files(&r->c->out, r->id, attempt, b, files, n)) rc = -1;
  for (uint32_t i = 0; i < mapped && i < n; i++)
    if (files[i].len) munmap((void *)files[i].data, files[i].len);
  free(files);
  free(names);
  if (have_ship) batchdesc_free(&shipped);
  return rc;
}

/* The files a relayed attempt of task idx sent back: checked (exactly the names its task
 * writes, the required ones all there, none twice; without write, their contents too, O(bytes))
 * and, with write, written into the spill directory. 0; 1 with why set when the result is bad (a failed attempt); < 0 when they
 * cannot be written (err: a full spill directory fails the job). */
static int accept_relayed(srun *r, uint32_t idx, const msg *m, int write, char *why, size_t cap, dbx_err *err) {
  const shuffle_relay *rl = r->s->relay;
  if (!rl) return snprintf(why, cap, "files for a stage that has none"), 1;
  uint32_t need = 0;
  size_t nseen = (size_t)rl->pc.r + 2;
  uint8_t *seen = calloc(nseen, 1);
  if (!seen) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  uint32_t have = 0;
  int bad = 0;
  for (uint32_t i = 0; i < m->nfiles && !bad; i++) {
    msg_file f;
    msg_file_at(m, i, &f);
    int k = shuffle_relay_output(rl, idx, f.name, f.name_len, &need);
    dbx_err cerr = {0, ""};
    if (k < 0 || (size_t)k >= nseen || seen[k]) {
      snprintf(why, cap, "%s file '%.*s'", k < 0 ? "an unexpected" : "a repeated", (int)f.name_len, f.name);
      bad = 1;
    } else if (!write && shuffle_relay_check(rl, idx, k, f.data, f.len, &cerr)) {
      /* Checked here, not when the reduce or the final merge reads it: one worker's damaged
       * file is its failed attempt, not the whole job's failure. */
      snprintf(why, cap, "a damaged file '%.*s': %s", (int)f.name_len, f.name, cerr.msg);
      bad = 1;
    } else {
      seen[k] = 1;
      have += (uint32_t)k < need;
    }
  }
  if (!bad && m->nfiles == 0) shuffle_relay_output(rl, idx, "", 0, &need);
  if (!bad && have != need) snprintf(why, cap, "%u of the %u files its task writes", have, need), bad = 1;
  free(seen);
  if (bad) return 1;
  for (uint32_t i = 0; i < m->nfiles && write; i++) {
    msg_file f;
    char name[PROTO_FILE_NAME_MAX + 1];
    msg_file_at(m, i, &f);
    snprintf(name, sizeof name, "%.*s", (int)f.name_len, f.name);
    int rc = shuffle_put_file(&rl->pc, name, f.data, f.len, err);
    if (rc) return rc;
  }
  return 0;
}

/* Start an attempt of task idx on worker wi, as attempt slot k (1 = speculative copy).
 * 0, -1 when the worker cannot be reached, -2 when the input cannot be read (err set). */
static int send_task(srun *r, size_t wi, uint32_t idx, int k, dbx_err *err) {
  coord *c = r->c;
  cworker *w = &c->wt.w[wi];
  ctask *t = &r->tt.t[idx];
  if (w->stage_sent != r->id) {
    stage *s = r->s;
    /* A plugin operator's library goes with its stage (bytes + XXH64): workers load what the
     * coordinator checked, and remote ones need nothing installed. */
    const plugin *pg = plugin_of(s->op);
    msg_plugin mp = {0};
    if (pg) {
      mp.label = plugin_label(pg);
      mp.bytes = plugin_bytes(pg, &mp.len);
      mp.xxh64 = plugin_xxh64(pg);
    }
    msg_ident ident = {r->idsize, r->idmtime};
    if (msg_stage_plugin(&c->out, r->id, s->op->name, s->cfg, s->cfg_size, s->bcast_in, s->bcast_in_len,
                         r->paths, (uint32_t)r->npaths, pg ? &mp : NULL, r->npaths ? &ident : NULL) ||
        send_to(c, w, &c->out))
      return -1;
    w->stage_sent = r->id;
  }
  uint32_t attempt = t->attempts + 1;
  int rc, relayed = relays(w, r->s);
  if (relayed) {
    rc = send_relayed(r, t, attempt, err);
    if (rc == -2) return -2;
  } else if (!t->b.shipped && (c->o.ship || !w->shared_fs)) {
    /* The worker cannot read our files: send the bytes. */
    dbx_batch view;
    batchdesc shipped;
    dbx_err lerr = {0, ""};
    if (loader_load(r->ld, &t->b, r->paths, &view, &lerr)) {
      dbx_seterr(err, lerr.code ? lerr.code : DBX_EIO, "cannot read task %u to ship it: %s", idx, lerr.msg);
      return -2;
    }
    if (batchdesc_ship(&shipped, &t->b, &view)) return -1;
    rc = msg_task(&c->out, r->id, attempt, &shipped);
    batchdesc_free(&shipped);
  } else {
    rc = msg_task(&c->out, r->id, attempt, &t->b);
  }
  if (rc || send_to(c, w, &c->out)) return -1;
  tt_start(&r->tt, idx, k, (long)wi, time_mono());
  r->s->st->attempts++;
  w->inflight++;
  t->run_ticket[k] = ui_attempt_start(r->j->ui, r->s->seq, idx, attempt, w->id);
  t->run_relayed[k] = (uint8_t)relayed;
  return 0;
}

/* Fill the scheduler's view, one entry per record; workers where t failed count as full
 * unless no other has room. */
static int sched_view(srun *r, const ctask *t, size_t *n) {
  coord *c = r->c;
  if (c->wt.n > c->swcap) {
    size_t nc = c->wt.cap;
    sched_worker *ns = realloc(c->sw, nc * sizeof *ns);
    if (!ns) return DBX_ENOMEM;
    c->sw = ns;
    c->swcap = nc;
  }
  sched_worker *sw = c->sw;
  int other_room = 0;
  for (size_t i = 0; i < c->wt.n; i++) {
    cworker *w = &c->wt.w[i];
    sw[i].usable = usable(w);
    sw[i].slots = w->slots ? w->slots : 1;
    sw[i].cap = sw[i].slots + prefetch_of(c, w);
    sw[i].inflight = w->inflight;
    sw[i].mean_task = w->mean_task;
    if (sw[i].usable && !(t && tt_avoids(t, w->id)) && sw[i].inflight < sw[i].cap) other_room = 1;
  }
  if (t && other_room)
    for (size_t i = 0; i < c->wt.n; i++)
      if (tt_avoids(t, c->wt.w[i].id)) sw[i].usable = 0;
  *n = c->wt.n;
  return 0;
}

/* A send to worker wi failed: usually a local worker that just died. Reports how it died
 * when we can tell. */
static int send_failed(srun *r, size_t wi, dbx_err *err) {
  coord *c = r->c;
  cworker *w = &c->wt.w[wi];
  char why[96] = "lost its connection (cannot be reached)";
  const char *end = "lost";
  int st;
  pid_t child = w->child;
  /* Its connection goes as it exits, a moment before it can be reaped: a local worker gets
   * up to 100 ms to finish dying, so that it is reported killed (or exited), not lost. */
  pid_t got = child ? waitpid(child, &st, WNOHANG) : 0;
  for (int i = 0; child && got == 0 && i < 100; i++) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
    got = waitpid(child, &st, WNOHANG);
  }
  if (child && got == child) {
    cworker *x = wt_reaped(&c->wt, child, st, why, sizeof why);
    end = x ? x->end : end;
    int rc = x ? worker_lost(r, wi, end, why, err) : 0;
    if (c->wt.local_procs < c->o.workers && !g_interrupted) spawn_local(c);
    return rc;
  }
  return worker_lost(r, wi, end, why, err);
}

static int assign(srun *r, dbx_err *err) {
  coord *c = r->c;
  int rc = tt_release_due(&r->tt, time_mono());
  if (rc) return rc;
  /* The scheduler's view is built once and kept up to date as tasks go out: placing a
   * task costs one pick, not a pass over every worker record as well. A task that failed
   * somewhere (it avoids workers) gets a view of its own. */
  size_t n = 0;
  int fresh = 0;
  while (r->tt.qlen) {
    uint32_t idx = r->tt.queue[r->tt.qhead];
    const ctask *t = &r->tt.t[idx];
    if (!fresh || t->navoid) {
      if ((rc = sched_view(r, t->navoid ? t : NULL, &n))) return rc;
      fresh = !t->navoid;
    }
    long wi = sched_pick(&c->sch, c->sw, n);
    if (wi < 0) return 0;
    tt_pop(&r->tt);
    rc = send_task(r, (size_t)wi, idx, 0, err);
    if (rc == -2) return err->code ? err->code : DBX_EIO;
    if (rc) {
      fresh = 0;  /* records change when a worker is lost */
      if ((rc = tt_push(&r->tt, idx, 1))) return rc;
      if ((rc = send_failed(r, (size_t)wi, err))) return rc;
    } else {
      c->sw[wi].inflight = c->wt.w[wi].inflight;
    }
  }
  return 0;
}

/* Speculation: with a free slot and nothing queued, copy an attempt that runs longer than
 * tt_spec_limit() to another worker. This also covers a worker that heartbeats but never
 * answers: its tasks are copied, and the copies win. */
static int speculate(srun *r, double now, dbx_err *err) {
  coord *c = r->c;
  if (!c->o.speculation || r->tt.qlen || r->tt.ndelayed || !r->tt.running) return 0;
  double limit = tt_spec_limit(&r->tt, now, SPEC_FIRST_SECONDS);
  /* Workers holding an attempt past the limit, or overtaken by a copy before, are suspect
   * (stuck, or answering nothing): a copy sent there would wait as long. Copies go only to
   * workers that show no sign of it. */
  unsigned char *suspect = calloc(c->wt.n + 1, 1);
  if (!suspect) return DBX_ENOMEM;
  int overdue = 0;
  for (size_t i = 0; i < c->wt.n; i++) suspect[i] = c->wt.w[i].overtaken > 0;
  for (size_t i = 0; i < r->tt.n; i++) {
    ctask *t = &r->tt.t[i];
    if (t->state != T_RUNNING) continue;
    for (int k = 0; k < 2; k++) {
      if (t->run[k] < 0 || now - t->run_start[k] < limit) continue;
      suspect[t->run[k]] = 1;
      overdue = 1;
    }
  }
  int rc = 0;
  for (size_t i = 0; overdue && i < r->tt.n; i++) {
    ctask *t = &r->tt.t[i];
    if (t->state != T_RUNNING || t->run[0] < 0 || t->run[1] >= 0 || now - t->run_start[0] < limit) continue;
    size_t n;
    if ((rc = sched_view(r, NULL, &n))) break;
    sched_worker *sw = c->sw;
    for (size_t k = 0; k < n && k < c->wt.n; k++)
      if (suspect[k]) sw[k].usable = 0;
    /* Only a worker with a free slot: a copy must not queue behind other tasks. */
    for (size_t k = 0; k < n; k++)
      if (sw[k].inflight >= sw[k].slots) sw[k].usable = 0;
    long wi = sched_pick(&c->sch, sw, n);
    if (wi < 0) break;
    rc = send_task(r, (size_t)wi, (uint32_t)i, 1, err);
    if (rc == -2) { rc = err->code ? err->code : DBX_EIO; break; }
    if (rc == 0) {
      r->j->speculated++;
      log_info("task %zu runs long (%.2f s, limit %.2f s): a copy starts on worker %u", i, now - t->run_start[0],
               limit, c->wt.w[wi].id);
    } else if ((rc = send_failed(r, (size_t)wi, err))) {
      break;
    }
    if ((size_t)wi >= c->wt.n) break;  /* records moved: recompute next time */
  }
  free(suspect);
  return rc;
}

/* --task-timeout, or by default 10x the stage's 90th percentile task time (at least a
 * minute): an attempt running longer is a failed attempt. */
static int check_timeouts(srun *r, double now, dbx_err *err) {
  coord *c = r->c;
  double limit = c->o.task_timeout > 0 ? c->o.task_timeout : tt_default_timeout(&r->tt, now, TASK_TIMEOUT_FLOOR);
  if (limit <= 0 || !r->tt.running) return 0;
  int first = 0;
  for (size_t i = 0; i < r->tt.n; i++)
    for (int k = 0; k < 2; k++) {
      ctask *t = &r->tt.t[i];
      if (t->state != T_RUNNING || t->run[k] < 0 || now - t->run_start[k] <= limit) continue;
      long wi = t->run[k];
      char cause[160];
      snprintf(cause, sizeof cause, "timed out after %.1f s (%s %.1f s)", now - t->run_start[k],
               c->o.task_timeout > 0 ? "--task-timeout" : "default task timeout: 10x the stage's p90 task time,",
               limit);
      cworker *w = &c->wt.w[wi];
      if (w->alive && w->welcomed) {
        msg_cancel(&c->out, r->id, t->b.index, t->run_attempt[k]);
        send_to(c, w, &c->out);
      }
      int rc = attempt_failed(r, (uint32_t)i, k, cause, err);
      if (rc && !first) first = rc;
      /* A local worker's slot stays stuck in the task: replace the worker. */
      if (w->local && w->child) kill(w->child, SIGKILL);
    }
  return first;
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

static int on_hello(srun *r, const unsigned char *rid, size_t rn, const msg *m) {
  coord *c = r->c;
  /* A local child we started: match it by pid. */
  cworker *w = wt_find_child(&c->wt, (int64_t)m->pid);
  if (!w) w = wt_find_rid(&c->wt, rid, rn);  /* said hello again */
  if (!w) {
    if (!(w = wt_add(&c->wt))) return DBX_ENOMEM;
    memset(w, 0, sizeof *w);
    w->alive = 1;
    w->pid = (int64_t)m->pid;
    snprintf(w->host, sizeof w->host, "%.*s", (int)m->host_len, m->host);
  }
  if (!w->welcomed) w->id = ++c->wt.next_id;
  memcpy(w->rid, rid, rn);
  w->rid_len = rn;
  wt_index_rid(&c->wt, w);
  w->slots = m->slots ? (uint32_t)m->slots : 1;
  w->shared_fs = m->shared_fs;
  w->welcomed = 1;
  w->stage_sent = 0;
  w->last_heard = time_mono();
  msg_welcome(&c->out, w->id, (uint64_t)(c->o.heartbeat * 1000), c->o.max_msg ? c->o.max_msg : (1ull << 30));
  send_to(c, w, &c->out);
  c->waiting_logged = 0;
  log_info("worker %u joined: %s pid %lld, %u slot(s)%s", w->id, w->host, (long long)w->pid, w->slots,
           w->local ? " (local)" : "");
  return 0;
}

static int on_result(srun *r, size_t wi, const msg *m, dbx_err *err) {
  coord *c = r->c;
  cworker *w = &c->wt.w[wi];
  if (m->stage != r->id || m->index >= r->tt.n) { r->j->discarded++; return 0; }
  uint32_t idx = (uint32_t)m->index;
  int k = tt_slot(&r->tt, idx, (long)wi, (uint32_t)m->attempt);
  /* The first successful attempt wins; a late one, or one given up for lost, is dropped. */
  if (k < 0) { r->j->discarded++; return 0; }
  /* Decode (and so check) the partial now, while it is still this attempt's: a partial
   * that does not decode is a failed attempt of this task on this worker, retried
   * elsewhere, never a failure of the whole job. */
  void *part = NULL;
  dbx_err derr = {0, ""};
  char bad_files[400];
  if (r->tt.t[idx].run_relayed[k] && !m->has_files)  /* its outputs are nowhere else */
    return attempt_failed(r, idx, k, "sent a bad result: no files, for a task whose outputs it was to send back", err);
  if (m->has_files && accept_relayed(r, idx, m, 0, bad_files, sizeof bad_files, err)) {
    char why[440];
    snprintf(why, sizeof why, "sent a bad result: %s", bad_files);
    return attempt_failed(r, idx, k, why, err);
  }
  if (r->s->op->decode(r->s->cfg, m->partial, m->partial_len, &part, &derr) ||
      ops_check_result(r->s->op, r->s->cfg, r->bcast, part, m->records, m->bad_records, &derr)) {
    if (part) r->s->op->partial_free(part);
    char why[DBX_ERR_LEN + 32];
    snprintf(why, sizeof why, "sent a bad result: %s", derr.msg[0] ? derr.msg : dbx_strerror(derr.code));
    return attempt_failed(r, idx, k, why, err);
  }
  /* Its outputs are written before the attempt counts: the journal may say so. */
  if (m->has_files) {
    int x = accept_relayed(r, idx, m, 1, bad_files, sizeof bad_files, err);
    if (x) {
      if (part) r->s->op->partial_free(part);
      return x;
    }
  }
  ctask *t = &r->tt.t[idx];
  if (w->inflight) w->inflight--;
  ui_attempt_end(r->j->ui, t->run_ticket[k], r->s->seq, idx, t->run_attempt[k], w->id, UI_OK);
  int other = tt_succeed(&r->tt, idx, k, time_mono());
  if (other >= 0) {  /* the other copy lost the race */
    c->wt.w[r->tt.t[idx].run[other]].overtaken++;
    cancel_attempt(r, idx, other);
  }
  double dt = m->map_seconds;
  w->tasks++;
  w->bytes += m->bytes;
  w->busy += dt;
  w->mean_task = w->mean_task ? 0.8 * w->mean_task + 0.2 * dt : dt;
  stage_stats *st = r->s->st;
  st->batches++;
  st->bytes += m->bytes;
  st->records += m->records;
  st->bad_records += m->bad_records;
  st->t_map += dt;
  if (m->bad_note_len) job_note_bad(r->j, m->bad_note, m->bad_note_len, m->bad_records);
  int rc = journal_task(r->j->jr, r->s->seq, idx, m->partial, m->partial_len, m->records, m->bad_records, m->bytes,
                        err);
  if (rc) {
    r->s->op->partial_free(part);
    return rc;
  }
  double t0 = time_mono();
  rc = agg_add(r->ag, idx, part, err);
  st->t_merge += time_mono() - t0;
  return rc;
}

static int on_failure(srun *r, size_t wi, const msg *m, dbx_err *err) {
  if (m->stage != r->id || m->index >= r->tt.n) return 0;
  int k = tt_slot(&r->tt, (uint32_t)m->index, (long)wi, (uint32_t)m->attempt);
  if (k < 0) return 0;
  char cause[600];
  snprintf(cause, sizeof cause, "%.*s", (int)(m->text_len < 580 ? m->text_len : 580), m->text);
  /* A worker that cannot read its input as planned (gone, cut, rewritten): if we see the
   * change too, the input changed under the job, and the job stops naming it. If we do not,
   * the claim is about that worker alone (its copy of the file, or a lie): a failed attempt,
   * retried elsewhere like any other. */
  int x = r->s->in ? inputs_check_unchanged(r->s->in, err) : 0;
  if (x) return x;
  const cworker *w = &r->c->wt.w[wi];
  char who[200];
  snprintf(who, sizeof who, "%s task %u on worker %u (%.64s pid %lld)", r->s->st->name, (uint32_t)m->index, w->id,
           w->host, (long long)w->pid);
  /* A bad record under --on-bad-record=fail is about the data, a result over --max-message
   * would be as large on any worker, and a full spill directory is full for every worker
   * that writes to it: no retry can help. */
  if (m->code == DBX_EBADREC || m->code == DBX_ETOOBIG || m->code == DBX_ENOSPC)
    return dbx_seterr(err, (int)m->code, "%s: %s", who, cause);
  /* An output of an earlier stage is gone (a map output of a partitioned reduce): no retry of
   * this task can help until the stage that made it runs again, which the caller does. The
   * attempt is recorded; its worker is not to blame. */
  /* A relayed task's inputs came with it: it cannot have lost them, so that claim is the
   * worker's own failure (a reduce stage whose tasks keep saying so would otherwise run the
   * map stage again for nothing, round after round). */
  if (m->code == DBX_ELOST && !r->tt.t[m->index].run_relayed[k]) {
    record_failure(r, (uint32_t)m->index, k, cause);
    return dbx_seterr(err, DBX_ELOST, "%s: %s", who, cause);
  }
  /* A worker that refuses the path (--allow-read), does not have it, or finds another file
   * under it (a disk of its own) reads nothing in place from now on: the batch goes again, shipped, and the
   * worker is not to blame. */
  cworker *ww = &r->c->wt.w[wi];
  const ctask *tk = &r->tt.t[m->index];
  /* Attempts sent by reference: before the switch (the ones already out fail too). */
  if ((m->code == DBX_EACCES || m->code == DBX_ECHANGED || m->code == DBX_ENOENT) && !tk->b.shipped && !r->c->o.ship &&
      (ww->shared_fs || tk->run_start[k] <= ww->unshared_at)) {
    if (ww->shared_fs) log_info("%s: %s; this worker gets batch bytes from now on", who, cause);
    ww->shared_fs = 0;
    ww->unshared_at = time_mono();
    return attempt_innocent(r, (uint32_t)m->index, k);
  }
  return attempt_failed(r, (uint32_t)m->index, k, cause, err);
}

static int handle_message(srun *r, dbx_err *err) {
  coord *c = r->c;
  zmq_msg_t id, body;
  zmq_msg_init(&id);
  zmq_msg_init(&body);
  int rc = 0;
  if (zmq_msg_recv(&id, c->router, ZMQ_DONTWAIT) < 0) { rc = 1; goto out; }
  if (!zmq_msg_more(&id)) goto out;
  zmq_msg_recv(&body, c->router, 0);
  if (zmq_msg_more(&body)) {  /* a DEALER of ours sends one frame: drain the rest */
    zmq_msg_t x;
    zmq_msg_init(&x);
    do zmq_msg_recv(&x, c->router, 0); while (zmq_msg_more(&x));
    zmq_msg_close(&x);
    if (zmq_msg_size(&id) <= sizeof c->banned[0]) ban(c, zmq_msg_data(&id), zmq_msg_size(&id), "a multi-part message");
    goto out;
  }
  const unsigned char *rid = zmq_msg_data(&id);
  size_t rn = zmq_msg_size(&id);
  if (rn > sizeof c->wt.w[0].rid || is_banned(c, rid, rn)) goto out;
  msg m;
  dbx_err merr = {0, ""};
  cworker *w = wt_find_rid(&c->wt, rid, rn);
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
      rc = worker_lost(r, (size_t)(w - c->wt.w), "lost", why, err);
    } else {
      ban(c, rid, rn, merr.msg);
    }
    goto out;
  }
  if (m.type == MSG_HELLO) {
    rc = on_hello(r, rid, rn, &m);
  } else if (!w) {
    msg_simple(&c->out, MSG_REHELLO);  /* e.g. a worker from before our restart */
    send_rid(c, rid, rn, &c->out);
  } else {
    size_t wi = (size_t)(w - c->wt.w);
    w->last_heard = time_mono();
    if (m.type == MSG_HEARTBEAT && m.has_usage) {
      w->cpu_ms = m.cpu_ms;
      w->rss = m.rss;
      /* The peak never goes below what was seen (nor below the resident bytes now). */
      if (w->peak_rss < m.peak_rss) w->peak_rss = m.peak_rss;
      if (w->peak_rss < m.rss) w->peak_rss = m.rss;
    }
    if (m.type == MSG_RESULT) rc = on_result(r, wi, &m, err);
    else if (m.type == MSG_FAILURE) rc = on_failure(r, wi, &m, err);
  }
  msg_free(&m);
out:
  zmq_msg_close(&id);
  zmq_msg_close(&body);
  return rc;
}

/* Local workers that exited: their attempts end, and a replacement keeps the job's
 * parallelism -- unless local workers keep dying before they even say hello. */
static int reap_children(srun *r, dbx_err *err) {
  coord *c = r->c;
  struct signalfd_siginfo si;
  while (read(c->sigfd, &si, sizeof si) == sizeof si) {}
  int status, rc = 0;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    char why[96];
    cworker *w = wt_reaped(&c->wt, pid, status, why, sizeof why);
    if (w) {
      int x = worker_lost(r, (size_t)(w - c->wt.w), w->end, why, err);
      if (x && !rc) rc = x;
    }
    if (c->wt.early_deaths >= EARLY_DEATHS_MAX) {
      if (!rc)
        rc = dbx_seterr(err, DBX_ETASK, "%u local workers in a row ended before joining (the last %s); see the lines above",
                        c->wt.early_deaths, why);
      continue;
    }
    if (c->wt.local_procs < c->o.workers && !g_interrupted) spawn_local(c);
  }
  return rc;
}

/* Workers silent past --worker-timeout are lost; with send, the others get a heartbeat.
 * Silence is judged often (every SILENCE_SECONDS), so a worker gone quiet is noticed
 * within a fraction of a second of its timeout, not a heartbeat later. */
static int heartbeat(srun *r, double now, int send, dbx_err *err) {
  coord *c = r->c;
  int rc = 0;
  msg_simple(&c->out, MSG_HEARTBEAT);
  for (size_t i = 0; i < c->wt.n; i++) {
    cworker *w = &c->wt.w[i];
    if (!w->alive || !w->welcomed) continue;
    int x = 0;
    if (now - w->last_heard > c->o.worker_timeout) {
      char why[96];
      snprintf(why, sizeof why, "was silent for %.1f s (--worker-timeout)", now - w->last_heard);
      x = worker_lost(r, i, "lost", why, err);
    } else if (send && send_to(c, w, &c->out)) {
      x = send_failed(r, i, err);
    }
    if (x && !rc) rc = x;
  }
  return rc;
}

/* The dashboard's view of the workers, a few times a second: the live ones, then the most
 * recent of those that are gone. */
static void tick_ui(srun *r, double now) {
  coord *c = r->c;
  /* Every worker gone since the last refresh (each must reach the report), and the 256
   * most recent before them. */
  size_t fresh = c->wt.ngone - (r->gone_ticked < c->wt.ngone ? r->gone_ticked : c->wt.ngone);
  size_t shown = fresh + 256 < c->wt.ngone ? fresh + 256 : c->wt.ngone;
  size_t cap = c->wt.n + shown;
  ui_worker *w = calloc(cap + 1, sizeof *w);
  if (!w) return;
  r->ui_dirty = 0;
  r->gone_ticked = c->wt.ngone;
  size_t n = 0;
  uint64_t running = 0;
  size_t g0 = c->wt.ngone - (cap - c->wt.n);
  for (size_t i = g0; i < c->wt.ngone; i++) {
    const wgone *g = &c->wt.gone[i];
    ui_worker *u = &w[n++];
    u->id = g->info.id;
    u->slots = g->info.slots;
    snprintf(u->host, sizeof u->host, "%s", g->info.host);
    u->pid = g->info.pid;
    u->state = g->end ? g->end : "lost";
    u->tasks = g->info.tasks;
    u->failures = g->info.failures;
    u->cpu_seconds = g->info.cpu_seconds;
    u->peak_rss = g->info.peak_rss;
  }
  for (size_t i = 0; i < c->wt.n; i++) {
    const cworker *x = &c->wt.w[i];
    if (!x->id) continue;
    ui_worker *u = &w[n++];
    u->id = x->id;
    u->slots = x->slots;
    u->inflight = x->alive ? x->inflight : 0;
    snprintf(u->host, sizeof u->host, "%s", x->host);
    u->pid = x->pid;
    u->state = !x->alive ? (x->end ? x->end : "lost") : x->excluded ? "excluded" : x->welcomed ? "alive" : "joining";
    u->tasks = x->tasks;
    u->failures = x->failures;
    u->heartbeat_age = x->alive ? now - x->last_heard : 0;
    u->cpu_seconds = (double)x->cpu_ms / 1000.0;
    u->rss = x->alive ? x->rss : 0;
    u->peak_rss = x->peak_rss;
    running += u->inflight;
  }
  ui_tick(r->j->ui, r->j, w, n, r->s->st->name, running);
  free(w);
}

/* The last directory resolved by abs_path, and what it resolved to. */
typedef struct abs_dir {
  char *dir, *real;
  size_t len;
} abs_dir;

/* realpath(p), resolving each directory once: a corpus of thousands of files in a few
 * directories cost a realpath (a readlink per component) per file per stage. The same path
 * as realpath's: DIR/NAME is realpath(DIR)/NAME when NAME is not a symbolic link, "." or "..";
 * otherwise (and for a name without a directory) realpath is asked. NULL with errno set. */
static char *abs_path(const char *p, abs_dir *c) {
  const char *slash = strrchr(p, '/'), *name = slash ? slash + 1 : NULL;
  struct stat st;
  if (!slash || slash == p || !*name || !strcmp(name, ".") || !strcmp(name, "..") || lstat(p, &st) != 0 ||
      S_ISLNK(st.st_mode))
    return realpath(p, NULL);
  size_t dl = (size_t)(slash - p);
  if (!c->dir || c->len != dl || memcmp(c->dir, p, dl)) {
    free(c->dir), free(c->real);
    c->real = NULL;
    if (!(c->dir = strndup(p, dl))) return NULL;
    c->len = dl;
    if (!(c->real = realpath(c->dir, NULL))) {
      free(c->dir);
      c->dir = NULL;
      return NULL;
    }
  }
  size_t rl = strlen(c->real), nl = strlen(name);
  int sep = rl && c->real[rl - 1] != '/';
  char *out = malloc(rl + (size_t)sep + nl + 1);
  if (!out) return NULL;
  memcpy(out, c->real, rl);
  if (sep) out[rl] = '/';
  memcpy(out + rl + sep, name, nl + 1);
  return out;
}

static int run_stage(coord *c, job *j, stage *s, dbx_err *err) {
  srun r;
  memset(&r, 0, sizeof r);
  r.c = c;
  r.j = j;
  r.s = s;
  r.id = ++c->stage_seq;
  tt_init(&r.tt);
  int rc = 0;
  void *result = NULL;
  /* Map-only output (exec) streams out in batch order instead of being merged in memory. */
  r.ag = ops_ordered_output(s->op) ? agg_new_ordered(s->op, s->cfg, s->out ? sink_emit : NULL, s->out)
                                   : agg_new(s->op, s->cfg);
  r.ld = loader_new();
  if (r.ld) loader_expect(r.ld, s->in);
  r.npaths = s->in ? s->in->n : 0;
  r.paths = calloc(r.npaths + 1, sizeof *r.paths);
  r.abs = calloc(r.npaths + 1, sizeof *r.abs);
  r.idsize = calloc(r.npaths + 1, sizeof *r.idsize);
  r.idmtime = calloc(r.npaths + 1, sizeof *r.idmtime);
  if (!r.ag || !r.ld || !r.paths || !r.abs || !r.idsize || !r.idmtime) { rc = DBX_ENOMEM; goto done; }
  abs_dir dcache = {NULL, NULL, 0};
  for (size_t i = 0; i < r.npaths; i++) {
    const char *p = s->in->v[i].path;
    /* What a worker reading the file in place must find there (a stream: nothing). */
    r.idsize[i] = s->in->v[i].kind == IN_STREAM ? UINT64_MAX : s->in->v[i].size;
    r.idmtime[i] = s->in->v[i].mtime_ns;
    if (strcmp(p, "-") && !(r.abs[i] = abs_path(p, &dcache))) {
      rc = dbx_seterr(err, DBX_EIO, "%s: %s", p, strerror(errno));
      goto done;
    }
    r.paths[i] = r.abs[i] ? r.abs[i] : p;
  }
  free(dcache.dir), free(dcache.real);
  /* The broadcast checks partials as they arrive, and finish() needs it too (the
   * vocabulary to name model columns...). */
  if (s->op->bcast_load && s->bcast_in &&
      (rc = s->op->bcast_load(s->cfg, s->bcast_in, s->bcast_in_len, &r.bcast, err)))
    goto done;
  if (s->in && (rc = splitter_new(s->in, &s->split, &r.sp, err))) goto done;
  if (r.sp) splitter_csv_quotes(r.sp, s->csv_quotes);
  double last_hb = 0, last_scan = 0, last_silence = 0, t_workers = time_mono(), t_stage0 = t_workers;  /* t_workers: the last time a worker was alive */
  while (!g_interrupted) {
    double t0 = time_mono();
    if ((rc = top_up(&r, err))) goto done;
    s->st->t_read += time_mono() - t0;
    if (r.split_eof && r.tt.done == r.tt.n &&
        !(s->hold_until > 0 && time_mono() < s->hold_until && !g_stop))
      break;
    int nalive = 0, nusable = 0;
    for (size_t i = 0; i < c->wt.n; i++) {
      nalive += c->wt.w[i].alive && c->wt.w[i].welcomed;
      nusable += usable(&c->wt.w[i]);
    }
    /* Every worker excluded, and none to come: with --listen, more may join, unless the job
     * is a launch whose ranks all came (--cluster). */
    if (nalive && !nusable && (!c->o.listen || (c->o.join_timeout > 0 && !c->o.wait_workers)) &&
        c->wt.local_procs <= nalive) {
      rc = dbx_seterr(err, DBX_ETASK, "every worker is excluded after failing %u different tasks (--exclude-after)",
                      c->o.exclude_after);
      goto done;
    }
    c->nalive = (uint32_t)nalive;
    double tnow = time_mono();
    if (nalive) t_workers = tnow;
    /* Ranks that never come (a node that failed to start) do not hold the job forever. */
    if (c->o.join_timeout > 0 && nalive && c->o.wait_workers && tnow - t_stage0 > c->o.join_timeout) {
      log_warn("%d of %u workers joined within %.0f s; starting with them", nalive, c->o.wait_workers, c->o.join_timeout);
      c->o.wait_workers = 0;
    }
    if (c->o.join_timeout > 0 && c->o.listen && !nalive && c->wt.local_procs == 0 && tnow - t_workers > c->o.join_timeout) {
      rc = dbx_seterr(err, DBX_ETASK, "no worker has been connected for %.0f s on %s", c->o.join_timeout, c->o.listen);
      goto done;
    }
    if (nalive >= (int)c->o.wait_workers) c->o.wait_workers = 0;  /* once per job */
    if (!c->o.wait_workers && (rc = assign(&r, err))) goto done;
    if (!nalive && c->o.listen && !c->waiting_logged && c->wt.local_procs == 0) {
      if (c->o.waiting_hint) log_info("%s", c->o.waiting_hint);
      else waiting_hint(c);
      c->waiting_logged = 1;
    }
    if (!nalive && !c->o.listen && c->wt.local_procs == 0) {
      rc = dbx_seterr(err, DBX_ETASK, "no workers left: local workers could not be started (see above)");
      goto done;
    }
    zmq_pollitem_t items[2] = {{c->router, 0, ZMQ_POLLIN, 0}, {NULL, c->sigfd, ZMQ_POLLIN, 0}};
    /* Short waits while retries back off or copies may be due; half a heartbeat otherwise. */
    long wait_ms = (r.tt.ndelayed || (c->o.speculation && !r.tt.qlen && r.tt.running)) ? 20
                                                                                      : (long)(c->o.heartbeat * 1000 / 2);
    if (s->hold_until > 0) {  /* holding: wake up in time, and for stop signals */
      long left = (long)((s->hold_until - time_mono()) * 1000) + 1;
      if (left < wait_ms) wait_ms = left < 0 ? 0 : left;
      if (wait_ms > 200) wait_ms = 200;
    }
    int n = zmq_poll(items, 2, wait_ms);
    if (n < 0 && zmq_errno() != EINTR) { rc = dbx_seterr(err, DBX_EIO, "poll: %s", zmq_strerror(zmq_errno())); goto done; }
    if (items[0].revents & ZMQ_POLLIN) {
      for (int k = 0; k < 1024; k++) {
        int h = handle_message(&r, err);
        if (h < 0) { rc = h; goto done; }
        if (h == 1) break;
      }
    }
    /* After the messages: a result sent just before its worker died still counts. */
    if (items[1].revents & ZMQ_POLLIN && (rc = reap_children(&r, err))) goto done;
    double now = time_mono();
    if (now - last_hb >= c->o.heartbeat || now - last_silence >= SILENCE_SECONDS) {
      int send = now - last_hb >= c->o.heartbeat;
      if ((rc = heartbeat(&r, now, send, err))) goto done;
      if (send) last_hb = now;
      last_silence = now;
    }
    /* Passes over every running attempt, a few times per heartbeat rather than after every
     * batch of messages: with many workers the loop turns thousands of times a second. */
    if (now - last_scan >= SCAN_SECONDS) {
      if ((rc = check_timeouts(&r, now, err))) goto done;
      if ((rc = speculate(&r, now, err))) goto done;
      last_scan = now;
    }
    if (r.ui_dirty || ui_due(j->ui)) tick_ui(&r, now);
  }
  if (g_interrupted) {
    rc = dbx_seterr(err, DBX_EINTR, "interrupted by signal %d; no output was written", (int)g_interrupted);
    goto done;
  }
  /* An input rewritten while the job ran must not give an answer (a worker reading past a
   * new end would have seen an empty batch). */
  if (s->in && (rc = inputs_check_unchanged(s->in, err))) goto done;
  double t3 = time_mono();
  if ((rc = agg_finish(r.ag, (uint32_t)r.tt.n, &result, err))) goto done;
  double t4 = time_mono();
  s->st->t_merge += t4 - t3;
  if (s->keep) *s->keep = result, result = NULL;
  else rc = s->op->finish(s->cfg, r.bcast, result, s->out ? sink_emit : NULL, s->out, &s->bcast_out, err);
  s->st->t_finish += time_mono() - t4;
done:
  if (result) s->op->partial_free(result);
  if (r.bcast) s->op->bcast_free(r.bcast);
  /* Attempts still out belong to this stage only: forget them on their workers. */
  for (size_t i = 0; i < c->wt.n; i++) c->wt.w[i].inflight = 0;
  tt_free(&r.tt);
  splitter_free(r.sp);
  agg_free(r.ag);
  loader_free(r.ld);
  for (size_t i = 0; i < r.npaths; i++) free(r.abs[i]);
  free(r.abs);
  free(r.idsize);
  free(r.idmtime);
  free(r.paths);
  return rc;
}

int coord_run_stage(coord *c, job *j, stage *s, dbx_err *err) {
  double t0 = time_mono();
  int rc;
  s->skip_failed = c->o.skip_failed && !s->never_skip;
  s->seq = j->stage_no++;
  if ((rc = journal_stage(j->jr, s->seq, s->in, err))) return rc;
  if (!c->router) {
    rc = engine_run_stage(j, s, err);
  } else {
    j->policy = sched_name(c->o.policy);
    rc = run_stage(c, j, s, err);
    s->st->seconds = time_mono() - t0;
    if (!rc) s->st->state = STAGE_DONE;
  }
  return rc;
}

void coord_free(coord *c, job *j) {
  if (!c) return;
  wtable *t = &c->wt;
  if (c->router) {
    msg_simple(&c->out, MSG_BYE);
    for (size_t i = 0; i < t->n; i++) {
      if (t->w[i].alive && t->w[i].welcomed) send_to(c, &t->w[i], &c->out);
      else if (t->w[i].child) kill(t->w[i].child, SIGKILL);  /* ours, and never needed */
    }
    /* Local workers leave on BYE; give them a moment, then make sure. */
    double t0 = time_mono();
    for (;;) {
      int left = 0;
      for (size_t i = 0; i < t->n; i++) {
        if (!t->w[i].child) continue;
        int st;
        if (waitpid(t->w[i].child, &st, WNOHANG) == t->w[i].child) t->w[i].child = 0;
        else left++;
      }
      if (!left) break;
      if (time_mono() - t0 > 2.0) {
        for (size_t i = 0; i < t->n; i++)
          if (t->w[i].child) { kill(t->w[i].child, SIGKILL); waitpid(t->w[i].child, NULL, 0); t->w[i].child = 0; }
        break;
      }
      usleep(2000);
    }
  }
  if (j && (t->n || t->ngone)) {
    free(j->winfo);
    j->winfo = NULL;
    j->nwinfo = 0;
    wt_summary(t, &j->winfo, &j->nwinfo);
  }
  if (c->router) zmq_close(c->router);
  tr_guard_stop(c->guard);
  if (c->zctx) zmq_ctx_term(c->zctx);
  if (c->sigfd >= 0) {
    close(c->sigfd);
    sigprocmask(SIG_SETMASK, &c->oldmask, NULL);
  }
  dbx_buf_free(&c->out);
  wt_free(t);
  free(c->sw);
  free(c->exe);
  free(c);
}
