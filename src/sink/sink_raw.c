/* sink_raw.c -- bytes straight to an atomically committed file (or standard output): the
 * output of a map-only `dbatch run`, which is the command's bytes, not rows to format.
 * A .gz or .zst name compresses them; --append adds them to the file atomically. */
#include <stdlib.h>
#include <string.h>

#include "sink/sink_internal.h"
#include "sink/sink_raw.h"
#include "util/afile.h"

typedef struct raw_sink {
  sink base;
  afile f;
  int open_line;  /* the bytes so far end inside a line */
} raw_sink;

static const char *const raw_names[] = {"output"};
static const dbx_coltype raw_types[] = {DBX_COL_TEXT};
static const dbx_schema raw_schema = {1, raw_names, raw_types};

static int raw_row(sink *sb, const dbx_value *row, dbx_err *err) {
  raw_sink *s = (raw_sink *)sb;
  const char *p = row[0].s;
  size_t n = row[0].n;
  if (!n) return 0;
  int rc = afile_write(&s->f, p, n, err);
  if (rc) return rc;
  /* Rows are output lines, counted where they start (a line may span two batches); sink_row
   * adds one per call, so this adds the rest. Unsigned wrap-around is intended. */
  uint64_t nl = 0;
  for (const char *q = p, *e = p + n; (q = memchr(q, '\n', (size_t)(e - q))); q++) nl++;
  uint64_t starts = (s->open_line ? 0 : 1) + nl - (p[n - 1] == '\n' ? 1 : 0);
  s->open_line = p[n - 1] != '\n';
  sb->rows += starts - 1;
  return 0;
}

static int raw_prepare(sink *sb, dbx_err *err) { return afile_prepare(&((raw_sink *)sb)->f, err); }

static int raw_commit(sink *sb, dbx_err *err) {
  raw_sink *s = (raw_sink *)sb;
  int rc = afile_commit(&s->f, err);
  free(s);
  return rc;
}

static void raw_abort(sink *sb) {
  raw_sink *s = (raw_sink *)sb;
  afile_abort(&s->f);
  free(s);
}

int sink_raw_open(const char *dest, int append, sink **out, dbx_err *err) {
  raw_sink *s = calloc(1, sizeof *s);
  if (!s) return DBX_ENOMEM;
  unsigned flags = strcmp(dest, "-") ? sink_file_compression(dest) | (append ? AFILE_APPEND : 0) : 0;
  int rc0 = sink_check_scheme("--out", dest, err);
  if (rc0) {
    free(s);
    return rc0;
  }
  if (append && !strcmp(dest, "-")) {
    free(s);
    return dbx_seterr(err, DBX_EUSAGE, "--append needs a file; standard output is a stream");
  }
  int rc = afile_open_ex(&s->f, dest, flags, err);
  if (rc) { free(s); return rc; }
  s->base.row = raw_row;
  s->base.prepare = raw_prepare;
  s->base.commit = raw_commit;
  s->base.abort = raw_abort;
  s->base.file = &s->f;
  s->base.schema = &raw_schema;
  *out = &s->base;
  return 0;
}
