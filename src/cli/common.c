/* common.c -- options shared by every job command, and error reporting. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "util/log.h"
#include "util/parse.h"
#include "util/timeutil.h"
#include "engine/journal.h"
#include "ops/ops.h"
#include "ui/ui.h"
#include "net/rendezvous.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>

#include "util/err.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

int cli_argc;
char **cli_argv;
int cli_typed_argc;
char **cli_typed_argv;
int cli_resume;

void cli_job_defaults(cli_job *o, const char *job_name) {
  memset(o, 0, sizeof *o);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  o->workers = n > 0 ? (int)n : 1;
  o->co.policy = POLICY_LEAST_LOADED;
  o->co.prefetch = 16;
  o->co.heartbeat = 1.0;
  o->co.worker_timeout = 10.0;
  o->co.max_attempts = 4;
  o->co.max_msg = 1ull << 30;
  o->co.exclude_after = 3;
  o->co.speculation = 1;
  o->batch_bytes = 8u << 20;
  o->out.dest = "-";
  o->out.table = job_name;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char safe[4 * sizeof msg];  /* file names and data in messages: never raw control bytes */
  log_escape(safe, sizeof safe, msg, strlen(msg));
  fprintf(stderr, "dbatch %s: %s\nTry 'dbatch %s --help'.\n", cmd, safe, cmd);
  return EXIT_USAGE;
}

int cli_fail(const char *cmd, const dbx_err *err) {
  if (err->code == DBX_EUSAGE) return cli_usage_error(cmd, "%s", err->msg);
  /* Never "error: success": a failure that recorded no cause is still a failure. */
  const char *m = err->msg[0] ? err->msg
                  : err->code ? dbx_strerror(err->code)
                              : "failed without recording a cause (an internal error: please report it with the "
                                "command line); no output was written";
  char safe[4 * DBX_ERR_LEN];
  log_escape(safe, sizeof safe, m, strlen(m));
  fprintf(stderr, "dbatch %s: error: %s\n", cmd, safe);
  return EXIT_FAIL;
}

int cli_job_option(cli_job *o, int c, const char *arg) {
  uint64_t v;
  switch (c) {
  case 1000:
    if (parse_u64(arg, 0, 1024, &v)) return -1;
    o->workers = (int)v;
    o->workers_set = 1;
    return 1;
  case 1001:
    if (parse_size(arg, &v) || v == 0) return -1;
    o->batch_set = 1;
    o->batch_bytes = v;
    o->batch_records = 0;
    return 1;
  case 1002:
    if (parse_u64(arg, 1, UINT64_MAX, &v)) return -1;
    o->batch_set = 1;
    o->batch_records = v;
    return 1;
  case 'o': o->out.dest = arg; return 1;
  case 1003: o->out.format = arg; return 1;
  case 1004: o->out.table = arg; o->table_set = 1; return 1;
  case 1005: o->out.append = 1; return 1;
  case 1033: o->out.header = 1; return 1;
  case 1006: o->summary_json = arg; return 1;
  case 1007: o->co.listen = arg; return 1;
  case 1008: {
    int p = sched_parse(arg);
    if (p < 0) return -1;
    o->co.policy = (sched_policy)p;
    return 1;
  }
  case 1009:
    if (parse_u64(arg, 0, UINT64_MAX, &o->co.seed)) return -1;
    return 1;
  case 1010: o->co.ship = 1; return 1;
  case 1011:
    if (parse_u64(arg, 0, 1024, &v)) return -1;
    o->co.prefetch = (uint32_t)v;
    return 1;
  case 1012: case 1013: {
    char *end;
    double d = strtod(arg, &end);
    if (*end || !(d > 0) || d > 86400) return -1;
    if (c == 1012) o->co.heartbeat = d; else o->co.worker_timeout = d;
    return 1;
  }
  case 1014:
    if (parse_u64(arg, 1, 1000, &v)) return -1;
    o->co.max_attempts = (uint32_t)v;
    return 1;
  case 1015:
    if (parse_size(arg, &v) || v < 4096) return -1;
    o->co.max_msg = v;
    return 1;
  case 1016:
    if (parse_u64(arg, 0, 100000, &v)) return -1;
    o->co.wait_workers = (uint32_t)v;
    return 1;
  case 1017: {
    char *end;
    double d = strtod(arg, &end);
    if (*end || !(d > 0)) return -1;
    o->co.task_timeout = d;
    return 1;
  }
  case 1018:
    if (parse_u64(arg, 0, 16, &v)) return -1;
    o->co.exclude_after = (uint32_t)v;
    return 1;
  case 1019: o->co.speculation = 1; return 1;
  case 1020: o->co.speculation = 0; return 1;
  case 1021:
    if (!strcmp(arg, "fail")) o->co.skip_failed = 0;
    else if (!strcmp(arg, "skip")) o->co.skip_failed = 1;
    else return -1;
    return 1;
  case 1022: o->job_dir = arg; return 1;
  case 1025: o->dashboard = arg; return 1;
  case 1026: o->dashboard_public = 1; return 1;
  case 1027: o->no_job_dir = 1; return 1;
  case 1032: o->token_path = arg; return 1;
  case 1028: o->key_path = arg; return 1;
  case 1029: o->authz_path = arg; return 1;
  case 1030: o->insecure = 1; return 1;
  case 1031:
    if (strcmp(arg, "auto") && strcmp(arg, "slurm") && strcmp(arg, "mpi") && strcmp(arg, "k8s")) return -1;
    o->cluster = arg;
    return 1;
  case 1023:
    if (parse_size(arg, &v) || v == 0) return -1;
    o->max_record = v;
    return 1;
  case 1024:
    if (!strcmp(arg, "skip")) o->bad_fail = 0;
    else if (!strcmp(arg, "fail")) o->bad_fail = 1;
    else return -1;
    return 1;
  case 'q': o->quiet = 1; log_set_level(LOG_ERROR); return 1;
  case 'v': o->verbose = 1; log_set_level(LOG_DEBUG); return 1;
  default: return 0;
  }
}

/* The command line as the report shows it: each word shell-quoted when it needs it, a URI's
 * password hidden (sink_redact), cut at the buffer's end. */
void cli_command_line(char *out, size_t cap) {
  size_t n = 0;
  out[0] = 0;
  int argc = cli_typed_argv ? cli_typed_argc : cli_argc;
  char **argv = cli_typed_argv ? cli_typed_argv : cli_argv;
  for (int i = 0; i < argc && n + 1 < cap; i++) {
    char word[1024];
    const char *a = i == 0 ? "dbatch" : argv[i];
    if (strstr(a, "://")) {
      sink_redact(a, word, sizeof word);
      a = word;
    }
    int plain = a[0] != 0;
    for (const char *p = a; *p && plain; p++)
      plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("-_./=:,@%+", *p);
    n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? " " : "", plain ? a : "'");
    if (!plain) {
      for (const char *p = a; *p && n + 5 < cap; p++) {
        if (*p == '\'') n += (size_t)snprintf(out + n, cap - n, "'\\''");
        else out[n++] = *p;
      }
      if (n + 1 < cap) out[n++] = '\'';
      out[n < cap ? n : cap - 1] = 0;
    }
    if (n >= cap) n = cap - 1;
  }
}

void cli_job_size_batches(cli_job *o, const inputs *in) {
  if (o->batch_set) return;
  uint64_t total = 0;
  for (size_t i = 0; i < in->n; i++) total += in->v[i].size;
  o->batch_bytes = engine_default_batch_bytes(total);
}

void cli_stage_init(stage *s, job *j, const cli_job *o, const char *name, const dbx_op *op, const void *cfg,
                    size_t cfg_size, sink *out) {
  memset(s, 0, sizeof *s);
  s->name = name;
  s->op = op;
  s->cfg = cfg;
  s->cfg_size = cfg_size;
  s->in = &j->in;
  s->split.batch_bytes = o->batch_bytes;
  s->split.batch_records = o->batch_records;
  s->out = out;
  s->st = job_add_stage(j, name);
}

int cli_run_stage(coord *co, job *j, stage *s, dbx_err *err) {
  /* Word count's --max-record also bounds the lines the splitter holds for a stream (the
   * line is then cut and left to the operator to count and skip, or fails the split). */
  const wc_cfg *wc = s->op == &op_wordcount && s->cfg_size == sizeof(wc_cfg) ? s->cfg
                   : s->op == &op_wordcount_part && s->cfg_size == sizeof(wcpart_cfg) ? &((const wcpart_cfg *)s->cfg)->wc
                   : NULL;
  int rc = engine_plan_stage(j, s, err);
  s->split.max_line = wc ? wc->max_record : 0;
  s->split.max_line_fail = wc ? wc->bad_fail : 0;
  return rc ? rc : coord_run_stage(co, j, s, err);
}

/* Can a new file be created in dir? (Creates and removes a probe: access() would say yes to
 * root on a read-only directory, and nothing about a full or read-only file system.) */
static int probe_dir(const char *opt, const char *dest, const char *dir, dbx_err *err) {
  char tmp[PATH_MAX];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s/.dbatch-probe.%d.XXXXXX", dir, (int)getpid()) >= sizeof tmp)
    return dbx_seterr(err, DBX_EINVAL, "%s %s: the path is too long", opt, dest);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s %s: cannot create a file in %s: %s; nothing was run", opt, dest, dir,
                      strerror(e));
  }
  close(fd);
  unlink(tmp);
  return 0;
}

int cli_check_dest(const char *opt, const char *dest, dbx_err *err) {
  if (!dest || !strcmp(dest, "-")) return 0;
  int src = sink_check_scheme(opt, dest, err);
  if (src) return src;
  if (sink_is_postgres(dest)) {  /* connect now: a wrong password shows before any work */
    sink_opts so = {dest, NULL, "dbatch_check", 0, 0};  /* only the connection is probed */
    return sink_check(&so, err);
  }
  int db = !strncmp(dest, "sqlite:", 7);
  const char *path = db ? dest + 7 : dest;
  if (!path[0]) return dbx_seterr(err, DBX_EUSAGE, "%s needs a path", opt);
  struct stat st;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode))
      return dbx_seterr(err, DBX_EISDIR, "%s %s: is a directory; give a file name", opt, dest);
    if (!S_ISREG(st.st_mode)) return 0;  /* a device or a pipe: written straight */
    if (db) {
      int fd = open(path, O_RDWR | O_CLOEXEC);
      if (fd < 0) {
        int e = errno;
        return dbx_seterr(err, err_from_errno(e), "%s %s: cannot open for writing: %s; nothing was run", opt, dest,
                          strerror(e));
      }
      close(fd);
    }
  } else if (errno != ENOENT) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s %s: %s; nothing was run", opt, dest, strerror(e));
  }
  /* Files are replaced by a rename, SQLite writes its journal beside the database: either
   * way the directory must take a new file. */
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else if ((size_t)(slash - path) >= sizeof dir) return dbx_seterr(err, DBX_EINVAL, "%s %s: the path is too long", opt, dest);
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  return probe_dir(opt, dest, dir, err);
}

/* --dashboard-token FILE: its first line, kept from others like a key (a job's dashboard and
 * dbatch dashboard both). */
int cli_read_token(const char *p, char *token, size_t cap, dbx_err *err) {
  int fd = open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    return dbx_seterr(err, DBX_EUSAGE, "--dashboard-token %s: %s", p, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return dbx_seterr(err, DBX_EUSAGE, "--dashboard-token %s: not a regular file", p);
  }
  if (st.st_mode & 077) {
    close(fd);
    return dbx_seterr(err, DBX_EUSAGE, "--dashboard-token %s: others may read it (mode %03o): chmod 600 %s", p,
                      (unsigned)(st.st_mode & 0777), p);
  }
  ssize_t n = read(fd, token, cap - 1);
  close(fd);
  if (n < 0) return dbx_seterr(err, DBX_EUSAGE, "--dashboard-token %s: %s", p, strerror(errno));
  token[n] = 0;
  token[strcspn(token, "\r\n")] = 0;
  size_t len = strlen(token);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)token[i] <= 0x20 || (unsigned char)token[i] >= 0x7f || token[i] == '&' ||
        token[i] == '%' || token[i] == '#')
      return dbx_seterr(err, DBX_EUSAGE, "--dashboard-token %s: the token has a blank, '&', '%%', '#' or a byte "
                        "outside printable ASCII at character %zu", p, i + 1);
  if (len < 16)
    return dbx_seterr(err, DBX_EUSAGE, "--dashboard-token %s: a token of %zu characters is too short (16 at least; "
                      "e.g. head -c 24 /dev/urandom | base64 > %s)", p, len, p);
  return 0;
}

static int read_token(cli_job *o, dbx_err *err) {
  if (!o->dashboard) return dbx_seterr(err, DBX_EUSAGE, "--dashboard-token needs --dashboard HOST:PORT");
  return cli_read_token(o->token_path, o->token, sizeof o->token, err);
}

/* Make the missing parents of dir (not dir itself). Each one this call made (mkdir
 * succeeded: not one that was there, nor one another process made meanwhile) is appended
 * to made[0..*len), NUL-terminated, so that exactly those can be removed again. A parent
 * that cannot be recorded is not made. 0 or an errno. */
static int make_parents(const char *dir, char *made, size_t cap, size_t *len) {
  char p[PATH_MAX];
  if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return ENAMETOOLONG;
  size_t n = strlen(p);
  while (n > 1 && p[n - 1] == '/') p[--n] = 0;
  for (char *s = p + 1; *s; s++) {
    if (*s != '/' || s[-1] == '/') continue;
    *s = 0;
    struct stat st;
    if (stat(p, &st) != 0) {
      size_t k = strlen(p) + 1;
      if (made && *len + k > cap) return ENAMETOOLONG;
      if (mkdir(p, 0755) == 0) {
        if (made) memcpy(made + *len, p, k);
        if (made) *len += k;
      } else if (errno != EEXIST) {
        return errno;
      }
    }
    *s = '/';
  }
  return 0;
}

/* Where job directories go when the current directory takes none: $XDG_STATE_HOME/dbatch/jobs
 * (default ~/.local/state/dbatch/jobs), made as needed. */
static int state_jobs_dir(char *out, size_t cap) {
  const char *x = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
  int k = x && x[0] == '/' ? snprintf(out, cap, "%s/dbatch/jobs/", x)
          : home && home[0] ? snprintf(out, cap, "%s/.local/state/dbatch/jobs/", home) : -1;
  if (k < 0 || (size_t)k >= cap) return ENOENT;
  size_t len = 0;
  out[k - 1] = 0;
  int e = make_parents(out, NULL, 0, &len);  /* nothing recorded: a state directory stays */
  if (!e && mkdir(out, 0700) != 0 && errno != EEXIST) e = errno;
  return e;
}

/* rmdir the parents make_parents made for the job directory, the last made first; one that
 * is not empty now stays. */
static void remove_made_parents(cli_job *o) {
  while (o->ndirs_made > 0) {
    size_t end = o->ndirs_made - 1, start = end;  /* the last entry: [start, end) + NUL */
    while (start > 0 && o->dirs_made[start - 1]) start--;
    rmdir(o->dirs_made + start);
    o->ndirs_made = start;
  }
}

static int job_start(cli_job *o, job *j, coord **c, int *made, dbx_err *err) {
  int rc2;
  /* --table names a table: given with a file, it would be ignored without a word. */
  if (o->table_set && o->out.dest && strncmp(o->out.dest, "sqlite:", 7) && !sink_is_postgres(o->out.dest))
    return dbx_seterr(err, DBX_EUSAGE, "--table applies to sqlite:PATH and postgresql:// outputs, not to %s",
                      !strcmp(o->out.dest, "-") ? "standard output" : "a file");
  rv_env ce;
  int crc = o->cluster ? cli_cluster_begin(o, j, &ce, err) : 0;
  if (!crc) crc = cli_job_security(o, err);
  if (crc) return crc;
  o->co.workers = o->workers;
  j->workers = o->workers;
  j->started_wall = time_wall();
  cli_command_line(o->command_shown, sizeof o->command_shown);
  j->command = o->command_shown;
  if (o->out.dest) {
    sink_redact(!strcmp(o->out.dest, "-") ? "standard output" : o->out.dest, o->out_shown, sizeof o->out_shown);
    j->out_dest = o->out_shown;
  }
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  if (ncpu > 0 && o->workers > 4 * ncpu)
    log_warn("--workers %d on %ld cores: each worker is a process with its own memory, and beyond the cores they "
             "only take turns (more can help commands that wait on I/O)", o->workers, ncpu);
  const char *dir = o->job_dir;
  /* Every destination is checked before any work: the summary is opened now (its temporary
   * file proves the place), and committed with the job's outputs. */
  if (o->summary_json && !o->summary_open) {
    int rc = afile_open(&o->summary, o->summary_json, err);
    if (rc) {
      char msg[DBX_ERR_LEN];
      snprintf(msg, sizeof msg, "%s", err->msg);
      return dbx_seterr(err, rc, "--summary-json: %s; nothing was run", msg);
    }
    o->summary_open = 1;
  }
  if (o->job_dir) {
    if (!o->job_dir[0]) return dbx_seterr(err, DBX_EUSAGE, "--job-dir needs a directory name");
    /* Known now, before a journal is opened (a new job's would replace what the directory
     * holds, maybe an interrupted job waiting for its resume). */
    for (size_t i = 0; i < j->in.n; i++)
      if (j->in.v[i].kind == IN_STREAM)
        return dbx_seterr(err, DBX_EUSAGE, "--job-dir: %s is a stream; a job reading a stream cannot be journaled "
                          "or resumed", j->in.v[i].path);
    if (!cli_resume) {
      /* Made here, so that only what this process made is ever removed again (a directory
       * that was there, or that another process made a moment ago, is not ours). */
      int pe = make_parents(o->job_dir, o->dirs_made, sizeof o->dirs_made, &o->ndirs_made);
      if (!pe && mkdir(o->job_dir, 0755) == 0) *made = 1;
      else if (!pe && errno != EEXIST) pe = errno;
      if (pe) {
        remove_made_parents(o);
        return dbx_seterr(err, err_from_errno(pe), "--job-dir %s: cannot create it: %s", o->job_dir, strerror(pe));
      }
    }
    int rc = journal_open(o->job_dir, cli_resume, cli_argc, cli_argv, &j->jr, err);
    if (rc) return rc;
  } else if (cli_resume) {
    return dbx_seterr(err, DBX_EINVAL, "the journaled command has no --job-dir");
  } else if (o->cluster_dir) {
    dir = o->cluster_dir;  /* made by cli_cluster_begin, shared with the other ranks */
  } else if (!o->no_job_dir) {
    /* The default job directory: ./dbatch-jobs/NAME-YYYYmmdd-HHMMSS-PID (report, summary). */
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    char base[PATH_MAX] = "dbatch-jobs";
    if (mkdir(base, 0755) != 0 && errno != EEXIST) {
      /* A current directory that takes no new directory (read-only, another user's): the
       * job directory goes under the user's state directory instead. */
      int e = errno;
      int se = e == EACCES || e == EROFS || e == EPERM ? state_jobs_dir(base, sizeof base) : -1;
      if (se < 0)
        return dbx_seterr(err, DBX_EIO, "cannot create ./dbatch-jobs: %s (use --job-dir DIR or --no-job-dir)", strerror(e));
      if (se > 0)
        return dbx_seterr(err, DBX_EIO, "cannot create ./dbatch-jobs (%s), nor the state directory %s (%s); use "
                          "--job-dir DIR or --no-job-dir", strerror(e), strcmp(base, "dbatch-jobs") ? base : "($HOME unset)",
                          strerror(se));
      if (!o->quiet) {
        fputs("dbatch: the current directory is not writable; the job directory goes under ", stderr);
        log_fputs_escaped(base, stderr);
        fputc('\n', stderr);
      }
    }
    if ((size_t)snprintf(o->job_dir_buf, sizeof o->job_dir_buf, "%s/%s-%s-%d", base, j->name, stamp, (int)getpid()) >=
        sizeof o->job_dir_buf)
      return dbx_seterr(err, DBX_EINVAL, "%s: the path of the job directory is too long (use --job-dir DIR)", base);
    if (mkdir(o->job_dir_buf, 0755) == 0) *made = 1;
    else if (errno != EEXIST) return dbx_seterr(err, DBX_EIO, "cannot create %s: %s", o->job_dir_buf, strerror(errno));
    dir = o->job_dir_buf;
  }
  /* The job's identity goes with rows appended to a database: the journal's survives a
   * resume, so the rows of a commit that did happen are not added again. */
  char id[40];
  if (j->jr) snprintf(id, sizeof id, "%s", journal_job_id(j->jr));
  else journal_new_id(id, sizeof id);
  sink_set_job_id(id);
  if (o->token_path && (rc2 = read_token(o, err))) return rc2;
  ui_opts uo = {o->dashboard, o->dashboard_public, o->quiet, dir, o->token_path ? o->token : NULL};
  int rc = ui_new(&uo, j->name, &j->ui, err);
  if (rc) return rc;
  j->job_dir = dir;
  rc2 = coord_new(&o->co, c, err);
  if (!rc2 && o->cluster_dir) rc2 = cli_cluster_ready(o, *c, &ce, err);
  return rc2;
}

/* Remove the job directory dir that this job made: the files it put there (lock, journal,
 * status) when it held the directory's lock (files: otherwise they are another process's),
 * then the directory and the parents made for it. Nothing but plain files is removed, and a
 * directory only when that leaves it empty. */
static void remove_made_dir(cli_job *o, const char *dir, int files) {
  DIR *d = files ? opendir(dir) : NULL;
  if (d) {
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      char p[PATH_MAX];
      struct stat st;
      if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < sizeof p && lstat(p, &st) == 0 &&
          S_ISREG(st.st_mode))
        unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
  remove_made_parents(o);
}

int cli_job_start(cli_job *o, job *j, coord **c, dbx_err *err) {
  int made = 0;
  int rc = job_start(o, j, c, &made, err);
  tr_authz_free(&o->authz);  /* the coordinator's guard took it, or the job did not start */
  if (rc && made) {
    /* A job that did not start leaves no job directory behind (a full disk, a bad option
     * found late): its journal, lock and status go with the directory it created; but
     * never the files of another process that holds its lock. */
    const char *dir = o->job_dir ? o->job_dir : o->job_dir_buf;
    journal_close(j->jr);
    j->jr = NULL;
    if (j->ui) {
      ui_free(j->ui);
      j->ui = NULL;
    }
    j->job_dir = NULL;
    remove_made_dir(o, dir, rc != DBX_EBUSY);
  } else if (rc) {
    remove_made_parents(o);
  }
  o->dir_made = !rc && made;
  return rc;
}

/* Write the summary into its (still temporary) file and sync it, so that committing it
 * later is a rename. Standard output gets it only at commit. */
static int summary_write(cli_job *o, const job *j, int ok, const dbx_err *failure, dbx_err *err) {
  afile *f = &o->summary;
  if (f->is_stdout) return 0;
  dbx_buf b = {0};
  int rc = job_render_summary(j, ok, failure, &b);
  if (rc) return dbx_seterr(err, rc, "--summary-json %s: out of memory", o->summary_json);
  if (f->tmp) {
    rc = afile_rewrite(f, b.data, b.len, err);
  } else if ((rc = afile_write(f, b.data, b.len, err)) == 0) {
    rc = afile_flush(f, err);
  }
  dbx_buf_free(&b);
  if (rc) return rc;
  return 0;
}

static int summary_commit(cli_job *o, const job *j, int ok, const dbx_err *failure, dbx_err *err) {
  o->summary_open = 0;
  if (o->summary.is_stdout) {
    dbx_buf b = {0};
    int rc = job_render_summary(j, ok, failure, &b);
    if (!rc && fwrite(b.data, 1, b.len, stdout) != b.len) rc = DBX_EIO;
    dbx_buf_free(&b);
    if (rc) {
      afile_abort(&o->summary);
      return dbx_seterr(err, rc, "--summary-json -: write failed");
    }
  }
  return afile_commit(&o->summary, err);
}

int cli_commit_output(job *j, int k, sink *s, dbx_err *err) {
  char tok[64], old[64], key[32];
  snprintf(key, sizeof key, "append.%d", k);
  if (j->jr && sink_append_token(s, tok, sizeof tok)) {
    if (journal_resuming(j->jr) && journal_note_get(j->jr, key, old, sizeof old) && sink_append_landed(s, old)) {
      log_info("output %d: the interrupted run of this job already appended its rows; not appending them again", k + 1);
      sink_abort(s);
      return 0;
    }
    int rc = journal_note_put(j->jr, key, tok, err);
    if (rc) {
      sink_abort(s);
      return rc;
    }
  }
  return sink_commit(s, err);
}

/* DBATCH_FAULT=crash_after_commit: die between the outputs' commit and the journal's mark
 * of a finished job, the moment a resume must not write the outputs again (tests). */
static void fault_after_commit(void) {
  const char *f = getenv("DBATCH_FAULT");
  if (f && strstr(f, "crash_after_commit")) raise(SIGKILL);
}

int cli_job_finish(const char *cmd, cli_job *o, job *j, coord *c, const cli_outputs *outs, int rc, dbx_err *err) {
  size_t nsink = outs ? outs->n : 0, k = 0;
  if (!rc && nsink && outs->sinks[0]) j->rows_out = sink_rows(outs->sinks[0]);
  coord_free(c, j);
  j->elapsed = time_mono() - j->t_start;
  /* All outputs commit together, or none: the summary is written first (the likeliest to
   * meet a full disk it has not met yet), then each output is committed in turn; on the
   * first failure the rest are discarded. */
  if (!rc && o->summary_open) rc = summary_write(o, j, 1, NULL, err);
  if (outs && outs->save) {
    int src = outs->save(outs->save_ctx, !rc, err);
    if (!rc) rc = src;
  }
  /* Every output written out and synced before any becomes visible; the journal first. */
  if (!rc && j->jr) rc = journal_sync(j->jr, err);
  for (size_t p = 0; !rc && p < nsink; p++)
    if (outs->sinks[p]) rc = sink_prepare(outs->sinks[p], err);
  for (; !rc && k < nsink; k++)
    if (outs->sinks[k]) rc = cli_commit_output(j, (int)k, outs->sinks[k], err);
  for (; k < nsink; k++) sink_abort(outs->sinks[k]);
  if (!rc) fault_after_commit();
  if (!rc && j->jr) {
    dbx_err jerr = {0, ""};
    if (journal_done(j->jr, &jerr))
      log_warn("the output is committed, but the journal could not be marked finished: %s", jerr.msg);
  }
  j->elapsed = time_mono() - j->t_start;
  /* A usage error found once the job had started (a column that is not there) leaves no job
   * directory behind, as one found before it does not: nothing ran worth a report. */
  const char *drop_dir = rc && err->code == DBX_EUSAGE && o->dir_made ? j->job_dir : NULL;
  if (j->ui) {
    dbx_err uerr = {0, ""};
    ui_finish(j->ui, j, rc == 0, err, &uerr);
    if (j->job_dir) {
      char path[600];
      snprintf(path, sizeof path, "%s/summary.json", j->job_dir);
      job_write_summary(j, path, rc == 0, err, &uerr);
      if (!o->quiet && !drop_dir) {
        fputs("dbatch: report: ", stderr);
        log_fputs_escaped(j->job_dir, stderr);
        fputs("/report.html\n", stderr);
      }
    }
    ui_free(j->ui);
    j->ui = NULL;
  }
  if (j->jr && j->resumed)
    log_info("resumed: %llu finished task(s) taken from the journal", (unsigned long long)j->resumed);
  journal_close(j->jr);
  j->jr = NULL;
  if (drop_dir) remove_made_dir(o, drop_dir, 1);
  if (o->summary_open) {
    dbx_err serr = {0, ""};
    int src = rc ? summary_write(o, j, 0, err, &serr) : 0;
    if (!src) src = summary_commit(o, j, rc == 0, err, &serr);
    else afile_abort(&o->summary);
    o->summary_open = 0;
    if (src && !rc) { *err = serr; rc = src; }
  }
  if (!rc)
    for (int i = 0; i < j->nstages; i++)
      log_info("%s: %llu records, %llu bytes, %llu batches in %.3f s", j->stages[i].name,
               (unsigned long long)j->stages[i].records, (unsigned long long)j->stages[i].bytes,
               (unsigned long long)j->stages[i].batches, j->stages[i].seconds);
  if (!rc && !o->quiet && j->nstages > 0) {
    /* The one line that stays: what was read, how fast, by how many, where it went. */
    const stage_stats *s0 = &j->stages[0];
    double mb = (double)s0->bytes / 1048576.0, secs = j->elapsed > 0 ? j->elapsed : 1e-9;
    /* The workers that took part (those joined on --listen too), not only the local ones. */
    size_t nw = j->nwinfo > (size_t)(j->workers > 0 ? j->workers : 0) ? j->nwinfo : (size_t)(j->workers > 0 ? j->workers : 0);
    fprintf(stderr, "dbatch: %s: %llu records, %.1f MB in %.2f s (%.1f MB/s), %zu worker%s, %zu failure%s", j->name,
            (unsigned long long)s0->records, mb, j->elapsed, mb / secs, nw, nw == 1 ? "" : "s",
            j->nfailures, j->nfailures == 1 ? "" : "s");
    if (j->out_dest) {
      fputs(" -> ", stderr);
      log_fputs_escaped(j->out_dest, stderr);
    }
    fputc('\n', stderr);
  }
  inputs_free(&j->in);
  free(j->winfo);
  j->winfo = NULL;
  size_t missing = j->nmissing;
  job_free_records(j);
  if (rc && !err->msg[0]) {
    if (!err->code) err->code = rc;
    snprintf(err->msg, sizeof err->msg, "%s (no further detail was recorded)", dbx_strerror(rc));
  }
  if (rc && err->code == DBX_EINTR && coord_interrupt_signal()) {
    /* Stopped by Ctrl-C or SIGTERM, cleanly: the shell's status for it (130, 143), and how
     * to finish the job when it has a journal. */
    int sig = coord_interrupt_signal();
    fprintf(stderr, "dbatch %s: interrupted (%s); no output was written", cmd, sig == SIGINT ? "Ctrl-C" : "SIGTERM");
    if (o->job_dir) {
      fputs("; 'dbatch resume ", stderr);
      log_fputs_escaped(o->job_dir, stderr);
      fputs("' finishes it", stderr);
    }
    fputc('\n', stderr);
    return 128 + sig;
  }
  if (rc) return cli_fail(cmd, err);
  if (missing) {
    fprintf(stderr, "dbatch %s: finished without %zu skipped task(s); their input is listed above%s\n", cmd,
            missing, o->summary_json ? " and in the summary" : "");
    return EXIT_PARTIAL;
  }
  return EXIT_OK;
}

int cli_job_end(const char *cmd, cli_job *o, job *j, coord *c, sink *out, int rc, dbx_err *err) {
  cli_outputs outs = {{out}, out ? 1 : 0, NULL, NULL};
  return cli_job_finish(cmd, o, j, c, &outs, rc, err);
}

/* Levenshtein distance of a and b (each cut at 63 bytes). */
static size_t edit_distance(const char *a, const char *b) {
  size_t n = strlen(a), m = strlen(b), row[64];
  if (n > 63) n = 63;
  if (m > 63) m = 63;
  for (size_t j = 0; j <= m; j++) row[j] = j;
  for (size_t i = 1; i <= n; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= m; j++) {
      size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      diag = up;
      row[j] = best;
    }
  }
  return row[m];
}

const char *cli_closest(const char *word, const char *const *names, size_t n) {
  const char *best = NULL;
  size_t bd = (size_t)-1, len = strlen(word);
  for (size_t i = 0; i < n; i++) {
    size_t d = edit_distance(word, names[i]);
    if (d < bd) bd = d, best = names[i];
  }
  return best && bd <= (len < 6 ? 1 : len < 12 ? 2 : 3) ? best : NULL;
}

int cli_bad_option(const char *cmd, const struct option *lo, const char *shortopts, char **argv) {
  const char *typed = optind > 0 ? argv[optind - 1] : "";
  /* Inside a cluster of short options (-qx) getopt has not moved on: argv[optind - 1] is
   * then the argument before. It is the culprit only when getopt says a long option (optopt
   * 0: not known; else the id of the long option typed, which lacks its value). */
  int long_one = !strncmp(typed, "--", 2) && optopt == 0;
  if (!long_one && !strncmp(typed, "--", 2)) {
    char nm[128];
    snprintf(nm, sizeof nm, "%s", typed + 2);
    nm[strcspn(nm, "=")] = 0;
    for (const struct option *o = lo; o->name && !long_one; o++)
      long_one = o->val == optopt && !strncmp(o->name, nm, strlen(nm)) && nm[0];
  }
  if (long_one) {
    char name[128];
    snprintf(name, sizeof name, "%s", typed + 2);
    char *eq = strchr(name, '=');
    if (eq) *eq = 0;
    size_t nlo = 0, prefixed = 0;
    const struct option *exact = NULL;
    for (const struct option *o = lo; o->name; o++, nlo++) {
      if (!strcmp(o->name, name)) exact = o;
      else if (!strncmp(o->name, name, strlen(name))) prefixed++;
    }
    if (exact && exact->has_arg == required_argument && !eq)
      return cli_usage_error(cmd, "--%s needs a value", exact->name);
    if (exact && exact->has_arg == no_argument && eq) return cli_usage_error(cmd, "--%s takes no value", exact->name);
    if (!exact && prefixed > 1) {
      char list[512] = "";
      size_t k = 0;
      for (const struct option *o = lo; o->name && k + 40 < sizeof list; o++)
        if (!strncmp(o->name, name, strlen(name))) k += (size_t)snprintf(list + k, sizeof list - k, "%s--%s", k ? ", " : "", o->name);
      return cli_usage_error(cmd, "--%s is ambiguous: %s", name, list);
    }
    const char **names = calloc(nlo + 1, sizeof *names);
    const char *near = NULL;
    if (names) {
      for (size_t i = 0; i < nlo; i++) names[i] = lo[i].name;
      near = cli_closest(name, names, nlo);
    }
    int rc = near ? cli_usage_error(cmd, "unknown option --%s (did you mean --%s?)", name, near)
                  : cli_usage_error(cmd, "unknown option --%s", name);
    free(names);
    return rc;
  }
  const char *at = optopt > 32 && optopt < 127 ? strchr(shortopts, optopt) : NULL;
  if (at && at[1] == ':') return cli_usage_error(cmd, "-%c needs a value", optopt);
  if (optopt > 32 && optopt < 127) return cli_usage_error(cmd, "unknown option -%c", optopt);
  if (optopt) return cli_usage_error(cmd, "unknown option: a short option (byte 0x%02x) dbatch does not have", optopt & 0xff);
  return cli_usage_error(cmd, "unknown option %s", typed);
}

_Static_assert(SHUFFLE_R_MAX == 4096, "the --partitions message below says 4096");

/* What a job option's value must be, for the message when it is not. */
static const char *expected(int c) {
  switch (c) {
  case 1000: return "a whole number of local worker processes from 0 to 1024";
  case 1001: return "a size above 0, such as 65536, 512K, 1.5M or 2G (a fraction needs a unit)";
  case 1002: return "a whole number of lines, 1 or more";
  case 1008: return "least-loaded, round-robin or random";
  case 1009: return "a whole number";
  case 1011: return "a whole number from 0 to 1024";
  case 1012: case 1013: return "seconds above 0, at most 86400 (0.5 is fine)";
  case 1201: case 1202: return "seconds above 0 (0.5, 30s, 2m and 1h are fine)";
  case 1203: return "whole seconds, 1 or more (30, 30s, 5m and 1h are fine)";
  case 1014: return "a whole number from 1 to 1000";
  case 1015: return "a size of 4K or more, such as 64M or 1G";
  case 1016: return "a whole number from 0 to 100000";
  case 1017: return "seconds above 0 (0.5 is fine)";
  case 1018: return "a whole number from 0 to 16";
  case 1021: return "fail or skip";
  case 1023: return "a size above 0, such as 1M";
  case 1024: return "skip or fail";
  case 1031: return "auto, slurm, mpi or k8s";
  case 1100: return "a whole number of partitions from 0 to 4096 (0 merges in this process)";
  case 1102: return "a size of 1M or more, such as 512M or 2G";
  default: return NULL;
  }
}

int cli_bad_value(const char *cmd, const struct option *lo, int li, int c, const char *arg) {
  const char *want = expected(c);
  if (want) return cli_usage_error(cmd, "%s '%s': expected %s", cli_opt_name(lo, li, c), arg ? arg : "", want);
  return cli_usage_error(cmd, "bad value '%s' for %s", arg ? arg : "", cli_opt_name(lo, li, c));
}

/* The long name an option line of a help text documents ("  -o, --out DEST  ..." -> "out"),
 * into name; 0 when line documents none (a heading, a continuation). */
static int help_option(const char *line, size_t n, char *name, size_t cap) {
  size_t i = 0;
  while (i < n && line[i] == ' ') i++;
  if (i == 0 || i > 8 || i >= n || line[i] != '-') return 0;
  const char *dd = NULL;
  for (size_t k = i; k + 1 < n && !dd; k++)
    if (line[k] == '-' && line[k + 1] == '-') dd = line + k + 2;
  if (!dd) return 0;
  if (!strncmp(dd, "[no-]", 5)) dd += 5;
  size_t k = 0;
  while (dd + k < line + n && ((dd[k] >= 'a' && dd[k] <= 'z') || dd[k] == '-') && k + 1 < cap) k++;
  memcpy(name, dd, k);
  name[k] = 0;
  return k > 0;
}

void cli_print_help(FILE *f, const char *text, const char *const *omit) {
  /* Keep each line unless it documents an omitted option (with its continuation lines); a
   * heading stays only when an option under it does. */
  const char *p = text, *heading = NULL;
  size_t heading_len = 0;
  int skipping = 0;
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t n = nl ? (size_t)(nl - p) + 1 : strlen(p);
    char name[64];
    int is_opt = help_option(p, n, name, sizeof name);
    int cont = !is_opt && n > 20 && !strncmp(p, "                    ", 20);
    if (is_opt) {
      skipping = 0;
      for (const char *const *o = omit; o && *o && !skipping; o++) skipping = !strcmp(*o, name);
    } else if (!cont) {
      skipping = 0;
    }
    if (!skipping) {
      if (!is_opt && !cont && n > 1 && p[0] != ' ' && p[n - 2] == ':') {
        heading = p;  /* printed with the first option kept under it */
        heading_len = n;
      } else {
        if (heading) fwrite(heading, 1, heading_len, f);
        heading = NULL;
        fwrite(p, 1, n, f);
      }
    }
    p += n;
  }
  if (heading) fwrite(heading, 1, heading_len, f);
}

int cli_option_applies(const char *cmd, const struct option *lo, int c, const char *const *omit, const char *hint) {
  const struct option *opt = lo;
  while (opt->name && opt->val != c) opt++;  /* by its id: a short option leaves no index */
  if (!opt->name) return 1;
  for (const char *const *o = omit; o && *o; o++)
    if (!strcmp(*o, opt->name)) {
      cli_usage_error(cmd, "--%s does not apply to dbatch %s%s", opt->name, cmd, hint && *hint ? hint : "");
      return 0;
    }
  return 1;
}

const char *cli_opt_name(const struct option *lo, int li, int c) {
  static char buf[80];
  if (li >= 0 && lo[li].val == c) snprintf(buf, sizeof buf, "--%s", lo[li].name);
  else snprintf(buf, sizeof buf, "-%c", c > 32 && c < 127 ? c : '?');
  return buf;
}
