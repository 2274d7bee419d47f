/* sink_file.c -- TSV, CSV and JSONL output through an atomically committed file, plain or
 * compressed (.gz, .zst), replaced or appended to (--append).
 * TSV has no header unless --header (it feeds Unix tools); CSV has a header row and RFC 4180
 * quoting; JSONL writes one object per row keyed by column names. TSV escapes tab, newline,
 * carriage return and backslash as \t \n \r \\ so every row stays one line: the escapes
 * PostgreSQL's COPY text format reads. A file appended to keeps its header, which must be the
 * one this job would write. */
#include <errno.h>
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

/* dbx_buf_append where the room is there (nearly always: the line is reused). */
static inline int put(dbx_buf *b, const void *p, size_t n) {
  if (b->cap - b->len < n) return dbx_buf_append(b, p, n);
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

/* Rows are gathered into the line up to this many bytes and written together. */
#define LINE_FLUSH (64u << 10)

/* The bytes TSV escapes. */
static const unsigned char tsv_escaped[256] = {['\t'] = 1, ['\n'] = 1, ['\r'] = 1, ['\\'] = 1};

static int put_tsv_text(dbx_buf *b, const char *s, size_t n) {
  size_t i = 0;
  while (i < n && !tsv_escaped[(unsigned char)s[i]]) i++;
  if (i == n) return put(b, s, n);  /* nearly every value: nothing to escape */
  int rc = put(b, s, i);
  size_t run = i;
  for (; i < n && !rc; i++) {
    const char *esc = NULL;
    switch (s[i]) {
    case '\t': esc = "\\t"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\\': esc = "\\\\"; break;
    default: continue;
    }
    rc = put(b, s + run, i - run);
    if (!rc) rc = put(b, esc, 2);
    run = i + 1;
  }
  return rc ? rc : put(b, s + run, n - run);
}

static int put_csv_text(dbx_buf *b, const char *s, size_t n) {
  int quote = n == 0 ? 0 : (memchr(s, ',', n) || memchr(s, '"', n) || memchr(s, '\n', n) ||
                            memchr(s, '\r', n) || s[0] == ' ' || s[n - 1] == ' ');
  if (!quote) return put(b, s, n);
  int rc = put(b, "\"", 1);
  for (size_t i = 0; i < n && !rc; i++)
    rc = s[i] == '"' ? put(b, "\"\"", 2) : put(b, s + i, 1);
  return rc ? rc : put(b, "\"", 1);
}

/* Write s->line and empty it; a failure names the file and the cause ("No space left on
 * device"). One thread writes a sink's rows: stdio's lock would be only cost. */
static int put_line(file_sink *s, dbx_err *err) {
  errno = 0;
  size_t n = s->line.len;
  s->line.len = 0;
  if (fwrite_unlocked(s->line.data, 1, n, s->f.fp) == n) return 0;
  int e = errno ? errno : EIO;
  return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "%s: write failed: %s; no output was written", s->f.path,
                    strerror(e));
}

int sink_format_row(int fmt, const dbx_schema *sc, const dbx_value *row, dbx_buf *b) {
  int rc = 0;
  size_t start = b->len;
  if (fmt == 2) rc = put(b, "{", 1);
  for (uint32_t c = 0; c < sc->ncol && !rc; c++) {
    if (fmt == 2) rc = json_key(b, sc->names[c], c == 0);
    else if (c) rc = put(b, fmt == 0 ? "\t" : ",", 1);
    if (rc) break;
    const dbx_value *v = &row[c];
    switch (sc->types[c]) {
    case DBX_COL_TEXT:
      /* No value: an empty field, null in JSON. */
      if (!v->s) rc = fmt == 2 ? put(b, "null", 4) : 0;
      else rc = fmt == 0 ? put_tsv_text(b, v->s, v->n) : fmt == 1 ? put_csv_text(b, v->s, v->n) : json_str(b, v->s, v->n);
      break;
    case DBX_COL_INT: rc = json_int(b, v->i); break;
    case DBX_COL_REAL: rc = put_real(b, v->d); break;
    case DBX_COL_NUM:
      rc = v->n == DBX_NUM_INT ? json_int(b, v->i) : v->n == DBX_NUM_REAL ? json_repr(b, v->d)
         : fmt == 2 ? put(b, "null", 4) : 0;
      break;
    }
  }
  if (!rc && fmt == 2) rc = put(b, "}", 1);
  if (!rc) rc = put(b, "\n", 1);
  if (rc) b->len = start;
  return rc;
}

static int file_row(sink *sb, const dbx_value *row, dbx_err *err) {
  file_sink *s = (file_sink *)sb;
  if (sink_format_row(s->fmt, sb->schema, row, &s->line)) return dbx_seterr(err, DBX_ENOMEM, "out of memory formatting a row");
  return s->line.len >= LINE_FLUSH ? put_line(s, err) : 0;
}

/* Rows formatted elsewhere (sink_format_row with this sink's format), n bytes of them. */
static int file_put_rows(sink *sb, const char *p, size_t n, dbx_err *err) {
  file_sink *s = (file_sink *)sb;
  if (s->line.len) {
    int rc = put_line(s, err);
    if (rc) return rc;
  }
  errno = 0;
  if (fwrite_unlocked(p, 1, n, s->f.fp) == n) return 0;
  int e = errno ? errno : EIO;
  return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "%s: write failed: %s; no output was written", s->f.path,
                    strerror(e));
}

static void file_free(file_sink *s) {
  dbx_buf_free(&s->line);
  free(s);
}

static int file_commit(sink *sb, dbx_err *err) {
  file_sink *s = (file_sink *)sb;
  if (s->line.len) {
    int rc = put_line(s, err);
    if (rc) {
      afile_abort(&s->f);
      file_free(s);
      return rc;
    }
  }
  int rc = afile_commit(&s->f, err);
  file_free(s);
  return rc;
}

static int file_prepare(sink *sb, dbx_err *err) {
  file_sink *s = (file_sink *)sb;
  int rc = s->line.len ? put_line(s, err) : 0;
  return rc ? rc : afile_prepare(&s->f, err);
}

static void file_abort(sink *sb) {
  file_sink *s = (file_sink *)sb;
  afile_abort(&s->f);
  file_free(s);
}

int sink_file_open(const sink_opts *o, const char *format, unsigned zflags, const dbx_schema *schema,
                   sink **out, dbx_err *err) {
  file_sink *s = calloc(1, sizeof *s);
  if (!s) return DBX_ENOMEM;
  s->fmt = strcmp(format, "tsv") == 0 ? 0 : strcmp(format, "csv") == 0 ? 1 : 2;
  int header = s->fmt == 1 || (s->fmt == 0 && o->header);
  unsigned flags = zflags | (o->append ? AFILE_APPEND : 0);
  int rc = afile_open_ex(&s->f, o->dest, flags, err);
  if (rc) { free(s); return rc; }
  s->base.row = file_row;
  s->base.put_rows = file_put_rows;
  s->base.fmt = s->fmt;
  s->base.prepare = file_prepare;
  s->base.commit = file_commit;
  s->base.abort = file_abort;
  s->base.file = &s->f;
  if (header) {
    /* The header is quoted exactly as the rows are: names come from data (class labels). */
    for (uint32_t c = 0; c < schema->ncol && !rc; c++) {
      if (c) rc = dbx_buf_append(&s->line, s->fmt == 0 ? "\t" : ",", 1);
      if (!rc) rc = s->fmt == 0 ? put_tsv_text(&s->line, schema->names[c], strlen(schema->names[c]))
                                : put_csv_text(&s->line, schema->names[c], strlen(schema->names[c]));
    }
    if (!rc) rc = dbx_buf_append(&s->line, "\n", 1);
    if (rc) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory writing the header");
    /* Appending to a file with rows: its first line must be this header, and stays the only
     * one. A file that holds a header over other columns (or none) is not ours to extend. */
    int have = 0;
    size_t hn = 0;
    const char *head = afile_kept_head(&s->f, &hn);
    if (!rc && afile_kept(&s->f) > 0) {
      /* The header is compared byte for byte (a quoted CSV name may hold a newline). */
      have = 1;
      if (hn < s->line.len || memcmp(head, s->line.data, s->line.len)) {
        size_t eol = strcspn(head, "\n");
        int crlf = eol > 0 && head[eol - 1] == '\r';
        rc = dbx_seterr(err, DBX_EINVAL, "%s: its first line is not the header this job writes (%.*s%s)%s; --append "
                        "adds rows to a file of the same columns", o->dest, (int)(s->line.len - 1 > 200 ? 200 : s->line.len - 1),
                        s->line.data, s->line.len - 1 > 200 ? "..." : "", crlf ? " (its lines end in CR LF)" : "");
      }
    }
    if (!rc && !have) rc = put_line(s, err);
    s->line.len = 0;  /* a header kept from the file was only compared */
    if (rc) {
      afile_abort(&s->f);
      file_free(s);
      return rc;
    }
  }
  *out = &s->base;
  return 0;
}
