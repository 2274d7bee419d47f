/* afile.c -- atomic output files (temp + fsync + rename + directory fsync). */
#define _GNU_SOURCE  /* fopencookie: a stream that remembers why its first write failed */
#include "util/afile.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "util/err.h"

int (*afile_fsync_fn)(int fd) = fsync;

/* The descriptor under an afile's stream. stdio reports a failed buffered write only as
 * ferror(), long after errno has moved on, and writers that check fwrite's result can only
 * say "write failed". So the first error is kept here (sticky): later writes are dropped
 * without a syscall, fwrite keeps succeeding, and afile_commit (which every output goes
 * through) fails with the file name and this cause. afile_write reports it at once. */
struct afile_io {
  int fd;
  int err;  /* first errno of a failed write or close, 0 if none */
};

static ssize_t io_write(void *cookie, const char *buf, size_t n) {
  struct afile_io *io = cookie;
  size_t done = 0;
  while (done < n && !io->err) {
    ssize_t k = write(io->fd, buf + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) io->err = k < 0 ? errno : EIO;
    else done += (size_t)k;
  }
  return (ssize_t)n;  /* the output is doomed once err is set; commit will say why */
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

/* Wrap fd (taken over, also on failure) in a stream; NULL only when out of memory. */
static FILE *io_stream(afile *f, int fd) {
  f->io = calloc(1, sizeof *f->io);
  if (!f->io) {
    close(fd);
    return NULL;
  }
  f->io->fd = fd;
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

int afile_flush(afile *f, dbx_err *err) {
  errno = 0;
  if (fflush(f->fp) == 0 && !ferror(f->fp) && !(f->io && f->io->err)) return 0;
  int e = io_errno(f, errno);
  return dbx_seterr(err, err_from_errno(e), "%s: write failed: %s", f->path, strerror(e));
}

int afile_rewrite(afile *f, const void *p, size_t n, dbx_err *err) {
  int e = 0;
  if (!f->tmp || !f->io || f->io->fd < 0) return dbx_seterr(err, DBX_EINVAL, "%s: cannot be rewritten", f->path);
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

int afile_open(afile *f, const char *path, dbx_err *err) {
  memset(f, 0, sizeof *f);
  if (strcmp(path, "-") == 0) {
    f->fp = stdout;
    f->is_stdout = 1;
    f->path = strdup("standard output");
    return f->path ? 0 : DBX_ENOMEM;
  }
  f->path = strdup(path);
  if (!f->path) return DBX_ENOMEM;
  struct stat st;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      afile_abort(f);
      return dbx_seterr(err, DBX_EISDIR, "%s: is a directory; give a file name for the output", path);
    }
    if (!S_ISREG(st.st_mode)) {
      int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
      if (fd < 0) {
        int e = errno;
        afile_abort(f);
        return dbx_seterr(err, err_from_errno(e), "%s: cannot open for writing: %s", path, strerror(e));
      }
      if (!(f->fp = io_stream(f, fd))) {
        afile_abort(f);
        return dbx_seterr(err, DBX_ENOMEM, "%s: cannot open output stream: out of memory", path);
      }
      return 0;
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
  /* mkstemp makes 0600; give the output the mode a plain create would. */
  mode_t um = umask(0);
  umask(um);
  if (fchmod(fd, 0666 & ~um) != 0) {
    int e = errno;
    close(fd);
    afile_abort(f);
    return dbx_seterr(err, err_from_errno(e), "%s: cannot set the output file's mode: %s", path, strerror(e));
  }
  if (!(f->fp = io_stream(f, fd))) {
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
  free(f->tmp);
  free(f->path);
  free(f->io);
  f->tmp = f->path = NULL;
  f->io = NULL;
}
