/* sink_sqlite.c -- rows into a SQLite table in one transaction. The table is replaced unless
 * --append; a database file this sink created is removed again if the job fails. */
#include <ctype.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sink/sink_internal.h"

typedef struct sqlite_sink {
  sink base;
  sqlite3 *db;
  sqlite3_stmt *ins;
  char *path;
  int created;
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

static void sqlite_free(sqlite_sink *s, int remove_file) {
  sqlite3_finalize(s->ins);
  sqlite3_close(s->db);
  if (remove_file && s->created) {
    unlink(s->path);
    size_t n = strlen(s->path) + 16;
    char *j = malloc(n);
    if (j) {
      snprintf(j, n, "%s-journal", s->path);
      unlink(j);
      free(j);
    }
  }
  free(s->path);
  free(s);
}

static int db_err(sqlite_sink *s, dbx_err *err, const char *what) {
  return dbx_seterr(err, DBX_EDB, "sqlite:%s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

static int exec(sqlite_sink *s, const char *sql, dbx_err *err) {
  char *msg = NULL;
  if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    int rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: %s", s->path, msg ? msg : "error");
    sqlite3_free(msg);
    return rc;
  }
  return 0;
}

static int sqlite_row(sink *sb, const dbx_value *row, dbx_err *err) {
  sqlite_sink *s = (sqlite_sink *)sb;
  const dbx_schema *sc = sb->schema;
  for (uint32_t c = 0; c < sc->ncol; c++) {
    int i = (int)c + 1;
    switch (sc->types[c]) {
    case DBX_COL_TEXT: sqlite3_bind_text(s->ins, i, row[c].s, (int)row[c].n, SQLITE_STATIC); break;
    case DBX_COL_INT: sqlite3_bind_int64(s->ins, i, row[c].i); break;
    case DBX_COL_REAL: sqlite3_bind_double(s->ins, i, row[c].d); break;
    }
  }
  int rc = sqlite3_step(s->ins);
  sqlite3_reset(s->ins);
  if (rc != SQLITE_DONE) return db_err(s, err, "insert failed");
  return 0;
}

static int sqlite_commit(sink *sb, dbx_err *err) {
  sqlite_sink *s = (sqlite_sink *)sb;
  int rc = exec(s, "COMMIT", err);
  if (rc) exec(s, "ROLLBACK", NULL);
  sqlite_free(s, rc != 0);
  return rc;
}

static void sqlite_abort(sink *sb) {
  sqlite_sink *s = (sqlite_sink *)sb;
  exec(s, "ROLLBACK", NULL);
  sqlite_free(s, 1);
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
  s->created = access(path, F_OK) != 0;
  dbx_buf sql = {0};
  int rc;
  if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
    rc = db_err(s, err, "cannot open");
    goto fail;
  }
  sqlite3_busy_timeout(s->db, 10000);
  if ((rc = exec(s, "BEGIN IMMEDIATE", err))) goto fail;
  char head[256];
  if (!o->append) {
    snprintf(head, sizeof head, "DROP TABLE IF EXISTS \"%s\"", o->table);
    if ((rc = exec(s, head, err))) goto fail;
  }
  snprintf(head, sizeof head, "CREATE TABLE IF NOT EXISTS \"%s\" (", o->table);
  rc = dbx_buf_append(&sql, head, strlen(head));
  for (uint32_t c = 0; c < schema->ncol && !rc; c++) {
    char col[160];
    const char *ty = schema->types[c] == DBX_COL_TEXT ? "TEXT" : schema->types[c] == DBX_COL_INT ? "INTEGER" : "REAL";
    snprintf(col, sizeof col, "%s\"%s\" %s", c ? ", " : "", schema->names[c], ty);
    rc = dbx_buf_append(&sql, col, strlen(col));
  }
  if (!rc) rc = dbx_buf_append(&sql, ")", 2);
  if (rc) goto fail;
  if ((rc = exec(s, sql.data, err))) goto fail;
  sql.len = 0;
  snprintf(head, sizeof head, "INSERT INTO \"%s\" VALUES (", o->table);
  rc = dbx_buf_append(&sql, head, strlen(head));
  for (uint32_t c = 0; c < schema->ncol && !rc; c++) rc = dbx_buf_append(&sql, c ? ",?" : "?", c ? 2 : 1);
  if (!rc) rc = dbx_buf_append(&sql, ")", 2);
  if (rc) goto fail;
  if (sqlite3_prepare_v2(s->db, sql.data, -1, &s->ins, NULL) != SQLITE_OK) {
    rc = db_err(s, err, "cannot prepare insert (does the existing table have other columns?)");
    goto fail;
  }
  dbx_buf_free(&sql);
  s->base.row = sqlite_row;
  s->base.commit = sqlite_commit;
  s->base.abort = sqlite_abort;
  *out = &s->base;
  return 0;
fail:
  dbx_buf_free(&sql);
  if (s->db) exec(s, "ROLLBACK", NULL);
  sqlite_free(s, 1);
  return rc;
}
