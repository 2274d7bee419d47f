/* exec.c -- the exec operator behind `dbatch run --map CMD`: one `/bin/sh -c CMD` per batch
 * (Hadoop Streaming's mapper). The batch's records go to the command's standard input, its
 * standard output is the task's partial; partials concatenate in batch order.
 *
 * Process tree of one task:   task thread ── supervisor ── /bin/sh -c CMD (own process group)
 * The supervisor is a forked copy of this process that only waits: it puts the command in a
 * process group of its own, reports the command's wait status through a pipe, and kills the
 * whole group (SIGKILL) when the command ends (background leftovers), when it is told to stop
 * (SIGTERM: the task timed out) and when its parent dies (PR_SET_PDEATHSIG: the worker was
 * killed, even by SIGKILL). The shell also dies with the supervisor. The one way out is a
 * command that leaves its process group itself (setsid, a daemon): that is beyond reach
 * without cgroups. Input data never goes through a shell: only CMD does. */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ops/ops.h"
#include "util/timeutil.h"

_Thread_local uint32_t ops_task_attempt;

extern char **environ;

/* How much of the command's standard error a failure record carries. */
#define ERR_TAIL_KEEP 4096   /* bytes kept while the command runs (a ring of the last ones) */
#define ERR_LINES 5
#define ERR_BYTES 360        /* the failure record's cause holds 512 bytes in all */

/* ---- the partial: the command's output bytes ---- */

static void *exec_new(const void *cfg) {
  (void)cfg;
  return calloc(1, sizeof(dbx_buf));
}

static void exec_free(void *p) {
  if (!p) return;
  dbx_buf_free(p);
  free(p);
}

/* left ++= right: concatenation is associative, so the tree merge gives the batch order. */
static int exec_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  (void)cfg;
  const dbx_buf *r = right;
  if (r->len && dbx_buf_append(left, r->data, r->len)) return dbx_seterr(err, DBX_ENOMEM, "exec: out of memory");
  return 0;
}

/* A msgpack bin object (bin 32 header, then the bytes): self-describing and checkable. */
static int exec_encode(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err) {
  (void)cfg;
  const dbx_buf *b = partial;
  if (b->len > UINT32_MAX) return dbx_seterr(err, DBX_EINVAL, "exec: a batch's output is over 4 GiB; use smaller batches");
  unsigned char h[5] = {0xc6, (unsigned char)(b->len >> 24), (unsigned char)(b->len >> 16),
                        (unsigned char)(b->len >> 8), (unsigned char)b->len};
  if (dbx_buf_reserve(out, sizeof h + b->len) || dbx_buf_append(out, h, sizeof h) ||
      (b->len && dbx_buf_append(out, b->data, b->len)))
    return dbx_seterr(err, DBX_ENOMEM, "exec: out of memory");
  return 0;
}

static int exec_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  (void)cfg;
  const unsigned char *u = (const unsigned char *)p;
  if (n < 5 || u[0] != 0xc6) return dbx_seterr(err, DBX_ECORRUPT, "exec: malformed partial result (no header)");
  uint64_t len = ((uint64_t)u[1] << 24) | ((uint64_t)u[2] << 16) | ((uint64_t)u[3] << 8) | u[4];
  if (len != n - 5)
    return dbx_seterr(err, DBX_ECORRUPT, "exec: malformed partial result (%" PRIu64 " bytes announced, %zu present)",
                      len, n - 5);
  dbx_buf *b = exec_new(cfg);
  if (!b || (len && dbx_buf_append(b, p + 5, (size_t)len))) {
    exec_free(b);
    return DBX_ENOMEM;
  }
  *out = b;
  return 0;
}

/* The bytes as one TEXT value (the raw sink writes them as they are). Called once per batch,
 * in batch order, by the engine's ordered path (ops_ordered_output). */
static int exec_finish(const void *cfg, const void *bc, void *partial, dbx_emit_fn emit, void *ctx,
                       dbx_buf *bcast, dbx_err *err) {
  (void)cfg; (void)bc; (void)bcast;
  const dbx_buf *b = partial;
  if (!emit || !b->len) return 0;
  dbx_value row[1];
  memset(row, 0, sizeof row);
  row[0].s = b->data;
  row[0].n = b->len;
  return emit(ctx, row, err);
}

/* ---- running the command ---- */

/* The supervisor's state, for its signal handler (it is a single-threaded copy). */
static volatile pid_t sup_child;

static void sup_stop(int sig) {
  if (sup_child > 0) kill(-sup_child, SIGKILL);
  _exit(128 + sig);
}

/* In the forked supervisor: only async-signal-safe calls from here on (the parent may have had
 * other threads). Never returns. */
static void supervise(const char *cmd, char **envp, pid_t parent, int in_r, int out_w, int err_w, int st_w) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &all, NULL);
  sa.sa_handler = sup_stop;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  sigaction(SIGQUIT, &sa, NULL);
  sa.sa_handler = SIG_DFL;
  sigaction(SIGCHLD, &sa, NULL);
  sigaction(SIGPIPE, &sa, NULL);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(126);  /* the parent died before the line above */
  pid_t c = fork();
  if (c == 0) {
    /* The command: its own process group, the three pipes, default signals. */
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() <= 1) _exit(126);
    dup2(in_r, 0);
    dup2(out_w, 1);
    dup2(err_w, 2);
    close_range(3, ~0U, 0);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    char *argv[] = {"sh", "-c", (char *)cmd, NULL};
    execve("/bin/sh", argv, envp);
    static const char msg[] = "dbatch: cannot run /bin/sh\n";
    ssize_t k = write(2, msg, sizeof msg - 1);
    (void)k;
    _exit(127);
  }
  if (c > 0) {
    setpgid(c, c);  /* also here: no window where a stop would miss the group */
    sup_child = c;
  }
  /* Keep only the status pipe: the command's pipes must close when it ends. */
  if (st_w != 3) {
    dup2(st_w, 3);
  }
  close_range(4, ~0U, 0);
  /* Nor the parent's standard streams: a job's reader waits for their end. */
  close(0);
  close(1);
  close(2);
  sigprocmask(SIG_SETMASK, &none, NULL);
  int st = 0;
  if (c < 0) _exit(125);
  while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
  sigprocmask(SIG_SETMASK, &all, NULL);
  kill(-c, SIGKILL);  /* what the command left behind in its group */
  ssize_t k = write(3, &st, sizeof st);
  (void)k;
  _exit(0);
}

/* The environment of the command: ours plus DBATCH_TASK, DBATCH_ATTEMPT, DBATCH_INPUT
 * (replacing inherited ones). OUT *envp and *store, freed by the caller. */
static int make_env(const dbx_batch *b, char ***envp, char **store) {
  size_t n = 0;
  while (environ[n]) n++;
  const char *input = b->nseg ? b->seg[0].path : "";
  size_t sl = strlen(input) + 96;
  char **e = calloc(n + 4, sizeof *e);
  char *s = malloc(sl);
  if (!e || !s) { free(e); free(s); return DBX_ENOMEM; }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "DBATCH_TASK=", 12) && strncmp(environ[i], "DBATCH_ATTEMPT=", 15) &&
        strncmp(environ[i], "DBATCH_INPUT=", 13))
      e[k++] = environ[i];
  int a = snprintf(s, sl, "DBATCH_TASK=%u", b->index);
  int t = snprintf(s + a + 1, sl - (size_t)a - 1, "DBATCH_ATTEMPT=%u", ops_task_attempt);
  snprintf(s + a + t + 2, sl - (size_t)(a + t + 2), "DBATCH_INPUT=%s", input);
  e[k++] = s;
  e[k++] = s + a + 1;
  e[k++] = s + a + t + 2;
  e[k] = NULL;
  *envp = e;
  *store = s;
  return 0;
}

/* The last ERR_LINES lines (at most ERR_BYTES bytes) of the command's standard error, one
 * line of text: "first | ... | last". */
static void err_tail(const char *ring, size_t cap, uint64_t total, char *out, size_t outcap) {
  size_t n = total < cap ? (size_t)total : cap;
  char lin[ERR_TAIL_KEEP];
  size_t start = total < cap ? 0 : (size_t)(total % cap);
  for (size_t i = 0; i < n; i++) lin[i] = ring[(start + i) % cap];
  while (n && (lin[n - 1] == '\n' || lin[n - 1] == '\r')) n--;
  size_t b = n;
  int lines = 0;
  while (b > 0 && n - b < ERR_BYTES) {
    if (lin[b - 1] == '\n' && ++lines == ERR_LINES) break;
    b--;
  }
  if (n - b > ERR_BYTES) b = n - ERR_BYTES;
  size_t k = 0;
  for (size_t i = b; i < n && k + 4 < outcap; i++) {
    unsigned char c = (unsigned char)lin[i];
    if (c == '\n') { memcpy(out + k, " | ", 3); k += 3; }
    else out[k++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
  }
  out[k] = 0;
}

/* Write to the command's stdin without SIGPIPE: the signal is blocked in this thread and a
 * pending one taken away, so a command that stops reading (head) ends the writing only. */
static ssize_t write_nosigpipe(int fd, const char *p, size_t n) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  ssize_t k = write(fd, p, n);
  int e = errno;
  if (k < 0 && e == EPIPE) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE) {}
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = e;
  return k;
}

static int exec_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st,
                    dbx_err *err) {
  (void)bcast;
  const exec_cfg *cfg = cfgp;
  dbx_buf *out = partial;
  /* The configuration came over the wire as bytes: check it before use. */
  if (!memchr(cfg->cmd, 0, sizeof cfg->cmd) || !cfg->cmd[0] || !(cfg->timeout >= 0) || !isfinite(cfg->timeout))
    return dbx_seterr(err, DBX_EPROTO, "exec: malformed configuration");
  int p_in[2] = {-1, -1}, p_out[2] = {-1, -1}, p_err[2] = {-1, -1}, p_st[2] = {-1, -1};
  char **envp = NULL, *envs = NULL;
  char *ring = NULL;
  pid_t sup = -1;
  int rc = make_env(b, &envp, &envs);
  if (rc) return rc;
  if (!(ring = malloc(ERR_TAIL_KEEP))) { rc = DBX_ENOMEM; goto done; }
  if (pipe2(p_in, O_CLOEXEC) || pipe2(p_out, O_CLOEXEC) || pipe2(p_err, O_CLOEXEC) || pipe2(p_st, O_CLOEXEC)) {
    rc = dbx_seterr(err, DBX_EIO, "exec: cannot create pipes: %s", strerror(errno));
    goto done;
  }
  pid_t self = getpid();
  sup = fork();
  if (sup < 0) {
    rc = dbx_seterr(err, DBX_EIO, "exec: cannot start the command (fork): %s", strerror(errno));
    goto done;
  }
  if (sup == 0) supervise(cfg->cmd, envp, self, p_in[0], p_out[1], p_err[1], p_st[1]);
  close(p_in[0]); close(p_out[1]); close(p_err[1]); close(p_st[1]);
  p_in[0] = p_out[1] = p_err[1] = p_st[1] = -1;
  fcntl(p_in[1], F_SETFL, O_NONBLOCK);
  /* Bigger pipes (up to /proc/sys/fs/pipe-max-size, 1 MiB by default): a 16 MB batch then
   * crosses in a few dozen wake-ups instead of hundreds. Best effort. */
  fcntl(p_in[1], F_SETPIPE_SZ, 1 << 20);
  fcntl(p_out[0], F_SETPIPE_SZ, 1 << 20);
  if (b->size == 0) { close(p_in[1]); p_in[1] = -1; }

  double deadline = cfg->timeout > 0 ? time_mono() + cfg->timeout : 0;
  int timed_out = 0, have_status = 0, status = 0;
  size_t sent = 0, stlen = 0;
  uint64_t errtotal = 0;
  char stbuf[sizeof(int)];
  for (;;) {
    struct pollfd pf[4];
    int np = 0, iin = -1, iout = -1, ierr = -1, ist = -1;
    if (p_in[1] >= 0) { iin = np; pf[np++] = (struct pollfd){p_in[1], POLLOUT, 0}; }
    if (p_out[0] >= 0) { iout = np; pf[np++] = (struct pollfd){p_out[0], POLLIN, 0}; }
    if (p_err[0] >= 0) { ierr = np; pf[np++] = (struct pollfd){p_err[0], POLLIN, 0}; }
    if (p_st[0] >= 0) { ist = np; pf[np++] = (struct pollfd){p_st[0], POLLIN, 0}; }
    if (!np) break;
    int wait = -1;
    if (deadline > 0 && !timed_out) {
      double left = deadline - time_mono();
      wait = left <= 0 ? 0 : left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
    }
    int n = poll(pf, (nfds_t)np, wait);
    if (n < 0 && errno != EINTR) {
      rc = dbx_seterr(err, DBX_EIO, "exec: poll: %s", strerror(errno));
      break;
    }
    if (deadline > 0 && !timed_out && time_mono() >= deadline) {
      timed_out = 1;
      kill(sup, SIGTERM);  /* the supervisor kills the command's group and exits */
      if (p_in[1] >= 0) { close(p_in[1]); p_in[1] = -1; }
    }
    if (n <= 0) continue;
    if (iin >= 0 && pf[iin].revents) {
      size_t chunk = b->size - sent < (1u << 20) ? b->size - sent : (1u << 20);
      ssize_t k = write_nosigpipe(p_in[1], b->data + sent, chunk);
      if (k > 0) sent += (size_t)k;
      /* EPIPE: the command stopped reading (head -1); its output still counts. */
      if ((k < 0 && errno != EAGAIN && errno != EINTR) || sent == b->size) {
        close(p_in[1]);
        p_in[1] = -1;
      }
    }
    if (iout >= 0 && pf[iout].revents) {
      if (dbx_buf_reserve(out, 1 << 20)) { rc = DBX_ENOMEM; break; }
      ssize_t k = read(p_out[0], out->data + out->len, out->cap - out->len);
      if (k > 0) out->len += (size_t)k;
      else if (k == 0 || (errno != EAGAIN && errno != EINTR)) { close(p_out[0]); p_out[0] = -1; }
    }
    if (ierr >= 0 && pf[ierr].revents) {
      char tmp[4096];
      ssize_t k = read(p_err[0], tmp, sizeof tmp);
      if (k > 0) {
        for (ssize_t i = 0; i < k; i++) ring[(errtotal + (uint64_t)i) % ERR_TAIL_KEEP] = tmp[i];
        errtotal += (uint64_t)k;
      } else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(p_err[0]);
        p_err[0] = -1;
      }
    }
    if (ist >= 0 && pf[ist].revents) {
      ssize_t k = read(p_st[0], stbuf + stlen, sizeof stbuf - stlen);
      if (k > 0) stlen += (size_t)k;
      if (stlen == sizeof stbuf) { memcpy(&status, stbuf, sizeof status); have_status = 1; }
      if (k == 0 || have_status || (k < 0 && errno != EAGAIN && errno != EINTR)) { close(p_st[0]); p_st[0] = -1; }
    }
  }
  int sst = 0;
  while (waitpid(sup, &sst, 0) < 0 && errno == EINTR) {}
  sup = -1;
  if (rc) goto done;
  char tail[ERR_BYTES + 64] = "";
  err_tail(ring, ERR_TAIL_KEEP, errtotal, tail, sizeof tail);
  char why[128];
  if (timed_out) {
    snprintf(why, sizeof why, "the command timed out after %.1f s (--task-timeout); its process group was killed",
             cfg->timeout);
  } else if (!have_status) {
    snprintf(why, sizeof why, "the command's supervisor ended without its status (%s %d)",
             WIFSIGNALED(sst) ? "signal" : "exit", WIFSIGNALED(sst) ? WTERMSIG(sst) : WEXITSTATUS(sst));
  } else if (WIFSIGNALED(status)) {
    snprintf(why, sizeof why, "the command was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    snprintf(why, sizeof why, "the command exited with status %d", WEXITSTATUS(status));
  } else {
    why[0] = 0;
  }
  if (why[0]) {
    rc = dbx_seterr(err, DBX_ETASK, "%s%s%s", why, tail[0] ? "; its standard error ended with: " : "", tail);
    goto done;
  }
  /* Records: the lines the command was given. */
  uint64_t recs = 0;
  for (const char *p = b->data, *e = b->data + b->size; p < e && (p = memchr(p, '\n', (size_t)(e - p))); p++) recs++;
  st->records += recs;
done:
  if (sup > 0) {
    kill(sup, SIGTERM);
    while (waitpid(sup, NULL, 0) < 0 && errno == EINTR) {}
  }
  int fds[] = {p_in[0], p_in[1], p_out[0], p_out[1], p_err[0], p_err[1], p_st[0], p_st[1]};
  for (size_t i = 0; i < sizeof fds / sizeof *fds; i++)
    if (fds[i] >= 0) close(fds[i]);
  free(ring);
  free(envp);
  free(envs);
  return rc;
}


static const char *const exec_names[] = {"output"};
static const dbx_coltype exec_types[] = {DBX_COL_TEXT};
static const dbx_schema exec_schema = {1, exec_names, exec_types};

const dbx_op op_exec = {
    "exec", exec_new, exec_free, exec_map, exec_merge, exec_encode, exec_decode, exec_finish,
    NULL, NULL, &exec_schema, sizeof(exec_cfg), NULL,
};
