/* journal.c -- the job journal in SQLite (WAL, tasks committed in groups), and the job
 * directory's lock. */
#include "engine/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <msgpack.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "util/err.h"
#include "util/mpk.h"
#include "util/timeutil.h"

struct journal {
  sqlite3 *db;
  sqlite3_stmt *put, *get;
  char *path;
  int resume, in_txn;
  unsigned pending;
  double last_commit;
  char id[40];  /* the job's identity: made when the job starts, kept by a resume */
  char *zbuf;   /* compressed partials on their way in */
  size_t zcap;
};

/* The job directory lock this process holds (one job per process). */
static struct {
  int fd;
  dev_t dev;
  ino_t ino;
} held = {-1, 0, 0};

void journal_unlock(void) {
  if (held.fd < 0) return;
  close(held.fd);  /* releases the flock */
  held.fd = -1;
}

int journal_lock(const char *dir, dbx_err *err) {
  char path[PATH_MAX];
  if ((size_t)snprintf(path, sizeof path, "%s/lock", dir) >= sizeof path)
    return dbx_seterr(err, DBX_EINVAL, "--job-dir %s: the path is too long", dir);
  struct stat st;
  if (held.fd >= 0 && stat(path, &st) == 0 && st.st_dev == held.dev && st.st_ino == held.ino) return 0;
  /* O_CLOEXEC: local workers must not inherit (and so keep) the lock. */
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: cannot create the job directory's lock: %s", path, strerror(e));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    char pid[24] = "";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    pid[n > 0 ? n : 0] = 0;
    pid[strcspn(pid, "\n")] = 0;
    close(fd);
    if (e == EWOULDBLOCK)
      return dbx_seterr(err, DBX_EBUSY,
                        "%s: the job directory is in use by another dbatch process (pid %s): the job or a resume "
                        "of it is still running; wait for it to end (or stop it) before resuming",
                        dir, pid[0] ? pid : "unknown");
    return dbx_seterr(err, err_from_errno(e), "%s: cannot lock the job directory: %s", dir, strerror(e));
  }
  char line[24];
  int k = snprintf(line, sizeof line, "%d\n", (int)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)k, 0) != k || fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return dbx_seterr(err, err_from_errno(e), "%s: cannot write the job directory's lock: %s", path, strerror(e));
  }
  journal_unlock();
  held.fd = fd;
  held.dev = st.st_dev;
  held.ino = st.st_ino;
  return 0;
}

static int db_error(journal *jr, dbx_err *err, const char *what) {
  return dbx_seterr(err, DBX_EDB, "journal %s: %s: %s", jr->path, what, sqlite3_errmsg(jr->db));
}

static int exec(journal *jr, const char *sql, dbx_err *err) {
  char *msg = NULL;
  if (sqlite3_exec(jr->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    int rc = dbx_seterr(err, DBX_EDB, "journal %s: %s", jr->path, msg ? msg : "error");
    sqlite3_free(msg);
    return rc;
  }
  return 0;
}

static int flush(journal *jr, dbx_err *err) {
  if (!jr->in_txn) return 0;
  jr->in_txn = 0;
  jr->pending = 0;
  jr->last_commit = time_mono();
  return exec(jr, "COMMIT", err);
}

/* Close and free without releasing the directory lock. */
static void journal_free(journal *jr) {
  if (!jr) return;
  sqlite3_finalize(jr->put);
  sqlite3_finalize(jr->get);
  sqlite3_close(jr->db);
  free(jr->zbuf);
  free(jr->path);
  free(jr);
}

static int open_db(const char *dir, int create, journal **out, dbx_err *err) {
  if (create && mkdir(dir, 0755) != 0 && errno != EEXIST)
    return dbx_seterr(err, DBX_EIO, "--job-dir %s: cannot create: %s", dir, strerror(errno));
  journal *jr = calloc(1, sizeof *jr);
  if (!jr) return DBX_ENOMEM;
  size_t n = strlen(dir) + 16;
  jr->path = malloc(n);
  if (!jr->path) { free(jr); return DBX_ENOMEM; }
  snprintf(jr->path, n, "%s/journal.db", dir);
  if (!create && access(jr->path, F_OK) != 0) {
    int rc = dbx_seterr(err, DBX_ENOENT, "%s: no job journal here (was the job started with --job-dir %s?)", dir, dir);
    free(jr->path);
    free(jr);
    return rc;
  }
  int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
  if (sqlite3_open_v2(jr->path, &jr->db, flags, NULL) != SQLITE_OK) {
    int rc = db_error(jr, err, "cannot open");
    journal_free(jr);
    return rc;
  }
  sqlite3_busy_timeout(jr->db, 5000);
  /* The journal keeps the command line, which may hold a database password: only its owner
   * reads it (SQLite gives its -wal and -shm files the same mode). */
  if (create && chmod(jr->path, 0600) != 0) { /* a file system without modes */ }
  /* A new job starts from an empty journal of this schema (an earlier job's tables, maybe
   * of an older schema, are dropped); a resume keeps them, and check_resumable refuses
   * another schema. */
  int rc = exec(jr, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", err);
  if (!rc && create)
    rc = exec(jr, "DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS inputs; DROP TABLE IF EXISTS tasks;"
              " DROP TABLE IF EXISTS stages;", err);
  if (!rc)
    rc = exec(jr,
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);"
                "CREATE TABLE IF NOT EXISTS inputs (stage INTEGER, idx INTEGER, path TEXT, size INTEGER,"
                " mtime INTEGER, dev INTEGER, ino INTEGER, PRIMARY KEY (stage, idx));"
                "CREATE TABLE IF NOT EXISTS tasks (stage INTEGER, idx INTEGER, partial BLOB, records INTEGER,"
                " bad INTEGER, bytes INTEGER, PRIMARY KEY (stage, idx));"
                "CREATE TABLE IF NOT EXISTS stages (stage INTEGER PRIMARY KEY, name TEXT, opts TEXT,"
                " batch_bytes INTEGER, batch_records INTEGER, whole_files INTEGER, inputs_done INTEGER);",
                err);
  if (rc) { journal_free(jr); return rc; }
  *out = jr;
  return 0;
}

static int meta_get(journal *jr, const char *key, char **val, size_t *n) {
  sqlite3_stmt *st;
  *val = NULL;
  if (sqlite3_prepare_v2(jr->db, "SELECT value FROM meta WHERE key = ?", -1, &st, NULL) != SQLITE_OK) return -1;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = -1;
  if (sqlite3_step(st) == SQLITE_ROW) {
    *n = (size_t)sqlite3_column_bytes(st, 0);
    *val = malloc(*n + 1);
    if (*val) {
      memcpy(*val, sqlite3_column_blob(st, 0), *n);
      (*val)[*n] = 0;
      rc = 0;
    }
  }
  sqlite3_finalize(st);
  return rc;
}

static int meta_put(journal *jr, const char *key, const void *val, size_t n, dbx_err *err) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(jr->db, "INSERT OR REPLACE INTO meta VALUES (?, ?)", -1, &st, NULL) != SQLITE_OK)
    return db_error(jr, err, "meta");
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, val, (int)n, SQLITE_TRANSIENT);
  int ok = sqlite3_step(st) == SQLITE_DONE;
  sqlite3_finalize(st);
  return ok ? 0 : db_error(jr, err, "meta");
}

/* Can the journal in dir be resumed by this dbatch? A journal of an older schema has no
 * recorded plan, and one of another version may encode partials differently: resuming
 * either could merge tasks of two plans into a wrong answer, so both are refused. */
static int check_resumable(journal *jr, const char *dir, dbx_err *err) {
  char *state = NULL, *schema = NULL, *version = NULL;
  size_t n;
  int rc = 0;
  if (meta_get(jr, "state", &state, &n) == 0 && !strcmp(state, "done"))
    rc = dbx_seterr(err, DBX_EINVAL, "%s: this job already finished; there is nothing to resume", dir);
  else if (meta_get(jr, "schema", &schema, &n) != 0)
    rc = dbx_seterr(err, DBX_EVERSION,
                    "%s: this journal was written by an older dbatch that did not record the job's batch plan, "
                    "so it cannot be resumed exactly; run the job afresh", dir);
  else if (strcmp(schema, JOURNAL_SCHEMA) != 0)
    rc = dbx_seterr(err, DBX_EVERSION, "%s: journal schema %s, this dbatch reads schema %s; run the job afresh", dir,
                    schema, JOURNAL_SCHEMA);
  else if (meta_get(jr, "version", &version, &n) != 0 || strcmp(version, DBX_VERSION) != 0)
    rc = dbx_seterr(err, DBX_EVERSION, "%s: the job was started by dbatch %s, this is dbatch %s; its partial results "
                    "cannot be reused: run the job afresh", dir, version ? version : "?", DBX_VERSION);
  free(state);
  free(schema);
  free(version);
  return rc;
}

int journal_open(const char *dir, int resume, int argc, char **argv, journal **out, dbx_err *err) {
  journal *jr;
  int rc;
  if (!resume && mkdir(dir, 0755) != 0 && errno != EEXIST)
    return dbx_seterr(err, DBX_EIO, "--job-dir %s: cannot create: %s", dir, strerror(errno));
  if (resume) {
    char probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s/journal.db", dir);
    if (access(probe, F_OK) != 0)
      return dbx_seterr(err, DBX_ENOENT, "%s: no job journal here (was the job started with --job-dir %s?)", dir, dir);
  }
  /* Lock before touching the journal: a new job would otherwise wipe a running one's. */
  if ((rc = journal_lock(dir, err))) return rc;
  rc = open_db(dir, !resume, &jr, err);
  if (rc) return rc;
  jr->resume = resume;
  if (resume) {
    rc = check_resumable(jr, dir, err);
  } else {
    /* A new job in this directory: open_db forgot any earlier one. */
    dbx_buf cmd = {0};
    msgpack_packer pk;
    mpk_init(&pk, &cmd);
    msgpack_pack_array(&pk, (uint32_t)argc);
    for (int i = 0; i < argc; i++) msgpack_pack_str_with_body(&pk, argv[i], strlen(argv[i]));
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    if (!rc) rc = meta_put(jr, "schema", JOURNAL_SCHEMA, strlen(JOURNAL_SCHEMA), err);
    if (!rc) rc = meta_put(jr, "version", DBX_VERSION, strlen(DBX_VERSION), err);
    if (!rc) rc = meta_put(jr, "argv", cmd.data, cmd.len, err);
    if (!rc) rc = meta_put(jr, "cwd", cwd, strlen(cwd), err);
    if (!rc) rc = meta_put(jr, "state", "running", 7, err);
    dbx_buf_free(&cmd);
  }
  /* The job's identity (what a database output records with rows it appends): read back
   * on a resume, made now for a new job (or an older journal that has none). */
  char *id = NULL;
  size_t idn = 0;
  if (!rc && meta_get(jr, "job_id", &id, &idn) == 0 && idn > 0 && idn < sizeof jr->id) {
    memcpy(jr->id, id, idn);
    jr->id[idn] = 0;
  } else if (!rc) {
    journal_new_id(jr->id, sizeof jr->id);
    rc = meta_put(jr, "job_id", jr->id, strlen(jr->id), err);
  }
  free(id);
  if (!rc && (sqlite3_prepare_v2(jr->db, "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?)", -1, &jr->put, NULL) != SQLITE_OK ||
              sqlite3_prepare_v2(jr->db, "SELECT partial, records, bad, bytes FROM tasks WHERE stage = ? AND idx = ?", -1, &jr->get, NULL) != SQLITE_OK))
    rc = db_error(jr, err, "prepare");
  if (rc) { journal_close(jr); return rc; }  /* and unlock */
  *out = jr;
  return 0;
}

const char *journal_job_id(const journal *jr) { return jr->id; }

int journal_note_put(journal *jr, const char *key, const char *val, dbx_err *err) {
  int rc = flush(jr, err);  /* what is pending first: the note is its own transaction */
  char k[160];
  snprintf(k, sizeof k, "note:%s", key);
  return rc ? rc : meta_put(jr, k, val, strlen(val), err);
}

int journal_note_get(journal *jr, const char *key, char *out, size_t cap) {
  char k[160], *v = NULL;
  size_t n = 0;
  snprintf(k, sizeof k, "note:%s", key);
  if (flush(jr, NULL) || meta_get(jr, k, &v, &n) != 0) return 0;
  snprintf(out, cap, "%s", v);
  free(v);
  return 1;
}

void journal_new_id(char *out, size_t cap) {
  unsigned char r[16];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  ssize_t got = fd >= 0 ? read(fd, r, sizeof r) : -1;
  if (fd >= 0) close(fd);
  if (got != (ssize_t)sizeof r) {  /* no /dev/urandom: time, pid and address are unique enough */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t a = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, b = (uint64_t)getpid() ^ (uintptr_t)out;
    memcpy(r, &a, 8);
    memcpy(r + 8, &b, 8);
  }
  size_t k = 0;
  for (size_t i = 0; i < sizeof r && k + 2 < cap; i++) k += (size_t)snprintf(out + k, cap - k, "%02x", r[i]);
  out[k] = 0;
}

void journal_close(journal *jr) {
  if (!jr) return;
  if (jr->db) flush(jr, NULL);
  journal_free(jr);
  journal_unlock();
}

int journal_resuming(const journal *jr) { return jr && jr->resume; }

int journal_command(const char *dir, int *argc, char ***argv, char **cwd, dbx_err *err) {
  journal *jr;
  int rc = open_db(dir, 0, &jr, err);
  if (rc) return rc;
  char *cmd = NULL;
  size_t n = 0, sn;
  *argv = NULL;
  *cwd = NULL;
  if ((rc = check_resumable(jr, dir, err))) {
    /* refused */
  } else if (meta_get(jr, "argv", &cmd, &n) || meta_get(jr, "cwd", cwd, &sn)) {
    rc = dbx_seterr(err, DBX_ECORRUPT, "%s: the journal has no command line; it cannot be resumed", dir);
  } else {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, cmd, n, &off) != MSGPACK_UNPACK_SUCCESS || u.data.type != MSGPACK_OBJECT_ARRAY ||
        u.data.via.array.size < 2) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "%s: damaged command line in the journal", dir);
    } else {
      uint32_t k = u.data.via.array.size;
      *argv = calloc(k + 1, sizeof **argv);
      for (uint32_t i = 0; *argv && i < k; i++) {
        const msgpack_object *o = &u.data.via.array.ptr[i];
        (*argv)[i] = o->type == MSGPACK_OBJECT_STR ? strndup(o->via.str.ptr, o->via.str.size) : strdup("");
      }
      *argc = (int)k;
      if (!*argv) rc = DBX_ENOMEM;
    }
    msgpack_unpacked_destroy(&u);
  }
  free(cmd);
  journal_free(jr);  /* not journal_close: this process may hold the directory's lock */
  return rc;
}

int journal_planned(journal *jr, uint32_t stage, char *opts, size_t cap) {
  if (!jr || !jr->resume || !cap || flush(jr, NULL)) return 0;
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(jr->db, "SELECT opts FROM stages WHERE stage = ?", -1, &st, NULL) != SQLITE_OK) return 0;
  sqlite3_bind_int64(st, 1, stage);
  int found = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0);
  if (found) snprintf(opts, cap, "%s", (const char *)sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  return found;
}

int journal_plan(journal *jr, uint32_t stage, const char *name, const char *opts, split_opts *split,
                 dbx_err *err) {
  if (!jr) return 0;
  int rc = flush(jr, err);
  if (rc) return rc;
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(jr->db, "SELECT name, opts, batch_bytes, batch_records, whole_files FROM stages WHERE stage = ?",
                         -1, &st, NULL) != SQLITE_OK)
    return db_error(jr, err, "stages");
  sqlite3_bind_int64(st, 1, stage);
  int step = sqlite3_step(st);
  if (step == SQLITE_ROW) {
    const char *rname = (const char *)sqlite3_column_text(st, 0), *ropts = (const char *)sqlite3_column_text(st, 1);
    sqlite3_int64 bb = sqlite3_column_int64(st, 2), br = sqlite3_column_int64(st, 3), wf = sqlite3_column_int64(st, 4);
    if (!rname || !ropts || strcmp(rname, name) || strcmp(ropts, opts))
      rc = dbx_seterr(err, DBX_ECHANGED,
                      "journal %s: stage %u was planned as '%s' with options [%s]; this command now plans '%s' with [%s]: "
                      "the journal's plan cannot be reproduced; run the job afresh",
                      jr->path, stage, rname ? rname : "?", ropts ? ropts : "?", name, opts);
    else if (bb < 0 || br < 0 || (wf != 0 && wf != 1) || (bb == 0 && br == 0))
      rc = dbx_seterr(err, DBX_ECORRUPT, "journal %s: stage %u: damaged plan (batch bytes %lld, records %lld); "
                      "run the job afresh", jr->path, stage, (long long)bb, (long long)br);
    else {
      split->batch_bytes = (uint64_t)bb;
      split->batch_records = (uint64_t)br;
      split->whole_files = (int)wf;
    }
    sqlite3_finalize(st);
    return rc;
  }
  sqlite3_finalize(st);
  if (step != SQLITE_DONE) return db_error(jr, err, "stages");
  if (split->batch_bytes > INT64_MAX || split->batch_records > INT64_MAX)
    return dbx_seterr(err, DBX_EINVAL, "journal %s: stage %u: batch size out of range", jr->path, stage);
  if (sqlite3_prepare_v2(jr->db, "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, 0)", -1, &st, NULL) != SQLITE_OK)
    return db_error(jr, err, "stages");
  sqlite3_bind_int64(st, 1, stage);
  sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, opts, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, (sqlite3_int64)split->batch_bytes);
  sqlite3_bind_int64(st, 5, (sqlite3_int64)split->batch_records);
  sqlite3_bind_int64(st, 6, split->whole_files ? 1 : 0);
  if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(jr, err, "record the plan");
  sqlite3_finalize(st);
  return rc;
}

/* Compare the inputs recorded for stage with in (DBX_ECHANGED naming the first that differs). */
static int check_inputs(journal *jr, uint32_t stage, const inputs *in, dbx_err *err) {
  sqlite3_stmt *st;
  int rc = 0;
  if (sqlite3_prepare_v2(jr->db, "SELECT idx, path, size, mtime, dev, ino FROM inputs WHERE stage = ? ORDER BY idx", -1, &st, NULL) != SQLITE_OK)
    return db_error(jr, err, "inputs");
  sqlite3_bind_int64(st, 1, stage);
  size_t k = 0;
  while (!rc && sqlite3_step(st) == SQLITE_ROW) {
    const char *path = (const char *)sqlite3_column_text(st, 1);
    if (!path) path = "?";
    if (k >= in->n || strcmp(path, in->v[k].path))
      rc = dbx_seterr(err, DBX_ECHANGED, "inputs changed since the job started: %s is %s; run the job afresh", path,
                      k >= in->n ? "gone" : "not where it was");
    else if ((uint64_t)sqlite3_column_int64(st, 2) != in->v[k].size || sqlite3_column_int64(st, 3) != in->v[k].mtime_ns)
      rc = dbx_seterr(err, DBX_ECHANGED, "inputs changed since the job started: %s (size or modification time differs); "
                      "run the job afresh", path);
    else if ((uint64_t)sqlite3_column_int64(st, 4) != in->v[k].dev || (uint64_t)sqlite3_column_int64(st, 5) != in->v[k].ino)
      rc = dbx_seterr(err, DBX_ECHANGED, "inputs changed since the job started: %s was replaced by another file (same size "
                      "and modification time, another inode); run the job afresh", path);
    k++;
  }
  sqlite3_finalize(st);
  if (!rc && k != in->n)
    rc = dbx_seterr(err, DBX_ECHANGED, "inputs changed since the job started: %s is new; run the job afresh",
                    k < in->n ? in->v[k].path : "?");
  return rc;
}

int journal_stage(journal *jr, uint32_t stage, const inputs *in, dbx_err *err) {
  if (!jr || !in) return 0;
  int rc = flush(jr, err);
  if (rc) return rc;
  for (size_t i = 0; i < in->n; i++)
    if (in->v[i].kind == IN_STREAM)
      return dbx_seterr(err, DBX_EUSAGE, "--job-dir: %s is a stream; a job reading a stream cannot be journaled or resumed",
                        in->v[i].path);
  /* Whether this stage's inputs were recorded: by the run that planned it, which may be an
   * earlier one (check them) or this one (a stage the killed job never reached). */
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(jr->db, "SELECT inputs_done FROM stages WHERE stage = ?", -1, &st, NULL) != SQLITE_OK)
    return db_error(jr, err, "stages");
  sqlite3_bind_int64(st, 1, stage);
  int step = sqlite3_step(st), done = step == SQLITE_ROW && sqlite3_column_int(st, 0) != 0;
  sqlite3_finalize(st);
  if (step != SQLITE_ROW)
    return step == SQLITE_DONE ? dbx_seterr(err, DBX_EINVAL, "journal %s: stage %u has no recorded plan", jr->path, stage)
                               : db_error(jr, err, "stages");
  if (done) return check_inputs(jr, stage, in, err);
  if (sqlite3_prepare_v2(jr->db, "INSERT OR REPLACE INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK)
    return db_error(jr, err, "inputs");
  rc = exec(jr, "BEGIN", err);
  if (rc) { sqlite3_finalize(st); return rc; }
  for (size_t i = 0; !rc && i < in->n; i++) {
    sqlite3_bind_int64(st, 1, stage);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)i);
    sqlite3_bind_text(st, 3, in->v[i].path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)in->v[i].size);
    sqlite3_bind_int64(st, 5, in->v[i].mtime_ns);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)in->v[i].dev);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)in->v[i].ino);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(jr, err, "inputs");
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  char sql[96];
  snprintf(sql, sizeof sql, "UPDATE stages SET inputs_done = 1 WHERE stage = %u", stage);
  if (!rc) rc = exec(jr, sql, err);
  if (rc) { exec(jr, "ROLLBACK", NULL); return rc; }
  return exec(jr, "COMMIT", err);
}

int journal_task(journal *jr, uint32_t stage, uint32_t index, const char *partial, size_t n,
                 uint64_t records, uint64_t bad, uint64_t bytes, dbx_err *err) {
  if (!jr) return 0;
  if (!jr->in_txn) {
    int rc = exec(jr, "BEGIN", err);
    if (rc) return rc;
    jr->in_txn = 1;
  }
  /* Partials are kept compressed (zstd, fast level): a journal grows with the results, a
   * fraction of the input, not with the partials' raw bytes. */
  size_t cap = ZSTD_compressBound(n);
  if (cap > jr->zcap) {
    char *z = realloc(jr->zbuf, cap);
    if (!z) return dbx_seterr(err, DBX_ENOMEM, "journal: out of memory compressing a partial of %zu bytes", n);
    jr->zbuf = z;
    jr->zcap = cap;
  }
  size_t zn = ZSTD_compress(jr->zbuf, cap, n ? partial : "", n, 1);
  if (ZSTD_isError(zn)) return dbx_seterr(err, DBX_EIO, "journal: cannot compress a partial: %s", ZSTD_getErrorName(zn));
  sqlite3_bind_int(jr->put, 1, (int)stage);
  sqlite3_bind_int64(jr->put, 2, index);
  sqlite3_bind_blob64(jr->put, 3, jr->zbuf, zn, SQLITE_STATIC);
  sqlite3_bind_int64(jr->put, 4, (sqlite3_int64)records);
  sqlite3_bind_int64(jr->put, 5, (sqlite3_int64)bad);
  sqlite3_bind_int64(jr->put, 6, (sqlite3_int64)bytes);
  int ok = sqlite3_step(jr->put) == SQLITE_DONE;
  sqlite3_reset(jr->put);
  if (!ok) return db_error(jr, err, "record a task");
  /* Group commits, at most one every 200 ms, so the journal costs little on a fast job; a
   * task finishing after a quiet spell is committed at once (slow tasks are never held). */
  if (++jr->pending >= 1000 || time_mono() - jr->last_commit >= 0.2) return flush(jr, err);
  return 0;
}

int journal_lookup(journal *jr, uint32_t stage, uint32_t index, char **partial, size_t *n,
                   uint64_t *records, uint64_t *bad, uint64_t *bytes) {
  if (!jr || !jr->resume) return 0;
  sqlite3_bind_int(jr->get, 1, (int)stage);
  sqlite3_bind_int64(jr->get, 2, index);
  int found = 0;
  if (sqlite3_step(jr->get) == SQLITE_ROW) {
    /* A partial that does not decompress (a damaged journal) is as if the task had not
     * finished: it runs again. */
    const void *z = sqlite3_column_blob(jr->get, 0);
    size_t zn = (size_t)sqlite3_column_bytes(jr->get, 0);
    unsigned long long size = z ? ZSTD_getFrameContentSize(z, zn) : ZSTD_CONTENTSIZE_ERROR;
    *partial = size <= (1ull << 36) ? malloc(size ? (size_t)size : 1) : NULL;
    if (*partial && ZSTD_decompress(*partial, (size_t)size, z, zn) != size) {
      free(*partial);
      *partial = NULL;
    }
    *n = (size_t)size;
    if (*partial) {
      *records = (uint64_t)sqlite3_column_int64(jr->get, 1);
      *bad = (uint64_t)sqlite3_column_int64(jr->get, 2);
      *bytes = (uint64_t)sqlite3_column_int64(jr->get, 3);
      found = 1;
    }
  }
  sqlite3_reset(jr->get);
  return found;
}

int journal_sync(journal *jr, dbx_err *err) { return jr ? flush(jr, err) : 0; }

int journal_done(journal *jr, dbx_err *err) {
  if (!jr) return 0;
  int rc = flush(jr, err);
  if (!rc) rc = meta_put(jr, "state", "done", 4, err);
  if (rc) return rc;
  /* A finished job is not resumed (check_resumable): its partial results are dead weight.
   * What stays is the plan, the inputs and the notes, a few kilobytes whatever the input.
   * Failing to shrink the file costs only space. */
  dbx_err ignore = {0, ""};
  if (!exec(jr, "DELETE FROM tasks", &ignore)) exec(jr, "VACUUM", &ignore);
  return 0;
}
