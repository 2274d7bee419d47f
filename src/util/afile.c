/* afile.c -- atomic output files (temp + fsync + rename + directory fsync). */
#define _GNU_SOURCE  /* fopencookie: a stream that remembers why its first write failed */
#include "util/afile.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "util/err.h"

int (*afile_fsync_fn)(int fd) = fsync;

/* The descriptor under an afile's stream. stdio reports a failed buffered write only as
 * ferror(), long after errno has moved on, and writers that check fwrite's result can only
 * say "write failed". So the first error is kept here (sticky): later writes are dropped
 * without a syscall, fwrite keeps succeeding, and afile_commit (which every output goes
 * through) fails with the file name and this cause. afile_write reports it at once. */
struct afile_io {
  int fd;
  int err;       /* first errno of a failed write or close, 0 if none */
  int lockfd;    /* the destination, flock'ed while appending to it; -1 if none */
  int made;      /* ... made empty by us to hold the lock: removed by an abort */
  int committed; /* renamed into place: nothing for an abort to remove */
  char *target;  /* the file renamed over: the path, or what its symbolic link leads to */
  char *head;    /* the first bytes of what an append kept (decompressed), NUL-terminated */
  size_t headlen;
  uint64_t kept; /* bytes of the destination copied in (AFILE_APPEND) */
  /* Compression (AFILE_GZIP, AFILE_ZSTD): what stdio hands io_write goes through one of
   * these into zbuf and then to fd; io_finish ends the member or frame. */
  z_stream *gz;
  ZSTD_CCtx *zs;
  char *zbuf;
  int finished;
};

#define ZBUF_SIZE (1u << 17)

/* Write all of buf to the descriptor, or record why not. */
static void raw_write(struct afile_io *io, const char *buf, size_t n) {
  size_t done = 0;
  while (done < n && !io->err) {
    ssize_t k = write(io->fd, buf + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) io->err = k < 0 ? errno : EIO;
    else done += (size_t)k;
  }
}

/* Compress n bytes (end: and finish the stream) and write what comes out. */
static void z_write(struct afile_io *io, const char *buf, size_t n, int end) {
  if (io->finished) {
    if (n && !io->err) io->err = EINVAL;  /* written after the stream ended: a bug, not data */
    return;
  }
  if (io->gz) {
    z_stream *z = io->gz;
    z->next_in = (Bytef *)(uintptr_t)buf;
    z->avail_in = (uInt)n;  /* stdio hands at most its buffer (64 KiB) at a time */
    int zr;
    do {
      z->next_out = (Bytef *)io->zbuf;
      z->avail_out = ZBUF_SIZE;
      zr = deflate(z, end ? Z_FINISH : Z_NO_FLUSH);
      if (zr == Z_STREAM_ERROR) { if (!io->err) io->err = EIO; return; }
      raw_write(io, io->zbuf, ZBUF_SIZE - z->avail_out);
    } while (!io->err && (z->avail_out == 0 || (end && zr != Z_STREAM_END)));
  } else {
    ZSTD_inBuffer in = {buf, n, 0};
    size_t left;
    do {
      ZSTD_outBuffer out = {io->zbuf, ZBUF_SIZE, 0};
      left = ZSTD_compressStream2(io->zs, &out, &in, end ? ZSTD_e_end : ZSTD_e_continue);
      if (ZSTD_isError(left)) { if (!io->err) io->err = EIO; return; }
      raw_write(io, io->zbuf, out.pos);
    } while (!io->err && (end ? left != 0 : in.pos < in.size));
  }
  if (end) io->finished = 1;
}

static ssize_t io_write(void *cookie, const char *buf, size_t n) {
  struct afile_io *io = cookie;
  if (io->err) return (ssize_t)n;
  if (io->gz || io->zs) z_write(io, buf, n, 0);
  else raw_write(io, buf, n);
  return (ssize_t)n;  /* the output is doomed once err is set; commit will say why */
}

/* Flush the stream and end a compressed one (once): after this the descriptor holds every
 * byte of the output. */
static void stream_end(afile *f) {
  if (fflush(f->fp) == 0 && f->io && (f->io->gz || f->io->zs) && !f->io->finished && !f->io->err)
    z_write(f->io, NULL, 0, 1);
}

static void io_free(struct afile_io *io) {
  if (!io) return;
  if (io->gz) {
    deflateEnd(io->gz);
    free(io->gz);
  }
  ZSTD_freeCCtx(io->zs);
  free(io->zbuf);
  free(io->target);
  free(io->head);
  if (io->lockfd >= 0) close(io->lockfd);  /* closing it drops the lock */
  free(io);
}

static int io_close(void *cookie) {
  struct afile_io *io = cookie;
  int rc = 0;
  if (io->fd >= 0 && close(io->fd) != 0) {
    if (!io->err) io->err = errno;
    rc = -1;
  }
  io->fd = -1;
  return rc;
}

/* Wrap fd (taken over, also on failure) in a stream, compressing as flags say; NULL only
 * when out of memory. */
static FILE *io_stream(afile *f, int fd, unsigned flags) {
  if (!f->io) {  /* afile_open_ex makes it first */
    close(fd);
    return NULL;
  }
  f->io->fd = fd;
  if (flags & (AFILE_GZIP | AFILE_ZSTD)) {
    int ok = (f->io->zbuf = malloc(ZBUF_SIZE)) != NULL;
    if (ok && (flags & AFILE_GZIP)) {
      /* windowBits 15 + 16: a gzip header and trailer; level 6, as gzip's default. */
      ok = (f->io->gz = calloc(1, sizeof *f->io->gz)) != NULL &&
           deflateInit2(f->io->gz, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
      if (!ok && f->io->gz) {
        free(f->io->gz);
        f->io->gz = NULL;
      }
    } else if (ok) {
      ok = (f->io->zs = ZSTD_createCCtx()) != NULL &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(f->io->zs, ZSTD_c_compressionLevel, 3));
    }
    if (!ok) {
      close(fd);
      f->io->fd = -1;
      return NULL;
    }
  }
  cookie_io_functions_t fns = {NULL, io_write, NULL, io_close};
  FILE *fp = fopencookie(f->io, "w", fns);
  if (!fp) {
    close(fd);
    f->io->fd = -1;
    return NULL;
  }
  setvbuf(fp, NULL, _IOFBF, 1 << 16);
  return fp;
}

/* The errno behind a failed stream operation: the recorded one, else errno, else EIO. */
static int io_errno(const afile *f, int e) {
  if (f->io && f->io->err) return f->io->err;
  return e ? e : EIO;
}

uint64_t afile_kept(const afile *f) { return f->io ? f->io->kept : 0; }

int afile_flush(afile *f, dbx_err *err) {
  errno = 0;
  if (fflush(f->fp) == 0 && !ferror(f->fp) && !(f->io && f->io->err)) return 0;
  int e = io_errno(f, errno);
  return dbx_seterr(err, err_from_errno(e), "%s: write failed: %s", f->path, strerror(e));
}

int afile_prepare(afile *f, dbx_err *err) {
  if (!f->is_stdout) stream_end(f);
  int rc = afile_flush(f, err);
  if (rc || !f->tmp) return rc;
  if (afile_fsync_fn(f->io->fd) != 0) {
    int e = errno ? errno : EIO;
    return dbx_seterr(err, err_from_errno(e), "%s: fsync failed: %s; no output was written", f->path, strerror(e));
  }
  return 0;
}

int afile_rewrite(afile *f, const void *p, size_t n, dbx_err *err) {
  int e = 0;
  if (!f->tmp || !f->io || f->io->fd < 0 || f->io->gz || f->io->zs || f->io->kept)
    return dbx_seterr(err, DBX_EINVAL, "%s: cannot be rewritten", f->path);
  if (fflush(f->fp) != 0 || f->io->err) e = io_errno(f, errno);
  if (!e && (ftruncate(f->io->fd, 0) != 0 || lseek(f->io->fd, 0, SEEK_SET) != 0)) e = errno ? errno : EIO;
  if (!e && (fwrite(p, 1, n, f->fp) != n || fflush(f->fp) != 0 || f->io->err)) e = io_errno(f, errno);
  if (!e && afile_fsync_fn(f->io->fd) != 0) e = errno ? errno : EIO;
  if (e) return dbx_seterr(err, err_from_errno(e), "%s: write failed: %s", f->path, strerror(e));
  return 0;
}

/* The most of a file name that goes into its temporary file's name: a name near the file
 * system's limit (255 bytes) still leaves room for ".tmp.PID.XXXXXX". */
#define TMP_BASE_MAX 200

/* A job killed while writing leaves its temporary file (".NAME.tmp.PID.XXXXXX"); the next
 * write of the same destination removes those whose process is gone. */
static void remove_stale(const char *path, size_t dirlen) {
  char dir[4096], prefix[512];
  snprintf(dir, sizeof dir, "%.*s", dirlen ? (int)dirlen : 1, dirlen ? path : ".");
  int k = snprintf(prefix, sizeof prefix, ".%.*s.tmp.", TMP_BASE_MAX, path + dirlen);
  if (k <= 0 || (size_t)k >= sizeof prefix) return;
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (strncmp(de->d_name, prefix, (size_t)k)) continue;
    char *end;
    long pid = strtol(de->d_name + k, &end, 10);
    if (end == de->d_name + k || *end != '.' || pid <= 0) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
    char full[4600];
    snprintf(full, sizeof full, "%s/%s", dir, de->d_name);
    unlink(full);
  }
  closedir(d);
}

/* Lock the regular file path for appending: open it, flock it, and make sure the name still
 * leads to the file locked (another job may have renamed a new one into place meanwhile).
 * *fd is -1 when there is no such file (appending then creates it). */
static int lock_dest(const char *path, int *fd, struct stat *st, int *made, dbx_err *err) {
  *fd = -1;
  *made = 0;
  for (int tries = 0; tries < 100; tries++) {
    /* A file that is not there yet is made (empty) to hold the lock: jobs appending to a new
     * file take turns too. An abort removes it again while it is still empty. */
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0 && errno == ENOENT) {
      *fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (*fd >= 0) *made = 1;
      else if (errno == EEXIST) continue;
    }
    if (*fd < 0) {
      int e = errno;
      return dbx_seterr(err, err_from_errno(e), "%s: cannot open it to append: %s", path, strerror(e));
    }
    struct stat now;
    int e = 0;
    while (flock(*fd, LOCK_EX) != 0)
      if (errno != EINTR) { e = errno; break; }
    if (!e && fstat(*fd, st) != 0) e = errno;
    if (e) {
      close(*fd);
      *fd = -1;
      return dbx_seterr(err, err_from_errno(e), "%s: cannot lock it to append: %s", path, strerror(e));
    }
    if (stat(path, &now) == 0 && now.st_dev == st->st_dev && now.st_ino == st->st_ino) return 0;
    close(*fd);
    *made = 0;
  }
  *fd = -1;
  return dbx_seterr(err, DBX_EIO, "%s: replaced again and again while waiting to append to it", path);
}

/* Copy all of src (from its start) to the end of dst. 0 or an errno. */
static int copy_all(int src, int dst, uint64_t size) {
  uint64_t done = 0;
  while (done < size) {
    ssize_t k = copy_file_range(src, NULL, dst, NULL, (size_t)(size - done < (1u << 30) ? size - done : (1u << 30)), 0);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP) && done == 0) break;
    if (k < 0) return errno;
    if (k == 0) return 0;  /* the file shrank under us: keep what there was */
    done += (uint64_t)k;
  }
  if (done == size) return 0;
  char buf[1 << 16];
  for (;;) {
    ssize_t k = read(src, buf, sizeof buf);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return errno;
    if (k == 0) return 0;
    for (ssize_t w = 0; w < k;) {
      ssize_t m = write(dst, buf + w, (size_t)(k - w));
      if (m < 0 && errno == EINTR) continue;
      if (m <= 0) return m < 0 ? errno : EIO;
      w += m;
    }
  }
}

int afile_open(afile *f, const char *path, dbx_err *err) { return afile_open_ex(f, path, 0, err); }

/* Names of this process's own descriptors: written straight, never renamed over (renaming
 * over /dev/stdout would replace the machine's link with a file). */
static int own_stream(const char *path) {
  return !strcmp(path, "/dev/stdout") || !strcmp(path, "/dev/stderr") || !strncmp(path, "/dev/fd/", 8) ||
         !strncmp(path, "/proc/self/fd/", 14);
}

#define HEAD_MAX (1u << 20)  /* the most of an appended file's start kept for a header check */

/* Read all of what an append keeps, as its reader will: a .gz or .zst file must decompress
 * whole (every member or frame, none cut short), and the text must end with a newline. The
 * first bytes go to io->head, for the header check. 0 or an error naming the file. */
static int check_kept(afile *f, int fd, unsigned flags, dbx_err *err) {
  struct afile_io *io = f->io;
  if (!(io->head = malloc(HEAD_MAX + 1))) return DBX_ENOMEM;
  char last = 0;
  uint64_t total = 0;
  const char *what = NULL;
  char in[1 << 16], out[1 << 16];
  if (!(flags & (AFILE_GZIP | AFILE_ZSTD))) {
    ssize_t k = pread(fd, io->head, HEAD_MAX, 0);
    if (k < 0) return dbx_seterr(err, err_from_errno(errno), "%s: cannot read it: %s", f->path, strerror(errno));
    io->headlen = (size_t)k;
    off_t end = lseek(fd, 0, SEEK_END);
    if (end > 0 && pread(fd, &last, 1, end - 1) != 1) last = 0;
    total = end > 0 ? (uint64_t)end : 0;
  } else if (flags & AFILE_GZIP) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK) return DBX_ENOMEM;
    int zr = Z_OK, any = 0;
    off_t at = 0;
    for (;;) {
      ssize_t k = pread(fd, in, sizeof in, at);
      if (k < 0) { what = strerror(errno); break; }
      if (k == 0) {
        if (any && zr != Z_STREAM_END) what = "the last gzip member is cut short";
        break;
      }
      at += k;
      z.next_in = (Bytef *)in;
      z.avail_in = (uInt)k;
      while (z.avail_in > 0 && !what) {
        if (zr == Z_STREAM_END) inflateReset(&z);  /* the next member */
        z.next_out = (Bytef *)out;
        z.avail_out = sizeof out;
        zr = inflate(&z, Z_NO_FLUSH);
        any = 1;
        if (zr != Z_OK && zr != Z_STREAM_END && !(zr == Z_BUF_ERROR && z.avail_in == 0))
          what = z.msg ? z.msg : "not gzip data";
        size_t got = sizeof out - z.avail_out;
        if (got) {
          if (io->headlen < HEAD_MAX) {
            size_t take = got < HEAD_MAX - io->headlen ? got : HEAD_MAX - io->headlen;
            memcpy(io->head + io->headlen, out, take);
            io->headlen += take;
          }
          last = out[got - 1];
          total += got;
        }
      }
      if (what) break;
    }
    inflateEnd(&z);
    if (what) what = what[0] ? what : "not gzip data";
  } else {
    ZSTD_DCtx *dz = ZSTD_createDCtx();
    if (!dz) return DBX_ENOMEM;
    size_t left = 0;
    off_t at = 0;
    for (;;) {
      ssize_t k = pread(fd, in, sizeof in, at);
      if (k < 0) { what = strerror(errno); break; }
      if (k == 0) {
        if (left != 0) what = "the last zstd frame is cut short";
        break;
      }
      at += k;
      ZSTD_inBuffer ib = {in, (size_t)k, 0};
      while (ib.pos < ib.size) {
        ZSTD_outBuffer ob = {out, sizeof out, 0};
        left = ZSTD_decompressStream(dz, &ob, &ib);
        if (ZSTD_isError(left)) { what = ZSTD_getErrorName(left); break; }
        if (ob.pos) {
          if (io->headlen < HEAD_MAX) {
            size_t take = ob.pos < HEAD_MAX - io->headlen ? ob.pos : HEAD_MAX - io->headlen;
            memcpy(io->head + io->headlen, out, take);
            io->headlen += take;
          }
          last = out[ob.pos - 1];
          total += ob.pos;
        }
      }
      if (what) break;
    }
    ZSTD_freeDCtx(dz);
  }
  io->head[io->headlen] = 0;
  if (what)
    return dbx_seterr(err, DBX_ECORRUPT, "%s: cannot append to it: it does not read as %s (%s); nothing was written",
                      f->path, flags & AFILE_GZIP ? "gzip" : "zstd", what);
  if (total > 0 && last != '\n')
    return dbx_seterr(err, DBX_EINVAL, "%s: does not end with a newline; --append refuses to run rows into its "
                      "last line", f->path);
  return 0;
}

/* A file's identity for an append: its size and modification time to the nanosecond, which
 * a rename keeps, and a copy made to put it back (cp -p, rsync -t, a restore) keeps too, so
 * neither a new inode nor a reused one decides. */
static void identity(const struct stat *st, char *out, size_t cap) {
  snprintf(out, cap, "%llu:%lld.%09ld", (unsigned long long)st->st_size, (long long)st->st_mtim.tv_sec,
           (long)st->st_mtim.tv_nsec);
}

int afile_append_token(const afile *f, char *out, size_t cap) {
  struct stat st;
  if (!f->tmp || !f->io || f->io->lockfd < 0 || f->io->fd < 0) return 0;
  if (f->fp) fflush(f->fp);  /* the size it will have (afile_prepare has ended the stream) */
  if (fstat(f->io->fd, &st) != 0) return 0;
  identity(&st, out, cap);
  return 1;
}

int afile_landed(const afile *f, const char *token) {
  struct stat st;
  char now[64];
  const char *target = f->io && f->io->target ? f->io->target : f->path;
  if (!target || stat(target, &st) != 0) return 0;
  identity(&st, now, sizeof now);
  return !strcmp(now, token);
}

const char *afile_kept_head(const afile *f, size_t *n) {
  *n = f->io ? f->io->headlen : 0;
  return f->io && f->io->head ? f->io->head : "";
}

/* Give the new file the mode (and, for root, the owner) of the one it replaces. */
static void keep_mode(int fd, const struct stat *st) {
  if (fchmod(fd, st->st_mode & 07777) != 0) { /* the umask's mode stays */ }
  if (geteuid() == 0 && (st->st_uid != 0 || st->st_gid != 0) && fchown(fd, st->st_uid, st->st_gid) != 0) {
    /* not ours to give away: keep root's */
  }
}

int afile_open_ex(afile *f, const char *path, unsigned flags, dbx_err *err) {
  memset(f, 0, sizeof *f);
  if (strcmp(path, "-") == 0) {
    if (flags & (AFILE_GZIP | AFILE_ZSTD | AFILE_APPEND))
      return dbx_seterr(err, DBX_EUSAGE, "standard output cannot be compressed or appended to; give a file name");
    f->fp = stdout;
    f->is_stdout = 1;
    f->path = strdup("standard output");
    return f->path ? 0 : DBX_ENOMEM;
  }
  f->path = strdup(path);
  if (!f->path || !(f->io = calloc(1, sizeof *f->io))) {
    afile_abort(f);
    return DBX_ENOMEM;
  }
  f->io->fd = -1;
  f->io->lockfd = -1;
  /* A symbolic link is followed: the file it leads to is the one replaced (or appended to),
   * and the link stays. */
  struct stat st;
  const char *target = path;
  if (!own_stream(path) && lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
    char *real = realpath(path, NULL);
    if (!real) {
      int e = errno;
      afile_abort(f);
      return dbx_seterr(err, err_from_errno(e), "%s: a symbolic link that leads nowhere (%s); give the file itself",
                        path, strerror(e));
    }
    f->io->target = real;
    target = real;
  }
  int exists = stat(target, &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) {
    afile_abort(f);
    return dbx_seterr(err, DBX_EISDIR, "%s: is a directory; give a file name for the output", path);
  }
  if (own_stream(path) || (exists && !S_ISREG(st.st_mode))) {
    /* A device, a pipe, a terminal, this process's own stream: written straight. */
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (flags & AFILE_APPEND ? O_APPEND : O_TRUNC), 0666);
    if (fd < 0) {
      int e = errno;
      afile_abort(f);
      return dbx_seterr(err, err_from_errno(e), "%s: cannot open for writing: %s", path, strerror(e));
    }
    if (!(f->fp = io_stream(f, fd, flags))) {
      afile_abort(f);
      return dbx_seterr(err, DBX_ENOMEM, "%s: cannot open output stream: out of memory", path);
    }
    return 0;
  }
  int keep = -1;  /* the destination whose bytes the output starts with (appending) */
  if (flags & AFILE_APPEND) {
    int rc = lock_dest(target, &keep, &st, &f->io->made, err);
    if (!rc && keep >= 0 && st.st_size > 0) rc = check_kept(f, keep, flags, err);
    if (rc) {
      if (keep >= 0) f->io->lockfd = keep;
      afile_abort(f);
      return rc;
    }
    f->io->lockfd = keep;
    exists = 1;
  }
  size_t n = strlen(target);
  const char *slash = strrchr(target, '/');
  size_t dirlen = slash ? (size_t)(slash - target) + 1 : 0;
  remove_stale(target, dirlen);
  f->tmp = malloc(n + 48);
  if (!f->tmp) { afile_abort(f); return DBX_ENOMEM; }
  snprintf(f->tmp, n + 48, "%.*s.%.*s.tmp.%d.XXXXXX", (int)dirlen, target, TMP_BASE_MAX, target + dirlen,
           (int)getpid());
  int fd = mkstemp(f->tmp);
  if (fd < 0) {
    int e = errno;
    free(f->tmp);
    f->tmp = NULL;
    afile_abort(f);
    return dbx_seterr(err, err_from_errno(e), "%s: cannot create output file: %s", path, strerror(e));
  }
  /* mkstemp makes 0600; give the output the mode a plain create would, or keep the mode
   * (and owner) of the file it replaces or appends to. */
  mode_t um = umask(0);
  umask(um);
  if (exists && !f->io->made) keep_mode(fd, &st);
  else if (fchmod(fd, 0666 & ~um) != 0) {
    int e = errno;
    close(fd);
    afile_abort(f);
    return dbx_seterr(err, err_from_errno(e), "%s: cannot set the output file's mode: %s", path, strerror(e));
  }
  if (keep >= 0 && st.st_size > 0) {
    int e = lseek(keep, 0, SEEK_SET) < 0 ? errno : copy_all(keep, fd, (uint64_t)st.st_size);
    if (e) {
      close(fd);
      afile_abort(f);
      return dbx_seterr(err, err_from_errno(e), "%s: cannot copy it to append to it: %s; nothing was written", path,
                        strerror(e));
    }
    f->io->kept = (uint64_t)st.st_size;
  }
  if (!(f->fp = io_stream(f, fd, flags))) {
    afile_abort(f);
    return dbx_seterr(err, DBX_ENOMEM, "%s: cannot open output stream: out of memory", path);
  }
  return 0;
}

int afile_write(afile *f, const void *p, size_t n, dbx_err *err) {
  errno = 0;
  if ((n == 0 || fwrite(p, 1, n, f->fp) == n) && !ferror(f->fp) && !(f->io && f->io->err)) return 0;
  int e = io_errno(f, errno);
  return dbx_seterr(err, err_from_errno(e), "%s: write failed: %s; no output was written", f->path,
                    strerror(e));
}

/* fsync the directory holding path, so a rename into it survives a crash. File systems
 * that cannot sync a directory say EINVAL: nothing more can be done there. */
static int sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char dir[4096];
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else if ((size_t)(slash - path) >= sizeof dir) return 0;
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int e = 0;
  if (afile_fsync_fn(fd) != 0 && errno != EINVAL) e = errno;
  close(fd);
  return e;
}

int afile_commit(afile *f, dbx_err *err) {
  int e = 0;
  const char *what = "write failed";
  errno = 0;
  if (fflush(f->fp) != 0 || ferror(f->fp) || (f->io && f->io->err)) e = io_errno(f, errno);
  if (!e && !f->is_stdout) {
    stream_end(f);
    if (ferror(f->fp) || f->io->err) e = io_errno(f, errno);
  }
  if (!e && f->tmp && afile_fsync_fn(f->io->fd) != 0) { e = errno ? errno : EIO; what = "fsync failed"; }
  if (f->is_stdout) {
    f->fp = NULL;
  } else {
    errno = 0;
    if ((fclose(f->fp) != 0 || (f->io && f->io->err)) && !e) { e = io_errno(f, errno); what = "close failed"; }
    f->fp = NULL;
  }
  const char *target = f->io && f->io->target ? f->io->target : f->path;
  int lockfd = -1;
  if (!e && f->tmp && f->io->lockfd < 0) {
    /* Replacing: wait for a job appending to the file now (it holds the lock), so its rows
     * are replaced rather than its commit undoing ours. */
    struct stat st;
    int made = 0;
    dbx_err lerr = {0, ""};
    if (stat(target, &st) == 0 && S_ISREG(st.st_mode) && lock_dest(target, &lockfd, &st, &made, &lerr) == 0 && made) {
      unlink(target);  /* it vanished meanwhile and lock_dest made it: not ours to leave */
    }
  }
  if (!e && f->tmp && rename(f->tmp, target) != 0) { e = errno; what = "cannot rename the temporary file into place"; }
  if (lockfd >= 0) close(lockfd);
  if (e) {
    int rc = dbx_seterr(err, err_from_errno(e), "%s: %s: %s; no output was written", f->path, what, strerror(e));
    afile_abort(f);
    return rc;
  }
  int rc = 0;
  if (f->tmp) {
    free(f->tmp);
    f->tmp = NULL;  /* in place now: nothing for afile_abort to remove */
    f->io->committed = 1;
    if ((e = sync_dir(target)) != 0)
      rc = dbx_seterr(err, err_from_errno(e), "%s: written, but syncing its directory failed: %s; "
                      "the file may be lost if the machine crashes now", f->path, strerror(e));
  }
  afile_abort(f);
  return rc;
}

void afile_abort(afile *f) {
  if (f->fp && !f->is_stdout) fclose(f->fp);
  f->fp = NULL;
  if (f->tmp) unlink(f->tmp);
  /* Not committed: the empty file made to hold an append's lock goes too (if it is still
   * ours and still empty), so a failed job leaves no file where there was none. */
  struct stat a, b;
  const char *target = f->io && f->io->target ? f->io->target : f->path;
  if (f->io && !f->io->committed && f->io->made && f->io->lockfd >= 0 && fstat(f->io->lockfd, &a) == 0 &&
      stat(target, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino && b.st_size == 0)
    unlink(target);
  free(f->tmp);
  free(f->path);
  io_free(f->io);
  f->tmp = f->path = NULL;
  f->io = NULL;
}
