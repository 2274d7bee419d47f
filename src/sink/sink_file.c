/* sink_file.c -- TSV, CSV and JSONL output through an atomically committed file.
 * TSV has no header (it feeds Unix tools); CSV has a header row and RFC 4180 quoting;
 * JSONL writes one object per row keyed by column names. TSV escapes tab, newline,
 * carriage return and backslash as \t \n \r \\ so every row stays one line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sink/sink_internal.h"
#include "util/afile.h"
#include "util/json.h"

typedef struct file_sink {
  sink base;
  afile f;
  int fmt;  /* 0 tsv, 1 csv, 2 jsonl */
  dbx_buf line;
} file_sink;

static int put_real(dbx_buf *b, double d) { return json_real(b, d); }

static int put_tsv_text(dbx_buf *b, const char *s, size_t n) {
  int rc = 0;
  size_t run = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    const char *esc = NULL;
    switch (s[i]) {
    case '\t': esc = "\\t"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\\': esc = "\\\\"; break;
    default: continue;
    }
    rc = dbx_buf_append(b, s + run, i - run);
    if (!rc) rc = dbx_buf_append(b, esc, 2);
    run = i + 1;
  }
  return rc ? rc : dbx_buf_append(b, s + run, n - run);
}

static int put_csv_text(dbx_buf *b, const char *s, size_t n) {
  int quote = n == 0 ? 0 : (memchr(s, ',', n) || memchr(s, '"', n) || memchr(s, '\n', n) ||
                            memchr(s, '\r', n) || s[0] == ' ' || s[n - 1] == ' ');
  if (!quote) return dbx_buf_append(b, s, n);
  int rc = dbx_buf_append(b, "\"", 1);
  for (size_t i = 0; i < n && !rc; i++)
    rc = s[i] == '"' ? dbx_buf_append(b, "\"\"", 2) : dbx_buf_append(b, s + i, 1);
  return rc ? rc : dbx_buf_append(b, "\"", 1);
}

static int file_row(sink *sb, const dbx_value *row, dbx_err *err) {
  file_sink *s = (file_sink *)sb;
  const dbx_schema *sc = sb->schema;
  dbx_buf *b = &s->line;
  int rc = 0;
  b->len = 0;
  if (s->fmt == 2) rc = dbx_buf_append(b, "{", 1);
  for (uint32_t c = 0; c < sc->ncol && !rc; c++) {
    if (s->fmt == 2) rc = json_key(b, sc->names[c], c == 0);
    else if (c) rc = dbx_buf_append(b, s->fmt == 0 ? "\t" : ",", 1);
    if (rc) break;
    const dbx_value *v = &row[c];
    switch (sc->types[c]) {
    case DBX_COL_TEXT:
      rc = s->fmt == 0 ? put_tsv_text(b, v->s, v->n)
         : s->fmt == 1 ? put_csv_text(b, v->s, v->n) : json_str(b, v->s, v->n);
      break;
    case DBX_COL_INT: rc = json_int(b, v->i); break;
    case DBX_COL_REAL: rc = put_real(b, v->d); break;
    }
  }
  if (!rc && s->fmt == 2) rc = dbx_buf_append(b, "}", 1);
  if (!rc) rc = dbx_buf_append(b, "\n", 1);
  if (rc) return dbx_seterr(err, rc, "out of memory formatting a row");
  if (fwrite(b->data, 1, b->len, s->f.fp) != b->len)
    return dbx_seterr(err, DBX_EIO, "%s: write failed", s->f.path);
  return 0;
}

static void file_free(file_sink *s) {
  dbx_buf_free(&s->line);
  free(s);
}

static int file_commit(sink *sb, dbx_err *err) {
  file_sink *s = (file_sink *)sb;
  int rc = afile_commit(&s->f, err);
  file_free(s);
  return rc;
}

static void file_abort(sink *sb) {
  file_sink *s = (file_sink *)sb;
  afile_abort(&s->f);
  file_free(s);
}

int sink_file_open(const sink_opts *o, const char *format, const dbx_schema *schema, sink **out,
                   dbx_err *err) {
  file_sink *s = calloc(1, sizeof *s);
  if (!s) return DBX_ENOMEM;
  s->fmt = strcmp(format, "tsv") == 0 ? 0 : strcmp(format, "csv") == 0 ? 1 : 2;
  int rc = afile_open(&s->f, o->dest, err);
  if (rc) { free(s); return rc; }
  s->base.row = file_row;
  s->base.commit = file_commit;
  s->base.abort = file_abort;
  if (s->fmt == 1) {
    for (uint32_t c = 0; c < schema->ncol; c++)
      fprintf(s->f.fp, "%s%s", c ? "," : "", schema->names[c]);
    fputc('\n', s->f.fp);
  }
  *out = &s->base;
  return 0;
}
