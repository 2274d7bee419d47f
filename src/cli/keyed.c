/* keyed.c -- what the keyed commands (run --reduce, groupby, cooccur) share: the options of
 * the partitioned reduce (--partitions, --spill-dir) and running a keyed stage with it. */
#define _GNU_SOURCE 1
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/log.h"
#include "util/parse.h"
#include <xxhash.h>

int cli_keyed_option(cli_keyed *k, int c, const char *arg) {
  uint64_t v;
  switch (c) {
  case 1100:
    if (parse_u64(arg, 0, SHUFFLE_R_MAX, &v)) return -1;
    k->partitions = (uint32_t)v;
    k->partitions_set = 1;
    return 1;
  case 1101: k->spill_dir = arg; return 1;
  case 1102:
    if (parse_size(arg, &v) || v < (1u << 20)) return -1;
    k->memory = v;
    return 1;
  default: return 0;
  }
}

/* Is name a spill file of ours (s<N>-*.kv, s<N>-*.spilled, .tmp-*, cooccur's baskets.tsv)? */
static int spill_file_name(const char *name) {
  size_t n = strlen(name);
  return !strncmp(name, ".tmp-", 5) || !strcmp(name, "baskets.tsv") || !strcmp(name, "baskets.tsv.new") ||
         (name[0] == 's' && strchr(name, '-') &&
          ((n > 3 && !strcmp(name + n - 3, ".kv")) || (n > 8 && !strcmp(name + n - 8, ".spilled")) ||
           (n > 5 && !strcmp(name + n - 5, ".rows"))));
}

/* Remove our files from dir (and, with lock, its .lock). */
static void remove_spill_files(const char *dir, int lock) {
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (!spill_file_name(e->d_name) && !(lock && !strcmp(e->d_name, ".lock"))) continue;
    char path[SHUFFLE_DIR_MAX + 300];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < sizeof path) unlink(path);
  }
  if (d) closedir(d);
}

/* A private spill directory (no journal: nothing resumes from it) is held for the whole job
 * by an flock on its .lock. One left by a job that was killed (kill -9, a machine that went
 * down) is free: the next job that makes a private directory beside it removes it. An flock
 * is seen across PID namespaces (containers sharing /tmp), where a pid would not be; a lock
 * file younger than a minute is left alone (its job may not hold it yet). */
static void sweep_private(const char *parent, const char *prefix, size_t name_len) {
  DIR *d = opendir(parent);
  struct dirent *e;
  time_t now = time(NULL);
  while (d && (e = readdir(d))) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) || strlen(e->d_name) != name_len) continue;
    char dir[SHUFFLE_DIR_MAX + 100], lock[SHUFFLE_DIR_MAX + 120];
    struct stat sd, sl;
    if ((size_t)snprintf(dir, sizeof dir, "%s/%s", parent, e->d_name) >= sizeof dir ||
        (size_t)snprintf(lock, sizeof lock, "%s/.lock", dir) >= sizeof lock || lstat(dir, &sd) != 0 ||
        !S_ISDIR(sd.st_mode) || sd.st_uid != getuid())
      continue;
    /* O_NONBLOCK: a FIFO by that name (not our lock) must not hang the job. */
    int fd = open(lock, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) continue;
    if (fstat(fd, &sl) == 0 && S_ISREG(sl.st_mode) && now - sl.st_mtime > 60 && flock(fd, LOCK_EX | LOCK_NB) == 0) {
      log_info("removing the spill directory %s of a job that is gone", dir);
      remove_spill_files(dir, 1);
      rmdir(dir);
    }
    close(fd);
  }
  if (d) closedir(d);
}

/* Hold the new private directory dir (sweep_private). 0, or an error naming it. */
static int lock_private(cli_keyed *k, const char *dir, dbx_err *err) {
  char lock[PATH_MAX + 8];
  snprintf(lock, sizeof lock, "%s/.lock", dir);
  int fd = open(lock, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    rmdir(dir);
    return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: cannot lock it: %s", dir, strerror(e));
  }
  k->locked = 1;
  k->lock_fd = fd;
  return 0;
}

/* k->dir = the real path of want. */
static int set_dir(cli_keyed *k, const char *want, dbx_err *err) {
  char *real = realpath(want, NULL);
  struct stat sb;
  if (!real || stat(real, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
    free(real);
    return dbx_seterr(err, DBX_EUSAGE, "--spill-dir %s: not a directory", want);
  }
  if (strlen(real) >= sizeof k->dir) {
    free(real);
    return dbx_seterr(err, DBX_EUSAGE, "spill directory %s: the path is too long", want);
  }
  snprintf(k->dir, sizeof k->dir, "%s", real);
  free(real);
  return 0;
}

int cli_keyed_private_tmp(cli_keyed *k, kv_part_cfg *pc, dbx_err *err) {
  char want[PATH_MAX];
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !tmp[0]) tmp = "/tmp";
  sweep_private(tmp, "dbatch-spill-", strlen("dbatch-spill-XXXXXX"));
  snprintf(want, sizeof want, "%s/dbatch-spill-XXXXXX", tmp);
  if (!mkdtemp(want)) return dbx_seterr(err, DBX_EIO, "cannot create a spill directory %s: %s", want, strerror(errno));
  k->made_tmp = 1;
  int rc = lock_private(k, want, err);
  if (!rc) rc = set_dir(k, want, err);
  if (!rc && pc) {
    snprintf(pc->dir, sizeof pc->dir, "%s", k->dir);
    pc->shared = k->spill_dir != NULL;
  }
  return rc;
}

int cli_keyed_prepare(cli_keyed *k, const job *j, const cli_job *o, kv_part_cfg *pc, dbx_err *err) {
  memset(pc, 0, sizeof *pc);
  pc->stage = 0;  /* the stages begun before this one (stages listed ahead of time do not count) */
  for (int i = 0; i < j->nstages; i++) pc->stage += j->stages[i].state != STAGE_PLANNED;
  /* By default jobs with local workers merge in CLI_KEYED_DEFAULT_R partitions: a number
   * of the job, not of the machine, so a journaled job resumes on another machine with the
   * plan it recorded. Workers started elsewhere (--listen) may not see this machine's files:
   * there it takes --partitions (and a --spill-dir they share) to partition. */
  if (!k->partitions_set) k->partitions = o->workers > 0 && !o->co.listen ? CLI_KEYED_DEFAULT_R : 0;
  pc->r = k->partitions;
  if (!pc->r) return 0;
  /* A task's table may take a quarter of its memory: it overshoots while it grows, sealing
   * copies it once more, splitting it into partitions once more (bench/partitions measures
   * 2.3-2.9 times the table's budget at the peak). */
  uint64_t mem = k->memory;
  if (!mem) {
    long pages = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && pg > 0 ? (uint64_t)pages * (uint64_t)pg : 4ull << 30;
    mem = ram / (uint64_t)(o->workers + 1) / 2;
  }
  pc->memory = mem / 4;
  if (!k->dir[0]) {
    char want[PATH_MAX];
    if (k->spill_dir) {
      /* A directory of this job's own inside it: several jobs may share one --spill-dir. A
       * journaled job's is named after its job directory, so a resume finds its files. */
      struct stat sd;
      if (mkdir(k->spill_dir, 0700) != 0 && errno != EEXIST)
        return dbx_seterr(err, DBX_EIO, "--spill-dir %s: %s", k->spill_dir, strerror(errno));
      if (stat(k->spill_dir, &sd) != 0 || !S_ISDIR(sd.st_mode))
        return dbx_seterr(err, DBX_EUSAGE, "--spill-dir %s: not a directory", k->spill_dir);
      if (j->jr && j->job_dir) {
        char *jd = realpath(j->job_dir, NULL);
        unsigned long long h = jd ? (unsigned long long)XXH64(jd, strlen(jd), 0) : 0;
        free(jd);
        snprintf(want, sizeof want, "%s/dbatch-job-%016llx", k->spill_dir, h);
        if (mkdir(want, 0700) != 0 && errno != EEXIST)
          return dbx_seterr(err, DBX_EIO, "--spill-dir %s: %s", want, strerror(errno));
      } else {
        sweep_private(k->spill_dir, "dbatch-", strlen("dbatch-XXXXXX"));
        snprintf(want, sizeof want, "%s/dbatch-XXXXXX", k->spill_dir);
        if (!mkdtemp(want)) return dbx_seterr(err, DBX_EIO, "--spill-dir %s: %s", k->spill_dir, strerror(errno));
        int rc = lock_private(k, want, err);
        if (rc) return rc;
      }
      k->made_tmp = 1;
    } else if (j->job_dir) {
      snprintf(want, sizeof want, "%s/spill", j->job_dir);
      if (mkdir(want, 0700) != 0 && errno != EEXIST) return dbx_seterr(err, DBX_EIO, "%s: %s", want, strerror(errno));
    } else {
      return cli_keyed_private_tmp(k, pc, err);
    }
    int rc = set_dir(k, want, err);
    if (rc) return rc;
  }
  snprintf(pc->dir, sizeof pc->dir, "%s", k->dir);
  pc->shared = k->spill_dir != NULL;
  return 0;
}

int cli_keyed_stage(coord *co, job *j, const cli_job *o, stage *s, const kv_part_cfg *pc, const kv_spec *spec,
                    int by_count, cli_rows_fn rows, void *ctx, dbx_err *err) {
  if (!pc->r) return cli_run_stage(co, j, s, err);
  job_plan_stage(j, "reduce");  /* listed from the start */
  sink *out = s->out;
  s->out = NULL;  /* the map stage's merged partial is empty: its rows come after the reduce */
  /* Workers that cannot reach the spill directory get their files through us. */
  shuffle_relay map_relay = {.pc = *pc, .spec = *spec},
                red_relay = {.pc = *pc, .spec = *spec, .reduce = 1, .by_count = by_count};
  s->relay = &map_relay;
  int rc = cli_run_stage(co, j, s, err);
  s->relay = NULL;
  if (rc) return rc;
  /* Map tasks given up under --on-task-failure=skip wrote nothing: their part is missing from
   * the result (and reported), their partitions are empty. */
  for (size_t i = 0; i < j->nmissing && !rc; i++)
    if (!strcmp(j->missing[i].stage, s->st->name)) rc = shuffle_write_empty(pc, spec, j->missing[i].task, err);
  if (rc) return rc;
  shuffle_cfg *sc = calloc(1, sizeof *sc);
  if (!sc) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  sc->spec = *spec;
  sc->pc = *pc;
  sc->nmap = (uint32_t)s->st->tasks;  /* every planned batch (batches counts the finished ones) */
  sc->by_count = (uint32_t)by_count;
  red_relay.nmap = sc->nmap;
  stage r;
  cli_stage_init(&r, j, o, "reduce", &op_shuffle_reduce, sc, sizeof *sc, NULL);
  r.relay = &red_relay;
  r.in = NULL;
  r.virtual_tasks = pc->r;
  r.never_skip = 1;
  char opts[96];
  snprintf(opts, sizeof opts, "partitions=%u map_tasks=%u", pc->r, sc->nmap);
  r.plan_opts = opts;
  uint8_t *maps = calloc(sc->nmap ? sc->nmap : 1, 1), *reds = calloc(pc->r, 1);
  if (!maps || !reds) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int streamed = 0;
  for (size_t i = 0; i < j->in.n; i++) streamed |= j->in.v[i].kind == IN_STREAM;
  for (int round = 0; !rc; round++) {
    rc = cli_run_stage(co, j, &r, err);
    dbx_buf_free(&r.bcast_out);
    /* Reduce tasks taken from the journal wrote their files in an earlier run: those may be
     * gone since (a spill directory cleared), and are then made again like lost map outputs. */
    if (!rc) rc = shuffle_check_reduced(pc, by_count, err);
    /* Map outputs lost (Spark's fetch failure): their map tasks run again, once more than
     * the number of times it may take, then the reduce tasks still to do. A stream cannot be
     * read again. */
    if (rc != DBX_ELOST || round == KEYED_RECOMPUTE_ROUNDS || streamed) break;
    uint32_t lost = shuffle_lost(pc, sc->nmap, by_count, maps, reds);
    char why[DBX_ERR_LEN];
    snprintf(why, sizeof why, "%s", err->msg);
    rc = 0;
    /* A map task given up under --on-task-failure=skip has empty partitions: written again,
     * not run again (it would fail again, and be reported missing twice). */
    for (size_t i = 0; i < j->nmissing && !rc; i++) {
      uint32_t t = j->missing[i].task;
      if (t < sc->nmap && maps[t] && (!strcmp(j->missing[i].stage, s->st->name) || !strcmp(j->missing[i].stage, "recompute"))) {
        maps[t] = 0;
        lost--;
        rc = shuffle_write_empty(pc, spec, t, err);
      }
    }
    if (rc) break;
    log_warn("%s; %u map task(s) run again", why, lost);
    if (lost) {
      stage m = *s;
      m.relay = &map_relay;
      m.out = NULL;
      memset(&m.bcast_out, 0, sizeof m.bcast_out);
      m.only = maps;
      m.nonly = sc->nmap;
      if (!(m.st = job_add_stage(j, "recompute"))) rc = dbx_seterr(err, DBX_ELOST, "%s (too many stages to run it again)", why);
      else m.st->recompute = 1;
      if (!rc) rc = cli_run_stage(co, j, &m, err);
      dbx_buf_free(&m.bcast_out);
      for (size_t i = 0; i < j->nmissing && !rc; i++)
        if (!strcmp(j->missing[i].stage, m.st->name)) rc = shuffle_write_empty(pc, spec, j->missing[i].task, err);
    }
    if (rc) break;
    stage again;
    cli_stage_init(&again, j, o, "reduce", &op_shuffle_reduce, sc, sizeof *sc, NULL);
    if (!again.st) {
      rc = dbx_seterr(err, DBX_ELOST, "%s (too many stages to run it again)", why);
      break;
    }
    again.never_skip = 1;
    again.relay = &red_relay;
    again.in = NULL;
    again.virtual_tasks = pc->r;
    again.plan_opts = opts;
    again.only = reds;
    again.nonly = pc->r;
    r = again;
  }
  free(maps);
  free(reds);
  if (!rc) j->spilled_bytes += shuffle_bytes(pc, sc->nmap);
  kv_stream *st = NULL;
  if (!rc && !by_count) rc = kv_stream_open(pc, spec, &st, err);
  if (!rc) rc = rows(ctx, st, out, err);
  kv_stream_close(st);
  if (!rc) shuffle_remove(pc, sc->nmap);  /* the reduced partitions stay until the commit */
  free(sc);
  return rc;
}

void cli_keyed_done(cli_keyed *k, int keep) {
  /* A finished stage removed its files; a failed job that cannot be resumed leaves partial
   * ones (and a killed worker's temporaries), and a map task's copy still running when its
   * stage ended may have written its files again. */
  if (k->dir[0] && !keep) {
    remove_spill_files(k->dir, k->locked);
    if (k->made_tmp) rmdir(k->dir);
  }
  if (k->locked) close(k->lock_fd);
  k->locked = 0;
}

int cli_keyed_rows(void *ctx, kv_stream *st, sink *out, dbx_err *err) {
  const cli_keyed_rows_ctx *x = ctx;
  dbx_buf scratch[KV_AGG_MAX];
  memset(scratch, 0, sizeof scratch);
  kv_entry e;
  int rc = 0;
  while (!rc && kv_stream_next(st, &e)) rc = kv_emit_entry(x->spec, &e, x->nkeycol, scratch, sink_emit, out, err);
  for (int i = 0; i < KV_AGG_MAX; i++) dbx_buf_free(&scratch[i]);
  return rc;
}
