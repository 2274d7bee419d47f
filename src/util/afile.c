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

/* A job killed while writing leaves its temporary file (".NAME.tmp.PID.XXXXXX"); the next
 * write of the same destination removes those whose process is gone. */
static void remove_stale(const char *path, size_t dirlen) {
  char dir[4096], prefix[512];
  snprintf(dir, sizeof dir, "%.*s", dirlen ? (int)dirlen : 1, dirlen ? path : ".");
  int k = snprintf(prefix, sizeof prefix, ".%s.tmp.", path + dirlen);
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
  struct stat st;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      afile_abort(f);
      return dbx_seterr(err, DBX_EISDIR, "%s: is a directory; give a file name for the output", path);
    }
    if (!S_ISREG(st.st_mode)) {
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
  }
  int keep = -1;  /* the destination whose bytes the output starts with (appending) */
  if (flags & AFILE_APPEND) {
    int rc = lock_dest(path, &keep, &st, &f->io->made, err);
    if (rc) {
      afile_abort(f);
      return rc;
    }
    f->io->lockfd = keep;
    if (st.st_size > 0 && !(flags & (AFILE_GZIP | AFILE_ZSTD))) {
      char last = 0;
      if (pread(keep, &last, 1, st.st_size - 1) != 1 || last != '\n') {
        afile_abort(f);
        return dbx_seterr(err, DBX_EINVAL, "%s: does not end with a newline; --append refuses to run rows into its "
                          "last line", path);
      }
    }
  }
  size_t n = strlen(path);
  const char *slash = strrchr(path, '/');
  size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
  remove_stale(path, dirlen);
  f->tmp = malloc(n + 48);
  if (!f->tmp) { afile_abort(f); return DBX_ENOMEM; }
  snprintf(f->tmp, n + 48, "%.*s.%s.tmp.%d.XXXXXX", (int)dirlen, path, path + dirlen, (int)getpid());
  int fd = mkstemp(f->tmp);
  if (fd < 0) {
    int e = errno;
    free(f->tmp);
    f->tmp = NULL;
    afile_abort(f);
    return dbx_seterr(err, err_from_errno(e), "%s: cannot create output file: %s", path, strerror(e));
  }
  /* mkstemp makes 0600; give the output the mode a plain create would, or keep the mode of
   * the file appended to. */
  mode_t um = umask(0);
  umask(um);
  if (fchmod(fd, keep >= 0 ? st.st_mode & 07777 : 0666 & ~um) != 0) {
    int e = errno;
    close(fd);
    afile_abort(f);
    return dbx_seterr(err, err_from_errno(e), "%s: cannot set the output file's mode: %s", path, strerror(e));
  }
  if (keep >= 0 && st.st_size > 0) {
    int e = copy_all(keep, fd, (uint64_t)st.st_size);
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

/* Read the first line of a gzip file: gzgets reads plain files as they are too. */
static int head_gz(const char *path, char *line, size_t cap, dbx_err *err) {
  gzFile g = gzopen(path, "rb");
  if (!g) return dbx_seterr(err, DBX_EIO, "%s: cannot read it: %s", path, strerror(errno ? errno : EIO));
  char *got = gzgets(g, line, (int)cap);
  int ge = 0;
  const char *msg = got ? NULL : gzerror(g, &ge);
  gzclose(g);
  if (!got && ge != Z_OK && ge != Z_BUF_ERROR)
    return dbx_seterr(err, DBX_ECORRUPT, "%s: not a readable gzip file: %s", path, msg ? msg : "error");
  return got ? 1 : 0;
}

static int head_zstd(const char *path, char *line, size_t cap, dbx_err *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return dbx_seterr(err, DBX_EIO, "%s: cannot read it: %s", path, strerror(errno));
  ZSTD_DCtx *dz = ZSTD_createDCtx();
  char in[1 << 14];
  size_t got = 0;
  int rc = 0, eof = 0;
  while (!rc && !eof && got + 1 < cap && !memchr(line, '\n', got)) {
    ssize_t k = read(fd, in, sizeof in);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) { eof = 1; break; }
    ZSTD_inBuffer ib = {in, (size_t)k, 0};
    while (ib.pos < ib.size && got + 1 < cap) {
      ZSTD_outBuffer ob = {line + got, cap - 1 - got, 0};
      size_t r = dz ? ZSTD_decompressStream(dz, &ob, &ib) : (size_t)-1;
      if (!dz || ZSTD_isError(r)) {
        rc = dbx_seterr(err, DBX_ECORRUPT, "%s: not a readable zstd file: %s", path,
                        dz ? ZSTD_getErrorName(r) : "out of memory");
        break;
      }
      got += ob.pos;
      if (memchr(line, '\n', got)) break;
    }
  }
  ZSTD_freeDCtx(dz);
  close(fd);
  line[got] = 0;
  return rc ? rc : got > 0;
}

int afile_first_line(const char *path, unsigned flags, char *line, size_t cap, dbx_err *err) {
  struct stat st;
  line[0] = 0;
  if (cap < 2 || stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return 0;
  memset(line, 0, cap);
  int rc = flags & AFILE_ZSTD ? head_zstd(path, line, cap, err) : head_gz(path, line, cap, err);
  if (rc == 1) line[strcspn(line, "\n")] = 0;
  return rc;
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
  if (!e && f->tmp && rename(f->tmp, f->path) != 0) { e = errno; what = "cannot rename the temporary file into place"; }
  if (e) {
    int rc = dbx_seterr(err, err_from_errno(e), "%s: %s: %s; no output was written", f->path, what, strerror(e));
    afile_abort(f);
    return rc;
  }
  int rc = 0;
  if (f->tmp) {
    free(f->tmp);
    f->tmp = NULL;  /* in place now: nothing for afile_abort to remove */
    if ((e = sync_dir(f->path)) != 0)
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
  if (f->tmp && f->io && f->io->made && f->io->lockfd >= 0 && fstat(f->io->lockfd, &a) == 0 && stat(f->path, &b) == 0 &&
      a.st_dev == b.st_dev && a.st_ino == b.st_ino && b.st_size == 0)
    unlink(f->path);
  free(f->tmp);
  free(f->path);
  io_free(f->io);
  f->tmp = f->path = NULL;
  f->io = NULL;
}
