/* rendezvous.c -- ranks and the rendezvous file (see rendezvous.h). */
#define _GNU_SOURCE 1
#include "net/rendezvous.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/timeutil.h"

#define RV_FILE_MAX 4096

static int parse_long(const char *s, long lo, long hi, long *out) {
  if (!s || !*s) return -1;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* Copy s into out keeping [A-Za-z0-9._-], other bytes as '_'. */
static void launch_id(char *out, size_t cap, const char *kind, const char *a, const char *b) {
  char raw[RV_LAUNCH_LEN * 2];
  snprintf(raw, sizeof raw, "%s-%s%s%s", kind, a ? a : "", b ? "." : "", b ? b : "");
  size_t k = 0;
  for (const char *p = raw; *p && k + 1 < cap; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
    out[k++] = ok ? c : '_';
  }
  out[k] = 0;
}

static int need(rv_getenv get, void *ctx, const char *name, long lo, long hi, long *out, const char *kind, dbx_err *err) {
  const char *v = get(name, ctx);
  if (!v) return dbx_seterr(err, DBX_EUSAGE, "--cluster %s: %s is not set (is this command run by %s?)", kind, name,
                            !strcmp(kind, "slurm") ? "srun" : !strcmp(kind, "mpi") ? "mpirun" : "the Indexed Job");
  if (parse_long(v, lo, hi, out))
    return dbx_seterr(err, DBX_EUSAGE, "--cluster %s: %s='%.40s' is not a number in %ld..%ld", kind, name, v, lo, hi);
  return 0;
}

#define RV_MAX_RANKS 1000000L

static int detect_slurm(rv_getenv get, void *ctx, rv_env *e, dbx_err *err) {
  int rc;
  if ((rc = need(get, ctx, "SLURM_PROCID", 0, RV_MAX_RANKS - 1, &e->rank, "slurm", err))) return rc;
  const char *ntasks = get("SLURM_NTASKS", ctx) ? "SLURM_NTASKS" : "SLURM_NPROCS";
  if ((rc = need(get, ctx, ntasks, 1, RV_MAX_RANKS, &e->size, "slurm", err))) return rc;
  long cpus = 1;
  const char *c = get("SLURM_CPUS_PER_TASK", ctx);
  if (c && parse_long(c, 1, 4096, &cpus))
    return dbx_seterr(err, DBX_EUSAGE, "--cluster slurm: SLURM_CPUS_PER_TASK='%.40s' is not a number in 1..4096", c);
  e->slots = (unsigned)cpus;
  const char *job = get("SLURM_JOB_ID", ctx), *step = get("SLURM_STEP_ID", ctx);
  if (!job) return dbx_seterr(err, DBX_EUSAGE, "--cluster slurm: SLURM_JOB_ID is not set (is this command run by srun?)");
  launch_id(e->launch, sizeof e->launch, "slurm", job, step ? step : "0");
  snprintf(e->kind, sizeof e->kind, "slurm");
  return 0;
}

static int detect_mpi(rv_getenv get, void *ctx, rv_env *e, dbx_err *err) {
  int rc;
  const char *rank = get("OMPI_COMM_WORLD_RANK", ctx) ? "OMPI_COMM_WORLD_RANK" : "PMIX_RANK";
  if (!get(rank, ctx))
    return dbx_seterr(err, DBX_EUSAGE, "--cluster mpi: OMPI_COMM_WORLD_RANK (or PMIX_RANK) is not set (is this command "
                                       "run by mpirun?)");
  if ((rc = need(get, ctx, rank, 0, RV_MAX_RANKS - 1, &e->rank, "mpi", err))) return rc;
  if (get("OMPI_COMM_WORLD_SIZE", ctx)) {
    if ((rc = need(get, ctx, "OMPI_COMM_WORLD_SIZE", 1, RV_MAX_RANKS, &e->size, "mpi", err))) return rc;
  } else if (get("PMIX_SIZE", ctx)) {
    if ((rc = need(get, ctx, "PMIX_SIZE", 1, RV_MAX_RANKS, &e->size, "mpi", err))) return rc;
  } else {
    return dbx_seterr(err, DBX_EUSAGE, "--cluster mpi: OMPI_COMM_WORLD_SIZE is not set (is this command run by mpirun?)");
  }
  const char *id = get("OMPI_MCA_ess_base_jobid", ctx);
  if (!id) id = get("PMIX_NAMESPACE", ctx);
  if (!id) return dbx_seterr(err, DBX_EUSAGE, "--cluster mpi: neither OMPI_MCA_ess_base_jobid nor PMIX_NAMESPACE is set");
  launch_id(e->launch, sizeof e->launch, "mpi", id, NULL);
  e->slots = 1;
  snprintf(e->kind, sizeof e->kind, "mpi");
  return 0;
}

/* A Kubernetes Indexed Job: the rank is JOB_COMPLETION_INDEX; the manifest says how many
 * ranks (DBATCH_CLUSTER_SIZE) and where rank 0 listens (DBATCH_COORDINATOR, the stable
 * name the headless Service gives pod 0, with a port). */
static int detect_k8s(rv_getenv get, void *ctx, rv_env *e, dbx_err *err) {
  int rc;
  if ((rc = need(get, ctx, "JOB_COMPLETION_INDEX", 0, RV_MAX_RANKS - 1, &e->rank, "k8s", err))) return rc;
  if ((rc = need(get, ctx, "DBATCH_CLUSTER_SIZE", 1, RV_MAX_RANKS, &e->size, "k8s", err))) return rc;
  const char *co = get("DBATCH_COORDINATOR", ctx);
  if (!co || !*co)
    return dbx_seterr(err, DBX_EUSAGE, "--cluster k8s: DBATCH_COORDINATOR (HOST:PORT of the pod of index 0) is not set");
  if (strlen(co) >= sizeof e->coordinator) return dbx_seterr(err, DBX_EUSAGE, "--cluster k8s: DBATCH_COORDINATOR is too long");
  const char *colon = strrchr(co, ':');
  long port;
  if (!colon || colon == co || parse_long(colon + 1, 1, 65535, &port))
    return dbx_seterr(err, DBX_EUSAGE, "--cluster k8s: DBATCH_COORDINATOR='%.100s' needs HOST:PORT (a port is needed: "
                      "the one pod 0 listens on)", co);
  snprintf(e->coordinator, sizeof e->coordinator, "%s", co);
  const char *name = get("DBATCH_LAUNCH_ID", ctx);
  launch_id(e->launch, sizeof e->launch, "k8s", name ? name : "job", NULL);
  e->slots = 1;
  snprintf(e->kind, sizeof e->kind, "k8s");
  return 0;
}

int rv_detect(const char *mode, rv_getenv get, void *ctx, rv_env *e, dbx_err *err) {
  memset(e, 0, sizeof *e);
  int rc;
  if (!strcmp(mode, "slurm")) rc = detect_slurm(get, ctx, e, err);
  else if (!strcmp(mode, "mpi")) rc = detect_mpi(get, ctx, e, err);
  else if (!strcmp(mode, "k8s")) rc = detect_k8s(get, ctx, e, err);
  else if (strcmp(mode, "auto")) return dbx_seterr(err, DBX_EUSAGE, "--cluster %s: use auto, slurm, mpi or k8s", mode);
  /* auto: mpirun first (its ranks are not Slurm's when mpirun runs inside an allocation),
   * then srun, then an Indexed Job. */
  else if (get("OMPI_COMM_WORLD_RANK", ctx)) rc = detect_mpi(get, ctx, e, err);
  else if (get("SLURM_PROCID", ctx) && get("SLURM_STEP_ID", ctx)) rc = detect_slurm(get, ctx, e, err);
  else if (get("PMIX_RANK", ctx) && get("PMIX_NAMESPACE", ctx)) rc = detect_mpi(get, ctx, e, err);
  else if (get("JOB_COMPLETION_INDEX", ctx)) rc = detect_k8s(get, ctx, e, err);
  else
    return dbx_seterr(err, DBX_EUSAGE, "--cluster auto: not started by srun, mpirun or an Indexed Job (no SLURM_PROCID, "
                                       "OMPI_COMM_WORLD_RANK, PMIX_RANK or JOB_COMPLETION_INDEX)");
  /* Task slots of a worker rank, whatever the launcher: DBATCH_SLOTS wins. */
  const char *slots = get("DBATCH_SLOTS", ctx);
  long sv;
  if (!rc && slots) {
    if (parse_long(slots, 1, 4096, &sv))
      return dbx_seterr(err, DBX_EUSAGE, "--cluster: DBATCH_SLOTS='%.40s' is not a number in 1..4096", slots);
    e->slots = (unsigned)sv;
  }
  if (!rc && e->rank >= e->size)
    rc = dbx_seterr(err, DBX_EUSAGE, "--cluster %s: rank %ld of %ld ranks", e->kind, e->rank, e->size);
  return rc;
}

/* ---- the file ---- */

int rv_write(const char *path, const rv_info *r, dbx_err *err) {
  char text[1024], tmp[4096];
  int n = snprintf(text, sizeof text,
                   "# dbatch rendezvous: where the coordinator of this launch listens\n"
                   "launch %s\nendpoint %s\n%s%s%s",
                   r->launch, r->endpoint, r->key[0] ? "coordinator-key " : "", r->key, r->key[0] ? "\n" : "");
  if (n < 0 || (size_t)n >= sizeof text) return dbx_seterr(err, DBX_EINVAL, "%s: rendezvous too long", path);
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= sizeof tmp)
    return dbx_seterr(err, DBX_EINVAL, "%s: the path is too long", path);
  unlink(tmp);  /* ours from a run with the same pid, or planted: never written through */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return dbx_seterr(err, DBX_EIO, "cannot write the rendezvous %s: %s", tmp, strerror(errno));
  int rc = 0;
  if (write(fd, text, (size_t)n) != n || fsync(fd) != 0)
    rc = dbx_seterr(err, DBX_EIO, "cannot write the rendezvous %s: %s", tmp, strerror(errno ? errno : EIO));
  if (close(fd) != 0 && !rc) rc = dbx_seterr(err, DBX_EIO, "cannot write the rendezvous %s: %s", tmp, strerror(errno));
  if (!rc && rename(tmp, path) != 0) rc = dbx_seterr(err, DBX_EIO, "cannot write the rendezvous %s: %s", path, strerror(errno));
  if (rc) unlink(tmp);
  return rc;
}

int rv_parse(const char *text, size_t len, const char *what, rv_info *r, dbx_err *err) {
  memset(r, 0, sizeof *r);
  size_t pos = 0, lineno = 0;
  while (pos < len) {
    const char *s = text + pos;
    const char *nl = memchr(s, '\n', len - pos);
    size_t n = nl ? (size_t)(nl - s) : len - pos;
    pos += n + (nl != NULL);
    lineno++;
    if (n && s[n - 1] == '\r') n--;
    if (!n || s[0] == '#') continue;
    const char *sp = memchr(s, ' ', n);
    if (!sp) return dbx_seterr(err, DBX_ECORRUPT, "%s line %zu: expected 'NAME VALUE'", what, lineno);
    size_t kn = (size_t)(sp - s), vn = n - kn - 1;
    const char *v = sp + 1;
    for (size_t i = 0; i < vn; i++)
      if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f)
        return dbx_seterr(err, DBX_ECORRUPT, "%s line %zu: a value with a blank, a control or a non-ASCII byte",
                          what, lineno);
    char *dst = NULL;
    size_t cap = 0;
    if (kn == 6 && !memcmp(s, "launch", 6)) dst = r->launch, cap = sizeof r->launch;
    else if (kn == 8 && !memcmp(s, "endpoint", 8)) dst = r->endpoint, cap = sizeof r->endpoint;
    else if (kn == 15 && !memcmp(s, "coordinator-key", 15)) dst = r->key, cap = sizeof r->key;
    else continue;  /* a field of a later version: ignored */
    if (vn == 0 || vn >= cap) return dbx_seterr(err, DBX_ECORRUPT, "%s line %zu: value of %zu bytes", what, lineno, vn);
    memcpy(dst, v, vn);
    dst[vn] = 0;
  }
  if (!r->launch[0] || !r->endpoint[0]) return dbx_seterr(err, DBX_ECORRUPT, "%s: no launch or no endpoint line", what);
  if (strncmp(r->endpoint, "tcp://", 6) && strncmp(r->endpoint, "ipc://", 6))
    return dbx_seterr(err, DBX_ECORRUPT, "%s: endpoint '%s' is not tcp:// or ipc://", what, r->endpoint);
  if (r->key[0]) {
    if (!tr_key_valid(r->key))
      return dbx_seterr(err, DBX_ECORRUPT, "%s: coordinator-key is not a key (40 characters of Z85)", what);
  }
  return 0;
}

int rv_dir_trusted(const char *dir, const char *what, dbx_err *err) {
  struct stat st;
  if (stat(dir, &st) != 0) return dbx_seterr(err, DBX_ENOENT, "%s %s: %s", what, dir, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return dbx_seterr(err, DBX_EINVAL, "%s %s: not a directory", what, dir);
  if (st.st_uid != geteuid())
    return dbx_seterr(err, DBX_EACCES, "%s %s belongs to another user (uid %u): a launch's keys and rendezvous go "
                      "only in a directory of its own user's", what, dir, (unsigned)st.st_uid);
  if (st.st_mode & 022)
    return dbx_seterr(err, DBX_EACCES, "%s %s can be written by others (mode %03o): whoever can write it chooses "
                      "the coordinator workers trust; chmod go-w it, or give another --job-dir", what, dir,
                      (unsigned)(st.st_mode & 0777));
  return 0;
}

int rv_read(const char *path, rv_info *r, dbx_err *err) {
  /* O_NONBLOCK: a FIFO in the file's place must not block (fstat refuses it below). */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    int e = errno;
    return dbx_seterr(err, e == ENOENT ? DBX_ENOENT : DBX_EIO, "%s: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return dbx_seterr(err, DBX_EACCES, "%s: not a regular file: not a rendezvous to trust", path);
  }
  if (st.st_uid != geteuid()) {
    close(fd);
    return dbx_seterr(err, DBX_EACCES, "%s belongs to another user (uid %u): not a rendezvous to trust", path,
                      (unsigned)st.st_uid);
  }
  char dir[4096];
  const char *slash = strrchr(path, '/');
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + (slash == path) : 1, slash ? path : ".");
  int rc = rv_dir_trusted(dir, "the rendezvous' directory", err);
  if (rc) {
    close(fd);
    return rc;
  }
  char text[RV_FILE_MAX];
  ssize_t n = read(fd, text, sizeof text);
  close(fd);
  if (n < 0 || (size_t)n >= sizeof text)
    return dbx_seterr(err, DBX_ECORRUPT, "%s: unreadable or over %d bytes", path, RV_FILE_MAX);
  return rv_parse(text, (size_t)n, path, r, err);
}

int rv_wait(const char *path, const char *launch, double timeout, rv_info *r, dbx_err *err) {
  double t0 = time_mono();
  dbx_err last = {0, ""};
  for (;;) {
    int rc = rv_read(path, r, &last);
    if (!rc && (!launch || !strcmp(launch, r->launch))) return 0;
    if (rc == DBX_EACCES) {
      *err = last;
      return rc;
    }
    if (!rc) snprintf(last.msg, sizeof last.msg, "%s is of another launch (%s, not %s)", path, r->launch, launch);
    if (rc == DBX_ENOENT) last.msg[0] = 0;
    if (timeout > 0 && time_mono() - t0 > timeout)
      return dbx_seterr(err, DBX_ETIMEDOUT, "no coordinator wrote %s within %.0f s%s%s", path, timeout,
                        last.msg[0] ? ": " : "", last.msg);
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

void rv_local_address(char *out, size_t cap) {
  snprintf(out, cap, "127.0.0.1");
  struct ifaddrs *ifa;
  if (getifaddrs(&ifa) != 0) return;
  for (struct ifaddrs *p = ifa; p; p = p->ifa_next) {
    if (!p->ifa_addr || p->ifa_addr->sa_family != AF_INET) continue;
    if (!(p->ifa_flags & IFF_UP) || (p->ifa_flags & IFF_LOOPBACK)) continue;
    char a[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &((struct sockaddr_in *)p->ifa_addr)->sin_addr, a, sizeof a)) {
      snprintf(out, cap, "%s", a);
      break;
    }
  }
  freeifaddrs(ifa);
}
