/* follow.c -- --follow: a job that keeps running over data as it arrives, in micro-batches,
 * exactly once (docs/follow.md).
 *
 * Every --interval the watched inputs are scanned. Files are known by identity (device,
 * inode), not by name, so a file renamed inside a watched directory goes on where it was, and
 * one renamed out of it (log rotation) is read to its end, its last line even without a
 * newline, before any file seen after it. New bytes up to the last newline of each file are
 * copied into a spool file, and the spool is run as an ordinary stage (batches, workers,
 * retries, the same operator). Its merged partial is merged into the running state, and
 * then:
 *   1. the state, the offsets consumed and the micro-batch's number are written to
 *      JOB_DIR/follow.state (a temporary file, synced, renamed: all or nothing);
 *   2. the output is written again from the state and committed (a file renamed into place,
 *      or one database transaction).
 * After a crash between 1 and 2 the same command with the same --job-dir commits the output
 * of the state it finds first, then goes on from its offsets: no record is lost or counted
 * twice. SIGTERM and Ctrl-C let the running micro-batch finish and commit; --until-idle SECS
 * stops after that long without new data (lines without their newline then count as lines,
 * as in a batch run over the same files). */
#define _GNU_SOURCE 1
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli/cli.h"
#include "engine/fstate.h"
#include "io/records.h"
#include "util/json.h"
#include "util/log.h"
#include "util/parse.h"
#include "ui/ui.h"
#include "util/timeutil.h"

#define FOLLOW_CHUNK (4u << 20)
#define FOLLOW_LAT 1024  /* micro-batch latencies kept for the percentiles */
#define FOLLOW_COLS 256  /* columns of a windowed row: window_start and the rows' own */

/* "5", "0.5", "30s", "2m", "1h": seconds. */
static int parse_secs(const char *arg, double *v) {
  char *end;
  *v = strtod(arg, &end);
  if (end == arg) return -1;
  if (*end == 'm') *v *= 60, end++;
  else if (*end == 'h') *v *= 3600, end++;
  else if (*end == 's') end++;
  return *end || !(*v > 0) || *v > 86400.0 * 365 ? -1 : 0;
}

int cli_follow_option(cli_follow *f, int c, const char *arg) {
  double v;
  switch (c) {
  case 1200: f->on = 1; return 1;
  case 1201:
  case 1202:
  case 1203:
    if (parse_secs(arg, &v)) return -1;
    if (c == 1203 && (v < 1 || v != (double)(int64_t)v)) return -1;  /* whole seconds */
    if (c == 1201) f->interval = v;
    else if (c == 1202) f->until_idle = v;
    else f->window = v;
    return 1;
  default: return 0;
  }
}

/* Bytes [from, to) of a followed file, in a window. */
typedef fstate_range wrange;  /* bytes [from, to) of a followed file, in a window */

int cli_follow_misuse(const cli_follow *f, const char *cmd, char *const *args, size_t nargs) {
  if (!f->on && (f->interval > 0 || f->until_idle > 0 || f->window > 0))
    return cli_usage_error(cmd, "%s goes with --follow", f->interval > 0 ? "--interval" : f->until_idle > 0 ? "--until-idle"
                                                                                                        : "--window");
  for (size_t i = 0; f->on && i < nargs; i++)
    if (!strcmp(args[i], "-"))
      return cli_usage_error(cmd, "--follow reads files as they grow: standard input cannot be followed (give files or "
                                  "directories)");
  return 0;
}

/* A file being followed. */
typedef struct fsrc {
  char *path;          /* its latest name */
  uint64_t dev, ino;
  uint64_t off;        /* bytes consumed: always just after a newline, or the end of a finished file */
  int fd;              /* -1 until found again (after a restart) */
  int seen;            /* found by the latest scan */
} fsrc;

typedef struct follower {
  const cli_follow *f;
  char *const *args;
  size_t nargs;
  fsrc *v;
  size_t n, cap;
  uint64_t epoch;
  uint64_t fingerprint;
  char state_path[PATH_MAX];
  int durable;         /* a job directory holds the state file */
  char job_key[PATH_MAX];  /* names the job in a database's dbatch_follow: its job directory */
  char spool_path[PATH_MAX];
  char spool_dir[PATH_MAX - 64];
  int spool_made;      /* spool_dir is ours to remove */
  int ino_fd;          /* inotify, or -1 */
  int changed;         /* inotify said something happened since the last scan */
  dbx_buf hdr;         /* CSV, TSV: the header line, the spool's first (one per file is skipped) */
  dbx_buf cur;         /* the running state's encoding, as the state file has it */
  /* --window: the open window's start (Unix seconds, 0: none yet), how many windows were
   * closed, the byte ranges it holds so far; a closed window whose rows may not have been
   * appended yet (pending), kept in the state file until they are. */
  int64_t wstart;
  uint64_t wclosed;
  wrange *wr;
  size_t nwr, wrcap;
  struct {
    int on;
    uint64_t k;
    int64_t start;
    char token[128];
    dbx_buf enc;
    wrange *wr;
    size_t nwr;
  } pend;
  unsigned ticks;
  uint64_t lag_bytes;  /* bytes seen in the files and not yet consumed */
} follower;

static fsrc *find_ident(follower *w, uint64_t dev, uint64_t ino) {
  for (size_t i = 0; i < w->n; i++)
    if (w->v[i].dev == dev && w->v[i].ino == ino) return &w->v[i];
  return NULL;
}

static int add_src(follower *w, const char *path, uint64_t dev, uint64_t ino, uint64_t off) {
  if (w->n == w->cap) {
    size_t nc = w->cap ? w->cap * 2 : 16;
    fsrc *nv = realloc(w->v, nc * sizeof *nv);
    if (!nv) return DBX_ENOMEM;
    w->v = nv;
    w->cap = nc;
  }
  fsrc *s = &w->v[w->n];
  memset(s, 0, sizeof *s);
  if (!(s->path = strdup(path))) return DBX_ENOMEM;
  s->dev = dev, s->ino = ino, s->off = off, s->fd = -1;
  w->n++;
  return 0;
}

static void drop_src(follower *w, size_t i) {
  if (w->v[i].fd >= 0) close(w->v[i].fd);
  free(w->v[i].path);
  memmove(&w->v[i], &w->v[i + 1], (w->n - i - 1) * sizeof *w->v);
  w->n--;
}

/* Add [from, to) of path to a window's ranges (joined to the last one when it goes on). */
static int add_range(wrange **v, size_t *n, size_t *cap, const char *path, uint64_t from, uint64_t to) {
  return fstate_add_range(v, n, cap, path, from, to);
}

static void free_ranges(wrange *v, size_t n) { fstate_free_ranges(v, n); }

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* One regular file found by a scan: tracked from byte 0 when new. */
/* A file or directory that is there but cannot be read is an error naming it, as in a batch
 * run: taken for gone, it would be finished (a last line without its newline counted), dropped,
 * and read again from its start once readable. Gone (ENOENT, ENOTDIR) is not an error. */
static int unreadable(follower *w, const char *what, const char *path, int e, dbx_err *err) {
  if (e == EMFILE || e == ENFILE)
    return dbx_seterr(err, DBX_EIO, "%s: %s: --follow keeps every file it follows open (%zu now): raise the "
                      "limit of open files (ulimit -n)", path, strerror(e), w->n);
  return dbx_seterr(err, e == ENOMEM ? DBX_ENOMEM : DBX_EIO, "%s: %s: %s", path, what, strerror(e));
}

static int gone(int e) { return e == ENOENT || e == ENOTDIR; }

static int found(follower *w, const char *path, dbx_err *err) {
  struct stat sb;
  if (stat(path, &sb) != 0) return gone(errno) ? 0 : unreadable(w, "cannot read", path, errno, err);
  if (!S_ISREG(sb.st_mode)) return 0;
  in_kind k = input_kind_of(path);
  if (k == IN_GZ || k == IN_ZST)
    return dbx_seterr(err, DBX_EUSAGE, "--follow: %s is compressed; a followed file is read as it grows, so it must be "
                      "plain text", path);
  fsrc *s = find_ident(w, (uint64_t)sb.st_dev, (uint64_t)sb.st_ino);
  if (!s) {
    int rc = add_src(w, path, (uint64_t)sb.st_dev, (uint64_t)sb.st_ino, 0);
    if (rc) return dbx_seterr(err, rc, "out of memory");
    s = &w->v[w->n - 1];
  } else if (strcmp(s->path, path)) {
    char *p = strdup(path);
    if (!p) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
    free(s->path);
    s->path = p;
  }
  if (s->fd < 0) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat fb;
    if (fd < 0 && !gone(errno)) return unreadable(w, "cannot read", path, errno, err);
    if (fd < 0) return 0;  /* replaced or gone since the stat: the next scan sees it */
    if (fstat(fd, &fb) != 0 || (uint64_t)fb.st_dev != s->dev || (uint64_t)fb.st_ino != s->ino) {
      close(fd);
      return 0;
    }
    s->fd = fd;
  }
  s->seen = 1;
  return 0;
}

static int walk(follower *w, const char *dir, int depth, dbx_err *err) {
  if (depth > 64) return 0;
  DIR *d = opendir(dir);
  if (!d) return gone(errno) ? 0 : unreadable(w, "cannot read directory", dir, errno, err);
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || e->d_name[0] == '_') continue;  /* as a batch job: hidden files, markers */
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 32;
      char **nn = realloc(names, nc * sizeof *nn);
      if (!nn) { rc = DBX_ENOMEM; break; }
      names = nn, cap = nc;
    }
    if (!(names[n] = strdup(e->d_name))) { rc = DBX_ENOMEM; break; }
    n++;
  }
  closedir(d);
  if (rc) rc = dbx_seterr(err, rc, "out of memory");
  if (n) qsort(names, n, sizeof *names, name_cmp);
  for (size_t i = 0; i < n && !rc; i++) {
    char p[PATH_MAX];
    struct stat sb;
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, names[i]) >= sizeof p) continue;
    if (lstat(p, &sb) != 0) {
      if (!gone(errno)) rc = unreadable(w, "cannot read", p, errno, err);
      continue;
    }
    if (S_ISDIR(sb.st_mode)) {
      if (w->ino_fd >= 0) inotify_add_watch(w->ino_fd, p, IN_CREATE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE);
      rc = walk(w, p, depth + 1, err);
    } else if (S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode)) {
      rc = found(w, p, err);
    }
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  return rc;
}

/* Whether the open file fd is, right now, where a scan finds files: under a directory argument
 * (no hidden or '_' name on the way) or a file argument itself. A scan lists a directory, then
 * looks at each name: a file renamed in between (a rotation) is missed by that scan although it
 * never left, and taken for finished it would be dropped and read again from its start by the
 * next scan. Asked for each file a scan missed; costs a realpath per argument then. Linux keeps
 * the current name of an open file in /proc/self/fd (without /proc, a file missed is finished). */
static int still_in(const follower *w, int fd) {
  char link[64], now[PATH_MAX];
  struct stat sb;
  if (fstat(fd, &sb) != 0 || sb.st_nlink == 0) return 0;  /* removed */
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t k = readlink(link, now, sizeof now);
  if (k < 0) return 0;
  if ((size_t)k >= sizeof now) return 1;  /* cut short: keep it rather than read it twice */
  now[k] = 0;
  int in = 0;
  for (size_t a = 0; a < w->nargs && !in; a++) {
    char *real = realpath(w->args[a], NULL);
    if (!real) continue;
    size_t rl = strlen(real);
    if (!strcmp(now, real)) in = 1;  /* a file argument */
    else if (rl > 1 && !strncmp(now, real, rl) && now[rl] == '/') {
      in = 1;
      for (const char *c = now + rl; c && in; c = strchr(c + 1, '/'))  /* c: each '/' on the way */
        in = c[1] && c[1] != '.' && c[1] != '_';
    }
    free(real);
  }
  return in;
}

/* Find every file the arguments name now. */
static int scan(follower *w, dbx_err *err) {
  for (size_t i = 0; i < w->n; i++) w->v[i].seen = 0;
  for (size_t a = 0; a < w->nargs; a++) {
    struct stat sb;
    if (stat(w->args[a], &sb) != 0) {
      if (gone(errno)) continue;  /* not there (yet, or any more) */
      return unreadable(w, "cannot read", w->args[a], errno, err);
    }
    int rc = S_ISDIR(sb.st_mode) ? (w->ino_fd >= 0 ? (void)inotify_add_watch(w->ino_fd, w->args[a],
                                                                             IN_CREATE | IN_MODIFY | IN_MOVED_TO |
                                                                                 IN_MOVED_FROM | IN_DELETE)
                                                   : (void)0,
                                    walk(w, w->args[a], 0, err))
                                 : found(w, w->args[a], err);
    if (rc) return rc;
    if (!S_ISDIR(sb.st_mode) && w->ino_fd >= 0) inotify_add_watch(w->ino_fd, w->args[a], IN_MODIFY | IN_MOVE_SELF);
  }
  for (size_t i = 0; i < w->n; i++)
    if (!w->v[i].seen && w->v[i].fd >= 0 && still_in(w, w->v[i].fd)) w->v[i].seen = 1;
  return 0;
}

/* Copy [from, to) of fd to out; 0 or an error naming path. */
static int copy_range(int fd, const char *path, uint64_t from, uint64_t to, int out, char *buf, dbx_err *err) {
  while (from < to) {
    size_t want = to - from < FOLLOW_CHUNK ? (size_t)(to - from) : FOLLOW_CHUNK;
    ssize_t k = pread(fd, buf, want, (off_t)from);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return dbx_seterr(err, DBX_EIO, "%s: %s", path, strerror(errno));
    if (k == 0) return dbx_seterr(err, DBX_ECHANGED, "%s: shorter than it was a moment ago (truncated while followed)", path);
    for (ssize_t d = 0; d < k;) {
      ssize_t x = write(out, buf + d, (size_t)(k - d));
      if (x < 0 && errno == EINTR) continue;
      if (x <= 0) {
        int e = x < 0 ? errno : ENOSPC;
        return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spool file: %s", strerror(e));
      }
      d += x;
    }
    from += (uint64_t)k;
  }
  return 0;
}

/* The new lines of every file into the spool (truncated first). finish: every file is read to
 * its end, a last line without its newline included (the data is complete). *bytes: the
 * spool's size. Files renamed out of the inputs are finished and dropped. */
static int spool(follower *w, int finish, uint64_t *bytes, dbx_err *err) {
  *bytes = 0;
  w->lag_bytes = 0;
  int out = open(w->spool_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) return dbx_seterr(err, DBX_EIO, "spool file %s: %s", w->spool_path, strerror(errno));
  char *buf = malloc(FOLLOW_CHUNK);
  int rc = buf ? 0 : dbx_seterr(err, DBX_ENOMEM, "out of memory");
  uint64_t pos = 0;
  if (!rc && w->f->header) {
    /* The header, from the first file that has a whole first line (they all have the same). */
    for (size_t i = 0; i < w->n && !w->hdr.len; i++) {
      if (w->v[i].fd < 0) continue;
      ssize_t k = pread(w->v[i].fd, buf, FOLLOW_CHUNK, 0);
      const char *nl = k > 0 ? memchr(buf, '\n', (size_t)k) : NULL;
      if (nl && dbx_buf_append(&w->hdr, buf, (size_t)(nl - buf) + 1)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    }
    if (!w->hdr.len) {  /* no header yet: no data either */
      free(buf);
      close(out);
      return rc;
    }
    if (!rc && write(out, w->hdr.data, w->hdr.len) != (ssize_t)w->hdr.len)
      rc = dbx_seterr(err, DBX_ENOSPC, "spool file %s: %s", w->spool_path, strerror(errno));
    pos = w->hdr.len;
  }
  uint64_t base = pos;
  for (size_t i = 0; i < w->n && !rc;) {
    fsrc *s = &w->v[i];
    if (s->fd < 0) {  /* known from the state, not found since */
      if (!s->seen) log_warn("--follow: %s (consumed up to byte %llu) is no longer among the inputs; its rest, if any, "
                             "was not read", s->path, (unsigned long long)s->off);
      drop_src(w, i);
      continue;
    }
    struct stat sb;
    if (fstat(s->fd, &sb) != 0) { rc = dbx_seterr(err, DBX_EIO, "%s: %s", s->path, strerror(errno)); break; }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < s->off) {
      rc = dbx_seterr(err, DBX_ECHANGED, "%s shrank from %llu to %llu bytes while followed (truncated in place): "
                      "which of its lines were counted cannot be told; rotate logs by renaming instead", s->path,
                      (unsigned long long)s->off, (unsigned long long)size);
      break;
    }
    int last = finish || !s->seen;  /* nothing more will be appended that we would see */
    if (w->f->header && s->off == 0 && size > 0) {
      /* Each file's own header line is not data. */
      ssize_t k = pread(s->fd, buf, FOLLOW_CHUNK, 0);
      const char *nl = k > 0 ? memchr(buf, '\n', (size_t)k) : NULL;
      /* Its columns are read by the spool's header: they must be the same (a batch run refuses
       * inputs whose headers differ). Compared as bytes, '\r\n' and '\n' alike. */
      size_t hl = nl ? (size_t)(nl - buf) : 0, wl = w->hdr.len - 1;
      if (hl && buf[hl - 1] == '\r') hl--;
      if (wl && w->hdr.data[wl - 1] == '\r') wl--;
      if (nl && (hl != wl || memcmp(buf, w->hdr.data, hl))) {
        rc = dbx_seterr(err, DBX_EBADREC, "%s: its header differs from the one of the files followed before it (%.*s); "
                        "every input must have the same columns", s->path, (int)(wl < 200 ? wl : 200), w->hdr.data);
        break;
      }
      if (nl) s->off = (uint64_t)(nl - buf) + 1;
      else if (last) s->off = size;
      else if (k == FOLLOW_CHUNK) {
        rc = dbx_seterr(err, DBX_EBADREC, "%s: a header line over %u bytes", s->path, FOLLOW_CHUNK);
        break;
      } else {  /* its header is not whole yet */
        w->lag_bytes += size;
        i++;
        continue;
      }
    }
    if (size > s->off) {
      uint64_t was = s->off;
      if ((rc = copy_range(s->fd, s->path, s->off, size, out, buf, err))) break;
      /* Keep whole lines only: cut the spool back to just after the copy's last newline. */
      uint64_t end = pos + (size - s->off), keep = pos;
      for (uint64_t at = end; at > pos && keep == pos;) {
        size_t want = at - pos < FOLLOW_CHUNK ? (size_t)(at - pos) : FOLLOW_CHUNK;
        ssize_t k = pread(out, buf, want, (off_t)(at - want));
        if (k != (ssize_t)want) { rc = dbx_seterr(err, DBX_EIO, "spool file %s: %s", w->spool_path, strerror(errno)); break; }
        const char *nl = memrchr(buf, '\n', want);
        if (nl) keep = at - want + (uint64_t)(nl - buf) + 1;
        at -= want;
      }
      if (rc) break;
      if (last && keep < end) {  /* the last line of a finished file counts, as in a batch run */
        if (write(out, "\n", 1) != 1) { rc = dbx_seterr(err, DBX_ENOSPC, "spool file %s: %s", w->spool_path, strerror(errno)); break; }
        keep = end + 1;
        s->off = size;
      } else {
        if (ftruncate(out, (off_t)keep) != 0 || lseek(out, (off_t)keep, SEEK_SET) < 0) {
          rc = dbx_seterr(err, DBX_EIO, "spool file %s: %s", w->spool_path, strerror(errno));
          break;
        }
        s->off += keep - pos;
      }
      if (w->f->window > 0 && s->off > was && (rc = add_range(&w->wr, &w->nwr, &w->wrcap, s->path, was, s->off))) {
        rc = dbx_seterr(err, rc, "out of memory");
        break;
      }
      pos = keep;
    }
    w->lag_bytes += size - s->off;
    if (!s->seen) {  /* renamed away or removed: finished */
      drop_src(w, i);
      continue;
    }
    i++;
  }
  free(buf);
  if (close(out) != 0 && !rc) rc = dbx_seterr(err, DBX_EIO, "spool file %s: %s", w->spool_path, strerror(errno));
  *bytes = pos > base ? pos : 0;
  return rc;
}

/* ---- the state file ---- */

/* Write the state file (engine/fstate.c encodes it), under a temporary name, synced and
 * renamed into place, the directory synced. */
static int save_state(follower *w, dbx_err *err) {
  fstate s;
  memset(&s, 0, sizeof s);
  s.fingerprint = w->fingerprint;
  s.epoch = w->epoch;
  s.nfiles = w->n;
  if (w->n && !(s.files = calloc(w->n, sizeof *s.files))) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (size_t i = 0; i < w->n; i++)
    s.files[i] = (fstate_file){w->v[i].path, w->v[i].dev, w->v[i].ino, w->v[i].off};
  s.state = w->cur.data;
  s.state_len = w->cur.len;
  s.wstart = w->wstart;
  s.wclosed = w->wclosed;
  s.wr = w->wr, s.nwr = w->nwr;
  s.pend_on = w->pend.on;
  if (w->pend.on) {
    s.pend_k = w->pend.k;
    s.pend_start = w->pend.start;
    snprintf(s.pend_token, sizeof s.pend_token, "%s", w->pend.token);
    s.pend_enc = w->pend.enc.data;
    s.pend_enc_len = w->pend.enc.len;
    s.pend_wr = w->pend.wr, s.pend_nwr = w->pend.nwr;
  }
  dbx_buf b = {0};
  int enc = fstate_encode(&s, &b);
  free(s.files);
  if (enc) {
    dbx_buf_free(&b);
    return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  char tmp[PATH_MAX + 16];
  snprintf(tmp, sizeof tmp, "%s.tmp", w->state_path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int rc = 0;
  if (fd < 0) rc = errno;
  for (size_t d = 0; !rc && d < b.len;) {
    ssize_t k = write(fd, b.data + d, b.len - d);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) rc = k < 0 ? errno : ENOSPC;
    else d += (size_t)k;
  }
  if (!rc && fdatasync(fd) != 0) rc = errno;
  if (fd >= 0 && close(fd) != 0 && !rc) rc = errno;
  if (!rc && rename(tmp, w->state_path) != 0) rc = errno;
  dbx_buf_free(&b);
  if (rc) {
    unlink(tmp);
    return dbx_seterr(err, rc == ENOSPC ? DBX_ENOSPC : DBX_EIO, "%s: %s", w->state_path, strerror(rc));
  }
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", w->state_path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return 0;
}

/* Read the state file, when there is one: 0 and *state (owned, NULL when none), or an error
 * (damaged, another job's). */
static int load_state(follower *w, char **state, size_t *n, dbx_err *err) {
  *state = NULL;
  *n = 0;
  int fd = open(w->state_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : dbx_seterr(err, DBX_EIO, "%s: %s", w->state_path, strerror(errno));
  struct stat sb;
  dbx_buf b = {0};
  int rc = fstat(fd, &sb) != 0 || dbx_buf_reserve(&b, (size_t)sb.st_size + 1) ? DBX_EIO : 0;
  while (!rc) {
    ssize_t k = read(fd, b.data + b.len, (size_t)sb.st_size + 1 - b.len);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) rc = DBX_EIO;
    if (k <= 0) break;
    b.len += (size_t)k;
    if (b.len > (size_t)sb.st_size) break;
  }
  close(fd);
  fstate s;
  memset(&s, 0, sizeof s);
  if (!rc) rc = fstate_decode(b.data, b.len, &s);
  if (!rc && s.fingerprint != w->fingerprint) {
    fstate_free(&s);
    dbx_buf_free(&b);
    return dbx_seterr(err, DBX_EUSAGE, "%s holds the state of another followed job (other inputs or options): use "
                      "another --job-dir, or remove it to start again", w->state_path);
  }
  if (!rc) {
    w->epoch = s.epoch;
    for (size_t i = 0; i < s.nfiles && !rc; i++)
      if (add_src(w, s.files[i].path, s.files[i].dev, s.files[i].ino, s.files[i].off)) rc = DBX_ENOMEM;
  }
  if (!rc && s.state_len) {
    if (!(*state = malloc(s.state_len))) rc = DBX_ENOMEM;
    else memcpy(*state, s.state, s.state_len), *n = s.state_len;
  }
  if (!rc) {
    w->wstart = s.wstart;
    w->wclosed = s.wclosed;
    /* the open window's ranges are added to: their capacity is their count */
    w->wr = s.wr, w->nwr = w->wrcap = s.nwr;
    s.wr = NULL, s.nwr = 0;
    if (s.pend_on) {
      w->pend.on = 1, w->pend.k = s.pend_k, w->pend.start = s.pend_start;
      snprintf(w->pend.token, sizeof w->pend.token, "%s", s.pend_token);
      if (s.pend_enc_len && dbx_buf_append(&w->pend.enc, s.pend_enc, s.pend_enc_len)) rc = DBX_ENOMEM;
      w->pend.wr = s.pend_wr, w->pend.nwr = s.pend_nwr;
      s.pend_wr = NULL, s.pend_nwr = 0;
    }
  }
  fstate_free(&s);
  dbx_buf_free(&b);
  if (rc == DBX_ECORRUPT) return dbx_seterr(err, rc, "%s is damaged (not a state dbatch wrote, or cut short)", w->state_path);
  if (rc) return dbx_seterr(err, rc, "%s: cannot read it", w->state_path);
  return 0;
}

/* ---- committing ---- */

/* The output, written again from the state's encoding (the state itself stays as it is). */
static int render(const cli_follow *f, const stage *tmpl, void *state, dbx_emit_fn emit, void *ctx, dbx_err *err) {
  return f->render ? f->render(f->render_ctx, state, emit, ctx, err)
                   : tmpl->op->finish(tmpl->cfg, NULL, state, emit, ctx, NULL, err);
}

static int commit_output(const cli_follow *f, const stage *tmpl, cli_job *o, const dbx_schema *schema, const char *enc,
                         size_t n, dbx_err *err) {
  const dbx_op *op = tmpl->op;
  void *copy = NULL;
  sink *out = NULL;
  int rc = n ? op->decode(tmpl->cfg, enc, n, &copy, err) : 0;
  if (!rc && !copy && !(copy = op->partial_new(tmpl->cfg))) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  if (!rc) rc = sink_open(&o->out, schema ? schema : op->schema, &out, err);
  if (!rc) rc = render(f, tmpl, copy, sink_emit, out, err);
  if (!rc) rc = sink_commit(out, err);
  else sink_abort(out);
  if (copy) op->partial_free(copy);
  return rc;
}


/* DBATCH_FAULT=NAME=N: die (SIGKILL) at the point NAME of micro-batch or window N (tests):
 *   follow_crash_before_output  micro-batch N's state is written, its output is not;
 *   follow_crash_before_append  window N's rows are written, not committed;
 *   follow_crash_after_append   window N's rows are committed, the state still says pending. */
static void fault_at(const char *name, uint64_t n) {
  const char *f = getenv("DBATCH_FAULT");
  const char *k = f ? strstr(f, name) : NULL;
  if (k && k[strlen(name)] == '=' && strtoull(k + strlen(name) + 1, NULL, 10) == n) raise(SIGKILL);
}

/* What the output covers, for a database's dbatch_follow (sink_set_follow_note). */
static void note_offsets(const follower *w) {
  dbx_buf b = {0};
  json_raw(&b, "{");
  json_key(&b, "micro_batch", 1);
  json_int(&b, (int64_t)w->epoch);
  json_key(&b, "files", 0);
  json_raw(&b, "[");
  for (size_t i = 0; i < w->n; i++) {
    json_raw(&b, i ? ",{" : "{");
    json_key(&b, "path", 1);
    json_cstr(&b, w->v[i].path);
    json_key(&b, "offset", 0);
    json_int(&b, (int64_t)w->v[i].off);
    json_key(&b, "dev", 0);
    json_int(&b, (int64_t)w->v[i].dev);
    json_key(&b, "ino", 0);
    json_int(&b, (int64_t)w->v[i].ino);
    json_raw(&b, "}");
  }
  json_raw(&b, "]}");
  dbx_buf_append(&b, "", 1);
  sink_set_follow_note(w->job_key, w->epoch, b.data ? b.data : "{}");
  dbx_buf_free(&b);
}

/* ---- windows ---- */

typedef struct win_emit {
  sink *out;
  char start[32];      /* window_start as text: ISO 8601, UTC */
  dbx_value row[FOLLOW_COLS];
  uint32_t ncol;
} win_emit;

static int win_row(void *ctx, const dbx_value *row, dbx_err *err) {
  win_emit *x = ctx;
  memset(&x->row[0], 0, sizeof x->row[0]);
  x->row[0].s = x->start;
  x->row[0].n = strlen(x->start);
  memcpy(&x->row[1], row, x->ncol * sizeof *row);
  return sink_row(x->out, x->row, err);
}

static void iso_utc(int64_t t, char *out, size_t cap) {
  time_t tt = (time_t)t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The rows of the pending (closed) window, appended once: a file keeps the identity it will
 * have in the state first, so a restart that finds it there does not append them again; a
 * database records the commit under an id of the job and window (dbatch_commits). Then the
 * window's line in JOB_DIR/windows.jsonl, and the pending window is cleared. */
static int finish_pending(follower *w, const stage *tmpl, cli_job *o, const dbx_schema *ws, const char *jsonl,
                          dbx_err *err) {
  const dbx_op *op = tmpl->op;
  sink_opts so = o->out;
  so.append = 1;
  char id[80];
  snprintf(id, sizeof id, "%016llx-window-%llu", (unsigned long long)w->fingerprint, (unsigned long long)w->pend.k);
  sink_set_job_id(id);
  void *copy = NULL;
  sink *out = NULL;
  win_emit *x = calloc(1, sizeof *x);
  int rc = x ? 0 : dbx_seterr(err, DBX_ENOMEM, "out of memory");
  if (!rc && w->pend.enc.len) rc = op->decode(tmpl->cfg, w->pend.enc.data, w->pend.enc.len, &copy, err);
  if (!rc && !copy && !(copy = op->partial_new(tmpl->cfg))) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  if (!rc) rc = sink_open(&so, ws, &out, err);
  if (!rc) {
    x->out = out;
    x->ncol = ws->ncol - 1;
    iso_utc(w->pend.start, x->start, sizeof x->start);
    rc = render(w->f, tmpl, copy, win_row, x, err);
  }
  uint64_t rows = out ? sink_rows(out) : 0;
  if (!rc) rc = sink_prepare(out, err);
  if (!rc && w->pend.token[0] && sink_append_landed(out, w->pend.token)) {
    log_info("--follow: window %s was appended before the restart; not appending it again", x->start);
    sink_abort(out);
  } else if (!rc) {
    char tok[sizeof w->pend.token];
    if (sink_append_token(out, tok, sizeof tok)) {
      snprintf(w->pend.token, sizeof w->pend.token, "%s", tok);
      if (w->durable) rc = save_state(w, err);
    }
    fault_at("follow_crash_before_append", w->pend.k);
    if (!rc) rc = sink_commit(out, err);
    else sink_abort(out);
    if (!rc) fault_at("follow_crash_after_append", w->pend.k);
  } else {
    sink_abort(out);
  }
  if (copy) op->partial_free(copy);
  if (!rc && jsonl) {
    dbx_buf b = {0};
    json_raw(&b, "{");
    json_key(&b, "window_start", 1);
    json_cstr(&b, x->start);
    json_key(&b, "window_start_unix", 0);
    json_int(&b, w->pend.start);
    json_key(&b, "rows", 0);
    json_int(&b, (int64_t)rows);
    json_key(&b, "inputs", 0);
    json_raw(&b, "[");
    for (size_t i = 0; i < w->pend.nwr; i++) {
      json_raw(&b, i ? ",{" : "{");
      json_key(&b, "path", 1);
      json_cstr(&b, w->pend.wr[i].path);
      json_key(&b, "from", 0);
      json_int(&b, (int64_t)w->pend.wr[i].from);
      json_key(&b, "to", 0);
      json_int(&b, (int64_t)w->pend.wr[i].to);
      json_raw(&b, "}");
    }
    json_raw(&b, "]}\n");
    int fd = open(jsonl, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, b.data, b.len) != (ssize_t)b.len)
      log_warn("--follow: %s: %s", jsonl, strerror(errno));
    if (fd >= 0) close(fd);
    dbx_buf_free(&b);
  }
  free(x);
  if (rc) return rc;
  w->pend.on = 0;
  w->pend.token[0] = 0;
  w->pend.enc.len = 0;
  free_ranges(w->pend.wr, w->pend.nwr);
  w->pend.wr = NULL;
  w->pend.nwr = 0;
  return 0;
}

/* The open window ends: it becomes the pending one (its rows appended by finish_pending), and
 * a new empty state opens the window starting at next. An empty window appends nothing. */
static int close_window(follower *w, const stage *tmpl, cli_job *o, const dbx_schema *ws, const char *jsonl,
                        void **state, int64_t next, dbx_err *err) {
  const dbx_op *op = tmpl->op;
  if (!w->nwr) {
    w->wstart = next;
    return 0;
  }
  w->pend.enc.len = 0;
  int rc = op->encode(tmpl->cfg, *state, &w->pend.enc, err);
  if (rc) return rc;
  w->pend.on = 1;
  w->pend.k = w->wclosed;
  w->pend.start = w->wstart;
  w->pend.token[0] = 0;
  w->pend.wr = w->wr, w->pend.nwr = w->nwr;
  w->wr = NULL, w->nwr = w->wrcap = 0;
  op->partial_free(*state);
  if (!(*state = op->partial_new(tmpl->cfg))) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  w->cur.len = 0;
  if ((rc = op->encode(tmpl->cfg, *state, &w->cur, err))) return rc;
  w->wclosed++;
  w->wstart = next;
  if (w->durable && (rc = save_state(w, err))) return rc;
  if ((rc = finish_pending(w, tmpl, o, ws, jsonl, err))) return rc;
  return w->durable ? save_state(w, err) : 0;
}

static uint64_t fingerprint(const stage *tmpl, char *const *args, size_t nargs, double window) {
  XXH64_state_t *x = XXH64_createState();
  XXH64_reset(x, 0);
  XXH64_update(x, &window, sizeof window);
  XXH64_update(x, tmpl->op->name, strlen(tmpl->op->name) + 1);
  if (tmpl->plan_opts) XXH64_update(x, tmpl->plan_opts, strlen(tmpl->plan_opts) + 1);
  for (size_t i = 0; i < nargs; i++) {
    char *real = realpath(args[i], NULL);
    const char *a = real ? real : args[i];
    XXH64_update(x, a, strlen(a) + 1);
    free(real);
  }
  uint64_t h = XXH64_digest(x);
  XXH64_freeState(x);
  return h;
}

static void fold_stats(stage_stats *cum, const stage_stats *mb) {
  cum->batches += mb->batches;
  cum->tasks += mb->tasks;
  cum->attempts += mb->attempts;
  cum->records += mb->records;
  cum->bad_records += mb->bad_records;
  cum->bytes += mb->bytes;
  cum->seconds += mb->seconds;
  cum->t_read += mb->t_read;
  cum->t_map += mb->t_map;
  cum->t_merge += mb->t_merge;
  cum->t_finish += mb->t_finish;
  memcpy(cum->plan_opts, mb->plan_opts, sizeof cum->plan_opts);
  cum->plan_batch_bytes = mb->plan_batch_bytes;
}

/* Sleep until `until` (monotonic seconds) or a stop signal; note inotify events. */
static void wait_until_tick(follower *w, job *j, const char *name, double until) {
  char evbuf[4096];
  while (w->ino_fd >= 0 && read(w->ino_fd, evbuf, sizeof evbuf) > 0) w->changed = 1;
  for (;;) {
    double left = until - time_mono();
    if (left <= 0 || coord_stop_signal()) return;
    if (ui_due(j->ui)) ui_tick(j->ui, j, NULL, 0, name, 0);
    struct pollfd pf = {w->ino_fd, POLLIN, 0};
    int ms = (int)(left * 1000) + 1;
    if (ms > 200) ms = 200;  /* signals are checked at least this often */
    if (w->ino_fd < 0) {
      struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
      continue;
    }
    if (poll(&pf, 1, ms) > 0) {
      while (read(w->ino_fd, evbuf, sizeof evbuf) > 0) {}
      w->changed = 1;
    }
  }
}

static double percentile(double *v, size_t n, double q) {
  if (!n) return 0;
  for (size_t i = 1; i < n; i++)
    for (size_t k = i; k > 0 && v[k - 1] > v[k]; k--) {
      double t = v[k];
      v[k] = v[k - 1];
      v[k - 1] = t;
    }
  size_t i = (size_t)(q * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

int cli_follow_run(coord *co, job *j, cli_job *o, const cli_follow *f, stage *tmpl, char *const *args, size_t nargs,
                   dbx_err *err) {
  follower w;
  memset(&w, 0, sizeof w);
  w.f = f;
  w.args = args;
  w.nargs = nargs;
  w.ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  w.fingerprint = fingerprint(tmpl, args, nargs, f->window);
  w.durable = j->job_dir != NULL;
  char *real = j->job_dir ? realpath(j->job_dir, NULL) : NULL;
  if (real) snprintf(w.job_key, sizeof w.job_key, "%s", real);
  else snprintf(w.job_key, sizeof w.job_key, "%016llx", (unsigned long long)w.fingerprint);
  free(real);
  double interval = f->interval > 0 ? f->interval : 5.0;
  int rc = 0;
  /* Where the spool and the state live: the job directory, else a private directory. */
  if (j->job_dir) {
    if (strlen(j->job_dir) >= sizeof w.spool_dir) return dbx_seterr(err, DBX_EUSAGE, "%s: the path is too long", j->job_dir);
    snprintf(w.spool_dir, sizeof w.spool_dir, "%s", j->job_dir);
  } else {
    const char *tmp = getenv("TMPDIR");
    snprintf(w.spool_dir, sizeof w.spool_dir, "%s/dbatch-follow-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(w.spool_dir)) return dbx_seterr(err, DBX_EIO, "cannot create %s: %s", w.spool_dir, strerror(errno));
    w.spool_made = 1;
  }
  snprintf(w.spool_path, sizeof w.spool_path, "%s/follow-spool.txt", w.spool_dir);
  snprintf(w.state_path, sizeof w.state_path, "%s/follow.state", w.spool_dir);
  /* Micro-batches are not journaled task by task: the state file is their journal. */
  struct journal *jr = j->jr;
  j->jr = NULL;
  void *state = NULL;
  char *saved = NULL;
  size_t saved_n = 0;
  const dbx_op *op = tmpl->op;
  if (j->job_dir) rc = load_state(&w, &saved, &saved_n, err);
  if (!rc && saved_n) rc = op->decode(tmpl->cfg, saved, saved_n, &state, err);
  /* --window: rows get a first column, window_start (text, ISO 8601 in UTC). */
  int windowed = f->window > 0;
  const dbx_schema *base = f->schema ? f->schema : op->schema;
  const char *wnames[FOLLOW_COLS];
  dbx_coltype wtypes[FOLLOW_COLS];
  dbx_schema wsch = {0, wnames, wtypes};
  if (windowed && base->ncol + 1 > sizeof wnames / sizeof *wnames)
    rc = dbx_seterr(err, DBX_EUSAGE, "--window: too many columns");
  if (windowed && !rc) {
    wnames[0] = "window_start", wtypes[0] = DBX_COL_TEXT;
    for (uint32_t i = 0; i < base->ncol; i++) wnames[i + 1] = base->names[i], wtypes[i + 1] = base->types[i];
    wsch.ncol = base->ncol + 1;
  }
  char jsonl[PATH_MAX];
  snprintf(jsonl, sizeof jsonl, "%s/windows.jsonl", w.spool_dir);
  const char *wlog = j->job_dir ? jsonl : NULL;
  if (!rc && saved_n) w.cur.len = 0, rc = dbx_buf_append(&w.cur, saved, saved_n) ? DBX_ENOMEM : 0;
  if (!rc && (saved || w.epoch)) {
    log_info("--follow: going on from micro-batch %llu (%zu file(s) followed)", (unsigned long long)w.epoch, w.n);
    /* The output of the last state written, again: it may not have been committed. A
     * window closed and not appended yet is appended now. */
    if (!windowed) note_offsets(&w), rc = commit_output(f, tmpl, o, f->schema, saved, saved_n, err);
    else if (w.pend.on && !(rc = finish_pending(&w, tmpl, o, &wsch, wlog, err))) rc = save_state(&w, err);
  }
  free(saved);
  if (!rc && !state && !(state = op->partial_new(tmpl->cfg))) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  coord_defer_interrupts();
  stage_stats *cum = tmpl->st;
  double lat[FOLLOW_LAT], sorted[FOLLOW_LAT], last_batch = 0, waiting_since = 0;
  size_t nlat = 0;
  j->follow = 1;
  double last_data = time_mono(), next = time_mono();
  uint32_t seq0 = j->stage_no;
  int committed_once = w.epoch > 0;
  while (!rc) {
    int stopping = coord_stop_signal() != 0;
    int idle_out = f->until_idle > 0 && time_mono() - last_data >= f->until_idle;
    double t_tick = time_mono();
    /* Scan when inotify saw something, every tenth tick anyway (a network file system may
     * say nothing), and before stopping. */
    if (windowed) {  /* the window that data found now belongs to */
      int64_t now_s = (int64_t)time_wall(), d = (int64_t)f->window, ws = now_s - now_s % d;
      if (!w.wstart) w.wstart = ws;
      else if (ws > w.wstart && (rc = close_window(&w, tmpl, o, &wsch, wlog, &state, ws, err))) break;
    }
    uint64_t nb = 0;
    int gone = 0;  /* files finished and dropped by this scan: the state must forget them too */
    if (w.changed || w.ino_fd < 0 || w.ticks++ % 10 == 0 || stopping || idle_out || !committed_once) {
      w.changed = 0;
      if ((rc = scan(&w, err))) break;
      size_t known = w.n;
      if ((rc = spool(&w, idle_out, &nb, err))) break;
      /* A finished file's identity is dropped for good only once the state is written without
       * it: else a restart would take a new file that got its inode number for it, and skip
       * that file's first bytes (and warn that the finished file's rest was not read). */
      gone = w.n < known;
      j->follow_lag_bytes = w.lag_bytes + nb;
      j->follow_files = w.n;
      if (!j->follow_lag_bytes) waiting_since = 0;
      else if (!waiting_since) waiting_since = t_tick;
    }
    j->follow_lag_seconds = waiting_since > 0 ? time_mono() - waiting_since : 0;
    if (nb || gone || !committed_once) {
      stage s = *tmpl;
      stage_stats mb;
      memset(&mb, 0, sizeof mb);
      snprintf(mb.name, sizeof mb.name, "%s", cum->name);
      mb.state = STAGE_RUNNING;
      s.st = &mb;
      s.out = NULL;
      void *part = NULL;
      s.keep = &part;
      inputs in = {0};
      if (nb) {
        char *sp = w.spool_path;
        rc = inputs_expand(&sp, 1, &in, err);
        s.in = &in;
        if (!o->batch_set) s.split.batch_bytes = engine_default_batch_bytes(nb);
        j->stage_no = seq0;
        if (!rc) rc = cli_run_stage(co, j, &s, err);
        inputs_free(&in);
        fold_stats(cum, &mb);
        if (!rc) rc = op->merge(tmpl->cfg, state, part, err);
        if (part) op->partial_free(part);
      }
      if (rc) break;
      w.epoch++;
      w.cur.len = 0;
      if (!(rc = op->encode(tmpl->cfg, state, &w.cur, err)) && j->job_dir) rc = save_state(&w, err);
      fault_at("follow_crash_before_output", w.epoch);
      if (!rc && !windowed) note_offsets(&w), rc = commit_output(f, tmpl, o, f->schema, w.cur.data, w.cur.len, err);
      if (rc) break;
      committed_once = 1;
      j->follow_lag_bytes = w.lag_bytes;
      if (!w.lag_bytes) waiting_since = 0, j->follow_lag_seconds = 0;
      double dt = time_mono() - t_tick;
      lat[nlat++ % FOLLOW_LAT] = dt;  /* the latest FOLLOW_LAT micro-batches */
      size_t have = nlat < FOLLOW_LAT ? nlat : FOLLOW_LAT;
      memcpy(sorted, lat, have * sizeof *sorted);
      j->follow_p50 = percentile(sorted, have, 0.5);
      j->follow_p99 = percentile(sorted, have, 0.99);
      j->follow_epochs = w.epoch;
      j->follow_last_commit = time_wall();
      if (nb) {
        double now = time_mono();
        j->follow_rate = last_batch > 0 && now > last_batch ? (double)nb / (now - last_batch) : 0;
        last_batch = now;
        last_data = now;
        log_info("--follow: micro-batch %llu: %llu bytes in %.3f s, %s", (unsigned long long)w.epoch,
                 (unsigned long long)nb, dt, windowed ? "in its window" : "committed");
      }
    }
    /* Out of data for good: the open window closes too. */
    if (windowed && idle_out && (rc = close_window(&w, tmpl, o, &wsch, wlog, &state, w.wstart + (int64_t)f->window, err)))
      break;
    if (stopping || idle_out) break;
    next += interval;
    if (next < time_mono()) next = time_mono();  /* behind: the next tick is now */
    if (coord_has_workers(co)) {
      /* Workers go on hearing from us (and new ones join) while we wait. */
      stage hold;
      stage_stats hs;
      void *none = NULL;
      memset(&hold, 0, sizeof hold);
      memset(&hs, 0, sizeof hs);
      snprintf(hs.name, sizeof hs.name, "%s", cum->name);
      hold.name = cum->name;
      hold.op = op;
      hold.cfg = tmpl->cfg;
      hold.cfg_size = tmpl->cfg_size;
      hold.st = &hs;
      hold.keep = &none;
      hold.hold_until = next;
      j->stage_no = seq0;
      rc = coord_run_stage(co, j, &hold, err);
      if (none) op->partial_free(none);
      if (rc) break;
    }
    wait_until_tick(&w, j, cum->name, next);
  }
  j->follow_epochs = w.epoch;
  sink_set_follow_note(NULL, 0, NULL);
  if (!rc) cum->state = STAGE_DONE;
  if (state) op->partial_free(state);
  dbx_buf_free(&w.cur);
  dbx_buf_free(&w.hdr);
  dbx_buf_free(&w.pend.enc);
  free_ranges(w.wr, w.nwr);
  free_ranges(w.pend.wr, w.pend.nwr);
  unlink(w.spool_path);
  if (w.spool_made) {
    rmdir(w.spool_dir);
  }
  for (size_t i = 0; i < w.n; i++) {
    if (w.v[i].fd >= 0) close(w.v[i].fd);
    free(w.v[i].path);
  }
  free(w.v);
  if (w.ino_fd >= 0) close(w.ino_fd);
  j->jr = jr;
  return rc;
}
