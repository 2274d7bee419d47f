/* sink.h -- where result rows go: standard output, TSV/CSV/JSONL files (plain, gzip or zstd),
 * SQLite, PostgreSQL (private).
 * Every sink is transactional: rows become visible only at sink_commit(); sink_abort()
 * leaves the destination as it was. */
#ifndef DBX_SINK_SINK_H
#define DBX_SINK_SINK_H
#include "dbatch.h"

typedef struct sink sink;

typedef struct sink_opts {
  const char *dest;     /* "-", FILE.tsv|.txt|.csv|.jsonl|.ndjson[.gz|.zst], sqlite:PATH,
                           postgresql://... (or postgres://) */
  const char *format;   /* "tsv", "csv", "jsonl", or NULL to infer from the name */
  const char *table;    /* database table name (PostgreSQL: SCHEMA.TABLE allowed) */
  int append;           /* keep what is there: rows added to the table, or to the file */
  int header;           /* TSV: a first line of column names (CSV always has one) */
} sink_opts;

/* The job's identity, recorded with rows appended to a database so that a commit retried
 * (after a lost connection, or by 'dbatch resume') never adds them twice. Set once the job
 * has started; a job without a journal gets a random one. Copied. */
void sink_set_job_id(const char *id);
const char *sink_job_id(void);
/* A followed job's progress (--follow): database outputs record it in table dbatch_follow
 * (job, micro_batch, offsets as JSON), in the transaction that commits their rows, so what a
 * table holds and the input it covers are committed together. job NULL: none (the default).
 * Copied. */
void sink_set_follow_note(const char *job, uint64_t micro_batch, const char *offsets);
/* 1 and the note when there is one. */
int sink_follow_note(const char **job, uint64_t *micro_batch, const char **offsets);
/* Would this destination write a header line (a CSV or TSV file)? */
int sink_takes_header(const sink_opts *o);
/* A destination that looks like a URI of a kind dbatch does not write (POSTGRESQL://,
 * mysql://): a usage error that does not repeat the rest of it (it may hold a password). */
int sink_check_scheme(const char *opt, const char *dest, dbx_err *err);
/* dest as it may be shown (reports, summaries): a URI's password replaced by "***". */
void sink_redact(const char *dest, char *out, size_t cap);
/* Is dest a PostgreSQL URI (postgresql:// or postgres://)? */
int sink_is_postgres(const char *dest);
/* Store (save) or read a model's bytes as the one row of table nb_model in the PostgreSQL
 * database dest, in its own transaction. tag and version describe the bytes. */
int sink_pg_model(const char *dest, int save, const char *tag, int version, const void *bytes, size_t n,
                  dbx_buf *out, dbx_err *err);
/* Compression of a file destination by its name (AFILE_GZIP for .gz, AFILE_ZSTD for .zst). */
unsigned sink_file_compression(const char *dest);

/* Open a sink for rows of schema (which must outlive the sink). *out is owned by the caller
 * and released by sink_commit or sink_abort. */
int sink_open(const sink_opts *o, const dbx_schema *schema, sink **out, dbx_err *err);
int sink_row(sink *s, const dbx_value *row, dbx_err *err);
/* An emit function for dbx_op.finish; ctx is the sink. */
int sink_emit(void *ctx, const dbx_value *row, dbx_err *err);
/* Everything short of making it visible: write out and sync what is buffered, so every
 * error a commit could meet (a full disk) shows now. A job with several outputs prepares
 * them all before it commits any, so they appear together or not at all. */
int sink_prepare(sink *s, dbx_err *err);
/* Make everything visible atomically, then free the sink. */
int sink_commit(sink *s, dbx_err *err);
/* An append to a file has no table to record its commit in: the identity its file will
 * have once committed (a token) goes into the job's journal before the commit, and a resume
 * whose destination already carries it knows the rows are there. 0 when s is no append to
 * a file. */
int sink_append_token(sink *s, char *out, size_t cap);
int sink_append_landed(sink *s, const char *token);
/* A sink that hands each row to fn(ctx, row) and commits nothing of its own (a stage's rows
 * passed on to another writer). */
int sink_callback_open(dbx_emit_fn fn, void *ctx, const dbx_schema *schema, sink **out);
/* Discard and free; accepts NULL. */
void sink_abort(sink *s);
/* Rows written so far. */
uint64_t sink_rows(const sink *s);
/* Rows formatted away from the sink (by workers), as its own row() would: the format to give
 * sink_format_row, or -1 when the sink takes only rows (a database). */
int sink_row_format(const sink *s);
/* Append row (in schema) to b as a line of format fmt (0 TSV, 1 CSV, 2 JSONL): the bytes a
 * file sink writes for it. 0 or DBX_ENOMEM (b unchanged). */
int sink_format_row(int fmt, const dbx_schema *schema, const dbx_value *row, dbx_buf *b);
/* Write n bytes of rows formatted by sink_format_row(sink_row_format(s), ...), counted as rows. */
int sink_put_rows(sink *s, const char *p, size_t n, uint64_t rows, dbx_err *err);
/* Check a destination before any work is done (bad format, bad table name). */
int sink_check(const sink_opts *o, dbx_err *err);
#endif
