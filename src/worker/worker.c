/* worker.c -- a worker: one ZeroMQ DEALER to the coordinator, S task threads.
 * The main thread only moves messages and heartbeats, so a worker deep in a long task still
 * answers; task threads hand results back over inproc PUSH/PULL sockets (ZeroMQ sockets are
 * not shared between threads). */
#define _GNU_SOURCE 1  /* memmem */
#include "worker/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>
#include <zmq.h>

#include "engine/job.h"
#include "engine/shuffle.h"
#include "net/evidence.h"
#include "net/proto.h"
#include "net/rendezvous.h"
#include "ops/ops.h"
#include "ops/plugin.h"
#include "util/log.h"
#include "util/timeutil.h"

/* Seconds of handshakes failing without a reason before a worker gives up. */
#define WORKER_HANDSHAKE_GIVE_UP 5.0

/* What a stage needs on this worker; shared by its tasks, freed with the last of them. */
typedef struct wstage {
  uint64_t id;
  const dbx_op *op;
  plugin *pl;       /* the library op comes from, or NULL for a built-in operator */
  char *cfg;
  void *bcast;
  char **paths;
  uint32_t npaths;
  unsigned char *ident;     /* per path: planned size and mtime, 16 bytes each, or NULL */
  int refs;
} wstage;

typedef struct witem {
  struct witem *next;
  char *frame;      /* the TASK message bytes, which msg borrows from */
  msg m;
  wstage *st;
} witem;

typedef struct wctx {
  void *zctx;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  witem *head, *tail;
  int quit;
  uint64_t cancelled[64][3];  /* recent cancels: (stage, index, attempt) ring */
  unsigned ncancel;
  evidence_page *ev;          /* local worker: what each thread runs, shared with the coordinator */
  uint64_t max_msg;           /* the coordinator's --max-message (0: not told); atomic */
  unsigned nthreads_started;
  const worker_opts *o;
} wctx;

static void stage_release(wctx *w, wstage *s) {
  if (!s) return;
  pthread_mutex_lock(&w->mu);
  int last = --s->refs == 0;
  pthread_mutex_unlock(&w->mu);
  if (!last) return;
  if (s->bcast) s->op->bcast_free(s->bcast);
  for (uint32_t i = 0; i < s->npaths; i++) free(s->paths[i]);
  free(s->paths);
  free(s->ident);
  free(s->cfg);
  plugin_close(s->pl);  /* last: op and bcast_free live in it */
  free(s);
}

static int is_cancelled(wctx *w, const msg *m) {
  for (unsigned i = 0; i < 64 && i < w->ncancel; i++)
    if (w->cancelled[i][0] == m->stage && w->cancelled[i][1] == m->index && w->cancelled[i][2] == m->attempt)
      return 1;
  return 0;
}

/* Evidence for the coordinator (net/evidence.h): this thread's slot says which attempt it
 * maps, so a crash is blamed on that attempt alone. */
static void evidence_set(wctx *w, unsigned slot, const msg *m, int running) {
  if (!w->ev || slot >= EVIDENCE_MAX_SLOTS) return;
  evidence_slot *e = &w->ev->slot[slot];
  if (running) {
    __atomic_store_n(&e->running, 0, __ATOMIC_RELEASE);
    e->stage = m->stage;
    e->index = (uint32_t)m->index;
    e->attempt = (uint32_t)m->attempt;
  }
  __atomic_store_n(&e->running, (uint32_t)running, __ATOMIC_RELEASE);
}

/* The check of every file a task opens (loader_check), on its descriptor: what it really
 * is, not what its name pointed to when a stage began. */
typedef struct fcheck {
  const worker_opts *o;
  const wstage *st;
} fcheck;

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int k = 7; k >= 0; k--) v = v << 8 | p[k];
  return v;
}

static int file_check(void *ctx, uint32_t idx, const char *path, int fd, const struct stat *st, dbx_err *err) {
  const fcheck *c = ctx;
  if (c->o->restrict_read) {
    /* Only files under an --allow-read directory, as the descriptor resolves (symbolic
     * links and renames included). */
    char link[64], rp[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, rp, sizeof rp - 1);
    int ok = 0;
    if (n > 0) {
      rp[n] = 0;
      for (size_t i = 0; i < c->o->nallow && !ok; i++) {
        const char *d = c->o->allow_read[i];
        size_t dn = strlen(d);
        ok = (dn == 1 && d[0] == '/') || (!strncmp(rp, d, dn) && (rp[dn] == '/' || rp[dn] == 0));
      }
    }
    if (!ok)
      return dbx_seterr(err, DBX_EACCES, "this worker refuses to read %s: it is outside its --allow-read directories",
                        path);
  }
  if (c->st->ident && idx < c->st->npaths) {
    /* The file the coordinator planned with, not another under the same name (a disk of
     * this machine's own, a stale copy): the same size and modification time. */
    uint64_t size = le64(c->st->ident + 16 * (size_t)idx);
    int64_t mt = (int64_t)le64(c->st->ident + 16 * (size_t)idx + 8);
    int64_t have = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    if (size != UINT64_MAX && ((uint64_t)st->st_size != size || have != mt))
      return dbx_seterr(err, DBX_ECHANGED,
                        "%s on this worker is not the file the coordinator planned with (%llu bytes here, %llu "
                        "planned%s)", path, (unsigned long long)st->st_size, (unsigned long long)size,
                        (uint64_t)st->st_size == size ? ", another modification time" : "");
  }
  return 0;
}

/* A relayed task (docs/keyed.md) runs in a private directory of this worker's: the files that
 * came with it are written there first, and what the task writes there is sent back. */
typedef struct relay_dir {
  char path[PATH_MAX];
  msg_file *out;
  char (*names)[PROTO_FILE_NAME_MAX + 1];
  uint32_t nout;
} relay_dir;

static void relay_clean(relay_dir *rd) {
  for (uint32_t i = 0; i < rd->nout; i++)
    if (rd->out[i].len) munmap((void *)rd->out[i].data, rd->out[i].len);
  free(rd->out);
  free(rd->names);
  rd->out = NULL;
  rd->names = NULL;
  rd->nout = 0;
  if (!rd->path[0]) return;
  DIR *d = opendir(rd->path);
  struct dirent *e;
  char p[PATH_MAX + 300];
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
        snprintf(p, sizeof p, "%s/%s", rd->path, e->d_name) < (int)sizeof p)
      unlink(p);
  if (d) closedir(d);
  rmdir(rd->path);
  rd->path[0] = 0;
}

static int relay_write(const char *dir, const char *name, size_t nlen, const char *data, size_t len, dbx_err *err) {
  char p[PATH_MAX + 80];
  snprintf(p, sizeof p, "%s/%.*s", dir, (int)nlen, name);
  int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return dbx_seterr(err, errno == EEXIST ? DBX_EPROTO : errno == ENOSPC ? DBX_ENOSPC : DBX_EIO,
                      "relayed file %s: %s", p, errno == EEXIST ? "sent twice" : strerror(errno));
  size_t done = 0;
  while (done < len) {
    ssize_t k = write(fd, data + done, len - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      int e = k < 0 ? errno : ENOSPC;
      close(fd);
      return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "relayed file %s: %s", p, strerror(e));
    }
    done += (size_t)k;
  }
  if (close(fd) != 0) return dbx_seterr(err, errno == ENOSPC ? DBX_ENOSPC : DBX_EIO, "relayed file %s: %s", p, strerror(errno));
  return 0;
}

/* Private directories left by workers that were killed (named dbatch-relay-PID-...): removed
 * when that process is gone and the directory is this user's. */
static void relay_sweep(void) {
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !tmp[0]) tmp = "/tmp";
  DIR *d = opendir(tmp);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (strncmp(e->d_name, "dbatch-relay-", 13)) continue;
    char *end;
    long pid = strtol(e->d_name + 13, &end, 10);
    struct stat sb;
    relay_dir rd;
    memset(&rd, 0, sizeof rd);
    if (pid <= 0 || *end != '-' || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH ||
        (size_t)snprintf(rd.path, sizeof rd.path, "%s/%s", tmp, e->d_name) >= sizeof rd.path ||
        lstat(rd.path, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != getuid())
      continue;
    relay_clean(&rd);
  }
  if (d) closedir(d);
}

/* Make the private directory and write the task's files into it. */
static int relay_begin(relay_dir *rd, const msg *m, dbx_err *err) {
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !tmp[0]) tmp = "/tmp";
  int n = snprintf(rd->path, sizeof rd->path, "%s/dbatch-relay-%d-XXXXXX", tmp, (int)getpid());
  /* The task makes its file names in buffers sized for a spill directory (SHUFFLE_DIR_MAX): a
   * longer one would be cut short, and files would land outside it. */
  if (n < 0 || n >= SHUFFLE_DIR_MAX) {
    rd->path[0] = 0;
    return dbx_seterr(err, DBX_EIO,
                      "$TMPDIR %.200s... is too long for a relayed task's directory (at most %d bytes with "
                      "/dbatch-relay-PID-XXXXXX): give this worker a shorter TMPDIR",
                      tmp, SHUFFLE_DIR_MAX - 1);
  }
  if (!mkdtemp(rd->path)) {
    int e = errno;
    char was[PATH_MAX];
    snprintf(was, sizeof was, "%s", rd->path);
    rd->path[0] = 0;
    return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "cannot create a directory for a relayed task (%s): %s",
                      was, strerror(e));
  }
  for (uint32_t i = 0; i < m->nfiles; i++) {
    msg_file f;
    msg_file_at(m, i, &f);
    int rc = relay_write(rd->path, f.name, f.name_len, f.data, f.len, err);
    if (rc) return rc;
  }
  return 0;
}

/* After the task: its inputs removed, every other file it left (not a temporary one) is an
 * output, mapped into rd->out. */
static int relay_collect(relay_dir *rd, const msg *m, dbx_err *err) {
  char p[PATH_MAX + 80];
  for (uint32_t i = 0; i < m->nfiles; i++) {
    msg_file f;
    msg_file_at(m, i, &f);
    snprintf(p, sizeof p, "%s/%.*s", rd->path, (int)f.name_len, f.name);
    unlink(p);
  }
  DIR *d = opendir(rd->path);
  if (!d) return dbx_seterr(err, DBX_EIO, "%s: %s", rd->path, strerror(errno));
  uint32_t cap = 0;
  struct dirent *e;
  int rc = 0;
  while (!rc && (e = readdir(d))) {
    size_t n = strlen(e->d_name);
    if (e->d_name[0] == '.' || !msg_file_name_ok(e->d_name, n)) continue;
    if (rd->nout == cap) {
      uint32_t nc = cap ? cap * 2 : 16;
      msg_file *no = realloc(rd->out, nc * sizeof *no);
      if (no) rd->out = no;
      char (*nn)[PROTO_FILE_NAME_MAX + 1] = no ? realloc(rd->names, nc * sizeof *nn) : NULL;
      if (nn) rd->names = nn;
      if (!no || !nn) { rc = dbx_seterr(err, DBX_ENOMEM, "out of memory"); break; }
      cap = nc;
    }
    /* n <= PROTO_FILE_NAME_MAX (msg_file_name_ok) */
    snprintf(p, sizeof p, "%s/%.*s", rd->path, PROTO_FILE_NAME_MAX, e->d_name);
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
      if (fd >= 0) close(fd);
      continue;
    }
    void *map = sb.st_size ? mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (map == MAP_FAILED) { rc = dbx_seterr(err, DBX_EIO, "%s: %s", p, strerror(errno)); break; }
    memcpy(rd->names[rd->nout], e->d_name, n);
    rd->names[rd->nout][n] = 0;
    rd->out[rd->nout] = (msg_file){rd->names[rd->nout], n, map, (size_t)sb.st_size};
    rd->nout++;
  }
  closedir(d);
  /* names point into rd->names, which may have moved while it grew */
  for (uint32_t i = 0; i < rd->nout; i++) rd->out[i].name = rd->names[i];
  return rc;
}

static void run_item(wctx *w, unsigned slot, witem *it, loader *ld, void *push, dbx_buf *out, dbx_buf *enc) {
  msg *m = &it->m;
  wstage *st = it->st;
  dbx_err err = {0, ""};
  void *part = NULL;
  dbx_stats bs = {0, 0, ""};
  uint64_t bytes = 0;
  int rc = 0;
  for (uint32_t i = 0; i < m->batch.nseg && !rc; i++)
    if (m->batch.seg[i].input >= st->npaths)
      rc = dbx_seterr(&err, DBX_EPROTO, "task refers to input %u of %u", m->batch.seg[i].input, st->npaths);
  fcheck fc = {w->o, st};
  loader_check(ld, file_check, &fc);
  double t0 = time_mono();
  evidence_set(w, slot, m, 1);
  ops_task_attempt = (uint32_t)m->attempt;  /* DBATCH_ATTEMPT for commands (ops/exec.c) */
  relay_dir rd = {.path = ""};
  if (!rc && m->has_files) {
    rc = relay_begin(&rd, m, &err);
    if (!rc) shuffle_use_dir(rd.path);
  }
  if (!rc) rc = engine_map_task(st->op, st->cfg, st->bcast, ld, &m->batch, (const char *const *)st->paths,
                                &part, &bs, &bytes, &err);
  shuffle_use_dir(NULL);
  if (!rc && m->has_files) rc = relay_collect(&rd, m, &err);
  double dt = time_mono() - t0;
  enc->len = 0;
  if (!rc) rc = st->op->encode(st->cfg, part, enc, &err);
  if (part) st->op->partial_free(part);
  if (!rc &&
      (rc = m->has_files ? msg_result_files(out, m->stage, m->index, m->attempt, bs.records, bs.bad_records,
                                            bs.bad_note, bytes, dt, enc->data, enc->len, rd.out, rd.nout)
                         : msg_result(out, m->stage, m->index, m->attempt, bs.records, bs.bad_records, bs.bad_note,
                                      bytes, dt, enc->data, enc->len)))
    dbx_seterr(&err, rc, "cannot encode the result of task %llu (%zu bytes): %s", (unsigned long long)m->index,
               enc->len, dbx_strerror(rc));
  /* The coordinator drops a connection that sends more than its --max-message: say so
   * instead of vanishing. */
  uint64_t max = __atomic_load_n(&w->max_msg, __ATOMIC_RELAXED);
  if (!rc && max && out->len > max)
    rc = dbx_seterr(&err, DBX_ETOOBIG,
                    "its result is %zu bytes, over the coordinator's --max-message of %llu bytes: raise "
                    "--max-message or use smaller batches (--batch-bytes, --batch-records)",
                    out->len, (unsigned long long)max);
  /* A relayed task writes only in this worker's own $TMPDIR: that one being full is this
   * worker's problem, a failed attempt that goes elsewhere, not the coordinator's full spill
   * directory that fails the job. */
  if (rc == DBX_ENOSPC && m->has_files) rc = DBX_EIO;
  if (rc) {
    /* Drop the scratch buffers first: the failure must get through even after ENOMEM. */
    dbx_buf_free(enc);
    dbx_buf_free(out);
    if (msg_failure(out, m->stage, m->index, m->attempt, rc, err.msg[0] ? err.msg : dbx_strerror(rc))) {
      relay_clean(&rd);
      evidence_set(w, slot, m, 0);
      log_error("worker: task %llu failed (%s) and not even the failure could be encoded", (unsigned long long)m->index,
                dbx_strerror(rc));
      return;  /* the coordinator's task timeout takes it from here */
    }
  }
  relay_clean(&rd);
  evidence_set(w, slot, m, 0);
  zmq_send(push, out->data, out->len, 0);
}

static void *task_thread(void *arg) {
  wctx *w = arg;
  unsigned slot = __atomic_fetch_add(&w->nthreads_started, 1, __ATOMIC_RELAXED);
  void *push = zmq_socket(w->zctx, ZMQ_PUSH);
  zmq_connect(push, "inproc://results");
  loader *ld = loader_new();
  dbx_buf out = {0}, enc = {0};
  for (;;) {
    pthread_mutex_lock(&w->mu);
    while (!w->head && !w->quit) pthread_cond_wait(&w->cv, &w->mu);
    witem *it = w->head;
    if (it) {
      w->head = it->next;
      if (!w->head) w->tail = NULL;
    }
    int skip = it && is_cancelled(w, &it->m);
    pthread_mutex_unlock(&w->mu);
    if (!it) break;
    if (!skip) run_item(w, slot, it, ld, push, &out, &enc);
    msg_free(&it->m);
    free(it->frame);
    stage_release(w, it->st);
    free(it);
  }
  dbx_buf_free(&out);
  dbx_buf_free(&enc);
  loader_free(ld);
  zmq_close(push);
  return NULL;
}

static int send_buf(void *sock, const dbx_buf *b) {
  return zmq_send(sock, b->data, b->len, 0) < 0 ? -1 : 0;
}

static wstage *make_stage(const msg *m, dbx_err *err) {
  char name[64];
  snprintf(name, sizeof name, "%.*s", (int)(m->op_len < 63 ? m->op_len : 63), m->op);
  plugin *pl = NULL;
  const dbx_op *op = NULL;
  if (m->has_plugin) {
    /* A plugin operator: its library came with the stage. plugin_open_bytes checks the
     * checksum before loading; any problem refuses the stage (its tasks fail, naming why). */
    char label[256];
    snprintf(label, sizeof label, "%.*s", (int)m->plugin_label_len, m->plugin_label);
    if (plugin_open_bytes(label, m->plugin, m->plugin_len, m->plugin_xxh64, name, &pl, err)) return NULL;
    op = plugin_op(pl);
    /* Its configuration is the --op-arg text: NUL-terminated, no NUL before the end. */
    if (m->cfg_len == 0 || m->cfg[m->cfg_len - 1] != 0 || memchr(m->cfg, 0, m->cfg_len - 1)) {
      dbx_seterr(err, DBX_EPROTO, "operator '%s' of plugin %s: its configuration (%zu bytes) is not one NUL-terminated string",
                 name, label, m->cfg_len);
      plugin_close(pl);
      return NULL;
    }
  } else {
    op = ops_find(name);
    if (!op) { dbx_seterr(err, DBX_EPROTO, "unknown operator '%s' (is this worker the same dbatch version?)", name); return NULL; }
    if (m->cfg_len != op->cfg_size) {
      dbx_seterr(err, DBX_EPROTO, "operator '%s': configuration of %zu bytes, expected %zu (another dbatch build?)",
                 name, m->cfg_len, op->cfg_size);
      return NULL;
    }
  }
  wstage *s = calloc(1, sizeof *s);
  if (!s) { plugin_close(pl); dbx_seterr(err, DBX_ENOMEM, "out of memory"); return NULL; }
  s->id = m->stage;
  s->op = op;
  s->pl = pl;
  s->refs = 1;
  s->cfg = malloc(m->cfg_len + 1);
  s->npaths = m->npaths;
  s->paths = calloc(m->npaths ? m->npaths : 1, sizeof *s->paths);
  if (m->ident && m->ident_len == (size_t)m->npaths * 16 && m->npaths) {
    if (!(s->ident = malloc(m->ident_len))) { dbx_seterr(err, DBX_ENOMEM, "out of memory"); goto fail; }
    memcpy(s->ident, m->ident, m->ident_len);
  }
  if (!s->cfg || !s->paths) { dbx_seterr(err, DBX_ENOMEM, "out of memory"); goto fail; }
  if (m->cfg_len) memcpy(s->cfg, m->cfg, m->cfg_len);
  for (uint32_t i = 0; i < m->npaths; i++) {
    const msgpack_object_str *p = &m->paths[i].via.str;
    if (!(s->paths[i] = malloc(p->size + 1))) { dbx_seterr(err, DBX_ENOMEM, "out of memory"); goto fail; }
    memcpy(s->paths[i], p->ptr, p->size);
    s->paths[i][p->size] = 0;
  }
  /* An operator that takes a broadcast gets one even when it is empty: an empty or damaged
   * broadcast is refused here, with the stage, not met as a NULL by every task. */
  if (op->bcast_load && op->bcast_load(s->cfg, m->bcast, m->bcast_len, &s->bcast, err)) goto fail;
  return s;
fail:
  for (uint32_t i = 0; s->paths && i < s->npaths; i++) free(s->paths[i]);
  free(s->paths);
  free(s->ident);
  free(s->cfg);
  plugin_close(s->pl);
  free(s);
  return NULL;
}

/* DBATCH_FAULT="crash_on=TEXT,delay_ms=N,crash_in_spill=PATH": a worker kills itself
 * (SIGKILL) on any batch containing TEXT, sleeps N ms before each task, and kills itself
 * right after a keyed task first writes spilled records, once per PATH (the worker that
 * creates PATH). For fault-injection tests only. */
static char fault_pattern[128];
static long fault_delay_ms;
static char fault_spill_once[512];

static void fault_spill(void) {
  int fd = open(fault_spill_once, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) raise(SIGKILL);
}

static void fault_hook(const dbx_batch *b) {
  if (fault_delay_ms > 0) {
    struct timespec ts = {fault_delay_ms / 1000, (fault_delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  if (fault_pattern[0] && b->size && memmem(b->data, b->size, fault_pattern, strlen(fault_pattern)))
    raise(SIGKILL);
}

static void fault_setup(void) {
  const char *f = getenv("DBATCH_FAULT");
  if (!f || !*f) return;
  for (const char *p = f; *p;) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n > 9 && !strncmp(p, "crash_on=", 9))
      snprintf(fault_pattern, sizeof fault_pattern, "%.*s", (int)(n - 9), p + 9);
    else if (n > 9 && !strncmp(p, "delay_ms=", 9))
      fault_delay_ms = strtol(p + 9, NULL, 10);
    else if (n > 15 && !strncmp(p, "crash_in_spill=", 15)) {
      snprintf(fault_spill_once, sizeof fault_spill_once, "%.*s", (int)(n - 15), p + 15);
      kv_spill_fault = fault_spill;
    }
    p += n + (end != NULL);
  }
  engine_fault_hook = fault_hook;
  log_info("worker %d: fault injection on (DBATCH_FAULT=%s)", (int)getpid(), f);
}

/* A local worker started by its coordinator has its evidence page as descriptor
 * EVIDENCE_FD (a memfd named dbatch-evidence); anything else there is left alone. */
static evidence_page *evidence_map(uint32_t slots) {
  char link[64], target[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", EVIDENCE_FD);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0) return NULL;
  target[n] = 0;
  if (strncmp(target, "/memfd:dbatch-evidence", 22) != 0) return NULL;
  void *p = mmap(NULL, EVIDENCE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, EVIDENCE_FD, 0);
  close(EVIDENCE_FD);
  if (p == MAP_FAILED) return NULL;
  evidence_page *ev = p;
  ev->nslots = slots < EVIDENCE_MAX_SLOTS ? slots : (uint32_t)EVIDENCE_MAX_SLOTS;
  __atomic_store_n(&ev->magic, EVIDENCE_MAGIC, __ATOMIC_RELEASE);
  return ev;
}
/* This process's CPU time with its children's (a --map command's), in ms; its resident
 * bytes now (/proc/self/statm) and at the peak. What it cannot read is 0. */
static void usage(uint64_t *cpu_ms, uint64_t *rss, uint64_t *peak) {
  struct rusage s, c;
  *cpu_ms = *rss = *peak = 0;
  if (getrusage(RUSAGE_SELF, &s) == 0) {
    *cpu_ms = (uint64_t)s.ru_utime.tv_sec * 1000 + (uint64_t)s.ru_utime.tv_usec / 1000 +
              (uint64_t)s.ru_stime.tv_sec * 1000 + (uint64_t)s.ru_stime.tv_usec / 1000;
    *peak = (uint64_t)s.ru_maxrss * 1024;
  }
  if (getrusage(RUSAGE_CHILDREN, &c) == 0)
    *cpu_ms += (uint64_t)c.ru_utime.tv_sec * 1000 + (uint64_t)c.ru_utime.tv_usec / 1000 +
               (uint64_t)c.ru_stime.tv_sec * 1000 + (uint64_t)c.ru_stime.tv_usec / 1000;
  FILE *f = fopen("/proc/self/statm", "re");
  unsigned long long pages = 0, res = 0;
  if (f && fscanf(f, "%llu %llu", &pages, &res) == 2) *rss = res * (uint64_t)sysconf(_SC_PAGESIZE);
  if (f) fclose(f);
  /* ru_maxrss is the kernel's high-water mark, brought up to date only now and then (when
   * memory is unmapped, for one): it may be below the resident bytes read just now. */
  if (*peak < *rss) *peak = *rss;
}


int worker_main(const worker_opts *o, dbx_err *err) {
  fault_setup();
  pid_t parent = getppid();
  if (o->local) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  /* never outlive the coordinator that started us */
    /* A coordinator that died before the line above (between its spawn and our prctl)
     * sent no signal: we were already adopted. Its pid says so. */
    if (o->parent) parent = (pid_t)o->parent;
    if (getppid() != parent) return 0;
  }
  if (!o->local || !o->shared_fs) relay_sweep();  /* a worker that may be relayed to */
  wctx w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  w.o = o;
  w.zctx = zmq_ctx_new();
  void *dealer = zmq_socket(w.zctx, ZMQ_DEALER);
  void *pull = zmq_socket(w.zctx, ZMQ_PULL);
  int zero = 0, rc = 0;
  zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
  int ivl = 100;
  zmq_setsockopt(dealer, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
  zmq_bind(pull, "inproc://results");
  void *watch = NULL;
  if (o->key && (rc = tr_client_secure(dealer, o->key, o->coordinator_key, err))) {
    zmq_close(dealer);
    zmq_close(pull);
    zmq_ctx_term(w.zctx);
    return rc;
  }
  /* Handshakes are watched on remote links: a refused key or a wrong coordinator key is
   * said at once, not left to look like a coordinator that does not answer. */
  if (!o->local) watch = tr_watch(w.zctx, dealer);
  if (zmq_connect(dealer, o->connect) != 0) {
    rc = dbx_seterr(err, DBX_EUSAGE, "cannot connect to %s: %s", o->connect, zmq_strerror(zmq_errno()));
    if (watch) zmq_close(watch);
    zmq_close(dealer);
    zmq_close(pull);
    zmq_ctx_term(w.zctx);
    return rc;
  }
  uint32_t nthreads = o->slots ? o->slots : 1, started = 0;
  if (o->local) w.ev = evidence_map(nthreads);
  pthread_t *th = calloc(nthreads, sizeof *th);
  int prc = th ? 0 : ENOMEM;
  while (!prc && started < nthreads && !(prc = pthread_create(&th[started], NULL, task_thread, &w))) started++;
  if (prc) {
    rc = dbx_seterr(err, DBX_ENOMEM, "cannot start %u task threads: %s", nthreads, strerror(prc));
    pthread_mutex_lock(&w.mu);
    w.quit = 1;
    pthread_cond_broadcast(&w.cv);
    pthread_mutex_unlock(&w.mu);
    for (uint32_t i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    if (watch) zmq_close(watch);
    zmq_close(dealer);
    zmq_close(pull);
    zmq_ctx_term(w.zctx);
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    return rc;
  }

  char host[64];
  if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "unknown");
  host[sizeof host - 1] = 0;
  dbx_buf out = {0};
  wstage *cur = NULL;
  uint64_t bad_stage = UINT64_MAX;  /* the last stage refused, and why */
  char bad_stage_why[DBX_ERR_LEN + 64] = "";
  double hb = o->heartbeat > 0 ? o->heartbeat : 1.0;
  double now = time_mono(), last_heard = now, last_sent = 0, last_hello = 0, last_usage = 0;
  int welcomed = 0, running = 1, ever_welcomed = 0, hs_failed = 0;
  double t_begin = now, last_said = now, hs_first_fail = 0, last_rv = now;
  zmq_msg_t zm;
  zmq_msg_init(&zm);
  while (running) {
    now = time_mono();
    char hs_why[256];
    int hs;
    while ((hs = tr_watch_next(watch, o->key != NULL, hs_why, sizeof hs_why)) != TR_HS_NONE) {
      if (hs == TR_HS_OK) { hs_failed = 0; continue; }
      /* A refusal or a mechanism mismatch will not change by retrying. A handshake cut
       * without a reason is a wrong key, or a coordinator restarting, or a proxy in front of
       * one not listening yet: said at once, given up only when it lasts. */
      if (hs == TR_HS_FAILED && !hs_failed++) {
        hs_first_fail = now;
        log_warn("worker: %s: %s; retrying", o->connect, hs_why);
      }
      if (hs == TR_HS_REFUSED || hs == TR_HS_MISMATCH ||
          (hs_failed >= 3 && now - hs_first_fail >= WORKER_HANDSHAKE_GIVE_UP)) {
        rc = dbx_seterr(err, DBX_EACCES, "%s: %s", o->connect, hs_why);
        running = 0;
        break;
      }
    }
    if (!running) break;
    if (!welcomed && !ever_welcomed && o->connect_timeout > 0 && now - t_begin > o->connect_timeout) {
      rc = dbx_seterr(err, DBX_ETIMEDOUT, "no coordinator answered at %s within %.0f s (--connect-timeout)",
                      o->connect, o->connect_timeout);
      break;
    }
    if (!welcomed && o->rendezvous && now - last_rv >= 1.0) {
      /* Nobody answers: the rendezvous may name a coordinator since replaced. */
      rv_info rv;
      dbx_err rerr = {0, ""};
      last_rv = now;
      if (rv_read(o->rendezvous, &rv, &rerr) == 0 &&
          (strcmp(rv.endpoint, o->connect) || strcmp(rv.key, o->coordinator_key ? o->coordinator_key : ""))) {
        log_info("worker: %s now names %s", o->rendezvous, rv.endpoint);
        rc = WORKER_RENDEZVOUS_CHANGED;
        break;
      }
    }
    if (!welcomed && !o->local && now - last_said >= 10) {
      log_debug("worker: still no answer from the coordinator at %s after %.0f s", o->connect, now - t_begin);
      last_said = now;
    }
    if (!welcomed && now - last_hello >= hb) {
      if (!msg_hello(&out, nthreads, host, (uint64_t)getpid(), o->shared_fs)) send_buf(dealer, &out);
      last_hello = last_sent = now;
    }
    if (welcomed && now - last_usage >= hb) {  /* also when results went out: the usage is news */
      uint64_t cpu_ms, rss, peak;
      usage(&cpu_ms, &rss, &peak);
      if (!msg_heartbeat(&out, cpu_ms, rss, peak)) send_buf(dealer, &out);
      last_sent = last_usage = now;
    }
    if (o->local && getppid() != parent) break;
    if (now - last_heard > o->timeout) {
      if (o->local) {
        log_warn("worker: coordinator silent for %.0f s; exiting", o->timeout);
        break;
      }
      if (o->exit_on_loss && ever_welcomed) {
        rc = dbx_seterr(err, DBX_EIO, "the coordinator at %s went silent for %.0f s before the job ended", o->connect,
                        o->timeout);
        break;
      }
      if (welcomed) log_warn("worker: coordinator silent for %.0f s; waiting for it to come back", o->timeout);
      welcomed = 0;  /* say hello again when it returns */
      last_heard = now;
    }
    zmq_pollitem_t items[2] = {{dealer, 0, ZMQ_POLLIN, 0}, {pull, 0, ZMQ_POLLIN, 0}};
    int n = zmq_poll(items, 2, (long)(hb * 1000 / 4));
    if (n < 0) break;
    while (items[1].revents & ZMQ_POLLIN) {  /* results from task threads */
      if (zmq_msg_recv(&zm, pull, ZMQ_DONTWAIT) < 0) break;
      /* The usage first, with the task's work in it: the last result may end the job. */
      uint64_t cpu_ms, rss, peak;
      usage(&cpu_ms, &rss, &peak);
      if (!msg_heartbeat(&out, cpu_ms, rss, peak)) send_buf(dealer, &out);
      zmq_send(dealer, zmq_msg_data(&zm), zmq_msg_size(&zm), 0);
      last_sent = last_usage = time_mono();
    }
    if (!(items[0].revents & ZMQ_POLLIN)) continue;
    while (zmq_msg_recv(&zm, dealer, ZMQ_DONTWAIT) >= 0) {
      last_heard = time_mono();
      size_t len = zmq_msg_size(&zm);
      char *frame = malloc(len ? len : 1);
      if (!frame) { rc = DBX_ENOMEM; running = 0; break; }
      memcpy(frame, zmq_msg_data(&zm), len);
      msg m;
      dbx_err merr = {0, ""};
      if (msg_decode(frame, len, &m, &merr)) {
        log_warn("worker: from coordinator: %s", merr.msg);
        if (m.type == MSG_TASK && m.ids_ok && merr.code == DBX_EPROTO) {
          char why[DBX_ERR_LEN + 32];
          snprintf(why, sizeof why, "malformed task: %s", merr.msg);
          if (!msg_failure(&out, m.stage, m.index, m.attempt, DBX_EPROTO, why)) send_buf(dealer, &out);
        }
        free(frame);
        if (merr.code == DBX_EVERSION) { rc = dbx_seterr(err, DBX_EVERSION, "coordinator speaks another %s", merr.msg); running = 0; }
        continue;
      }
      int keep = 0;
      switch (m.type) {
      case MSG_WELCOME:
        welcomed = ever_welcomed = 1;
        __atomic_store_n(&w.max_msg, m.max_msg, __ATOMIC_RELAXED);
        /* Bounded: the poll timeout below is derived from it. */
        if (m.heartbeat_ms) hb = (double)(m.heartbeat_ms < 3600000 ? m.heartbeat_ms : 3600000) / 1000.0;
        break;
      case MSG_REFUSE:
        rc = dbx_seterr(err, DBX_EVERSION, "coordinator refused this worker: %.*s", (int)m.text_len, m.text);
        running = 0;
        break;
      case MSG_REHELLO:
        welcomed = 0;
        last_hello = 0;
        break;
      case MSG_STAGE: {
        wstage *s = make_stage(&m, &merr);
        stage_release(&w, cur);
        cur = s;
        if (!s) {
          /* Every task of this stage is answered with why the stage was refused. */
          log_error("worker: stage %llu: %s", (unsigned long long)m.stage, merr.msg);
          bad_stage = m.stage;
          snprintf(bad_stage_why, sizeof bad_stage_why, "stage %llu refused by this worker: %s",
                   (unsigned long long)m.stage, merr.msg);
        }
        break;
      }
      case MSG_TASK: {
        if (!cur || cur->id != m.stage) {
          const char *why = !cur && bad_stage == m.stage ? bad_stage_why : "task for a stage this worker was not given";
          if (!msg_failure(&out, m.stage, m.index, m.attempt, DBX_EPROTO, why)) send_buf(dealer, &out);
          break;
        }
        witem *it = calloc(1, sizeof *it);
        if (!it) break;
        it->frame = frame;
        it->m = m;
        it->st = cur;
        pthread_mutex_lock(&w.mu);
        cur->refs++;
        if (w.tail) w.tail->next = it; else w.head = it;
        w.tail = it;
        pthread_cond_signal(&w.cv);
        pthread_mutex_unlock(&w.mu);
        keep = 1;
        break;
      }
      case MSG_CANCEL:
        pthread_mutex_lock(&w.mu);
        w.cancelled[w.ncancel % 64][0] = m.stage;
        w.cancelled[w.ncancel % 64][1] = m.index;
        w.cancelled[w.ncancel % 64][2] = m.attempt;
        w.ncancel++;
        pthread_mutex_unlock(&w.mu);
        break;
      case MSG_BYE:
        if (o->persist && !o->local) {
          log_info("worker: job finished; waiting for the next one");
          welcomed = 0;
          last_hello = time_mono();
        } else {
          running = 0;
        }
        break;
      default:
        break;
      }
      if (!keep) {
        msg_free(&m);
        free(frame);
      }
      if (!running) break;
    }
  }
  zmq_msg_close(&zm);
  pthread_mutex_lock(&w.mu);
  w.quit = 1;
  /* Drop queued tasks: the coordinator reassigns whatever it did not get back. */
  witem *drop = w.head;
  w.head = w.tail = NULL;
  pthread_cond_broadcast(&w.cv);
  pthread_mutex_unlock(&w.mu);
  while (drop) {
    witem *it = drop;
    drop = it->next;
    msg_free(&it->m);
    free(it->frame);
    stage_release(&w, it->st);
    free(it);
  }
  for (uint32_t i = 0; i < started; i++) pthread_join(th[i], NULL);
  free(th);
  stage_release(&w, cur);
  dbx_buf_free(&out);
  if (watch) zmq_close(watch);
  zmq_close(dealer);
  zmq_close(pull);
  zmq_ctx_term(w.zctx);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  if (w.ev) munmap(w.ev, EVIDENCE_SIZE);
  return rc;
}
