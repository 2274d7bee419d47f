/* afile.c -- atomic output files (temp + fsync + rename). */
#include "util/afile.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/err.h"

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
      f->fp = fopen(path, "w");
      if (!f->fp) {
        int e = errno;
        afile_abort(f);
        return dbx_seterr(err, err_from_errno(e), "%s: cannot open for writing: %s", path, strerror(e));
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
  fchmod(fd, 0666 & ~um);
  f->fp = fdopen(fd, "w");
  if (!f->fp) {
    close(fd);
    afile_abort(f);
    return dbx_seterr(err, DBX_ENOMEM, "%s: cannot open output stream", path);
  }
  return 0;
}

int afile_commit(afile *f, dbx_err *err) {
  int rc = 0, e = 0;
  if (fflush(f->fp) != 0 || ferror(f->fp)) { e = errno ? errno : EIO; rc = -1; }
  if (!rc && f->tmp && fsync(fileno(f->fp)) != 0) { e = errno; rc = -1; }
  if (f->is_stdout) {
    f->fp = NULL;
  } else {
    if (fclose(f->fp) != 0 && !rc) { e = errno; rc = -1; }
    f->fp = NULL;
  }
  if (!rc && f->tmp && rename(f->tmp, f->path) != 0) { e = errno; rc = -1; }
  if (rc) {
    rc = dbx_seterr(err, err_from_errno(e), "%s: write failed: %s; no output was written",
                    f->path, strerror(e));
    afile_abort(f);
    return rc;
  }
  free(f->tmp);
  f->tmp = NULL;
  free(f->path);
  f->path = NULL;
  return 0;
}

void afile_abort(afile *f) {
  if (f->fp && !f->is_stdout) fclose(f->fp);
  f->fp = NULL;
  if (f->tmp) unlink(f->tmp);
  free(f->tmp);
  free(f->path);
  f->tmp = f->path = NULL;
}
