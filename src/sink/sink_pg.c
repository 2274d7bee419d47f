/* sink_pg.c -- rows into a PostgreSQL table (libpq): COPY in one transaction.
 *
 * Rows are formatted in COPY's text format into a spool file (unlinked, in $TMPDIR) while
 * the job runs, so the server sees nothing until the end and a commit can be sent again
 * from the spool after a lost connection. At the end, one transaction:
 *   replace: CREATE TABLE "schema"."dbatch_new_<random>" ...; COPY it; DROP TABLE IF EXISTS
 *            the target; ALTER TABLE ... RENAME TO the target: a failed or killed job
 *            leaves the old table as it was, and readers see the old rows or the new.
 *   append:  INSERT INTO "schema".dbatch_commits (job_id, table_name, ...) ON CONFLICT DO
 *            NOTHING; when it inserted nothing, an earlier commit of this same job already
 *            added these rows (its reply was lost, or the job was resumed): nothing more is
 *            done. Otherwise CREATE TABLE IF NOT EXISTS, then COPY into it.
 * Several outputs of one job into the same database (predictions and metrics) share one
 * connection and one transaction: the last to be prepared loads them all, the last to be
 * committed commits them all, an abort of any rolls them all back (as sink_sqlite.c does).
 *
 * Everything sent as SQL text is constant or an identifier quoted here ("" doubled); values
 * go through COPY or as parameters. Column types: text, bigint, double precision. */
#define _GNU_SOURCE  /* vasprintf, mkostemp */
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/journal.h"
#include "sink/sink_internal.h"
#include "util/log.h"

#define PG_NAME_MAX 63  /* NAMEDATALEN - 1: longer identifiers are cut by the server */
#define PG_TRIES 3      /* attempts of a transaction whose connection was lost */
#define PG_RACES 16     /* creations of a table lost to another job at the same moment */

typedef struct pg_db pg_db;

typedef struct pg_part {  /* one output's rows, owned by its pg_db until it is released */
  struct pg_part *next;
  char *schema_q, *table_q;  /* quoted identifiers; schema_q NULL: the search path's */
  char *table_name;          /* as given (recorded in dbatch_commits) */
  char *tmp_q;               /* replacing: the new table's quoted name, until swapped in */
  char *cols;                /* "col" type, ... */
  char *col_list;            /* "col", ... */
  int append;
  int spool;                 /* COPY text rows; -1 when closed */
  uint64_t rows;
} pg_part;

struct pg_db {
  pg_db *next;
  char *dest;
  char where[300];  /* user@host:port/db, for messages (never the password) */
  PGconn *conn;
  pg_part *parts;
  int nsinks, prepared, committed, done;  /* sinks on it; of those prepared, committed, done */
  int loaded;       /* the transaction holds every part's rows (not yet committed) */
  char sqlstate[6]; /* of the last error */
  int failed;
};

static pg_db *g_dbs;

typedef struct pg_sink {
  sink base;
  pg_db *d;
  pg_part *p;
  int prepared;
  dbx_buf line;
  FILE *fp;  /* buffered writes to p->spool */
} pg_sink;

/* ---- names ---------------------------------------------------------------------------- */

/* "name" with every '"' doubled; NULL when out of memory. */
static char *quote_ident(const char *s, size_t n) {
  char *q = malloc(2 * n + 3), *w = q;
  if (!q) return NULL;
  *w++ = '"';
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"') *w++ = '"';
    *w++ = s[i];
  }
  *w++ = '"';
  *w = 0;
  return q;
}

static int check_name(const char *what, const char *s, size_t n, dbx_err *err) {
  if (n == 0) return dbx_seterr(err, DBX_EUSAGE, "%s: empty name", what);
  if (n > PG_NAME_MAX)
    return dbx_seterr(err, DBX_EUSAGE, "%s '%.*s': longer than PostgreSQL's %d bytes (the server would cut it)", what,
                      (int)n, s, PG_NAME_MAX);
  return 0;
}

/* --table NAME or SCHEMA.NAME. */
static int split_table(const char *t, char **schema_q, char **table_q, dbx_err *err) {
  *schema_q = *table_q = NULL;
  if (!t) return dbx_seterr(err, DBX_EUSAGE, "--table: a table name is needed");
  const char *dot = strchr(t, '.');
  int rc = 0;
  if (dot && strchr(dot + 1, '.'))
    return dbx_seterr(err, DBX_EUSAGE, "--table '%s': give NAME or SCHEMA.NAME", t);
  if (dot && (rc = check_name("--table schema", t, (size_t)(dot - t), err))) return rc;
  const char *name = dot ? dot + 1 : t;
  if ((rc = check_name("--table", name, strlen(name), err))) return rc;
  if (!strcmp(name, "dbatch_commits") || !strcmp(name, "nb_model"))
    return dbx_seterr(err, DBX_EUSAGE, "--table %s: the name is dbatch's own (%s); choose another", t,
                      !strcmp(name, "nb_model") ? "where nb keeps its model" : "where --append records its commits");
  if (dot && !(*schema_q = quote_ident(t, (size_t)(dot - t)))) return DBX_ENOMEM;
  if (!(*table_q = quote_ident(name, strlen(name)))) {
    free(*schema_q);
    *schema_q = NULL;
    return DBX_ENOMEM;
  }
  return 0;
}

/* ---- connections ---------------------------------------------------------------------- */

/* libpq's message as one line: "connection to server ... failed: FATAL:  x\n" -> "FATAL: x";
 * lines joined with "; ", control bytes shown as '?', and never a URI quoted back (it may
 * hold a password). */
static void one_line(const char *m, char *out, size_t cap) {
  if (!m) m = "";
  const char *f = strstr(m, " failed: ");
  if (f && !strncmp(m, "connection to server", 20)) m = f + 9;
  const char *uri = strstr(m, " in URI: ");
  size_t end = uri ? (size_t)(uri - m) : strlen(m);
  size_t k = 0;
  int space = 0, nl = 0;
  for (size_t i = 0; i < end && k + 3 < cap; i++) {
    unsigned char c = (unsigned char)m[i];
    if (isspace(c)) {
      space = 1;
      /* A new line starts a new sentence ("; "), unless it goes on in lower case after a tab
       * ("terminated abnormally\n\tbefore or while processing"). */
      nl |= c == '\n' && !(m[i + 1] == '\t' && m[i + 2] >= 'a' && m[i + 2] <= 'z');
      continue;
    }
    if ((space || nl) && k) {
      if (nl && out[k - 1] != ';' && out[k - 1] != '.') out[k++] = ';';
      out[k++] = ' ';
    }
    space = nl = 0;
    out[k++] = (char)(c < 0x20 || c == 0x7f ? '?' : c);
  }
  out[k] = 0;
}

static void notice(void *arg, const char *msg) {
  (void)arg;
  char m[400];
  one_line(msg, m, sizeof m);
  log_debug("postgresql: %s", m);
}

static void describe(pg_db *d, PGconn *c) {
  const char *h = c ? PQhost(c) : NULL, *p = c ? PQport(c) : NULL, *db = c ? PQdb(c) : NULL, *u = c ? PQuser(c) : NULL;
  snprintf(d->where, sizeof d->where, "postgresql server %s%s%s, database %s%s%s", h && *h ? h : "(default)",
           p && *p ? ":" : "", p && *p ? p : "", db && *db ? db : "(default)", u && *u ? ", user " : "", u && *u ? u : "");
}

/* Connect to dest. Failures name the server and database and say why, in one line. */
static int db_connect(pg_db *d, dbx_err *err) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(d->dest, &perr);
  if (!opts) {
    char m[300];
    one_line(perr ? perr : "out of memory", m, sizeof m);
    char *q = strchr(m, '"');  /* libpq quotes the part it could not read: maybe a password */
    if (q) *(q > m && q[-1] == ' ' ? q - 1 : q) = 0;
    size_t k = strlen(m);
    while (k && (m[k - 1] == ':' || m[k - 1] == ' ')) m[--k] = 0;
    PQfreemem(perr);
    return dbx_seterr(err, DBX_EDB, "--out postgresql: not a valid connection URI: %s; nothing was written", m);
  }
  PQconninfoFree(opts);
  /* dbatch's defaults first, so that the URI (expanded in place of dbname) and the PG*
   * variables override them: a name in pg_stat_activity, no waiting for ever on a server
   * that is gone (TCP keepalives, unacknowledged data given up after 60 s). Text is UTF-8
   * whatever the user says: the rows are. */
  const char *keys[] = {"application_name", "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                        "keepalives_count", "tcp_user_timeout", "dbname", "client_encoding", NULL};
  const char *vals[] = {"dbatch", "10", "1", "10", "5", "3", "60000", d->dest, "UTF8", NULL};
  if (getenv("PGCONNECT_TIMEOUT")) vals[1] = getenv("PGCONNECT_TIMEOUT");
  if (getenv("PGAPPNAME")) vals[0] = getenv("PGAPPNAME");
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  describe(d, c);
  if (!c || PQstatus(c) != CONNECTION_OK) {
    char m[600];
    one_line(c ? PQerrorMessage(c) : "out of memory", m, sizeof m);
    PQfinish(c);
    return dbx_seterr(err, DBX_EDB, "%s: cannot connect: %s; nothing was written", d->where, m);
  }
  /* The server's notices and warnings ("terminating connection due to immediate shutdown")
   * go to the debug log, not raw onto standard error: what matters is in the error. */
  PQsetNoticeProcessor(c, notice, NULL);
  d->conn = c;
  return 0;
}

static void db_disconnect(pg_db *d) {
  PQfinish(d->conn);
  d->conn = NULL;
}

/* Did the connection go (a server stopped or killed, a network cut)? Then the transaction
 * may be tried again on a new one. */
static int conn_lost(pg_db *d, const PGresult *r) {
  if (!d->conn || PQstatus(d->conn) == CONNECTION_BAD) return 1;
  const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  return st && (!strncmp(st, "08", 2) || !strcmp(st, "57P01") || !strcmp(st, "57P02") || !strcmp(st, "57P03"));
}

static int res_err(pg_db *d, PGresult *r, const char *what, dbx_err *err) {
  char m[600], det[400] = "";
  const char *prim = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  const char *detail = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL) : NULL;
  const char *ctx = r ? PQresultErrorField(r, PG_DIAG_CONTEXT) : NULL;
  const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  snprintf(d->sqlstate, sizeof d->sqlstate, "%s", st ? st : "");
  if (!detail && ctx && !strncmp(ctx, "COPY ", 5)) detail = ctx;  /* "COPY t, line 5, column count: ..." */
  one_line(prim ? prim : r && PQresultErrorMessage(r)[0] ? PQresultErrorMessage(r) : PQerrorMessage(d->conn), m,
           sizeof m);
  if (detail) one_line(detail, det, sizeof det);
  int rc = dbx_seterr(err, DBX_EDB, "%s: %s: %s%s%s%s; nothing was written", d->where, what, m, det[0] ? " (" : "",
                      det, det[0] ? ")" : "");
  PQclear(r);
  return rc;
}

/* Run one statement of SQL built here (constants and quoted identifiers only). */
static int run_sql(pg_db *d, const char *sql, const char *what, dbx_err *err) {
  PGresult *r = PQexec(d->conn, sql);
  if (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK) {
    PQclear(r);
    return 0;
  }
  return res_err(d, r, what, err);
}

static char *fmt_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_sql(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) < 0) s = NULL;
  va_end(ap);
  return s;
}

/* "schema".name or name (on the search path). */
static char *qualified(const pg_part *p, const char *name_q) {
  return fmt_sql("%s%s%s", p->schema_q ? p->schema_q : "", p->schema_q ? "." : "", name_q);
}

/* ---- one part's rows into the transaction --------------------------------------------- */

/* A table named without a schema is the one the search path finds (an existing table of
 * that name, wherever it is), else a new one in the first schema of the search path, as
 * CREATE TABLE would put it. Settled once, so every statement names the same table. */
static int resolve_schema(pg_db *d, pg_part *p, dbx_err *err) {
  if (p->schema_q) return 0;
  const char *params[1] = {p->table_q};
  PGresult *r = PQexecParams(d->conn, "SELECT coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON "
                             "n.oid = c.relnamespace WHERE c.oid = to_regclass($1)), current_schema())",
                             1, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) return res_err(d, r, "cannot find the table's schema", err);
  if (PQgetisnull(r, 0, 0)) {
    PQclear(r);
    return dbx_seterr(err, DBX_EDB, "%s: --table %s: no schema of the search path exists to create it in (name one: "
                      "SCHEMA.%s); nothing was written", d->where, p->table_name, p->table_name);
  }
  const char *nsp = PQgetvalue(r, 0, 0);
  p->schema_q = quote_ident(nsp, strlen(nsp));
  PQclear(r);
  return p->schema_q ? 0 : DBX_ENOMEM;
}

static int copy_spool(pg_db *d, pg_part *p, const char *target, dbx_err *err) {
  char *sql = fmt_sql("COPY %s (%s) FROM STDIN", target, p->col_list);
  if (!sql) return DBX_ENOMEM;
  PGresult *r = PQexec(d->conn, sql);
  free(sql);
  if (PQresultStatus(r) != PGRES_COPY_IN) return res_err(d, r, "cannot start COPY", err);
  PQclear(r);
  if (lseek(p->spool, 0, SEEK_SET) != 0) return dbx_seterr(err, DBX_EIO, "%s: spool file: %s", d->where, strerror(errno));
  static char buf[1 << 18];
  int rc = 0;
  for (;;) {
    ssize_t k = read(p->spool, buf, sizeof buf);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      rc = dbx_seterr(err, DBX_EIO, "%s: reading the spool file: %s", d->where, strerror(errno));
      PQputCopyEnd(d->conn, "dbatch could not read its spool file");
      break;
    }
    if (k == 0) break;
    if (PQputCopyData(d->conn, buf, (int)k) != 1) break;  /* the result below says why */
  }
  if (!rc) PQputCopyEnd(d->conn, NULL);
  int bad = 0;
  while ((r = PQgetResult(d->conn)) != NULL) {
    if (PQresultStatus(r) != PGRES_COMMAND_OK && !bad && !rc) {
      bad = 1;
      rc = res_err(d, r, "COPY failed", err);
      continue;
    }
    PQclear(r);
  }
  if (!rc && PQstatus(d->conn) == CONNECTION_BAD)
    rc = dbx_seterr(err, DBX_EDB, "%s: COPY failed: the connection was lost", d->where);
  return rc;
}

static int load_part(pg_db *d, pg_part *p, dbx_err *err) {
  int rc = 0;
  char *target = qualified(p, p->table_q), *sql = NULL, *tmp = NULL;
  if (!target) return DBX_ENOMEM;
  if (p->append) {
    char *commits = qualified(p, "dbatch_commits");
    sql = commits ? fmt_sql("CREATE TABLE IF NOT EXISTS %s (job_id text NOT NULL, table_name text NOT NULL, "
                            "rows bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(), "
                            "PRIMARY KEY (job_id, table_name))", commits)
                  : NULL;
    rc = sql ? run_sql(d, sql, "cannot create dbatch_commits", err) : DBX_ENOMEM;
    free(sql);
    sql = NULL;
    if (!rc) {
      sql = fmt_sql("INSERT INTO %s (job_id, table_name, rows) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", commits);
      char nrows[32];
      snprintf(nrows, sizeof nrows, "%llu", (unsigned long long)p->rows);
      const char *params[3] = {sink_job_id(), p->table_name, nrows};
      PGresult *r = sql ? PQexecParams(d->conn, sql, 3, NULL, params, NULL, NULL, 0) : NULL;
      if (!sql) rc = DBX_ENOMEM;
      else if (PQresultStatus(r) != PGRES_COMMAND_OK) rc = res_err(d, r, "cannot record the commit in dbatch_commits", err);
      else {
        int fresh = strcmp(PQcmdTuples(r), "0") != 0;
        PQclear(r);
        if (!fresh) {
          log_info("%s: table %s already has the rows of this job (job %s); not adding them again", d->where,
                   p->table_name, sink_job_id());
          free(commits);
          free(target);
          free(sql);
          return 0;
        }
      }
    }
    free(commits);
    free(sql);
    sql = NULL;
    if (!rc) {
      sql = fmt_sql("CREATE TABLE IF NOT EXISTS %s (%s)", target, p->cols);
      rc = sql ? run_sql(d, sql, "cannot create the table", err) : DBX_ENOMEM;
    }
    if (!rc) rc = copy_spool(d, p, target, err);
  } else {
    char rnd[40], name[64];
    journal_new_id(rnd, sizeof rnd);
    snprintf(name, sizeof name, "dbatch_new_%.16s", rnd);
    free(p->tmp_q);
    p->tmp_q = quote_ident(name, strlen(name));
    tmp = p->tmp_q ? qualified(p, p->tmp_q) : NULL;
    sql = tmp ? fmt_sql("CREATE TABLE %s (%s)", tmp, p->cols) : NULL;
    rc = sql ? run_sql(d, sql, "cannot create the new table", err) : DBX_ENOMEM;
    if (!rc) rc = copy_spool(d, p, tmp, err);
  }
  free(sql);
  free(tmp);
  free(target);
  return rc;
}

/* Put a replacing part's new table in place of the old one. Done for every part after all
 * rows are in, just before COMMIT: the old table is locked (readers wait) only for that. */
static int swap_part(pg_db *d, pg_part *p, dbx_err *err) {
  if (p->append) return 0;
  char *target = qualified(p, p->table_q), *tmp = target ? qualified(p, p->tmp_q) : NULL;
  char *drop = tmp ? fmt_sql("DROP TABLE IF EXISTS %s", target) : NULL;
  char *ren = drop ? fmt_sql("ALTER TABLE %s RENAME TO %s", tmp, p->table_q) : NULL;
  int rc = ren ? run_sql(d, drop, "cannot replace the table", err) : DBX_ENOMEM;
  if (!rc) rc = run_sql(d, ren, "cannot rename the new table into place", err);
  free(ren);
  free(drop);
  free(tmp);
  free(target);
  return rc;
}

/* A followed job's progress, in the transaction of its rows (sink_set_follow_note), next to
 * the first output's table. */
static int follow_note(pg_db *d, dbx_err *err) {
  const char *job, *offsets;
  uint64_t mb;
  if (!d->parts || !sink_follow_note(&job, &mb, &offsets)) return 0;
  char *t = qualified(d->parts, "dbatch_follow");
  char *sql = t ? fmt_sql("CREATE TABLE IF NOT EXISTS %s (job text PRIMARY KEY, micro_batch bigint NOT NULL, offsets "
                          "text NOT NULL, committed_at timestamptz NOT NULL DEFAULT now())", t)
                : NULL;
  int rc = sql ? run_sql(d, sql, "cannot create dbatch_follow", err) : DBX_ENOMEM;
  free(sql);
  sql = NULL;
  if (!rc && !(sql = fmt_sql("INSERT INTO %s (job, micro_batch, offsets) VALUES ($1, $2, $3) ON CONFLICT (job) DO "
                             "UPDATE SET micro_batch = EXCLUDED.micro_batch, offsets = EXCLUDED.offsets, "
                             "committed_at = now()", t)))
    rc = DBX_ENOMEM;
  if (!rc) {
    char mbs[32];
    snprintf(mbs, sizeof mbs, "%llu", (unsigned long long)mb);
    const char *params[3] = {job, mbs, offsets};
    PGresult *r = PQexecParams(d->conn, sql, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) rc = res_err(d, r, "cannot record the followed input in dbatch_follow", err);
    else PQclear(r);
  }
  free(sql);
  free(t);
  return rc;
}

/* What went wrong, without the server's name in front or "nothing was written" behind:
 * for a warning that says what happens next. */
static void reason(const pg_db *d, const char *msg, char *out, size_t cap) {
  size_t w = strlen(d->where);
  if (!strncmp(msg, d->where, w) && !strncmp(msg + w, ": ", 2)) msg += w + 2;
  if (!cap) return;
  size_t n = strlen(msg);  /* cut to fit (not snprintf: -O3 warns of the truncation it means) */
  if (n >= cap) n = cap - 1;
  memcpy(out, msg, n);
  out[n] = 0;
  char *tail = strstr(out, "; nothing was written");
  if (tail) *tail = 0;
}

/* The whole transaction short of COMMIT, on a fresh connection when the last one was lost.
 * A connection lost on the way (a restarted server, a cut network) is tried again from the
 * spools, PG_TRIES times in all. */
static int db_load(pg_db *d, dbx_err *err) {
  int rc = 0;
  char why[400] = "", lost[400] = "";
  int races = 0;
  for (int attempt = 1; attempt <= PG_TRIES; attempt++) {
    if (attempt > 1) {
      log_warn("%s: %s; trying again (%d of %d)", d->where, why, attempt, PG_TRIES);
      struct timespec ts = {attempt - 1, 0};
      nanosleep(&ts, NULL);
    }
    if (d->conn && PQstatus(d->conn) != CONNECTION_OK) db_disconnect(d);
    if (!d->conn && (rc = db_connect(d, err))) {
      if (attempt == 1) return rc;
      reason(d, err->msg, why, sizeof why);
      if (attempt < PG_TRIES) continue;  /* a server restarting: give it the next attempt */
      return dbx_seterr(err, DBX_EDB, "%s: the connection was lost (%s) and could not be made again (%s); nothing "
                        "was written", d->where, lost, why);
    }
    rc = run_sql(d, "BEGIN", "cannot begin a transaction", err);
    for (pg_part *p = d->parts; !rc && p; p = p->next) rc = resolve_schema(d, p, err);
    for (pg_part *p = d->parts; !rc && p; p = p->next)
      for (pg_part *q = p->next; !rc && q; q = q->next)
        if (!strcmp(p->schema_q, q->schema_q) && !strcmp(p->table_q, q->table_q))
          rc = dbx_seterr(err, DBX_EDB, "%s: two outputs of this job go to table %s.%s; nothing was written", d->where,
                          p->schema_q, p->table_q);
    for (pg_part *p = d->parts; !rc && p; p = p->next) rc = load_part(d, p, err);
    for (pg_part *p = d->parts; !rc && p; p = p->next) rc = swap_part(d, p, err);
    if (!rc) rc = follow_note(d, err);
    if (!rc) {
      d->loaded = 1;
      return 0;
    }
    if (!conn_lost(d, NULL)) {
      PQclear(PQexec(d->conn, "ROLLBACK"));
      /* Another job created dbatch_commits or the table at the same moment (its CREATE
       * committed first; PostgreSQL says so as a unique violation, a duplicate table or, for
       * the table's row type, a duplicate object: "type ... already exists", 42710): everything
       * again, finding them there. Not a lost connection, so not one of PG_TRIES: each race
       * is lost to a job that then has its table. */
      if (races < PG_RACES && (!strcmp(d->sqlstate, "23505") || !strcmp(d->sqlstate, "42P07") ||
                               !strcmp(d->sqlstate, "42710"))) {
        races++;
        attempt--;
        struct timespec ts = {0, 20000000L * races};
        nanosleep(&ts, NULL);
        continue;
      }
      return rc;
    }
    reason(d, err->msg, why, sizeof why);
    snprintf(lost, sizeof lost, "%s", why);
    db_disconnect(d);
  }
  return rc;
}

/* COMMIT. When the connection goes while committing, the outcome is unknown: a new
 * connection loads everything again and commits; rows appended are not added twice, as
 * dbatch_commits remembers this job. */
static int db_commit(pg_db *d, dbx_err *err) {
  for (int attempt = 1;; attempt++) {
    PGresult *r = PQexec(d->conn, "COMMIT");
    if (PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      return 0;
    }
    int lost = conn_lost(d, r);
    char why[400];
    int rc = res_err(d, r, "COMMIT failed", err);
    reason(d, err->msg, why, sizeof why);
    if (!lost) return rc;
    if (attempt >= PG_TRIES)
      return dbx_seterr(err, DBX_EDB, "%s: the connection was lost while committing, %d times (%s); the table is "
                        "as it was, unless the last commit completed before the connection went", d->where, PG_TRIES, why);
    log_warn("%s: the connection was lost while committing (%s); whether the commit happened is not known: "
             "connecting again to do it once (%d of %d)", d->where, why, attempt + 1, PG_TRIES);
    d->loaded = 0;
    db_disconnect(d);
    if ((rc = db_load(d, err))) return rc;
  }
}

/* ---- the sink ------------------------------------------------------------------------- */

static void part_free(pg_part *p) {
  if (p->spool >= 0) close(p->spool);
  free(p->schema_q);
  free(p->table_q);
  free(p->tmp_q);
  free(p->table_name);
  free(p->cols);
  free(p->col_list);
  free(p);
}

static void db_release(pg_db *d) {
  for (pg_db **q = &g_dbs; *q; q = &(*q)->next)
    if (*q == d) {
      *q = d->next;
      break;
    }
  if (d->conn && d->loaded && PQstatus(d->conn) == CONNECTION_OK) PQclear(PQexec(d->conn, "ROLLBACK"));
  db_disconnect(d);
  while (d->parts) {
    pg_part *p = d->parts;
    d->parts = p->next;
    part_free(p);
  }
  free(d->dest);
  free(d);
}

/* Text for COPY's text format: \ tab newline CR escaped; NUL and invalid UTF-8 refused, as
 * PostgreSQL would refuse them (a text column holds UTF-8 without NUL). */
static int put_text(dbx_buf *b, const char *t, size_t n, size_t *bad) {
  size_t run = 0;
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)t[i];
    const char *esc = NULL;
    size_t len = 1;
    if (c == '\\') esc = "\\\\";
    else if (c == '\t') esc = "\\t";
    else if (c == '\n') esc = "\\n";
    else if (c == '\r') esc = "\\r";
    else if (c == 0 || c >= 0x80) {
      uint32_t cp = 0;
      if (c == 0) len = 0;
      else if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
      else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
      else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
      else len = 0;
      for (size_t k = 1; len && k < len; k++) {
        if (i + k >= n || ((unsigned char)t[i + k] & 0xc0) != 0x80) len = 0;
        else cp = (cp << 6) | ((unsigned char)t[i + k] & 0x3f);
      }
      if (len && ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))))
        len = 0;
      if (!len) {
        *bad = i;
        return DBX_EINVAL;
      }
      i += len;
      continue;
    }
    if (esc) {
      if (dbx_buf_append(b, t + run, i - run) || dbx_buf_append(b, esc, 2)) return DBX_ENOMEM;
      run = i + 1;
    }
    i += len;
  }
  return dbx_buf_append(b, t + run, n - run) ? DBX_ENOMEM : 0;
}

static int put_double(dbx_buf *b, double v) {
  char t[40];
  int k = isnan(v) ? snprintf(t, sizeof t, "NaN") : isinf(v) ? snprintf(t, sizeof t, v > 0 ? "Infinity" : "-Infinity")
                                                            : snprintf(t, sizeof t, "%.17g", v);
  return dbx_buf_append(b, t, (size_t)k);
}

static int put_int(dbx_buf *b, int64_t v) {
  char t[24];
  int k = snprintf(t, sizeof t, "%lld", (long long)v);
  return dbx_buf_append(b, t, (size_t)k);
}

int sink_pg_format_row(dbx_buf *b, const dbx_schema *sc, const dbx_value *row, uint64_t rowno, const char *where,
                       dbx_err *err) {
  int rc = 0;
  for (uint32_t c = 0; c < sc->ncol && !rc; c++) {
    if (c && dbx_buf_append(b, "\t", 1)) return DBX_ENOMEM;
    const dbx_value *v = &row[c];
    size_t bad = 0;
    switch (sc->types[c]) {
    case DBX_COL_TEXT:
      rc = v->s ? put_text(b, v->s, v->n, &bad) : dbx_buf_append(b, "\\N", 2);
      if (rc == DBX_EINVAL)
        return dbx_seterr(err, DBX_EDB, "%s: row %llu, column %s: %s at byte %zu; PostgreSQL text holds UTF-8 "
                          "without NUL bytes (write a file instead); nothing was written", where,
                          (unsigned long long)rowno, sc->names[c], v->s[bad] ? "invalid UTF-8" : "a NUL byte", bad + 1);
      break;
    case DBX_COL_INT: rc = put_int(b, v->i); break;
    case DBX_COL_REAL: rc = put_double(b, v->d); break;
    case DBX_COL_NUM:
      rc = v->n == DBX_NUM_INT ? put_int(b, v->i) : v->n == DBX_NUM_REAL ? put_double(b, v->d) : dbx_buf_append(b, "\\N", 2);
      break;
    }
  }
  if (!rc && dbx_buf_append(b, "\n", 1)) rc = DBX_ENOMEM;
  if (rc) return dbx_seterr(err, DBX_ENOMEM, "%s: out of memory formatting a row", where);
  return 0;
}

static int pg_row(sink *sb, const dbx_value *row, dbx_err *err) {
  pg_sink *s = (pg_sink *)sb;
  s->line.len = 0;
  int rc = sink_pg_format_row(&s->line, sb->schema, row, s->p->rows + 1, s->d->where, err);
  if (rc) return rc;
  if (fwrite(s->line.data, 1, s->line.len, s->fp) != s->line.len)
    return dbx_seterr(err, errno == ENOSPC ? DBX_ENOSPC : DBX_EIO, "%s: writing the spool file in %s: %s; nothing "
                      "was written", s->d->where, getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", strerror(errno));
  s->p->rows++;
  return 0;
}

static void pg_free(pg_sink *s) {
  if (s->fp) fclose(s->fp);  /* the stream's own descriptor: the part keeps its own */
  dbx_buf_free(&s->line);
  free(s);
}

/* The spool written out; when this is the last output on the database to get here, the
 * transaction is loaded with every one's rows. */
static int pg_prepare(sink *sb, dbx_err *err) {
  pg_sink *s = (pg_sink *)sb;
  pg_db *d = s->d;
  if (s->prepared) return 0;
  if (d->failed)
    return dbx_seterr(err, DBX_EDB, "%s: another output into the same database failed; nothing was written", d->where);
  if (fflush(s->fp) != 0 || ferror(s->fp))
    return dbx_seterr(err, DBX_EIO, "%s: writing the spool file: %s; nothing was written", d->where, strerror(errno));
  s->prepared = 1;
  if (++d->prepared < d->nsinks) return 0;
  int rc = db_load(d, err);
  if (rc) d->failed = 1;
  return rc;
}

/* One sink done (committed or aborted); the database goes with the last. */
static void pg_done(pg_sink *s) {
  pg_db *d = s->d;
  if (++d->done == d->nsinks) db_release(d);
  pg_free(s);
}

static int pg_commit(sink *sb, dbx_err *err) {
  pg_sink *s = (pg_sink *)sb;
  pg_db *d = s->d;
  int rc = s->prepared ? 0 : pg_prepare(sb, err);
  if (!rc && d->failed)
    rc = dbx_seterr(err, DBX_EDB, "%s: another output into the same database failed; nothing was written", d->where);
  if (!rc && ++d->committed == d->nsinks) {  /* the last one: commit them all */
    if (!d->loaded) rc = db_load(d, err);
    if (!rc) rc = db_commit(d, err);
    if (!rc) d->loaded = 0;
  }
  if (rc) d->failed = 1;
  pg_done(s);
  return rc;
}

static void pg_abort(sink *sb) {
  pg_sink *s = (pg_sink *)sb;
  pg_db *d = s->d;
  d->failed = 1;
  if (d->conn && d->loaded && PQstatus(d->conn) == CONNECTION_OK) PQclear(PQexec(d->conn, "ROLLBACK"));
  d->loaded = 0;
  pg_done(s);
}

int sink_pg_check(const sink_opts *o, int probe, dbx_err *err) {
  char *sq, *tq;
  int rc = split_table(o->table, &sq, &tq, err);
  free(sq);
  free(tq);
  if (rc || !probe) return rc;
  /* Connect now, before any work: a wrong password or a missing database is found in a
   * second, not after the job. */
  pg_db d;
  memset(&d, 0, sizeof d);
  d.dest = (char *)o->dest;
  rc = db_connect(&d, err);
  if (rc) {
    char m[DBX_ERR_LEN];
    snprintf(m, sizeof m, "%s", err->msg);
    size_t k = strlen(m);
    const char *tail = "; nothing was written";
    if (k > strlen(tail) && !strcmp(m + k - strlen(tail), tail)) m[k - strlen(tail)] = 0;
    return dbx_seterr(err, DBX_EDB, "%s; nothing was run", m);
  }
  if (o->table && strchr(o->table, '.')) {
    /* A schema that is not there is found now too (the job would fail at its very end). */
    char sch[PG_NAME_MAX + 1];
    snprintf(sch, sizeof sch, "%.*s", (int)(strchr(o->table, '.') - o->table), o->table);
    const char *params[1] = {sch};
    PGresult *r = PQexecParams(d.conn, "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) rc = res_err(&d, r, "cannot look up the schema", err);
    else if (PQntuples(r) == 0) rc = dbx_seterr(err, DBX_EDB, "%s: --table %s: there is no schema %s (CREATE SCHEMA "
                                                   "it first); nothing was run", d.where, o->table, sch);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) PQclear(r);
  }
  db_disconnect(&d);
  return rc;
}

/* A spool file nobody else can see: created in $TMPDIR (or /tmp) and unlinked at once. */
static int spool_open(const char *where, int *fd, dbx_err *err) {
  const char *dir = getenv("TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  char path[4096];
  snprintf(path, sizeof path, "%s/dbatch-pg-spool.XXXXXX", dir);
  *fd = mkostemp(path, O_CLOEXEC);
  if (*fd < 0)
    return dbx_seterr(err, DBX_EIO, "%s: cannot create a spool file in %s: %s (set TMPDIR)", where, dir, strerror(errno));
  unlink(path);
  return 0;
}

int sink_pg_open(const sink_opts *o, const dbx_schema *schema, sink **out, dbx_err *err) {
  pg_sink *s = calloc(1, sizeof *s);
  pg_part *p = calloc(1, sizeof *p);
  if (!s || !p) {
    free(s);
    free(p);
    return DBX_ENOMEM;
  }
  p->spool = -1;
  int rc = split_table(o->table, &p->schema_q, &p->table_q, err);
  if (rc) {
    part_free(p);
    free(s);
    return rc;
  }
  p->append = o->append;
  dbx_buf cols = {0}, list = {0};
  for (uint32_t c = 0; c < schema->ncol && !rc; c++) {
    const char *nm = schema->names[c];
    if ((rc = check_name("column", nm, strlen(nm), err))) {
      rc = err->code = DBX_EDB;  /* found after the work (labels): the job fails, exit 1 */
      break;
    }
    for (uint32_t k = 0; k < c && !rc; k++)
      if (!strcmp(schema->names[k], nm)) rc = dbx_seterr(err, DBX_EUSAGE, "column '%s' appears twice", nm);
    char *q = rc ? NULL : quote_ident(nm, strlen(nm));
    dbx_coltype t = schema->types[c];
    const char *ty = t == DBX_COL_TEXT ? "text" : t == DBX_COL_INT ? "bigint" : "double precision";
    if (!rc && (!q || (c && (dbx_buf_append(&cols, ", ", 2) || dbx_buf_append(&list, ", ", 2))) ||
                dbx_buf_append(&cols, q, strlen(q)) || dbx_buf_append(&cols, " ", 1) ||
                dbx_buf_append(&cols, ty, strlen(ty)) || dbx_buf_append(&list, q, strlen(q))))
      rc = DBX_ENOMEM;
    free(q);
  }
  if (!rc && (dbx_buf_append(&cols, "", 1) || dbx_buf_append(&list, "", 1))) rc = DBX_ENOMEM;
  if (!rc) {
    p->cols = cols.data;
    p->col_list = list.data;
    cols.data = list.data = NULL;
    if (!(p->table_name = strdup(o->table))) rc = DBX_ENOMEM;
  }
  dbx_buf_free(&cols);
  dbx_buf_free(&list);
  /* Join the database's transaction, or start one. */
  pg_db *d = NULL;
  if (!rc) {
    for (d = g_dbs; d; d = d->next)
      if (!strcmp(d->dest, o->dest) && !d->failed && !d->prepared) break;
    if (!d) {
      if (!(d = calloc(1, sizeof *d)) || !(d->dest = strdup(o->dest))) {
        free(d);
        d = NULL;
        rc = DBX_ENOMEM;
      } else {
        snprintf(d->where, sizeof d->where, "postgresql");
        d->next = g_dbs;
        g_dbs = d;
      }
    }
  }
  if (!rc) {
    for (pg_part *q = d->parts; q && !rc; q = q->next)
      if (!strcmp(q->table_name, p->table_name))
        rc = dbx_seterr(err, DBX_EUSAGE, "two outputs of this job go to table %s of the same database", p->table_name);
  }
  if (!rc) rc = spool_open(d->where, &p->spool, err);
  if (!rc) {
    int fd2 = dup(p->spool);
    if (fd2 < 0 || !(s->fp = fdopen(fd2, "w"))) {
      if (fd2 >= 0) close(fd2);
      rc = dbx_seterr(err, DBX_EIO, "cannot open the spool file: %s", strerror(errno));
    }
  }
  if (rc) {
    part_free(p);
    pg_free(s);
    if (d && !d->nsinks) db_release(d);
    return rc;
  }
  setvbuf(s->fp, NULL, _IOFBF, 1 << 18);
  /* Name the server in messages from the start (the probe connected with the same URI). */
  if (!strcmp(d->where, "postgresql")) {
    PQconninfoOption *opts = PQconninfoParse(o->dest, NULL);
    const char *h = NULL, *db = NULL, *port = NULL;
    for (PQconninfoOption *x = opts; x && x->keyword; x++) {
      if (!strcmp(x->keyword, "host") && x->val) h = x->val;
      if (!strcmp(x->keyword, "dbname") && x->val) db = x->val;
      if (!strcmp(x->keyword, "port") && x->val) port = x->val;
    }
    if (!h) h = getenv("PGHOST");
    if (!db) db = getenv("PGDATABASE");
    if (!port) port = getenv("PGPORT");
    snprintf(d->where, sizeof d->where, "postgresql server %s%s%s, database %s", h && *h ? h : "(default)",
             port && *port ? ":" : "", port && *port ? port : "", db && *db ? db : "(default)");
    PQconninfoFree(opts);
  }
  p->next = d->parts;
  d->parts = p;
  d->nsinks++;
  s->d = d;
  s->p = p;
  s->base.row = pg_row;
  s->base.prepare = pg_prepare;
  s->base.commit = pg_commit;
  s->base.abort = pg_abort;
  s->base.schema = schema;
  *out = &s->base;
  return 0;
}

/* ---- a model: one row of bytes ------------------------------------------------------- */

int sink_pg_model(const char *dest, int save, const char *tag, int version, const void *bytes, size_t n,
                  dbx_buf *out, dbx_err *err) {
  pg_db d;
  memset(&d, 0, sizeof d);
  d.dest = (char *)dest;
  int rc = db_connect(&d, err);
  if (rc) return rc;
  if (save) {
    char ver[16];
    snprintf(ver, sizeof ver, "%d", version);
    const char *vals[3] = {tag, ver, bytes};
    int lens[3] = {0, 0, (int)n}, fmts[3] = {0, 0, 1};
    if (n > 0x7fffffff) rc = dbx_seterr(err, DBX_EDB, "%s: a model of %zu bytes is too large for one value", d.where, n);
    if (!rc) rc = run_sql(&d, "BEGIN", "cannot begin a transaction", err);
    if (!rc) rc = run_sql(&d, "CREATE TABLE IF NOT EXISTS nb_model (id integer PRIMARY KEY CHECK (id = 1), "
                              "format text, version integer, model bytea)", "cannot create nb_model", err);
    if (!rc) {
      PGresult *r = PQexecParams(d.conn, "INSERT INTO nb_model VALUES (1, $1, $2::integer, $3) ON CONFLICT (id) DO "
                                 "UPDATE SET format = excluded.format, version = excluded.version, model = excluded.model",
                                 3, NULL, vals, lens, fmts, 0);
      if (PQresultStatus(r) != PGRES_COMMAND_OK) rc = res_err(&d, r, "cannot store the model", err);
      else PQclear(r);
    }
    if (!rc) rc = run_sql(&d, "COMMIT", "cannot commit the model", err);
  } else {
    PGresult *r = PQexecParams(d.conn, "SELECT model FROM nb_model WHERE id = 1", 0, NULL, NULL, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQgetisnull(r, 0, 0)) {
      const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      rc = dbx_seterr(err, DBX_EMODEL, "%s: no naive Bayes model stored there (%s)", d.where,
                      st && !strcmp(st, "42P01") ? "no table nb_model" : PQresultStatus(r) == PGRES_TUPLES_OK ? "nb_model is empty" : PQresultErrorMessage(r));
    } else if (dbx_buf_append(out, PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0))) {
      rc = DBX_ENOMEM;
    }
    PQclear(r);
  }
  db_disconnect(&d);
  return rc;
}
