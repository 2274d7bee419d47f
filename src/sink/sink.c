/* sink.c -- choosing a sink from the destination and format. */
#include <string.h>

#include "sink/sink_internal.h"

static const char *ext_format(const char *dest) {
  const char *dot = strrchr(dest, '.');
  const char *slash = strrchr(dest, '/');
  if (!dot || (slash && dot < slash)) return NULL;
  if (strcmp(dot, ".tsv") == 0 || strcmp(dot, ".txt") == 0) return "tsv";
  if (strcmp(dot, ".csv") == 0) return "csv";
  if (strcmp(dot, ".jsonl") == 0 || strcmp(dot, ".ndjson") == 0) return "jsonl";
  return NULL;
}

static int resolve(const sink_opts *o, const char **format, dbx_err *err) {
  if (strncmp(o->dest, "sqlite:", 7) == 0) {
    if (!o->dest[7]) return dbx_seterr(err, DBX_EUSAGE, "--out sqlite: needs a path, as in sqlite:results.db");
    *format = "sqlite";
    return sink_sqlite_check_table(o->table, err);
  }
  const char *f = o->format ? o->format : ext_format(o->dest);
  if (!f) f = "tsv";
  if (strcmp(f, "tsv") && strcmp(f, "csv") && strcmp(f, "jsonl"))
    return dbx_seterr(err, DBX_EUSAGE, "unknown output format '%s' (tsv, csv, jsonl; or --out sqlite:PATH)", f);
  *format = f;
  return 0;
}

int sink_check(const sink_opts *o, dbx_err *err) {
  const char *f;
  return resolve(o, &f, err);
}

int sink_open(const sink_opts *o, const dbx_schema *schema, sink **out, dbx_err *err) {
  const char *f;
  int rc = resolve(o, &f, err);
  if (rc) return rc;
  if (strcmp(f, "sqlite") == 0) rc = sink_sqlite_open(o, o->dest + 7, schema, out, err);
  else rc = sink_file_open(o, f, schema, out, err);
  if (!rc) {
    (*out)->schema = schema;
    (*out)->rows = 0;
  }
  return rc;
}

int sink_row(sink *s, const dbx_value *row, dbx_err *err) {
  int rc = s->row(s, row, err);
  if (!rc) s->rows++;
  return rc;
}

int sink_emit(void *ctx, const dbx_value *row, dbx_err *err) { return sink_row(ctx, row, err); }

int sink_prepare(sink *s, dbx_err *err) { return s->prepare ? s->prepare(s, err) : 0; }
int sink_commit(sink *s, dbx_err *err) { return s->commit(s, err); }

void sink_abort(sink *s) {
  if (s) s->abort(s);
}

uint64_t sink_rows(const sink *s) { return s->rows; }
