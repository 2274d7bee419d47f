/* sink.c -- choosing a sink from the destination and format. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sink/sink_internal.h"
#include "util/afile.h"

static char g_job_id[80];

void sink_set_job_id(const char *id) { snprintf(g_job_id, sizeof g_job_id, "%s", id ? id : ""); }
const char *sink_job_id(void) { return g_job_id; }

static char *g_follow_job, *g_follow_offsets;
static uint64_t g_follow_mb;

void sink_set_follow_note(const char *job, uint64_t micro_batch, const char *offsets) {
  free(g_follow_job);
  free(g_follow_offsets);
  g_follow_job = job ? strdup(job) : NULL;
  g_follow_offsets = job ? strdup(offsets ? offsets : "") : NULL;
  if (!g_follow_job || !g_follow_offsets) {
    free(g_follow_job);
    free(g_follow_offsets);
    g_follow_job = g_follow_offsets = NULL;
  }
  g_follow_mb = micro_batch;
}

int sink_follow_note(const char **job, uint64_t *micro_batch, const char **offsets) {
  if (!g_follow_job) return 0;
  *job = g_follow_job;
  *micro_batch = g_follow_mb;
  *offsets = g_follow_offsets;
  return 1;
}

static int ends_with(const char *s, size_t n, const char *suffix) {
  size_t k = strlen(suffix);
  return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

unsigned sink_file_compression(const char *dest) {
  size_t n = strlen(dest);
  return ends_with(dest, n, ".gz") ? AFILE_GZIP : ends_with(dest, n, ".zst") ? AFILE_ZSTD : 0;
}

int sink_is_postgres(const char *dest) {
  return !strncmp(dest, "postgresql://", 13) || !strncmp(dest, "postgres://", 11);
}
#define is_postgres sink_is_postgres

#define FORMATS_HELP                                                                                  \
  "dbatch writes FILE.tsv, .txt, .csv, .jsonl or .ndjson (each also as .gz or .zst), a FILE with no " \
  "extension as TSV, sqlite:PATH or postgresql://...; or say --format tsv|csv|jsonl"

/* The format a file name asks for: by its extension after any .gz/.zst, "tsv" when the name
 * has none; NULL for an extension dbatch does not write (*ext is it then). */
static const char *ext_format(const char *dest, char *ext, size_t cap) {
  const char *base = strrchr(dest, '/');
  base = base ? base + 1 : dest;
  size_t n = strlen(base);
  unsigned z = sink_file_compression(base);
  if (z) n -= z == AFILE_GZIP ? 3 : 4;
  const char *dot = NULL;
  for (size_t i = 1; i < n; i++)  /* a leading dot names a hidden file, not an extension */
    if (base[i] == '.') dot = base + i;
  if (!dot) return "tsv";
  size_t k = (size_t)(base + n - dot);
  snprintf(ext, cap, "%.*s", (int)(k < cap ? k : cap - 1), dot);
  static const char *const known[][2] = {{".tsv", "tsv"}, {".txt", "tsv"},     {".csv", "csv"},
                                         {".jsonl", "jsonl"}, {".ndjson", "jsonl"}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strlen(known[i][0]) == k && !memcmp(dot, known[i][0], k)) return known[i][1];
  return NULL;
}

static int resolve(const sink_opts *o, const char **format, unsigned *zf, int probe, dbx_err *err) {
  *zf = 0;
  int rc = sink_check_scheme("--out", o->dest, err);
  if (rc) return rc;
  if (strncmp(o->dest, "sqlite:", 7) == 0 || is_postgres(o->dest)) {
    int pg = is_postgres(o->dest);
    if (o->header) return dbx_seterr(err, DBX_EUSAGE, "--header applies to TSV files; a table has named columns");
    if (o->format)
      return dbx_seterr(err, DBX_EUSAGE, "--format %s applies to files, not to --out %s", o->format,
                        pg ? "postgresql://..." : "sqlite:PATH");
    *format = pg ? "postgresql" : "sqlite";
    if (pg) return sink_pg_check(o, probe, err);
    if (!o->dest[7]) return dbx_seterr(err, DBX_EUSAGE, "--out sqlite: needs a path, as in sqlite:results.db");
    return sink_sqlite_check_table(o->table, err);
  }
  const char *f = o->format;
  char ext[32] = "";
  if (!f && strcmp(o->dest, "-") && !(f = ext_format(o->dest, ext, sizeof ext))) {
    char lower[32];
    size_t i = 0;
    for (; ext[i] && i + 1 < sizeof lower; i++) lower[i] = (char)(ext[i] >= 'A' && ext[i] <= 'Z' ? ext[i] + 32 : ext[i]);
    lower[i] = 0;
    const char *hint = !strcmp(lower, ".json") ? " (.jsonl is one JSON object per line)"
                       : strcmp(lower, ext) && (!strcmp(lower, ".tsv") || !strcmp(lower, ".csv") ||
                                                !strcmp(lower, ".txt") || !strcmp(lower, ".jsonl"))
                           ? " (extensions are matched in lower case)"
                           : "";
    return dbx_seterr(err, DBX_EUSAGE, "--out %s: unknown extension '%s'%s; " FORMATS_HELP, o->dest, ext, hint);
  }
  if (!f) f = "tsv";
  if (strcmp(f, "tsv") && strcmp(f, "csv") && strcmp(f, "jsonl"))
    return dbx_seterr(err, DBX_EUSAGE, "unknown output format '%s' (tsv, csv, jsonl; or --out sqlite:PATH or "
                      "postgresql://...)", f);
  if (o->header && !strcmp(f, "jsonl"))
    return dbx_seterr(err, DBX_EUSAGE, "--header applies to TSV (and CSV, which always has one); JSONL names every "
                      "field");
  if (!strcmp(o->dest, "-")) {
    if (o->append)
      return dbx_seterr(err, DBX_EUSAGE, "--append needs a file or a database; standard output is a stream");
  } else {
    *zf = sink_file_compression(o->dest);
  }
  *format = f;
  return 0;
}

int sink_check_scheme(const char *opt, const char *dest, dbx_err *err) {
  const char *sep = strstr(dest, "://");
  if (!sep || sink_is_postgres(dest)) return 0;
  for (const char *p = dest; p < sep; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '+' || *p == '-' ||
          *p == '.'))
      return 0;  /* not a scheme: a file name with "://" further on */
  int upper = (size_t)(sep - dest) == 10 && !strncasecmp(dest, "postgresql", 10);
  upper |= (size_t)(sep - dest) == 8 && !strncasecmp(dest, "postgres", 8);
  return dbx_seterr(err, DBX_EUSAGE, "%s: unknown kind of destination '%.*s://'%s; dbatch writes files, sqlite:PATH and "
                    "postgresql://...", opt, (int)(sep - dest > 20 ? 20 : sep - dest), dest,
                    upper ? " (write the scheme in lower case)" : "");
}

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Does the query parameter at p (up to '=') name the password, percent-decoded as libpq
 * decodes it ("%70assword")? *vlen: the bytes of "key=" to keep. */
static int password_key(const char *p, size_t *keylen) {
  char key[16];
  size_t k = 0, i = 0;
  while (p[i] && p[i] != '=' && p[i] != '&' && k < sizeof key - 1) {
    int hi, lo;
    if (p[i] == '%' && p[i + 1] && p[i + 2] && (hi = hexval(p[i + 1])) >= 0 && (lo = hexval(p[i + 2])) >= 0) {
      key[k++] = (char)(hi * 16 + lo);
      i += 3;
    } else {
      key[k++] = p[i++];
    }
  }
  key[k] = 0;
  *keylen = i + 1;
  return p[i] == '=' && !strcmp(key, "password");
}

void sink_redact(const char *dest, char *out, size_t cap) {
  /* user:PASSWORD@ in the authority, password=VALUE in the query: each value becomes ***. */
  const char *sep = strstr(dest, "://");
  const char *auth = sep ? sep + 3 : NULL;
  const char *at = auth ? strchr(auth, '@') : NULL, *slash = auth ? strchr(auth, '/') : NULL;
  const char *colon = at && (!slash || at < slash) ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
  size_t k = 0;
  for (const char *p = dest; *p && k + 4 < cap;) {
    if (colon && p == colon + 1) {
      memcpy(out + k, "***", 3), k += 3;
      p = at;
      continue;
    }
    size_t kl;
    if (sep && p > dest && (p[-1] == '?' || p[-1] == '&') && password_key(p, &kl)) {
      size_t take = kl + 3 < cap - k - 1 ? kl + 3 : cap - k - 1;  /* "key=***" */
      char shown[64];
      snprintf(shown, sizeof shown, "%.*s***", (int)(kl < 40 ? kl : 40), p);
      memcpy(out + k, shown, take < strlen(shown) ? take : strlen(shown));
      k += take < strlen(shown) ? take : strlen(shown);
      p += kl + strcspn(p + kl, "&");
      continue;
    }
    out[k++] = *p++;
  }
  out[k] = 0;
}

int sink_takes_header(const sink_opts *o) {
  if (strncmp(o->dest, "sqlite:", 7) == 0 || sink_is_postgres(o->dest) || !strcmp(o->dest, "-")) return 0;
  char ext[32];
  const char *f = o->format ? o->format : ext_format(o->dest, ext, sizeof ext);
  return f && (!strcmp(f, "tsv") || !strcmp(f, "csv"));
}

int sink_check(const sink_opts *o, dbx_err *err) {
  const char *f;
  unsigned zf;
  return resolve(o, &f, &zf, 1, err);
}

int sink_open(const sink_opts *o, const dbx_schema *schema, sink **out, dbx_err *err) {
  const char *f;
  unsigned zf;
  int rc = resolve(o, &f, &zf, 0, err);
  if (rc) return rc;
  if (strcmp(f, "sqlite") == 0) rc = sink_sqlite_open(o, o->dest + 7, schema, out, err);
  else if (strcmp(f, "postgresql") == 0) rc = sink_pg_open(o, schema, out, err);
  else rc = sink_file_open(o, f, zf, schema, out, err);
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

int sink_row_format(const sink *s) { return s->put_rows ? s->fmt : -1; }

int sink_put_rows(sink *s, const char *p, size_t n, uint64_t rows, dbx_err *err) {
  if (!s->put_rows) return dbx_seterr(err, DBX_EINVAL, "internal error: this output takes rows one by one");
  int rc = n ? s->put_rows(s, p, n, err) : 0;
  if (!rc) s->rows += rows;
  return rc;
}

typedef struct cb_sink {
  sink base;
  dbx_emit_fn fn;
  void *ctx;
} cb_sink;
static int cb_row(sink *s, const dbx_value *row, dbx_err *err) { return ((cb_sink *)s)->fn(((cb_sink *)s)->ctx, row, err); }
static int cb_commit(sink *s, dbx_err *err) {
  (void)err;
  free(s);
  return 0;
}
static void cb_abort(sink *s) { free(s); }

int sink_callback_open(dbx_emit_fn fn, void *ctx, const dbx_schema *schema, sink **out) {
  cb_sink *c = calloc(1, sizeof *c);
  if (!c) return DBX_ENOMEM;
  c->base.row = cb_row;
  c->base.commit = cb_commit;
  c->base.abort = cb_abort;
  c->base.schema = schema;
  c->fn = fn;
  c->ctx = ctx;
  *out = &c->base;
  return 0;
}

int sink_prepare(sink *s, dbx_err *err) { return s->prepare ? s->prepare(s, err) : 0; }
int sink_commit(sink *s, dbx_err *err) { return s->commit(s, err); }

void sink_abort(sink *s) {
  if (s) s->abort(s);
}

uint64_t sink_rows(const sink *s) { return s->rows; }

int sink_append_token(sink *s, char *out, size_t cap) { return s->file ? afile_append_token(s->file, out, cap) : 0; }
int sink_append_landed(sink *s, const char *token) { return s->file ? afile_landed(s->file, token) : 0; }
