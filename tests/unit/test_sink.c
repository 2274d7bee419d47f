/* test_sink.c -- each sink's format, atomic commit, abort, and write errors. */
#include "check.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include "sink/sink.h"

static const char *const names[] = {"word", "count", "score"};
static const dbx_coltype types[] = {DBX_COL_TEXT, DBX_COL_INT, DBX_COL_REAL};
static const dbx_schema schema = {3, names, types};

static int write_rows(const sink_opts *o, int commit) {
  sink *s;
  dbx_err err = {0, ""};
  int rc = sink_open(o, &schema, &s, &err);
  if (rc) return rc;
  const char *texts[] = {"plain", "tab\there", "quote\"comma,", "new\nline\\", "ünï"};
  for (int i = 0; i < 5; i++) {
    dbx_value row[3] = {{texts[i], strlen(texts[i]), 0, 0}, {NULL, 0, i - 1, 0}, {NULL, 0, 0, 0.1 * i}};
    assert_int_equal(sink_row(s, row, &err), 0);
  }
  if (!commit) { sink_abort(s); return 0; }
  return sink_commit(s, &err);
}

static void test_tsv_csv_jsonl(void **state) {
  const char *dir = test_tmpdir();
  char p[300];
  snprintf(p, sizeof p, "%s/out.tsv", dir);
  sink_opts o = {p, NULL, "t", 0, 0};
  assert_int_equal(write_rows(&o, 1), 0);
  char *got = read_file(p, NULL);
  assert_string_equal(got, "plain\t-1\t0\ntab\\there\t0\t0.1\n"
                           "quote\"comma,\t1\t0.2\nnew\\nline\\\\\t2\t0.30000000000000004\n"
                           "ünï\t3\t0.4\n");
  free(got);
  snprintf(p, sizeof p, "%s/out.csv", dir);
  assert_int_equal(write_rows(&o, 1), 0);
  got = read_file(p, NULL);
  assert_non_null(strstr(got, "word,count,score\nplain,-1,0\n"));
  assert_non_null(strstr(got, "\"quote\"\"comma,\",1,"));
  assert_non_null(strstr(got, "\"new\nline\\\",2,"));
  free(got);
  snprintf(p, sizeof p, "%s/out.jsonl", dir);
  assert_int_equal(write_rows(&o, 1), 0);
  got = read_file(p, NULL);
  assert_non_null(strstr(got, "{\"word\":\"tab\\there\",\"count\":0,\"score\":0.1}\n"));
  assert_non_null(strstr(got, "{\"word\":\"new\\nline\\\\\",\"count\":2,"));
  free(got);
  rm_rf(dir);
}

static void test_abort_leaves_nothing(void **state) {
  const char *dir = test_tmpdir();
  char p[300];
  snprintf(p, sizeof p, "%s/out.tsv", dir);
  write_file(p, "old\n", 4);
  sink_opts o = {p, NULL, "t", 0, 0};
  assert_int_equal(write_rows(&o, 0), 0);
  char *got = read_file(p, NULL);
  assert_string_equal(got, "old\n");  /* the previous file is untouched */
  free(got);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", dir);
  assert_int_equal(system(cmd), 0);     /* no temporary file left behind */
  rm_rf(dir);
}

static void test_errors(void **state) {
  dbx_err err = {0, ""};
  sink_opts full = {"/dev/full", "tsv", "t", 0, 0};
  assert_int_equal(write_rows(&full, 1), DBX_ENOSPC);
  const char *dir = test_tmpdir();
  sink_opts isdir = {dir, NULL, "t", 0, 0};
  assert_int_equal(write_rows(&isdir, 1), DBX_EISDIR);
  sink_opts badfmt = {"x.out", "xml", "t", 0, 0};
  assert_int_equal(sink_check(&badfmt, &err), DBX_EUSAGE);
  sink_opts badtable = {"sqlite:x.db", NULL, "drop table; --", 0, 0};
  assert_int_equal(sink_check(&badtable, &err), DBX_EUSAGE);
  char p[300];
  snprintf(p, sizeof p, "%s/ro", dir);
  mkdir(p, 0500);
  snprintf(p, sizeof p, "%s/ro/out.tsv", dir);
  sink_opts ro = {p, NULL, "t", 0, 0};
  if (geteuid() != 0) assert_int_equal(write_rows(&ro, 1), DBX_EACCES);
  rm_rf(dir);
}

static int count_rows(const char *db, const char *table) {
  sqlite3 *h;
  assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
  char sql[200];
  snprintf(sql, sizeof sql, "SELECT count(*), sum(count) FROM %s", table);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int n = sqlite3_column_int(st, 0);
  /* write_rows() writes counts -1, 0, 1, 2, 3: every committed set of 5 rows sums to 5. */
  assert_int_equal(n % 5, 0);
  assert_int_equal(sqlite3_column_int(st, 1), n);
  sqlite3_finalize(st);
  sqlite3_close(h);
  return n;
}

static void test_sqlite(void **state) {
  const char *dir = test_tmpdir();
  char dest[400], db[300];
  snprintf(db, sizeof db, "%s/r.db", dir);
  snprintf(dest, sizeof dest, "sqlite:%s", db);
  sink_opts o = {dest, NULL, "words", 0, 0};
  assert_int_equal(write_rows(&o, 1), 0);
  assert_int_equal(count_rows(db, "words"), 5);
  assert_int_equal(write_rows(&o, 1), 0);  /* replaced */
  assert_int_equal(count_rows(db, "words"), 5);
  o.append = 1;
  assert_int_equal(write_rows(&o, 1), 0);
  assert_int_equal(count_rows(db, "words"), 10);
  assert_int_equal(write_rows(&o, 0), 0);  /* aborted: nothing added */
  assert_int_equal(count_rows(db, "words"), 10);
  /* A database the failed job created is removed again. */
  snprintf(db, sizeof db, "%s/new.db", dir);
  snprintf(dest, sizeof dest, "sqlite:%s", db);
  assert_int_equal(write_rows(&o, 0), 0);
  assert_int_equal(access(db, F_OK), -1);
  rm_rf(dir);
}

/* The format comes from a known extension (after .gz/.zst), TSV when there is none; any
 * other extension is a usage error unless --format says what to write. */
static void test_extensions(void **state) {
  static const struct {
    const char *dest, *format;
    int rc;
  } cases[] = {
      {"x.tsv", NULL, 0},          {"x.txt", NULL, 0},          {"x.csv", NULL, 0},
      {"x.jsonl", NULL, 0},        {"x.ndjson", NULL, 0},       {"x.tsv.gz", NULL, 0},
      {"x.csv.zst", NULL, 0},      {"counts", NULL, 0},         {"dir.d/counts", NULL, 0},
      {".hidden", NULL, 0},        {"x.gz", NULL, 0},           {"-", NULL, 0},
      {"x.json", NULL, DBX_EUSAGE}, {"x.parquet", NULL, DBX_EUSAGE}, {"X.CSV", NULL, DBX_EUSAGE},
      {"x.csv.bz2", NULL, DBX_EUSAGE}, {"x.TSV.gz", NULL, DBX_EUSAGE}, {"dir.d/x.out", NULL, DBX_EUSAGE},
      {"x.json", "jsonl", 0},      {"X.CSV", "csv", 0},         {"x.parquet", "tsv", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    dbx_err err = {0, ""};
    sink_opts o = {cases[i].dest, cases[i].format, "t", 0, 0};
    int rc = sink_check(&o, &err);
    if (rc != cases[i].rc) fail_msg("%s (format %s): %d, expected %d (%s)", cases[i].dest,
                                    cases[i].format ? cases[i].format : "-", rc, cases[i].rc, err.msg);
  }
  dbx_err err = {0, ""};
  sink_opts o = {"-", NULL, "t", 1, 0};
  assert_int_equal(sink_check(&o, &err), DBX_EUSAGE);  /* --append to standard output */
  sink_opts h = {"x.jsonl", NULL, "t", 0, 1};
  assert_int_equal(sink_check(&h, &err), DBX_EUSAGE);  /* --header and JSONL */
}

/* An aborted append leaves the file as it was, and no file where there was none. */
static void test_append_abort(void **state) {
  const char *dir = test_tmpdir();
  char p[300];
  snprintf(p, sizeof p, "%s/out.tsv", dir);
  write_file(p, "old\n", 4);
  sink_opts o = {p, NULL, "t", 1, 0};
  assert_int_equal(write_rows(&o, 0), 0);
  char *got = read_file(p, NULL);
  assert_string_equal(got, "old\n");
  free(got);
  assert_int_equal(write_rows(&o, 1), 0);
  got = read_file(p, NULL);
  assert_int_equal(strncmp(got, "old\nplain\t-1\t0\n", 15), 0);
  free(got);
  snprintf(p, sizeof p, "%s/new.tsv", dir);
  sink_opts n = {p, NULL, "t", 1, 0};
  assert_int_equal(write_rows(&n, 0), 0);
  assert_int_equal(access(p, F_OK), -1);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", dir);
  assert_int_equal(system(cmd), 0);  /* no temporary file either */
  rm_rf(dir);
}

/* Outputs are shown in summaries and reports without a URI's password. */
static void test_redact(void **state) {
  static const char *const cases[][2] = {
      {"postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"},
      {"postgresql://u@h/db?sslmode=require&password=pw", "postgresql://u@h/db?sslmode=require&password=***"},
      {"postgresql://u:a%40b@h/db?password=x&a=1", "postgresql://u:***@h/db?password=***&a=1"},
      {"postgres://:p@/db", "postgres://:***@/db"},
      {"postgresql://h/db?%70assword=S13&x=1", "postgresql://h/db?%70assword=***&x=1"},
      {"postgresql://h/db?passw%6Frd=S13", "postgresql://h/db?passw%6Frd=***"},
      {"postgresql://h/db?x=password=no", "postgresql://h/db?x=password=no"},
      {"postgresql://h/db", "postgresql://h/db"},
      {"out/pass:word@x.tsv", "out/pass:word@x.tsv"},
      {"counts.tsv", "counts.tsv"},
  };
  char out[128];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    sink_redact(cases[i][0], out, sizeof out);
    assert_string_equal(out, cases[i][1]);
  }
  sink_redact("postgresql://u:secret@host/db", out, 18);  /* cut short, never past the buffer */
  assert_int_equal(strlen(out) < 18, 1);
  assert_null(strstr(out, "secret"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_redact),
      cmocka_unit_test(test_extensions),
      cmocka_unit_test(test_append_abort),
      cmocka_unit_test(test_tsv_csv_jsonl),
      cmocka_unit_test(test_abort_leaves_nothing),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_sqlite),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
