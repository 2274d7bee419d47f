/* journal.c -- the job journal in SQLite (WAL, tasks committed in groups). */
#include "engine/journal.h"

#include <errno.h>
#include <limits.h>
#include <msgpack.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/mpk.h"
#include "util/timeutil.h"

struct journal {
  sqlite3 *db;
  sqlite3_stmt *put, *get;
  char *path;
  int resume, in_txn;
  unsigned pending;
  double txn_start;
};

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
  return exec(jr, "COMMIT", err);
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
    journal_close(jr);
    return rc;
  }
  sqlite3_busy_timeout(jr->db, 5000);
  int rc = exec(jr,
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);"
                "CREATE TABLE IF NOT EXISTS inputs (stage INTEGER, idx INTEGER, path TEXT, size INTEGER,"
                " mtime INTEGER, PRIMARY KEY (stage, idx));"
                "CREATE TABLE IF NOT EXISTS tasks (stage INTEGER, idx INTEGER, partial BLOB, records INTEGER,"
                " bad INTEGER, bytes INTEGER, PRIMARY KEY (stage, idx));",
                err);
  if (rc) { journal_close(jr); return rc; }
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

int journal_open(const char *dir, int resume, int argc, char **argv, journal **out, dbx_err *err) {
  journal *jr;
  int rc = open_db(dir, !resume, &jr, err);
  if (rc) return rc;
  jr->resume = resume;
  char *state = NULL;
  size_t n;
  if (resume) {
    if (meta_get(jr, "state", &state, &n) == 0 && !strcmp(state, "done")) {
      rc = dbx_seterr(err, DBX_EINVAL, "%s: this job already finished; there is nothing to resume", dir);
    }
  } else {
    /* A new job in this directory: forget any earlier one. */
    rc = exec(jr, "DELETE FROM meta; DELETE FROM inputs; DELETE FROM tasks;", err);
    dbx_buf cmd = {0};
    msgpack_packer pk;
    mpk_init(&pk, &cmd);
    msgpack_pack_array(&pk, (uint32_t)argc);
    for (int i = 0; i < argc; i++) msgpack_pack_str_with_body(&pk, argv[i], strlen(argv[i]));
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    if (!rc) rc = meta_put(jr, "argv", cmd.data, cmd.len, err);
    if (!rc) rc = meta_put(jr, "cwd", cwd, strlen(cwd), err);
    if (!rc) rc = meta_put(jr, "state", "running", 7, err);
    dbx_buf_free(&cmd);
  }
  free(state);
  if (!rc && (sqlite3_prepare_v2(jr->db, "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?)", -1, &jr->put, NULL) != SQLITE_OK ||
              sqlite3_prepare_v2(jr->db, "SELECT partial, records, bad, bytes FROM tasks WHERE stage = ? AND idx = ?", -1, &jr->get, NULL) != SQLITE_OK))
    rc = db_error(jr, err, "prepare");
  if (rc) { journal_close(jr); return rc; }
  *out = jr;
  return 0;
}

void journal_close(journal *jr) {
  if (!jr) return;
  if (jr->db) flush(jr, NULL);
  sqlite3_finalize(jr->put);
  sqlite3_finalize(jr->get);
  sqlite3_close(jr->db);
  free(jr->path);
  free(jr);
}

int journal_resuming(const journal *jr) { return jr && jr->resume; }

int journal_command(const char *dir, int *argc, char ***argv, char **cwd, dbx_err *err) {
  journal *jr;
  int rc = open_db(dir, 0, &jr, err);
  if (rc) return rc;
  char *cmd = NULL, *state = NULL;
  size_t n = 0, sn;
  *argv = NULL;
  *cwd = NULL;
  if (meta_get(jr, "state", &state, &sn) == 0 && !strcmp(state, "done")) {
    rc = dbx_seterr(err, DBX_EINVAL, "%s: this job already finished; there is nothing to resume", dir);
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
  free(state);
  journal_close(jr);
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
  sqlite3_stmt *st;
  if (jr->resume) {
    if (sqlite3_prepare_v2(jr->db, "SELECT idx, path, size, mtime FROM inputs WHERE stage = ? ORDER BY idx", -1, &st, NULL) != SQLITE_OK)
      return db_error(jr, err, "inputs");
    sqlite3_bind_int(st, 1, (int)stage);
    size_t k = 0;
    while (!rc && sqlite3_step(st) == SQLITE_ROW) {
      const char *path = (const char *)sqlite3_column_text(st, 1);
      if (k >= in->n || strcmp(path, in->v[k].path))
        rc = dbx_seterr(err, DBX_ECHANGED, "inputs changed since the job started: %s is %s; run the job afresh", path,
                        k >= in->n ? "gone" : "not where it was");
      else if ((uint64_t)sqlite3_column_int64(st, 2) != in->v[k].size || sqlite3_column_int64(st, 3) != in->v[k].mtime_ns)
        rc = dbx_seterr(err, DBX_ECHANGED, "inputs changed since the job started: %s (size or modification time differs); "
                        "run the job afresh", path);
      k++;
    }
    sqlite3_finalize(st);
    if (!rc && k != in->n)
      rc = dbx_seterr(err, DBX_ECHANGED, "inputs changed since the job started: %s is new; run the job afresh",
                      k < in->n ? in->v[k].path : "?");
    return rc;
  }
  if (sqlite3_prepare_v2(jr->db, "INSERT OR REPLACE INTO inputs VALUES (?, ?, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK)
    return db_error(jr, err, "inputs");
  rc = exec(jr, "BEGIN", err);
  for (size_t i = 0; !rc && i < in->n; i++) {
    sqlite3_bind_int(st, 1, (int)stage);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)i);
    sqlite3_bind_text(st, 3, in->v[i].path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)in->v[i].size);
    sqlite3_bind_int64(st, 5, in->v[i].mtime_ns);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(jr, err, "inputs");
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  return rc ? rc : exec(jr, "COMMIT", err);
}

int journal_task(journal *jr, uint32_t stage, uint32_t index, const char *partial, size_t n,
                 uint64_t records, uint64_t bad, uint64_t bytes, dbx_err *err) {
  if (!jr) return 0;
  if (!jr->in_txn) {
    int rc = exec(jr, "BEGIN", err);
    if (rc) return rc;
    jr->in_txn = 1;
    jr->txn_start = time_mono();
  }
  sqlite3_bind_int(jr->put, 1, (int)stage);
  sqlite3_bind_int64(jr->put, 2, index);
  sqlite3_bind_blob64(jr->put, 3, n ? partial : "", n, SQLITE_STATIC);
  sqlite3_bind_int64(jr->put, 4, (sqlite3_int64)records);
  sqlite3_bind_int64(jr->put, 5, (sqlite3_int64)bad);
  sqlite3_bind_int64(jr->put, 6, (sqlite3_int64)bytes);
  int ok = sqlite3_step(jr->put) == SQLITE_DONE;
  sqlite3_reset(jr->put);
  if (!ok) return db_error(jr, err, "record a task");
  /* Group commits: about every 200 ms, so the journal costs little on a fast job. */
  if (++jr->pending >= 1000 || time_mono() - jr->txn_start > 0.2) return flush(jr, err);
  return 0;
}

int journal_lookup(journal *jr, uint32_t stage, uint32_t index, char **partial, size_t *n,
                   uint64_t *records, uint64_t *bad, uint64_t *bytes) {
  if (!jr || !jr->resume) return 0;
  sqlite3_bind_int(jr->get, 1, (int)stage);
  sqlite3_bind_int64(jr->get, 2, index);
  int found = 0;
  if (sqlite3_step(jr->get) == SQLITE_ROW) {
    *n = (size_t)sqlite3_column_bytes(jr->get, 0);
    *partial = malloc(*n ? *n : 1);
    if (*partial) {
      if (*n) memcpy(*partial, sqlite3_column_blob(jr->get, 0), *n);
      *records = (uint64_t)sqlite3_column_int64(jr->get, 1);
      *bad = (uint64_t)sqlite3_column_int64(jr->get, 2);
      *bytes = (uint64_t)sqlite3_column_int64(jr->get, 3);
      found = 1;
    }
  }
  sqlite3_reset(jr->get);
  return found;
}

int journal_done(journal *jr, dbx_err *err) {
  if (!jr) return 0;
  int rc = flush(jr, err);
  return rc ? rc : meta_put(jr, "state", "done", 4, err);
}
