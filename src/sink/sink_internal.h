/* sink_internal.h -- the vtable behind sink.h; one implementation per file (private). */
#ifndef DBX_SINK_INTERNAL_H
#define DBX_SINK_INTERNAL_H
#include "sink/sink.h"
#include "util/afile.h"

struct sink {
  int (*row)(sink *s, const dbx_value *row, dbx_err *err);
  int (*prepare)(sink *s, dbx_err *err);  /* optional: see sink_prepare */
  int (*commit)(sink *s, dbx_err *err);
  void (*abort)(sink *s);
  afile *file;  /* the file under a file sink (for sink_append_token), else NULL */
  const dbx_schema *schema;
  uint64_t rows;
  /* Optional (file sinks): n bytes of rows formatted by sink_format_row in format fmt. */
  int (*put_rows)(sink *s, const char *p, size_t n, dbx_err *err);
  int fmt;
};

int sink_file_open(const sink_opts *o, const char *format, unsigned zflags, const dbx_schema *schema,
                   sink **out, dbx_err *err);
/* Check a postgresql:// destination: the URI, the table name; probe: also connect now. */
int sink_pg_check(const sink_opts *o, int probe, dbx_err *err);
int sink_pg_open(const sink_opts *o, const dbx_schema *schema, sink **out, dbx_err *err);
/* Append row (row number rowno, for errors) to b as a line of COPY's text format. A text
 * value PostgreSQL cannot hold (a NUL byte, invalid UTF-8) is an error naming where, the row
 * and the column. */
int sink_pg_format_row(dbx_buf *b, const dbx_schema *sc, const dbx_value *row, uint64_t rowno, const char *where,
                       dbx_err *err);
int sink_sqlite_open(const sink_opts *o, const char *path, const dbx_schema *schema, sink **out,
                     dbx_err *err);
int sink_sqlite_check_table(const char *table, dbx_err *err);
#endif
