/* workers.c -- worker records of the coordinator: spawning and reaping local workers,
 * reusing the records of workers that are gone, and reading a dead local worker's evidence
 * of what it was running. */
#define _GNU_SOURCE 1
#include "coord/workers.h"

#include <xxhash.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/log.h"
#include "util/timeutil.h"

extern char **environ;

void wt_init(wtable *t) { memset(t, 0, sizeof *t); }

static void unmap(cworker *w) {
  if (w->ev) munmap(w->ev, EVIDENCE_SIZE);
  w->ev = NULL;
}

void wt_free(wtable *t) {
  for (size_t i = 0; i < t->n; i++) unmap(&t->w[i]);
  free(t->w);
  free(t->gone);
  free(t->ridx);
  memset(t, 0, sizeof *t);
}

static void to_info(const cworker *w, worker_info *x) {
  memset(x, 0, sizeof *x);
  snprintf(x->host, sizeof x->host, "%s", w->host);
  x->id = w->id;
  x->slots = w->slots;
  x->pid = w->pid;
  x->local = w->local;
  x->tasks = w->tasks;
  x->bytes = w->bytes;
  x->failures = w->failures;
  x->busy_seconds = w->busy;
  x->cpu_seconds = (double)w->cpu_ms / 1000.0;
  x->peak_rss = w->peak_rss;
  snprintf(x->state, sizeof x->state, "%s", w->end ? w->end : w->excluded ? "excluded" : w->alive ? "finished" : "lost");
}

/* Keep what the summary needs of a record that is gone, then free its slot. Peers that
 * never did anything (joined and vanished) are not worth keeping. */
static void release(wtable *t, cworker *w) {
  if (w->id && (w->local || w->tasks || w->failures)) {
    if (t->ngone == t->gonecap) {
      size_t nc = t->gonecap ? t->gonecap * 2 : 16;
      wgone *ng = realloc(t->gone, nc * sizeof *ng);
      if (ng) { t->gone = ng; t->gonecap = nc; }
    }
    if (t->ngone < t->gonecap) {
      to_info(w, &t->gone[t->ngone].info);
      t->gone[t->ngone++].end = w->end;
    }
  }
  unmap(w);
  memset(w, 0, sizeof *w);  /* id 0, not alive, no child: free for wt_add */
}

static int is_free(const cworker *w) { return !w->alive && !w->child && !w->id && !w->local; }

cworker *wt_add(wtable *t) {
  for (size_t i = 0; i < t->n; i++)
    if (is_free(&t->w[i])) return &t->w[i];
  if (t->n == t->cap) {
    size_t nc = t->cap ? t->cap * 2 : 8;
    cworker *nw = realloc(t->w, nc * sizeof *nw);
    if (!nw) return NULL;
    t->w = nw;
    t->cap = nc;
  }
  cworker *w = &t->w[t->n++];
  memset(w, 0, sizeof *w);
  return w;
}

static size_t rid_slot(const wtable *t, const unsigned char *rid, size_t n) {
  return (size_t)XXH3_64bits(rid, n) & (t->ridcap - 1);
}

static void rid_put(wtable *t, size_t wi) {
  const cworker *w = &t->w[wi];
  for (size_t k = rid_slot(t, w->rid, w->rid_len);; k = (k + 1) & (t->ridcap - 1)) {
    if (t->ridx[k] == wi + 1) return;
    if (!t->ridx[k]) {
      t->ridx[k] = (uint32_t)(wi + 1);
      t->ridused++;
      return;
    }
  }
}

void wt_index_rid(wtable *t, cworker *w) {
  size_t wi = (size_t)(w - t->w);
  /* Rebuilt from the live records when half full: stale entries go then. */
  if ((t->ridused + 1) * 2 > t->ridcap) {
    size_t cap = 64;
    while (cap < t->n * 4) cap *= 2;
    uint32_t *nx = calloc(cap, sizeof *nx);
    if (!nx) {
      t->ridbad = 1;  /* lookups fall back to the scan */
      return;
    }
    t->ridbad = 0;
    free(t->ridx);
    t->ridx = nx;
    t->ridcap = cap;
    t->ridused = 0;
    for (size_t i = 0; i < t->n; i++)
      if (t->w[i].alive && t->w[i].rid_len && i != wi) rid_put(t, i);
  }
  rid_put(t, wi);
}

static int rid_is(const cworker *w, const unsigned char *rid, size_t n) {
  return w->alive && w->rid_len == n && memcmp(w->rid, rid, n) == 0;
}

cworker *wt_find_rid(wtable *t, const unsigned char *rid, size_t n) {
  if (t->ridcap && !t->ridbad) {
    for (size_t k = rid_slot(t, rid, n); t->ridx[k]; k = (k + 1) & (t->ridcap - 1)) {
      size_t i = t->ridx[k] - 1;
      if (i < t->n && rid_is(&t->w[i], rid, n)) return &t->w[i];
    }
    return NULL;
  }
  for (size_t i = 0; i < t->n; i++)  /* the index could not be built (out of memory) */
    if (rid_is(&t->w[i], rid, n)) return &t->w[i];
  return NULL;
}

cworker *wt_find_child(wtable *t, int64_t pid) {
  for (size_t i = 0; i < t->n; i++) {
    cworker *w = &t->w[i];
    if (w->alive && w->child && !w->welcomed && (int64_t)w->child == pid) return w;
  }
  return NULL;
}

/* A memfd page the worker maps as its evidence (see net/evidence.h). -1 if unavailable:
 * the worker then runs without, and blame falls back to the oldest attempts it held. */
static int evidence_fd(evidence_page **map) {
  *map = NULL;
  int fd = memfd_create("dbatch-evidence", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (ftruncate(fd, EVIDENCE_SIZE) != 0) { close(fd); return -1; }
  void *p = mmap(NULL, EVIDENCE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) { close(fd); return -1; }
  *map = p;
  return fd;
}

int wt_spawn_local(wtable *t, const char *exe, const char *ep, double heartbeat, const sigset_t *mask) {
  char slots[] = "1", hb[32], me[24];
  snprintf(hb, sizeof hb, "%g", heartbeat);
  snprintf(me, sizeof me, "%d", (int)getpid());
  char *argv[] = {"dbatch", "worker", "--connect", (char *)ep, "--local", "--parent", me, "--slots", slots,
                  "--heartbeat", hb, NULL};
  cworker *w = wt_add(t);
  if (!w) { log_error("cannot start a local worker: out of memory"); return -1; }
  evidence_page *ev;
  int efd = evidence_fd(&ev);
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  int rc = posix_spawn_file_actions_init(&fa);
  if (rc == 0 && efd >= 0) rc = posix_spawn_file_actions_adddup2(&fa, efd, EVIDENCE_FD);
  if (rc == 0) rc = posix_spawnattr_init(&at);
  pid_t pid = 0;
  if (rc == 0) {
    posix_spawnattr_setsigmask(&at, mask);  /* the worker gets normal signals */
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
    rc = posix_spawn(&pid, exe, &fa, &at, argv, environ);
    posix_spawnattr_destroy(&at);
  }
  posix_spawn_file_actions_destroy(&fa);
  if (efd >= 0) close(efd);
  if (rc != 0) {
    if (ev) munmap(ev, EVIDENCE_SIZE);
    log_error("cannot start a local worker (%s): %s", exe, strerror(rc));
    return -1;
  }
  t->local_procs++;
  memset(w, 0, sizeof *w);
  w->child = pid;
  w->local = 1;
  w->alive = 1;
  w->pid = pid;
  w->ev = ev;
  w->last_heard = time_mono();
  snprintf(w->host, sizeof w->host, "localhost");
  return 0;
}

void wt_gone(wtable *t, cworker *w, const char *end) {
  if (!w->alive) return;
  w->alive = 0;
  w->welcomed = 0;
  w->inflight = 0;
  if (!w->end) w->end = end;
  if (!w->child) release(t, w);
}

cworker *wt_reaped(wtable *t, pid_t pid, int status, char *why, size_t cap) {
  for (size_t i = 0; i < t->n; i++) {
    cworker *w = &t->w[i];
    if (w->child != pid) continue;
    const char *end;
    if (WIFSIGNALED(status)) {
      snprintf(why, cap, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
      end = "killed";
    } else {
      snprintf(why, cap, "exited with status %d", WEXITSTATUS(status));
      end = "exited";
    }
    t->local_procs--;
    /* A worker that dies by itself before saying hello, again and again, points at a broken
     * installation; one killed from outside (SIGKILL) says nothing about that. */
    if (w->id) t->early_deaths = 0;
    else if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) t->early_deaths++;
    w->child = 0;
    /* An end seen before the exit (a timeout that killed it) keeps its name; otherwise the
     * exit is how it ended. */
    if (w->alive) {
      w->end = end;
      return w;  /* the caller handles the loss, then wt_gone releases it */
    }
    release(t, w);
    return NULL;
  }
  return NULL;
}

int wt_evidence(const cworker *w, uint64_t stage_id, uint32_t (*out)[2], int max) {
  const evidence_page *ev = w->ev;
  if (!ev || __atomic_load_n(&ev->magic, __ATOMIC_ACQUIRE) != EVIDENCE_MAGIC) return -1;
  uint32_t ns = ev->nslots < EVIDENCE_MAX_SLOTS ? ev->nslots : (uint32_t)EVIDENCE_MAX_SLOTS;
  int n = 0;
  for (uint32_t i = 0; i < ns && n < max; i++) {
    const evidence_slot *s = &ev->slot[i];
    if (!__atomic_load_n(&s->running, __ATOMIC_ACQUIRE) || s->stage != stage_id) continue;
    out[n][0] = s->index;
    out[n][1] = s->attempt;
    n++;
  }
  return n;
}

static int by_id(const void *a, const void *b) {
  uint32_t x = ((const worker_info *)a)->id, y = ((const worker_info *)b)->id;
  return (x > y) - (x < y);
}

int wt_summary(const wtable *t, worker_info **v, size_t *n) {
  *v = calloc(t->n + t->ngone + 1, sizeof **v);
  *n = 0;
  if (!*v) return DBX_ENOMEM;
  for (size_t i = 0; i < t->ngone; i++) (*v)[(*n)++] = t->gone[i].info;
  for (size_t i = 0; i < t->n; i++)
    if (t->w[i].id) to_info(&t->w[i], &(*v)[(*n)++]);
  qsort(*v, *n, sizeof **v, by_id);
  return 0;
}
