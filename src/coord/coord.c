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

enum { T_PENDING = 0, T_RUNNING, T_DONE };

typedef struct ctask {
  batchdesc b;
  int state;
  uint32_t attempts;
  long worker;            /* index in c->w while running */
  double start;
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
  size_t done, undone_materialized;
  int split_eof;
  splitter *sp;
  uint32_t made;
  agg *ag;
  loader *ld;
  const char **paths;     /* absolute, for remote workers */
  char **abs;
  size_t npaths;
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

static uint32_t total_cap(coord *c) {
  uint32_t t = 0;
  for (size_t i = 0; i < c->nw; i++)
    if (c->w[i].alive && c->w[i].welcomed) t += c->w[i].slots + prefetch_of(c, &c->w[i]);
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
    t->worker = -1;
    if ((rc = q_push(r, (uint32_t)r->nt, 0))) return rc;
    r->nt++;
    r->undone_materialized++;
    r->s->st->tasks++;
  }
  return 0;
}

static void describe(srun *r, const ctask *t, char *out, size_t cap) {
  engine_describe_task(&t->b, r->s->in, out, cap);
}

/* A running attempt is over without a result: back to the queue, or the job fails. */
static int lose_task(srun *r, uint32_t idx, const char *why, dbx_err *err) {
  ctask *t = &r->t[idx];
  if (t->state != T_RUNNING) return 0;
  if (t->worker >= 0 && r->c->w[t->worker].inflight) r->c->w[t->worker].inflight--;
  t->state = T_PENDING;
  t->worker = -1;
  char where[700];
  describe(r, t, where, sizeof where);
  if (t->attempts >= r->c->o.max_attempts)
    return dbx_seterr(err, DBX_ETASK, "%s failed %u times; last: %s", where, t->attempts, why);
  log_warn("%s attempt %u lost: %s; retrying", where, t->attempts, why);
  return q_push(r, idx, 1);
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
  for (size_t i = 0; i < r->nt && !rc; i++)
    if (r->t[i].state == T_RUNNING && r->t[i].worker == (long)wi) {
      char reason[300];
      snprintf(reason, sizeof reason, "worker %u (%s pid %lld) %s", w->id, w->host, (long long)w->pid, why);
      w->failures++;
      rc = lose_task(r, (uint32_t)i, reason, err);
    }
  w->inflight = 0;
  return rc;
}

static int send_task(srun *r, size_t wi, uint32_t idx) {
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
  t->attempts++;
  r->s->st->attempts++;
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
    rc = msg_task(&c->out, r->id, t->attempts, &shipped);
    batchdesc_free(&shipped);
  } else {
    rc = msg_task(&c->out, r->id, t->attempts, &t->b);
  }
  if (rc || send_to(c, w, &c->out)) return -1;
  t->state = T_RUNNING;
  t->worker = (long)wi;
  t->start = time_mono();
  w->inflight++;
  return 0;
}

static int assign(srun *r, dbx_err *err) {
  coord *c = r->c;
  sched_worker sw[256];
  size_t n = c->nw < 256 ? c->nw : 256;
  while (r->qlen) {
    for (size_t i = 0; i < n; i++) {
      cworker *w = &c->w[i];
      sw[i].usable = w->alive && w->welcomed;
      sw[i].slots = w->slots ? w->slots : 1;
      sw[i].cap = sw[i].slots + prefetch_of(c, w);
      sw[i].inflight = w->inflight;
      sw[i].mean_task = w->mean_task;
    }
    long wi = sched_pick(&c->sch, sw, n);
    if (wi < 0) return 0;
    uint32_t idx = q_pop(r);
    int rc = send_task(r, (size_t)wi, idx);
    if (rc == -2) return dbx_seterr(err, DBX_EIO, "cannot read the input of task %u", r->t[idx].b.index);
    if (rc) {
      q_push(r, idx, 1);
      r->t[idx].attempts--;
      /* Usually a local worker that just died: report how it died when we can tell. */
      char why[96] = "cannot be reached";
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

static int on_result(srun *r, size_t wi, const msg *m, dbx_err *err) {
  coord *c = r->c;
  cworker *w = &c->w[wi];
  if (m->stage != r->id || m->index >= r->nt) { r->j->discarded++; return 0; }
  ctask *t = &r->t[m->index];
  if (t->state == T_DONE) { r->j->discarded++; return 0; }  /* first result won already */
  void *part = NULL;
  dbx_err derr = {0, ""};
  if (r->s->op->decode(r->s->cfg, m->partial, m->partial_len, &part, &derr)) {
    char why[DBX_ERR_LEN + 32];
    snprintf(why, sizeof why, "sent a bad result: %s", derr.msg);
    return worker_lost(r, wi, why, err);
  }
  if (t->state == T_RUNNING && t->worker >= 0 && c->w[t->worker].inflight) c->w[t->worker].inflight--;
  double dt = m->map_seconds;
  w->tasks++;
  w->bytes += m->bytes;
  w->busy += dt;
  w->mean_task = w->mean_task ? 0.8 * w->mean_task + 0.2 * dt : dt;
  t->state = T_DONE;
  t->worker = -1;
  batchdesc_free(&t->b);
  r->done++;
  r->undone_materialized--;
  stage_stats *st = r->s->st;
  st->batches++;
  st->bytes += m->bytes;
  st->records += m->records;
  st->bad_records += m->bad_records;
  st->t_map += dt;
  double t0 = time_mono();
  int rc = agg_add(r->ag, (uint32_t)m->index, part, err);
  st->t_merge += time_mono() - t0;
  return rc;
}

static int on_failure(srun *r, size_t wi, const msg *m, dbx_err *err) {
  if (m->stage != r->id || m->index >= r->nt) return 0;
  ctask *t = &r->t[m->index];
  if (t->state != T_RUNNING || t->worker != (long)wi) return 0;
  cworker *w = &r->c->w[wi];
  w->failures++;
  char where[700];
  describe(r, t, where, sizeof where);
  /* An operator error is about the data: the same batch fails the same way anywhere. */
  if (t->worker >= 0 && w->inflight) w->inflight--;
  t->state = T_PENDING;
  return dbx_seterr(err, (int)m->code < 0 ? (int)m->code : DBX_ETASK, "%s on worker %u (%s pid %lld), attempt %u: %.*s",
                    where, w->id, w->host, (long long)w->pid, t->attempts, (int)m->text_len, m->text);
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
    if (!w->local && now - w->last_heard > c->o.worker_timeout) {
      char why[96];
      snprintf(why, sizeof why, "was silent for %.1f s (--worker-timeout)", now - w->last_heard);
      worker_lost(r, i, why, err);
      continue;
    }
    if (send_to(c, w, &c->out)) worker_lost(r, i, "cannot be reached", err);
  }
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
    int nalive = 0;
    for (size_t i = 0; i < c->nw; i++) nalive += c->w[i].alive && c->w[i].welcomed;
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
    int n = zmq_poll(items, 2, (long)(c->o.heartbeat * 1000 / 2));
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
      for (size_t i = 0; i < r.nt; i++)
        if (r.t[i].state == T_RUNNING && r.t[i].worker >= 0 && !c->w[r.t[i].worker].alive &&
            (rc = lose_task(&r, (uint32_t)i, "worker gone", err)))
          goto done;
    }
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
