/* status.c -- `dbatch status JOB_DIR|URL`: a job's live or final state in the terminal, and
 * as the exit status (so scripts can wait on a job). */
#define _GNU_SOURCE 1 /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/json.h"
#include "util/log.h"
#include "util/timeutil.h"

/* Exit statuses of `dbatch status` beyond EXIT_OK/EXIT_FAIL/EXIT_USAGE/EXIT_PARTIAL. */
enum { EXIT_LOST = 4 };

/* Replies larger than this are not a dashboard's: the status text is a few KB per 100 workers. */
#define STATUS_MAX_REPLY (64u << 20)
/* A running job's status file is rewritten every second; one this much older, whose
 * coordinator cannot be checked from here, is lost. */
#define STALE_SECONDS 5.0
/* A coordinator of this host whose process is alive but whose status file was not
 * refreshed for this long is not responding (stopped, or stuck): lost too. (Generous: a
 * coordinator busy in a long final merge does not refresh.) */
#define HUNG_SECONDS 30.0

static const char help[] =
    "Usage: dbatch status [--timeout SECS] JOB_DIR|URL\n"
    "Print the state of a job: live from its dashboard (http://HOST:PORT/, as printed by\n"
    "--dashboard) or from its job directory (status.txt next to status.json, written every\n"
    "second while it runs and at the end).\n"
    "\n"
    "  --timeout SECS  give up on a dashboard that does not answer in full within SECS\n"
    "                  seconds (default 10)\n"
    "\n"
    "A job directory whose job still says \"running\" but whose coordinator is gone (its\n"
    "process no longer exists, or, on another host, its status was not refreshed for 5 s)\n"
    "is reported as lost (a job run with --job-dir can be resumed: 'dbatch resume JOB_DIR').\n"
    "So is one whose coordinator process on this host is alive but has not refreshed its\n"
    "status for 30 s: it is not responding (stopped or stuck; a coordinator busy in a long\n"
    "final merge may also stop refreshing for a while).\n"
    "\n"
    "Exit status:\n"
    "  0  the job is starting, running, or done\n"
    "  1  the job failed (its error is shown), or its state cannot be read\n"
    "  2  usage error\n"
    "  3  the job finished without some input (--on-task-failure=skip): done with skipped input\n"
    "  4  the job is lost: its coordinator ended without finishing it, or is not responding\n";

/* Milliseconds left before deadline (at least 0), for poll(). */
static int ms_left(double deadline) {
  double left = deadline - time_mono();
  if (left <= 0) return 0;
  return left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
}

/* Wait until fd is ready for events or the deadline passes: 1 ready, 0 timed out, <0 errno. */
static int wait_fd(int fd, short events, double deadline) {
  for (;;) {
    struct pollfd p = {fd, events, 0};
    int n = poll(&p, 1, ms_left(deadline));
    if (n > 0) return 1;
    if (n == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

/* A connected socket to one of ai's addresses within the deadline, or -1 with a reason. */
static int dial(const struct addrinfo *ai, double deadline, char *why, size_t cap) {
  snprintf(why, cap, "no address");
  for (; ai; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) { snprintf(why, cap, "%s", strerror(errno)); continue; }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
    if (errno != EINPROGRESS) { snprintf(why, cap, "%s", strerror(errno)); close(fd); continue; }
    int w = wait_fd(fd, POLLOUT, deadline);
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (w > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) return fd;
    if (w == 0) snprintf(why, cap, "timed out");
    else snprintf(why, cap, "%s", strerror(w < 0 ? -w : soerr ? soerr : errno));
    close(fd);
    if (w == 0) return -1;
  }
  return -1;
}

/* Split "http://HOST[:PORT][/...]" (HOST may be "[v6]") into host and port. */
static int parse_url(const char *url, char *host, size_t hcap, char *port, size_t pcap, dbx_err *err) {
  const char *p = url + 7, *end = p + strcspn(p, "/?#");
  const char *hs = p, *he, *ps = NULL;
  if (*p == '[') {
    hs = p + 1;
    he = memchr(hs, ']', (size_t)(end - hs));
    if (!he) return dbx_seterr(err, DBX_EUSAGE, "%.200s: unclosed '[' in the address", url);
    if (he + 1 < end) {
      if (he[1] != ':') return dbx_seterr(err, DBX_EUSAGE, "%.200s: expected ':PORT' after ']'", url);
      ps = he + 2;
    }
  } else {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    he = colon ? colon : end;
    if (colon) ps = colon + 1;
  }
  size_t hl = (size_t)(he - hs);
  if (hl == 0) return dbx_seterr(err, DBX_EUSAGE, "%.200s: no host name", url);
  if (hl >= hcap) return dbx_seterr(err, DBX_EUSAGE, "%.200s: host name longer than %zu bytes", url, hcap - 1);
  memcpy(host, hs, hl);
  host[hl] = 0;
  snprintf(port, pcap, "80");
  if (ps) {
    size_t pl = (size_t)(end - ps);
    if (pl == 0 || pl > 5 || strspn(ps, "0123456789") < pl || atoi(ps) < 1 || atoi(ps) > 65535)
      return dbx_seterr(err, DBX_EUSAGE, "%.200s: bad port (1 to 65535)", url);
    snprintf(port, pcap, "%.*s", (int)pl, ps);
  }
  return 0;
}

/* The value of header name in head[0..n) (the lines after the status line), or NULL. */
static const char *header(const char *head, size_t n, const char *name, size_t *vlen) {
  size_t nl = strlen(name);
  const char *p = head, *end = head + n;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
      const char *v = p + nl + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      *vlen = (size_t)(ve - v);
      return v;
    }
    p = eol + 1;
  }
  return NULL;
}

/* GET url's /status.txt body into out, and the job's state (X-Dbatch-State, may be empty)
 * into state. Plain HTTP/1.0. Every step shares one deadline (timeout seconds), so a
 * server that never answers, or answers forever, fails with a clear error. */
static int http_get(const char *url, double timeout, dbx_buf *out, char *state, size_t scap, dbx_err *err) {
  char host[256], port[8], why[128];
  int rc = parse_url(url, host, sizeof host, port, sizeof port, err);
  if (rc) return rc;
  double deadline = time_mono() + timeout;
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  int g = getaddrinfo(host, port, &hints, &ai);
  if (g) return dbx_seterr(err, DBX_EIO, "%.200s: %s", url, gai_strerror(g));
  int fd = dial(ai, deadline, why, sizeof why);
  freeaddrinfo(ai);
  if (fd < 0)
    return dbx_seterr(err, DBX_EIO, "%.200s: cannot connect: %s (has the job ended? is --timeout %g enough?)", url,
                      why, timeout);
  char req[400];
  int n = snprintf(req, sizeof req, "GET /status.txt HTTP/1.0\r\nHost: %s%s%s:%s\r\n\r\n", strchr(host, ':') ? "[" : "",
                   host, strchr(host, ':') ? "]" : "", port);
  dbx_buf raw = {0};
  for (size_t sent = 0; sent < (size_t)n;) {
    int w = wait_fd(fd, POLLOUT, deadline);
    ssize_t k = w > 0 ? send(fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL) : -1;
    if (k < 0 && w > 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (k <= 0) {
      rc = dbx_seterr(err, DBX_EIO, "%.200s: cannot send the request: %s", url, w == 0 ? "timed out" : strerror(errno));
      goto done;
    }
    sent += (size_t)k;
  }
  /* Read until the server closes, or the body is complete by its Content-Length. */
  size_t head_end = 0, want = SIZE_MAX;
  for (;;) {
    if (head_end && raw.len - head_end >= want) break;
    int w = wait_fd(fd, POLLIN, deadline);
    if (w == 0) {
      rc = dbx_seterr(err, DBX_ETIMEDOUT, "%.200s: no complete answer within %g s (got %zu bytes; --timeout SECS to wait longer)",
                      url, timeout, raw.len);
      goto done;
    }
    if (w < 0) { rc = dbx_seterr(err, DBX_EIO, "%.200s: %s", url, strerror(-w)); goto done; }
    char buf[65536];
    ssize_t k = recv(fd, buf, sizeof buf, 0);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (k < 0) { rc = dbx_seterr(err, DBX_EIO, "%.200s: reading the answer: %s", url, strerror(errno)); goto done; }
    if (k == 0) break;
    if (raw.len + (size_t)k > STATUS_MAX_REPLY) {
      rc = dbx_seterr(err, DBX_EIO, "%.200s: answer larger than %u MB: not a dbatch dashboard", url,
                      STATUS_MAX_REPLY >> 20);
      goto done;
    }
    if (dbx_buf_append(&raw, buf, (size_t)k)) { rc = dbx_seterr(err, DBX_ENOMEM, "%.200s: out of memory", url); goto done; }
    if (!head_end) {
      const char *e = raw.len >= 4 ? memmem(raw.data, raw.len, "\r\n\r\n", 4) : NULL;
      if (e) {
        head_end = (size_t)(e - raw.data) + 4;
        size_t vl;
        const char *cl = header(raw.data, head_end, "Content-Length", &vl);
        if (cl && vl && vl < 20 && strspn(cl, "0123456789") >= vl) want = (size_t)strtoull(cl, NULL, 10);
      }
    }
  }
  /* "HTTP/1.x 200 ...": anything else is not the dashboard's answer. */
  if (!head_end || raw.len < 12 || memcmp(raw.data, "HTTP/1.", 7) || raw.data[8] != ' ') {
    rc = dbx_seterr(err, DBX_EIO, "%.200s: not an HTTP answer (%zu bytes): is this a dbatch dashboard?", url, raw.len);
    goto done;
  }
  if (memcmp(raw.data + 9, "200", 3)) {
    char code[16];
    log_escape(code, sizeof code, raw.data + 9, 3);
    rc = dbx_seterr(err, DBX_EIO, "%.200s: the server answered HTTP %s to /status.txt: is this a dbatch dashboard?", url,
                    code);
    goto done;
  }
  size_t body = raw.len - head_end;
  if (want != SIZE_MAX && body < want) {
    rc = dbx_seterr(err, DBX_EIO, "%.200s: truncated answer: the server announced %zu bytes (Content-Length) and "
                    "closed the connection after %zu; try again", url, want, body);
    goto done;
  }
  if (want != SIZE_MAX && body > want) body = want;
  if (dbx_buf_append(out, raw.data + head_end, body)) { rc = dbx_seterr(err, DBX_ENOMEM, "%.200s: out of memory", url); goto done; }
  size_t vl;
  const char *st = header(raw.data, head_end, "X-Dbatch-State", &vl);
  if (st && vl < scap) { memcpy(state, st, vl); state[vl] = 0; }
done:
  close(fd);
  dbx_buf_free(&raw);
  return rc;
}

/* The whole file at path into out (at most STATUS_MAX_REPLY bytes). OUT *mtime. */
static int read_all(const char *path, dbx_buf *out, double *mtime, dbx_err *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return dbx_seterr(err, DBX_ENOENT, "%.300s: %s (is this a job directory?)", path, strerror(errno));
  struct stat sb;
  if (mtime) *mtime = fstat(fileno(f), &sb) == 0 ? (double)sb.st_mtim.tv_sec + sb.st_mtim.tv_nsec / 1e9 : 0;
  char buf[65536];
  size_t k;
  int rc = 0;
  while (!rc && (k = fread(buf, 1, sizeof buf, f)) > 0) {
    if (out->len + k > STATUS_MAX_REPLY) rc = dbx_seterr(err, DBX_EIO, "%.300s: larger than %u MB", path, STATUS_MAX_REPLY >> 20);
    else if (dbx_buf_append(out, buf, k)) rc = dbx_seterr(err, DBX_ENOMEM, "%.300s: out of memory", path);
  }
  if (!rc && ferror(f)) rc = dbx_seterr(err, DBX_EIO, "%.300s: %s", path, strerror(errno));
  fclose(f);
  return rc;
}

/* Is process pid of this host still there (and not a zombie)? */
static int pid_alive(long long pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%lld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  const char *rp = strrchr(buf, ')');  /* "pid (comm) S ...": comm may hold anything */
  return !(rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'));
}

/* A running job's status in dir: is its coordinator gone? 1 lost (why says how), 0 not. */
static int job_lost(const char *coordinator, double mtime, char *why, size_t cap) {
  char me[256] = "";
  if (gethostname(me, sizeof me - 1) != 0) me[0] = 0;
  const char *at = strchr(coordinator, '@');
  char *end;
  long long pid = at ? strtoll(coordinator, &end, 10) : 0;
  double age = time_wall() - mtime;
  if (at && end == at && pid > 0 && me[0] && !strcmp(at + 1, me)) {
    if (pid_alive(pid)) {
      if (age <= HUNG_SECONDS) return 0;
      snprintf(why, cap, "its coordinator (pid %lld on %s) is alive but not responding: its status was not refreshed "
               "for %.0f s (it is refreshed every second while the job runs); is it stopped (SIGSTOP) or stuck?",
               pid, me, age);
      return 1;
    }
    snprintf(why, cap, "its coordinator (pid %lld on %s) is gone; last update %.0f s ago", pid, me, age);
    return 1;
  }
  /* Another host (a shared file system): all we have is the file's age. */
  if (age <= STALE_SECONDS) return 0;
  snprintf(why, cap, "not refreshed for %.0f s (coordinator %.150s); it is refreshed every second while the job runs",
           age, coordinator);
  return 1;
}

/* Write text to stdout with control characters escaped, line by line. */
static void print_escaped(const char *p, size_t n) {
  dbx_buf b = {0};
  while (n) {
    const char *nl = memchr(p, '\n', n);
    size_t len = nl ? (size_t)(nl - p) : n;
    log_escape_buf(&b, p, len);
    dbx_buf_append(&b, "\n", 1);
    p += len + (nl ? 1 : 0);
    n -= len + (nl ? 1 : 0);
  }
  if (b.len) fwrite(b.data, 1, b.len, stdout);
  dbx_buf_free(&b);
}

static int exit_of(const char *state) {
  if (!strcmp(state, "failed")) return EXIT_FAIL;
  if (!strcmp(state, "partial")) return EXIT_PARTIAL;
  if (!strcmp(state, "lost")) return EXIT_LOST;
  return EXIT_OK;
}

int cmd_status(int argc, char **argv) {
  double timeout = 10;
  const char *target = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(help, stdout);
      return EXIT_OK;
    }
    if (!strcmp(argv[i], "--timeout") || !strncmp(argv[i], "--timeout=", 10)) {
      const char *v = argv[i][9] == '=' ? argv[i] + 10 : i + 1 < argc ? argv[++i] : NULL;
      char *end = NULL;
      timeout = v ? strtod(v, &end) : 0;
      if (!v || end == v || *end || !(timeout > 0 && timeout <= 86400)) {
        fputs("dbatch status: --timeout takes seconds, more than 0 and at most 86400\n", stderr);
        return EXIT_USAGE;
      }
      continue;
    }
    if (target || (argv[i][0] == '-' && argv[i][1])) {
      fputs(help, stderr);
      return EXIT_USAGE;
    }
    target = argv[i];
  }
  if (!target) {
    fputs(help, stderr);
    return EXIT_USAGE;
  }
  dbx_err err = {0, ""};
  dbx_buf text = {0}, js = {0}, strs = {0};
  char state[32] = "";
  int rc;
  if (!strncmp(target, "http://", 7)) {
    rc = http_get(target, timeout, &text, state, sizeof state, &err);
    if (rc) goto fail;
    print_escaped(text.data, text.len);
  } else {
    char path[4200];
    double mtime = 0;
    snprintf(path, sizeof path, "%s/status.txt", target);
    if ((rc = read_all(path, &text, NULL, &err))) goto fail;
    /* The state and the coordinator come from status.json (same snapshot, machine form). */
    snprintf(path, sizeof path, "%s/status.json", target);
    dbx_err jerr = {0, ""};
    static const char *const keys[] = {"state", "coordinator"};
    size_t off[2], len[2];
    const char *why = NULL;
    if (read_all(path, &js, &mtime, &jerr) == 0 &&
        json_object_strings(js.data ? js.data : "", js.len, keys, 2, &strs, off, len, &why) == 0 && len[0] < sizeof state)
      snprintf(state, sizeof state, "%.*s", (int)len[0], strs.data + off[0]);
    char coordinator[300] = "", lost[400];
    if (state[0] && len[1] != SIZE_MAX && len[1] < sizeof coordinator)
      snprintf(coordinator, sizeof coordinator, "%.*s", (int)len[1], strs.data + off[1]);
    if ((!strcmp(state, "running") || !strcmp(state, "starting")) && job_lost(coordinator, mtime, lost, sizeof lost)) {
      /* The first line said "running": say what is true instead, keep the rest. */
      const char *nl = memchr(text.data, '\n', text.len);
      size_t skip = nl ? (size_t)(nl - text.data) + 1 : text.len;
      printf("job lost: %s\n", lost);
      fflush(stdout);
      printf("last known state: ");
      print_escaped(text.data, skip);
      print_escaped(text.data + skip, text.len - skip);
      snprintf(path, sizeof path, "%s/journal.db", target);
      if (access(path, F_OK) == 0) {
        printf("resume it with: dbatch resume ");
        log_fputs_escaped(target, stdout);
        printf("\n");
      }
      snprintf(state, sizeof state, "lost");
    } else {
      print_escaped(text.data, text.len);
    }
  }
  dbx_buf_free(&text);
  dbx_buf_free(&js);
  dbx_buf_free(&strs);
  fflush(stdout);
  return exit_of(state);
fail:
  dbx_buf_free(&text);
  dbx_buf_free(&js);
  dbx_buf_free(&strs);
  return cli_fail("status", &err);
}
