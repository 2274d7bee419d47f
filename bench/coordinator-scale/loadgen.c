/* loadgen.c -- bench/coordinator-scale: one process that plays N workers against one real
 * coordinator (`dbatch bench-tasks --workers 0 --listen ...`), which it starts itself.
 *
 * Each played worker is a ZeroMQ DEALER of its own (one TCP connection, CURVE when keys are
 * given) speaking the real protocol (docs/protocol.md): hello with 1..4 slots, a result for
 * every task of the noop operator at once (its partial: the msgpack uint 1, what
 * ops/noop.c encodes for one batch), heartbeats every --heartbeat like a real worker. The
 * sockets are served from one epoll loop over their ZMQ_FDs, so the load generator costs
 * O(active connections), not O(N), per message.
 *
 * Phases of one run, measured on the coordinator through /proc/PID:
 *   1. start the coordinator, wait for "waiting for workers": baseline RSS
 *   2. N-1 workers join (at most --join-window handshakes outstanding, the coordinator's
 *      listen backlog is 100): idle RSS, so (idle - baseline) / (N-1) is the memory of a
 *      joined worker with nothing in flight
 *   3. the N-th worker says hello (--wait-workers N): tasks flow; after --warmup seconds
 *      the rate, CPU seconds (per thread: the main loop, ZeroMQ's I/O thread, the rest)
 *      and RSS are taken over --measure seconds
 *   4. every 10th worker goes silent (no heartbeat, no result; it reads nothing either);
 *      the others keep working. Detection is the coordinator's own log line naming the
 *      played worker's pid: "worker K (loadgen pid P) was silent for ... (--worker-timeout)"
 *   5. SIGTERM to the coordinator; one line "RESULT key=value ..." on standard output
 *      (bench/coordinator-scale/run turns these into its table).
 *
 * Usage: loadgen --workers N [--worker-key FILE --coordinator-key FILE.pub] [options]
 *                -- COORDINATOR ARGV...   (the word PORT in it is replaced by a free port)
 * Options: --warmup S (1), --measure S (4), --worker-timeout S (how long to wait for the
 * detections: S + 20), --silent FRACTION (0.1; 0 skips phase 4, e.g. against floor.c),
 * --join-window K (100), --perf FILE / --perf-join FILE (`perf record -g` of the coordinator
 * over the window / the join). LOADGEN_HOOK="shell command" runs once after the window with
 * COORD_PID set (gdb, /proc/PID/smaps, ...). */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <getopt.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

enum { MSG_HELLO = 1, MSG_WELCOME, MSG_REFUSE, MSG_STAGE, MSG_TASK, MSG_RESULT, MSG_FAILURE, MSG_HEARTBEAT,
       MSG_CANCEL, MSG_BYE, MSG_REHELLO };
#define PROTO_VERSION 1
#define PID_BASE 1000000   /* played worker i says pid PID_BASE + i in its hello */
#define STDERR_TAG UINT32_MAX

typedef struct conn {
  void *s;
  int fd;
  int state;            /* 0 idle, 1 connected + hello sent, 2 welcomed */
  int silent;           /* stopped answering: sends nothing, reads nothing */
  int gone;             /* the coordinator said bye */
  uint32_t slots;
  double last_sent, hello_at, detected;
  double said;          /* "was silent for S s": the silence the coordinator saw */
  double first_task;    /* when its first task came */
} conn;

static conn *C;
static size_t N;
static int ep = -1;
static double hb = 1.0;
static uint64_t results, tasks_in, cancels, heartbeats, send_fail, welcomed, rehellos, refused;
static char key_pub[41], key_sec[41], coord_pub[41];
static int keyed;
static msgpack_sbuffer sb;
static msgpack_packer pk;
static msgpack_unpacked up;
static pid_t coord_pid;
static int errfd = -1;
static char errbuf[65536];
static size_t errlen;
static char lastlines[8][400];
static unsigned nlast;
static size_t ndetected, nfed;
static unsigned long false_silent;  /* working connections the coordinator took for silent */
static double t_silence;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, const char *a) {
  fprintf(stderr, "loadgen: ");
  fprintf(stderr, fmt, a);
  fputc('\n', stderr);
  for (unsigned k = nlast > 8 ? nlast - 8 : 0; k < nlast; k++) fprintf(stderr, "  coordinator: %s\n", lastlines[k % 8]);
  if (coord_pid > 0) kill(coord_pid, SIGKILL);
  exit(1);
}

/* ---- the coordinator process, seen through /proc ---- */

typedef struct cpu {
  double main, io, other;  /* CPU seconds: its main thread, ZeroMQ's I/O threads, the rest */
  double main_wait, io_wait;  /* seconds runnable but waiting for a CPU (schedstat) */
} cpu;

static double ticks(void) { return (double)sysconf(_SC_CLK_TCK); }

static int read_file(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = 0;
  return (int)n;
}

/* utime + stime of /proc/.../stat (fields 14, 15, after the "(comm)"). */
static double stat_cpu(const char *path) {
  char b[1024];
  if (read_file(path, b, sizeof b) < 0) return 0;
  char *p = strrchr(b, ')');
  if (!p) return 0;
  unsigned long ut = 0, st = 0;
  /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return 0;
  return (double)(ut + st) / ticks();
}


static cpu coord_cpu(void) {
  cpu c = {0, 0, 0, 0, 0};
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/task", (int)coord_pid);
  DIR *d = opendir(dir);
  if (!d) return c;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    char p[512], comm[64] = "", ss[128] = "";
    snprintf(p, sizeof p, "%s/%.32s/comm", dir, de->d_name);
    read_file(p, comm, sizeof comm);
    snprintf(p, sizeof p, "%s/%.32s/stat", dir, de->d_name);
    double t = stat_cpu(p);
    snprintf(p, sizeof p, "%s/%.32s/schedstat", dir, de->d_name);
    unsigned long long on = 0, wait = 0;
    if (read_file(p, ss, sizeof ss) > 0) sscanf(ss, "%llu %llu", &on, &wait);
    if (atoi(de->d_name) == (int)coord_pid) c.main += t, c.main_wait += (double)wait / 1e9;
    else if (!strncmp(comm, "ZMQbg/IO", 8)) c.io += t, c.io_wait += (double)wait / 1e9;
    else c.other += t;
  }
  closedir(d);
  return c;
}

/* VmRSS and VmHWM of the coordinator, KiB. */
static void coord_mem(long *rss, long *hwm) {
  char b[4096], p[64];
  *rss = *hwm = 0;
  snprintf(p, sizeof p, "/proc/%d/status", (int)coord_pid);
  if (read_file(p, b, sizeof b) < 0) return;
  char *x = strstr(b, "VmRSS:");
  if (x) *rss = strtol(x + 6, NULL, 10);
  x = strstr(b, "VmHWM:");
  if (x) *hwm = strtol(x + 6, NULL, 10);
}

/* Seconds the threads of the load generator were runnable but waited for a CPU. */
static double self_wait(void) {
  double w = 0;
  DIR *d = opendir("/proc/self/task");
  if (!d) return 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    char p[300], ss[128] = "";
    snprintf(p, sizeof p, "/proc/self/task/%.32s/schedstat", de->d_name);
    unsigned long long on = 0, wait = 0;
    if (read_file(p, ss, sizeof ss) > 0 && sscanf(ss, "%llu %llu", &on, &wait) == 2) w += (double)wait / 1e9;
  }
  closedir(d);
  return w;
}

static double self_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---- the coordinator's standard error: readiness and detections ---- */

static int coord_ready;
static unsigned other_lines;

static void on_line(char *line) {
  snprintf(lastlines[nlast++ % 8], sizeof lastlines[0], "%.380s", line);
  if (strstr(line, "waiting for workers")) { coord_ready = 1; return; }
  /* "dbatch: warning: worker K (HOST pid P) was silent for S s (--worker-timeout)"; the
   * failed attempts it held are logged too, with the same words later in the line. */
  char *w = strstr(line, "warning: worker ");
  char *s = strstr(line, ") was silent for");
  char *p = strstr(line, " pid ");
  if (w && s && p && p < s) {
    long long pid = strtoll(p + 5, NULL, 10);
    if (pid >= PID_BASE && (size_t)(pid - PID_BASE) < N) {
      conn *c = &C[pid - PID_BASE];
      if (c->silent && !c->detected) {
        c->detected = now_s();
        c->said = strtod(s + 16, NULL);
        ndetected++;
      }
      else if (!c->silent && false_silent++ < 5) fprintf(stderr, "loadgen: a working connection was declared silent: %s\n", line);
    }
    return;
  }
  if (other_lines++ < 20) fprintf(stderr, "  coordinator: %s\n", line);
}

static void read_stderr(void) {
  for (;;) {
    ssize_t n = read(errfd, errbuf + errlen, sizeof errbuf - 1 - errlen);
    if (n <= 0) return;
    errlen += (size_t)n;
    errbuf[errlen] = 0;
    char *start = errbuf, *nl;
    while ((nl = memchr(start, '\n', errlen - (size_t)(start - errbuf))) != NULL) {
      *nl = 0;
      on_line(start);
      start = nl + 1;
    }
    errlen -= (size_t)(start - errbuf);
    memmove(errbuf, start, errlen);
    if (errlen == sizeof errbuf - 1) errlen = 0;  /* an absurd line: drop it */
  }
}

static int free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || getsockname(s, (struct sockaddr *)&a, &l)) die("%s", "no free port");
  close(s);
  return ntohs(a.sin_port);
}

static void spawn_coordinator(char **argv, int port) {
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  for (char **a = argv; *a; a++) {
    char *p = strstr(*a, "PORT");
    if (!p) continue;
    char *x = malloc(strlen(*a) + 16);
    sprintf(x, "%.*s%s%s", (int)(p - *a), *a, portstr, p + 4);
    *a = x;
  }
  int pf[2];
  if (pipe2(pf, O_CLOEXEC)) die("pipe: %s", strerror(errno));
  coord_pid = fork();
  if (coord_pid < 0) die("fork: %s", strerror(errno));
  if (coord_pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(pf[1], 2);
    execvp(argv[0], argv);
    fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(pf[1]);
  errfd = pf[0];
  fcntl(errfd, F_SETFL, O_NONBLOCK);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDERR_TAG};
  epoll_ctl(ep, EPOLL_CTL_ADD, errfd, &ev);
}

/* ---- the played workers ---- */

static void *zctx;
static char endpoint[64];

static void pack_head(int type, uint32_t nfields) {
  msgpack_sbuffer_clear(&sb);
  msgpack_pack_array(&pk, 3 + nfields);
  msgpack_pack_str_with_body(&pk, "DBX", 3);
  msgpack_pack_uint64(&pk, PROTO_VERSION);
  msgpack_pack_uint64(&pk, (uint64_t)type);
}

static void send_sb(size_t i) {
  conn *c = &C[i];
  if (zmq_send(c->s, sb.data, sb.size, ZMQ_DONTWAIT) < 0) send_fail++;
  c->last_sent = now_s();
}

static void send_hello(size_t i) {
  if (C[i].state == 2) welcomed--;  /* asked to say hello again (rehello) */
  pack_head(MSG_HELLO, 4);
  msgpack_pack_uint64(&pk, C[i].slots);
  msgpack_pack_str_with_body(&pk, "loadgen", 7);
  msgpack_pack_uint64(&pk, PID_BASE + (uint64_t)i);
  msgpack_pack_true(&pk);
  send_sb(i);
  C[i].hello_at = C[i].last_sent;
  C[i].state = 1;
}

static void open_conn(size_t i) {
  conn *c = &C[i];
  c->s = zmq_socket(zctx, ZMQ_DEALER);
  if (!c->s) die("zmq_socket: %s", zmq_strerror(zmq_errno()));
  int zero = 0, ivl = 100;
  zmq_setsockopt(c->s, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(c->s, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
  if (keyed && (zmq_setsockopt(c->s, ZMQ_CURVE_SERVERKEY, coord_pub, 40) || zmq_setsockopt(c->s, ZMQ_CURVE_PUBLICKEY, key_pub, 40) ||
                zmq_setsockopt(c->s, ZMQ_CURVE_SECRETKEY, key_sec, 40)))
    die("CURVE keys: %s", zmq_strerror(zmq_errno()));
  size_t fl = sizeof c->fd;
  zmq_getsockopt(c->s, ZMQ_FD, &c->fd, &fl);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev)) die("epoll_ctl: %s", strerror(errno));
  if (zmq_connect(c->s, endpoint)) die("zmq_connect: %s", zmq_strerror(zmq_errno()));
  c->slots = 1 + (uint32_t)(i % 4);
  send_hello(i);
}

static void handle(size_t i, const char *data, size_t len) {
  size_t off = 0;
  if (msgpack_unpack_next(&up, data, len, &off) != MSGPACK_UNPACK_SUCCESS) return;
  const msgpack_object *o = &up.data;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 3) return;
  const msgpack_object *a = o->via.array.ptr;
  if (a[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER) return;
  conn *c = &C[i];
  switch ((int)a[2].via.u64) {
  case MSG_WELCOME:
    if (c->state != 2) welcomed++;
    c->state = 2;
    if (o->via.array.size >= 5 && a[4].via.u64) hb = (double)a[4].via.u64 / 1000.0;
    break;
  case MSG_REFUSE:
    refused++;
    die("%s", "the coordinator refused a played worker");
    break;
  case MSG_TASK: {
    tasks_in++;
    if (!c->first_task) { c->first_task = now_s(); nfed++; }
    if (o->via.array.size < 6) return;
    static const char partial[1] = {0x01};  /* ops/noop.c: msgpack uint, 1 batch */
    pack_head(MSG_RESULT, 9);
    msgpack_pack_uint64(&pk, a[3].via.u64);  /* stage */
    msgpack_pack_uint64(&pk, a[4].via.u64);  /* index */
    msgpack_pack_uint64(&pk, a[5].via.u64);  /* attempt */
    msgpack_pack_uint64(&pk, 0);             /* records */
    msgpack_pack_uint64(&pk, 0);             /* bad records */
    msgpack_pack_uint64(&pk, 0);             /* bytes */
    msgpack_pack_double(&pk, 2e-6);          /* map seconds: a noop task's */
    msgpack_pack_bin_with_body(&pk, partial, 1);
    msgpack_pack_str_with_body(&pk, "", 0);
    send_sb(i);
    results++;
    break;
  }
  case MSG_CANCEL: cancels++; break;
  case MSG_BYE: c->gone = 1; break;
  case MSG_REHELLO: rehellos++; send_hello(i); break;
  default: break;  /* STAGE, HEARTBEAT */
  }
}

static zmq_msg_t zm;

/* Read everything waiting on connection i. ZMQ_FD signals edges of ZeroMQ's own command
 * queue: after any operation on the socket, ZMQ_EVENTS says whether more is readable. */
static void service(size_t i) {
  conn *c = &C[i];
  if (!c->s || c->silent) return;
  for (;;) {
    while (zmq_msg_recv(&zm, c->s, ZMQ_DONTWAIT) >= 0) handle(i, zmq_msg_data(&zm), zmq_msg_size(&zm));
    int ev = 0;
    size_t el = sizeof ev;
    if (zmq_getsockopt(c->s, ZMQ_EVENTS, &ev, &el) || !(ev & ZMQ_POLLIN)) break;
  }
}

/* ---- the event loop ---- */

static size_t next_conn, join_limit, join_window = 100;
static double last_hb_sweep, last_full_sweep;

static void pump(double dt) {
  struct epoll_event evs[512];
  double until = now_s() + dt;
  for (;;) {
    double now = now_s();
    /* Joins: at most join_window handshakes outstanding. */
    while (next_conn < join_limit && (next_conn - welcomed) < join_window) open_conn(next_conn++);
    if (now - last_hb_sweep >= 0.05) {
      for (size_t i = 0; i < next_conn; i++) {
        conn *c = &C[i];
        if (c->silent || c->gone) continue;
        if (c->state == 2 && now - c->last_sent >= hb) {
          pack_head(MSG_HEARTBEAT, 0);
          send_sb(i);
          heartbeats++;
          service(i);
        } else if (c->state == 1 && now - c->hello_at >= 2 * hb) {
          send_hello(i);
          service(i);
        }
      }
      last_hb_sweep = now;
    }
    if (now - last_full_sweep >= 0.25) {  /* a safety net under the edge logic above */
      for (size_t i = 0; i < next_conn; i++) service(i);
      last_full_sweep = now;
    }
    if (now >= until) return;
    int ms = (int)((until - now) * 1000) + 1;
    if (ms > 10) ms = 10;
    int n = epoll_wait(ep, evs, 512, ms);
    for (int k = 0; k < n; k++) {
      if (evs[k].data.u32 == STDERR_TAG) read_stderr();
      else service(evs[k].data.u32);
    }
    int st;
    if (coord_pid > 0 && waitpid(coord_pid, &st, WNOHANG) == coord_pid) {
      coord_pid = 0;
      read_stderr();
      die("%s", "the coordinator exited");
    }
  }
}

static void read_key(const char *path, char *pub, char *sec) {
  FILE *f = fopen(path, "r");
  if (!f) die("cannot read %s", path);
  char line[512];
  while (fgets(line, sizeof line, f)) {
    char k[41];
    if (sec && sscanf(line, "secret-key %40s", k) == 1) memcpy(sec, k, 41);
    else if (sscanf(line, "public-key %40s", k) == 1) memcpy(pub, k, 41);
    else if (!sec && line[0] != '#' && sscanf(line, "%40s", k) == 1 && strlen(k) == 40) memcpy(pub, k, 41);
  }
  fclose(f);
}

/* --perf FILE: `perf record -g` of the coordinator over the measurement window. */
static pid_t start_perf(const char *out, double secs) {
  char pid[16], dur[32];
  snprintf(pid, sizeof pid, "%d", (int)coord_pid);
  snprintf(dur, sizeof dur, "%.3f", secs);
  pid_t p = fork();
  if (p == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 1);
    dup2(null, 2);
    execlp("perf", "perf", "record", "-F", "999", "-g", "-p", pid, "-o", out, "--", "sleep", dur, (char *)NULL);
    _exit(127);
  }
  return p;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  double warmup = 1.0, measure = 4.0, worker_timeout = 3.0, silent_frac = 0.1;
  const char *wkey = NULL, *ckey = NULL, *perf_out = NULL, *perf_join = NULL;
  static const struct option lo[] = {
      {"workers", required_argument, NULL, 'n'},      {"worker-key", required_argument, NULL, 'k'},
      {"coordinator-key", required_argument, NULL, 'c'}, {"warmup", required_argument, NULL, 'w'},
      {"measure", required_argument, NULL, 'm'},      {"worker-timeout", required_argument, NULL, 't'},
      {"silent", required_argument, NULL, 's'},       {"join-window", required_argument, NULL, 'j'},
      {"perf", required_argument, NULL, 'p'},         {"perf-join", required_argument, NULL, 'J'},
      {NULL, 0, NULL, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "+", lo, NULL)) != -1) {
    switch (o) {
    case 'n': N = strtoul(optarg, NULL, 10); break;
    case 'k': wkey = optarg; break;
    case 'c': ckey = optarg; break;
    case 'w': warmup = atof(optarg); break;
    case 'm': measure = atof(optarg); break;
    case 't': worker_timeout = atof(optarg); break;
    case 's': silent_frac = atof(optarg); break;  /* 0: no silence phase */
    case 'j': join_window = strtoul(optarg, NULL, 10); break;
    case 'p': perf_out = optarg; break;
    case 'J': perf_join = optarg; break;
    default: return 2;
    }
  }
  if (N < 2 || optind >= argc) {
    fprintf(stderr, "usage: loadgen --workers N [--worker-key FILE --coordinator-key FILE.pub] -- COORDINATOR ARGV\n");
    return 2;
  }
  if (wkey && ckey) {
    read_key(wkey, key_pub, key_sec);
    read_key(ckey, coord_pub, NULL);
    if (strlen(key_pub) != 40 || strlen(key_sec) != 40 || strlen(coord_pub) != 40) die("%s", "bad key files");
    keyed = 1;
  }
  signal(SIGPIPE, SIG_IGN);
  C = calloc(N, sizeof *C);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_unpacked_init(&up);
  zmq_msg_init(&zm);
  zctx = zmq_ctx_new();
  zmq_ctx_set(zctx, ZMQ_MAX_SOCKETS, (int)N + 64);
  ep = epoll_create1(EPOLL_CLOEXEC);
  int port = free_port();
  snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);

  /* 1. the coordinator, listening, no workers */
  double t0 = now_s();
  spawn_coordinator(argv + optind, port);
  while (!coord_ready && now_s() - t0 < 30) pump(0.02);
  if (!coord_ready) die("%s", "the coordinator never said it was waiting for workers");
  pump(0.3);
  long base_rss, base_hwm;
  coord_mem(&base_rss, &base_hwm);

  /* 2. N-1 workers join */
  double tj = now_s();
  pid_t pj = perf_join ? start_perf(perf_join, 600) : 0;
  join_limit = N - 1;
  while (welcomed < N - 1 && now_s() - tj < 120) pump(0.02);
  if (pj > 0) {
    kill(pj, SIGINT);
    while (waitpid(pj, NULL, WNOHANG) != pj) pump(0.05);
  }
  if (welcomed < N - 1) die("%s", "not every played worker was welcomed within 120 s");
  double join_s = now_s() - tj;
  pump(0.5);
  long idle_rss, idle_hwm;
  coord_mem(&idle_rss, &idle_hwm);
  cpu cj = coord_cpu();

  /* 3. the N-th: tasks flow */
  join_limit = N;
  double tw = now_s();
  while (welcomed < N && now_s() - tw < 10) pump(0.01);
  /* fill: from the last welcome until every worker has its first task (the coordinator's
   * first placement pass over all of them). */
  double tn = now_s();
  while (nfed < N && now_s() - tn < 60) pump(0.01);
  double fill_s = now_s() - tn;
  pump(warmup);
  uint64_t r0 = results;
  cpu c0 = coord_cpu();
  double l0 = self_cpu(), lw0 = self_wait(), w0 = now_s();
  long rss0, hwm0;
  coord_mem(&rss0, &hwm0);
  pid_t perf = perf_out ? start_perf(perf_out, measure) : 0;
  /* The rate of the window's first and last second too: does it fall as tasks pile up? */
  double seg = measure >= 3 ? 1.0 : measure / 3;
  pump(seg);
  double rate_first = (double)(results - r0) / (now_s() - w0);
  pump(measure - 2 * seg);
  uint64_t rl = results;
  double tl = now_s();
  pump(seg);
  double rate_last = (double)(results - rl) / (now_s() - tl);
  uint64_t r1 = results;
  cpu c1 = coord_cpu();
  double l1 = self_cpu(), lw1 = self_wait(), w1 = now_s();
  long rss1, hwm1;
  coord_mem(&rss1, &hwm1);
  /* LOADGEN_HOOK: a shell command run here (diagnostics), with COORD_PID set. The played
   * workers wait meanwhile. */
  const char *hook = getenv("LOADGEN_HOOK");
  if (hook && *hook) {
    char pidenv[16];
    snprintf(pidenv, sizeof pidenv, "%d", (int)coord_pid);
    setenv("COORD_PID", pidenv, 1);
    if (system(hook) != 0) fprintf(stderr, "loadgen: LOADGEN_HOOK failed\n");
  }
  /* perf writes its file after the window: keep the workers working meanwhile. */
  while (perf > 0 && waitpid(perf, NULL, WNOHANG) != perf) pump(0.05);

  /* 4. every 10th worker goes silent; the rest keep working */
  size_t nsilent = 0, every = silent_frac > 0 ? (size_t)(1.0 / silent_frac + 0.5) : 0;
  t_silence = now_s();
  for (size_t i = 0; every && i < N; i++)
    if (i % every == every / 2) {
      C[i].silent = 1;
      epoll_ctl(ep, EPOLL_CTL_DEL, C[i].fd, NULL);
      nsilent++;
    }
  uint64_t rs0 = results;
  while (ndetected < nsilent && now_s() - t_silence < worker_timeout + 20) pump(0.05);
  if (!nsilent) pump(0.1);
  double t_end_silent = now_s();
  uint64_t rs1 = results;
  long rss2, hwm2;
  coord_mem(&rss2, &hwm2);
  cpu c2 = coord_cpu();

  /* Detection latency, from the moment the workers went silent; and the lag: how much
   * later than that the coordinator's own count of the silence started (the time their last
   * messages waited in its queues before it read them). */
  double *lat = calloc(nsilent + 1, sizeof *lat), *lag = calloc(nsilent + 1, sizeof *lag);
  size_t nl = 0;
  for (size_t i = 0; i < N; i++)
    if (C[i].silent && C[i].detected) {
      lat[nl] = C[i].detected - t_silence;
      lag[nl++] = C[i].detected - t_silence - C[i].said;
    }
  qsort(lat, nl, sizeof *lat, cmp_d);
  qsort(lag, nl, sizeof *lag, cmp_d);

  /* 5. stop the coordinator */
  kill(coord_pid, SIGTERM);
  double tk = now_s();
  int st;
  while (coord_pid > 0 && now_s() - tk < 10) {
    if (waitpid(coord_pid, &st, WNOHANG) == coord_pid) { coord_pid = 0; break; }
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, 10);
    for (int k = 0; k < n; k++)
      if (evs[k].data.u32 == STDERR_TAG) read_stderr();
      else service(evs[k].data.u32);
  }
  if (coord_pid > 0) { kill(coord_pid, SIGKILL); waitpid(coord_pid, &st, 0); }

  double win = w1 - w0;
  printf("RESULT n=%zu curve=%d join_s=%.2f fill_s=%.2f base_rss_kb=%ld idle_rss_kb=%ld rss_w0_kb=%ld rss_w1_kb=%ld "
         "hwm_kb=%ld tasks_before_w0=%llu tasks_window=%llu window_s=%.3f rate=%.0f rate_first=%.0f rate_last=%.0f "
         "cpu_main=%.2f cpu_io=%.2f cpu_other=%.2f wait_main=%.2f wait_io=%.2f cpu_join=%.2f loadgen_cpu=%.2f loadgen_wait=%.2f "
         "silent=%zu detected=%zu det_min=%.2f det_med=%.2f det_max=%.2f lag_med=%.2f lag_max=%.2f worker_timeout=%.1f "
         "rate_during_silence=%.0f cpu_silence=%.2f tasks_end=%llu false_silent=%lu send_fail=%llu rehello=%llu cancels=%llu\n",
         N, keyed, join_s, fill_s, base_rss, idle_rss, rss0, rss1, hwm2 > hwm1 ? hwm2 : hwm1, (unsigned long long)r0,
         (unsigned long long)(r1 - r0), win, (double)(r1 - r0) / win, rate_first, rate_last, c1.main - c0.main, c1.io - c0.io,
         c1.other - c0.other, c1.main_wait - c0.main_wait, c1.io_wait - c0.io_wait, (cj.main + cj.io + cj.other), l1 - l0, lw1 - lw0, nsilent, nl, nl ? lat[0] : -1,
         nl ? lat[nl / 2] : -1, nl ? lat[nl - 1] : -1, nl ? lag[nl / 2] : -1, nl ? lag[nl - 1] : -1, worker_timeout,
         (double)(rs1 - rs0) / (t_end_silent - t_silence),
         (c2.main + c2.io + c2.other) - (c1.main + c1.io + c1.other), (unsigned long long)rs1, false_silent, (unsigned long long)send_fail,
         (unsigned long long)rehellos, (unsigned long long)cancels);
  fflush(stdout);
  for (size_t i = 0; i < N; i++)
    if (C[i].s) zmq_close(C[i].s);
  zmq_msg_close(&zm);
  zmq_ctx_term(zctx);
  return 0;
}
