/* sink_sqlite.c -- rows into a SQLite table in one transaction. The table is replaced unless
 * --append; a database file this sink created is removed again if the job fails.
 *
 * Several outputs of one job into the same database file (predictions and metrics) share
 * one connection and one transaction: each sink's commit only says it is ready, the last one
 * commits them all, and an abort of any rolls them all back. So they appear together or
 * not at all, as a job's outputs must. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sink/sink_internal.h"
#include "util/log.h"

/* One open database and its transaction, shared by the sinks writing into it. */
typedef struct sqlite_db {
  struct sqlite_db *next;
  sqlite3 *db;
  char *path;
  dev_t dev;
  ino_t ino;
  int created;       /* the file did not exist: removed again on rollback */
  int open;          /* sinks on it not yet committed or aborted */
  int failed;        /* one was aborted: the transaction is rolled back */
} sqlite_db;

static sqlite_db *g_dbs;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct sqlite_sink {
  sink base;
  sqlite_db *d;
  sqlite3 *db;       /* d->db */
  sqlite3_stmt *ins;
  char *path;
  char *table;       /* appending: recorded in dbatch_commits under the job's id */
  int landed;        /* appending: this job's rows are in the table already (a retried commit) */
} sqlite_sink;

int sink_sqlite_check_table(const char *t, dbx_err *err) {
  if (!t || !*t) return dbx_seterr(err, DBX_EUSAGE, "--table: empty table name");
  if (!(isalpha((unsigned char)t[0]) || t[0] == '_'))
    return dbx_seterr(err, DBX_EUSAGE, "--table '%s': must start with a letter or '_'", t);
  for (const char *p = t; *p; p++)
    if (!(isalnum((unsigned char)*p) || *p == '_'))
      return dbx_seterr(err, DBX_EUSAGE, "--table '%s': use letters, digits and '_' only", t);
  return 0;
}

/* Close d and forget it (g_mu held); a file it created goes too when remove_file. */
static void db_release(sqlite_db *d, int remove_file) {
  for (sqlite_db **p = &g_dbs; *p; p = &(*p)->next)
    if (*p == d) { *p = d->next; break; }
  sqlite3_close(d->db);
  if (remove_file && d->created) {
    unlink(d->path);
    size_t n = strlen(d->path) + 16;
    char *j = malloc(n);
    if (j) {
      snprintf(j, n, "%s-journal", d->path);
      unlink(j);
      free(j);
    }
  }
  free(d->path);
  free(d);
}

static void sqlite_free(sqlite_sink *s) {
  sqlite3_finalize(s->ins);
  free(s->path);
  free(s->table);
  free(s);
}

static int db_err(sqlite_sink *s, dbx_err *err, const char *what) {
  return dbx_seterr(err, DBX_EDB, "sqlite:%s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

/* One statement of constant SQL (BEGIN, COMMIT, ROLLBACK): nothing from data goes here. */
static int exec(sqlite_sink *s, const char *sql, dbx_err *err) {
  char *msg = NULL;
  if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    int rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: %s", s->path, msg ? msg : "error");
    sqlite3_free(msg);
    return rc;
  }
  return 0;
}

/* Run exactly one statement built with sqlite3_str (identifiers quoted with %w), through
 * sqlite3_prepare_v2: never sqlite3_exec, so text from data can never add a statement.
 * Takes ownership of q. what names the step in the error. */
static int run_one(sqlite_sink *s, sqlite3_str *q, sqlite3_stmt **keep, const char *what, dbx_err *err) {
  int n = sqlite3_str_length(q);
  char *sql = sqlite3_str_finish(q);
  sqlite3_stmt *st = NULL;
  const char *tail = NULL;
  int rc = 0;
  if (!sql) return dbx_seterr(err, DBX_ENOMEM, "sqlite:%s: out of memory", s->path);
  if (sqlite3_prepare_v2(s->db, sql, n + 1, &st, &tail) != SQLITE_OK || !st) {
    rc = db_err(s, err, what);
  } else if (tail && *tail) {
    rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: %s: more than one statement", s->path, what);
  } else if (!keep && sqlite3_step(st) != SQLITE_DONE) {
    rc = db_err(s, err, what);
  }
  if (keep && !rc) *keep = st;
  else sqlite3_finalize(st);
  sqlite3_free(sql);
  return rc;
}

static int sqlite_row(sink *sb, const dbx_value *row, dbx_err *err) {
  sqlite_sink *s = (sqlite_sink *)sb;
  const dbx_schema *sc = sb->schema;
  if (s->landed) return 0;  /* this job's rows are there already */
  for (uint32_t c = 0; c < sc->ncol; c++) {
    int i = (int)c + 1;
    switch (sc->types[c]) {
    case DBX_COL_TEXT:
      if (!row[c].s) sqlite3_bind_null(s->ins, i);
      else sqlite3_bind_text64(s->ins, i, row[c].s, row[c].n, SQLITE_STATIC, SQLITE_UTF8);
      break;
    case DBX_COL_INT: sqlite3_bind_int64(s->ins, i, row[c].i); break;
    case DBX_COL_REAL: sqlite3_bind_double(s->ins, i, row[c].d); break;
    case DBX_COL_NUM:
      if (row[c].n == DBX_NUM_INT) sqlite3_bind_int64(s->ins, i, row[c].i);
      else if (row[c].n == DBX_NUM_REAL) sqlite3_bind_double(s->ins, i, row[c].d);
      else sqlite3_bind_null(s->ins, i);
      break;
    }
  }
  int rc = sqlite3_step(s->ins);
  sqlite3_reset(s->ins);
  if (rc != SQLITE_DONE) return db_err(s, err, "insert failed");
  return 0;
}

/* dbatch_commits: one row per (job id, table) of rows appended, written in the transaction
 * that appends them, so a commit retried (a job resumed, a followed window appended again
 * after a crash) finds its rows there and adds none. */
static int commits_step(sqlite_sink *s, const char *sql, int bind_rows, int *found, dbx_err *err) {
  sqlite3_stmt *st = NULL;
  int rc = 0;
  if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return db_err(s, err, "dbatch_commits");
  sqlite3_bind_text(st, 1, sink_job_id(), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, s->table, -1, SQLITE_STATIC);
  if (bind_rows) sqlite3_bind_int64(st, 3, (sqlite3_int64)s->base.rows);
  int r = sqlite3_step(st);
  if (found) *found = r == SQLITE_ROW;
  if (r != SQLITE_ROW && r != SQLITE_DONE) rc = db_err(s, err, "dbatch_commits");
  sqlite3_finalize(st);
  return rc;
}

/* A followed job's progress, in the transaction of its rows (sink_set_follow_note). */
static int follow_note(sqlite_sink *s, dbx_err *err) {
  const char *job, *offsets;
  uint64_t mb;
  if (!sink_follow_note(&job, &mb, &offsets)) return 0;
  int rc = exec(s, "CREATE TABLE IF NOT EXISTS dbatch_follow (job TEXT PRIMARY KEY, micro_batch INTEGER NOT NULL, "
                   "offsets TEXT NOT NULL, committed_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)", err);
  sqlite3_stmt *st = NULL;
  if (!rc && sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO dbatch_follow (job, micro_batch, offsets) VALUES (?1, ?2, ?3)",
                                -1, &st, NULL) != SQLITE_OK)
    rc = db_err(s, err, "dbatch_follow");
  if (!rc) {
    sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)mb);
    sqlite3_bind_text(st, 3, offsets, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_err(s, err, "dbatch_follow");
  }
  sqlite3_finalize(st);
  return rc;
}

static int sqlite_commit(sink *sb, dbx_err *err) {
  sqlite_sink *s = (sqlite_sink *)sb;
  sqlite_db *d = s->d;
  int rc = 0;
  pthread_mutex_lock(&g_mu);
  sqlite3_finalize(s->ins);
  s->ins = NULL;
  if (!d->failed && s->table && s->landed)
    log_info("sqlite:%s: table %s already has the rows of this job (job %s); not adding them again", s->path, s->table,
             sink_job_id());
  else if (!d->failed && s->table &&
           (rc = commits_step(s, "INSERT INTO dbatch_commits (job_id, table_name, rows) VALUES (?1, ?2, ?3)", 1, NULL, err)))
    d->failed = 1;
  if (rc) {
    if (d->open == 1) exec(s, "ROLLBACK", NULL);
  } else if (d->failed) {
    rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: another output into the same database failed; nothing was written",
                    s->path);
  } else if (d->open == 1) {  /* the last one: commit them all */
    rc = follow_note(s, err);
    if (!rc) rc = exec(s, "COMMIT", err);
    if (rc) exec(s, "ROLLBACK", NULL);
  }
  if (--d->open == 0) db_release(d, rc != 0 || d->failed);
  pthread_mutex_unlock(&g_mu);
  sqlite_free(s);
  return rc;
}

static void sqlite_abort(sink *sb) {
  sqlite_sink *s = (sqlite_sink *)sb;
  sqlite_db *d = s->d;
  pthread_mutex_lock(&g_mu);
  sqlite3_finalize(s->ins);
  s->ins = NULL;
  if (!d->failed) exec(s, "ROLLBACK", NULL);
  d->failed = 1;
  if (--d->open == 0) db_release(d, 1);
  pthread_mutex_unlock(&g_mu);
  sqlite_free(s);
}

/* The open database for path, joined (its transaction is ours too), or a new one with its
 * transaction begun. g_mu held. */
static int db_get(const char *path, sqlite_db **out, dbx_err *err) {
  struct stat st;
  if (stat(path, &st) == 0)
    for (sqlite_db *d = g_dbs; d; d = d->next)
      if (d->dev == st.st_dev && d->ino == st.st_ino && !d->failed) {
        d->open++;
        *out = d;
        return 0;
      }
  sqlite_db *d = calloc(1, sizeof *d);
  if (!d || !(d->path = strdup(path))) {
    free(d);
    return DBX_ENOMEM;
  }
  d->created = access(path, F_OK) != 0;
  int rc = 0;
  if (sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
    rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: cannot open: %s", path, d->db ? sqlite3_errmsg(d->db) : "out of memory");
  } else {
    sqlite3_busy_timeout(d->db, 10000);
    char *msg = NULL;
    if (sqlite3_exec(d->db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK)
      rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: %s", path, msg ? msg : "cannot begin a transaction");
    sqlite3_free(msg);
  }
  if (!rc && stat(path, &st) != 0) rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: %s", path, strerror(errno));
  if (rc) {
    d->open = 1;
    d->next = g_dbs;
    g_dbs = d;
    db_release(d, 1);
    return rc;
  }
  d->dev = st.st_dev;
  d->ino = st.st_ino;
  d->open = 1;
  d->next = g_dbs;
  g_dbs = d;
  *out = d;
  return 0;
}

int sink_sqlite_open(const sink_opts *o, const char *path, const dbx_schema *schema, sink **out,
                     dbx_err *err) {
  sqlite_sink *s = calloc(1, sizeof *s);
  if (!s) return DBX_ENOMEM;
  s->path = strdup(path);
  if (!s->path) { free(s); return DBX_ENOMEM; }
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    free(s->path);
    free(s);
    return dbx_seterr(err, DBX_EISDIR, "sqlite:%s: is a directory; give a database file", path);
  }
  pthread_mutex_lock(&g_mu);
  int rc = db_get(path, &s->d, err);
  pthread_mutex_unlock(&g_mu);
  if (rc) {
    free(s->path);
    free(s);
    return rc;
  }
  s->db = s->d->db;
  /* Table and column names are identifiers from the user and from data (class labels):
   * every one is quoted with %w, which doubles any '"' inside. */
  sqlite3_str *q;
  if (!o->append) {
    q = sqlite3_str_new(s->db);
    sqlite3_str_appendf(q, "DROP TABLE IF EXISTS \"%w\"", o->table);
    if ((rc = run_one(s, q, NULL, "cannot replace the table", err))) goto fail;
  }
  if (o->append && sink_job_id()[0]) {
    if (!(s->table = strdup(o->table))) {
      rc = DBX_ENOMEM;
      goto fail;
    }
    if ((rc = exec(s, "CREATE TABLE IF NOT EXISTS dbatch_commits (job_id TEXT NOT NULL, table_name TEXT NOT NULL, "
                      "rows INTEGER NOT NULL, committed_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, "
                      "PRIMARY KEY (job_id, table_name))", err)) ||
        (rc = commits_step(s, "SELECT 1 FROM dbatch_commits WHERE job_id = ?1 AND table_name = ?2", 0, &s->landed, err)))
      goto fail;
  }
  q = sqlite3_str_new(s->db);
  sqlite3_str_appendf(q, "CREATE TABLE IF NOT EXISTS \"%w\" (", o->table);
  for (uint32_t c = 0; c < schema->ncol; c++) {
    dbx_coltype t = schema->types[c];
    const char *ty = t == DBX_COL_TEXT ? "TEXT" : t == DBX_COL_INT ? "INTEGER" : t == DBX_COL_REAL ? "REAL" : "NUMERIC";
    sqlite3_str_appendf(q, "%s\"%w\" %s", c ? ", " : "", schema->names[c], ty);
  }
  sqlite3_str_appendall(q, ")");
  if ((rc = run_one(s, q, NULL, "cannot create the table", err))) goto fail;
  q = sqlite3_str_new(s->db);
  sqlite3_str_appendf(q, "INSERT INTO \"%w\" VALUES (", o->table);
  for (uint32_t c = 0; c < schema->ncol; c++) sqlite3_str_appendall(q, c ? ",?" : "?");
  sqlite3_str_appendall(q, ")");
  if ((rc = run_one(s, q, &s->ins, "cannot prepare insert (does the existing table have other columns?)", err)))
    goto fail;
  s->base.row = sqlite_row;
  s->base.commit = sqlite_commit;
  s->base.abort = sqlite_abort;
  *out = &s->base;
  return 0;
fail:
  sqlite_abort(&s->base);
  return rc;
}
