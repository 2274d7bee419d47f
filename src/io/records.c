/* records.c -- CSV/TSV/JSONL records of a batch for keyed jobs: one pass over the bytes, the
 * wanted fields pointed to in place (decoded into a reused scratch buffer only when they hold
 * CSV doubled quotes or JSON escapes), no allocation per record. */
#include "io/records.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/input.h"
#include "io/reader.h"
#include "util/err.h"

#define REC_MAX_COL (1u << 24)          /* largest wanted column index + 1 */
#define REC_MAX_HEADER (16u << 20)      /* bytes of a header record */
#define JSON_MAX_DEPTH 128              /* nesting of a JSONL value */

static int ends_with(const char *s, size_t n, const char *suf) {
  size_t k = strlen(suf);
  return n >= k && memcmp(s + n - k, suf, k) == 0;
}

rec_format rec_format_of(const char *path) {
  size_t n = strlen(path);
  if (ends_with(path, n, ".gz")) n -= 3;
  else if (ends_with(path, n, ".zst")) n -= 4;
  if (ends_with(path, n, ".csv")) return REC_CSV;
  if (ends_with(path, n, ".tsv")) return REC_TSV;
  if (ends_with(path, n, ".jsonl") || ends_with(path, n, ".ndjson")) return REC_JSONL;
  return 0;
}

int rec_format_parse(const char *name) {
  if (strcmp(name, "csv") == 0) return REC_CSV;
  if (strcmp(name, "tsv") == 0) return REC_TSV;
  if (strcmp(name, "jsonl") == 0 || strcmp(name, "ndjson") == 0) return REC_JSONL;
  return 0;
}

const char *rec_format_name(rec_format f) {
  return f == REC_CSV ? "csv" : f == REC_TSV ? "tsv" : f == REC_JSONL ? "jsonl" : "?";
}

/* ---- CSV record ends ---- */

static uint64_t count_lf(const char *p, size_t n) {
  uint64_t k = 0;
  for (size_t i = 0; i < n; i++) k += p[i] == '\n';
  return k;
}

size_t rec_csv_eol(const char *p, size_t n, int *inq, uint64_t *qlf) {
  size_t i = 0, nl = 0;
  int have_nl = 0;  /* nl: the first LF at or after i (n: none), while have_nl */
  int q = *inq;
  while (i < n) {
    if (q) {
      const char *c = memchr(p + i, '"', n - i);
      size_t e = c ? (size_t)(c - p) : n;
      *qlf += count_lf(p + i, e - i);
      if (!c) break;
      q = 0;
      i = e + 1;
      continue;
    }
    if (!have_nl || nl < i) {
      const char *c = memchr(p + i, '\n', n - i);
      nl = c ? (size_t)(c - p) : n;
      have_nl = 1;
    }
    const char *c = memchr(p + i, '"', nl - i);
    if (!c) {
      if (nl < n) {
        *inq = 0;
        return nl;
      }
      break;
    }
    q = 1;
    i = (size_t)(c - p) + 1;
  }
  *inq = q;
  return n;
}

/* Offset just past the CSV record starting at pos (or n). */
static size_t csv_skip(const char *d, size_t n, size_t pos) {
  int q = 0;
  uint64_t lf = 0;
  size_t e = pos + rec_csv_eol(d + pos, n - pos, &q, &lf);
  return e < n ? e + 1 : n;
}

static size_t line_skip(const char *d, size_t n, size_t pos) {
  const char *nl = memchr(d + pos, '\n', n - pos);
  return nl ? (size_t)(nl - d) + 1 : n;
}

/* ---- field collection: into an iterator's slots, or all of them into a header ---- */

typedef struct sink {
  rec_iter *it;          /* slots mode */
  rec_field *fields;
  rec_names *all;        /* header mode: every field, copied */
  dbx_buf *tmp;          /* header mode: decoding buffer */
} sink;

/* Append s[0..n) to b, replacing each "" by " (CSV doubled quotes). */
static int csv_unquote(dbx_buf *b, const char *s, size_t n) {
  if (dbx_buf_reserve(b, n + 1)) return DBX_ENOMEM;
  char *o = b->data + b->len;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    o[k++] = s[i];
    if (s[i] == '"') i++;  /* the second of a pair (a validated field has only pairs) */
  }
  b->len += k;
  return 0;
}

static int names_push(rec_names *nm, const char *s, size_t n) {
  if ((nm->n & (nm->n - 1)) == 0) {  /* grow at powers of two */
    size_t cap = nm->n ? (size_t)nm->n * 2 : 8;
    char **nv = realloc(nm->name, cap * sizeof *nv);
    if (!nv) return DBX_ENOMEM;
    nm->name = nv;
  }
  char *c = malloc(n + 1);
  if (!c) return DBX_ENOMEM;
  memcpy(c, s, n);
  c[n] = 0;
  nm->name[nm->n++] = c;
  return 0;
}

/* Field col of the current record is s[0..n) (esc: CSV doubled quotes to undo).
 * 0, DBX_ENOMEM, or DBX_EBADREC with *why set. */
static int emit(sink *k, uint32_t col, const char *s, size_t n, int esc, const char **why) {
  if (k->all) {
    k->tmp->len = 0;
    if (esc ? csv_unquote(k->tmp, s, n) : dbx_buf_append(k->tmp, s, n)) return DBX_ENOMEM;
    if (memchr(k->tmp->data ? k->tmp->data : "", 0, k->tmp->len)) {
      *why = "a NUL byte in a column name";
      return DBX_EBADREC;
    }
    return names_push(k->all, k->tmp->len ? k->tmp->data : "", k->tmp->len);
  }
  rec_iter *it = k->it;
  if (col >= it->nmap) return 0;
  uint32_t slot = it->colmap[col];
  if (slot == UINT32_MAX) return 0;
  if (n && memchr(s, 0, n)) {
    *why = "a NUL byte in a field";
    return DBX_EBADREC;
  }
  rec_field *f = &k->fields[slot];
  f->missing = n == 0;
  if (esc) {
    it->soff[slot] = it->scratch.len;
    size_t before = it->scratch.len;
    if (csv_unquote(&it->scratch, s, n)) return DBX_ENOMEM;
    f->n = it->scratch.len - before;
  } else {
    f->p = n ? s : "";
    f->n = n;
  }
  return 0;
}

/* Byte classes of an unquoted CSV field: 1 ends it or is special (',' '\n' '"'). */
static const unsigned char csv_stop[256] = {['\n'] = 1, [','] = 1, ['"'] = 1};

/* Parse the CSV record at d[pos..n). OUT *next: offset past it. *ncol: its columns.
 * 0, DBX_ENOMEM, DBX_EBADREC (*why, *col_bad). */
static int csv_record(const char *d, size_t n, size_t pos, sink *k, size_t *next, uint32_t *ncol,
                      const char **why, uint32_t *col_bad) {
  size_t i = pos;
  uint32_t col = 0;
  int rc;
  for (;;) {
    *col_bad = col;
    if (col == UINT32_MAX) { *why = "too many columns"; return DBX_EBADREC; }
    if (i < n && d[i] == '"') {
      size_t s = i + 1, j = s;
      int esc = 0;
      for (;;) {
        const char *c = memchr(d + j, '"', n - j);
        if (!c) { *why = "a quoted field that never ends"; return DBX_EBADREC; }
        j = (size_t)(c - d);
        if (j + 1 < n && d[j + 1] == '"') { esc = 1; j += 2; continue; }
        break;
      }
      if ((rc = emit(k, col, d + s, j - s, esc, why))) return rc;
      col++;
      i = j + 1;
      if (i >= n) break;
      if (d[i] == ',') { i++; continue; }
      if (d[i] == '\n') { i++; break; }
      if (d[i] == '\r' && (i + 1 == n || d[i + 1] == '\n')) { i += i + 1 == n ? 1 : 2; break; }
      *why = "text after a closing quote";
      return DBX_EBADREC;
    }
    size_t s = i;
    while (i < n && !csv_stop[(unsigned char)d[i]]) i++;
    if (i < n && d[i] == '"') { *why = "a quote inside an unquoted field"; return DBX_EBADREC; }
    size_t e = i;
    int last = i >= n || d[i] == '\n';
    if (last && e > s && d[e - 1] == '\r') e--;
    if ((rc = emit(k, col, d + s, e - s, 0, why))) return rc;
    col++;
    if (i >= n) break;
    i++;
    if (last) break;
  }
  *next = i;
  *ncol = col;
  return 0;
}

/* Parse the TSV line at d[pos..n): as csv_record. */
static int tsv_record(const char *d, size_t n, size_t pos, sink *k, size_t *next, uint32_t *ncol,
                      const char **why, uint32_t *col_bad) {
  const char *nl = memchr(d + pos, '\n', n - pos);
  size_t le = nl ? (size_t)(nl - d) : n;
  *next = nl ? le + 1 : n;
  size_t e = le > pos && d[le - 1] == '\r' ? le - 1 : le;
  size_t i = pos;
  uint32_t col = 0, stop = k->all ? UINT32_MAX : k->it->nmap;
  int rc;
  for (;;) {
    *col_bad = col;
    if (col == UINT32_MAX) { *why = "too many columns"; return DBX_EBADREC; }
    const char *t = col < stop ? memchr(d + i, '\t', e - i) : NULL;
    size_t fe = t ? (size_t)(t - d) : e;
    if (col < stop && (rc = emit(k, col, d + i, fe - i, 0, why))) return rc;
    col++;
    if (!t) break;
    i = fe + 1;
  }
  *ncol = col;  /* at least the wanted ones when there are that many */
  return 0;
}

/* ---- JSON ---- */

typedef struct jctx {
  const char *p, *e;
  const char *why;
} jctx;

static const unsigned char json_plain[256] = {
    /* 1: an ordinary string byte (not '"', '\\', nor a control character) */
    [32] = 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

static void jws(jctx *j) {
  while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n')) j->p++;
}

static int hex4(const char *p, const char *e, uint32_t *out) {
  if (e - p < 4) return -1;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

/* One escape at p (just after the backslash): OUT *cp (a code point), *len (bytes after the
 * backslash). -1 when invalid (a lone surrogate included). */
static int json_escape(const char *p, const char *e, uint32_t *cp, size_t *len) {
  if (p >= e) return -1;
  switch (*p) {
    case '"': *cp = '"'; break;
    case '\\': *cp = '\\'; break;
    case '/': *cp = '/'; break;
    case 'b': *cp = '\b'; break;
    case 'f': *cp = '\f'; break;
    case 'n': *cp = '\n'; break;
    case 'r': *cp = '\r'; break;
    case 't': *cp = '\t'; break;
    case 'u': {
      uint32_t hi, lo;
      if (hex4(p + 1, e, &hi)) return -1;
      if (hi >= 0xDC00 && hi <= 0xDFFF) return -1;
      if (hi >= 0xD800 && hi <= 0xDBFF) {
        if (e - (p + 5) < 6 || p[5] != '\\' || p[6] != 'u' || hex4(p + 7, e, &lo) || lo < 0xDC00 || lo > 0xDFFF)
          return -1;
        *cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        *len = 11;
        return 0;
      }
      *cp = hi;
      *len = 5;
      return 0;
    }
    default: return -1;
  }
  *len = 1;
  return 0;
}

/* A string at j->p (just after its opening quote): j->p moves past the closing quote.
 * OUT *esc: it holds escapes. */
/* Length of the well-formed UTF-8 sequence at p (a lead byte >= 0x80): 2..4, or 0 for an
 * invalid one (overlong, a surrogate, past U+10FFFF, truncated, a stray continuation). */
static size_t utf8_len(const char *p, const char *e) {
  const unsigned char *u = (const unsigned char *)p;
  size_t left = (size_t)(e - p), n;
  uint32_t cp;
  if (u[0] >= 0xC2 && u[0] <= 0xDF) n = 2, cp = u[0] & 0x1F;
  else if (u[0] >= 0xE0 && u[0] <= 0xEF) n = 3, cp = u[0] & 0x0F;
  else if (u[0] >= 0xF0 && u[0] <= 0xF4) n = 4, cp = u[0] & 0x07;
  else return 0;
  if (left < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((u[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (u[i] & 0x3F);
  }
  if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 0;
  return n;
}

static int json_string(jctx *j, int *esc) {
  const char *p = j->p, *e = j->e;
  *esc = 0;
  for (;;) {
    while (p < e && (unsigned char)*p < 0x80 && json_plain[(unsigned char)*p]) p++;
    if (p >= e) { j->why = "a string that never ends"; return -1; }
    if ((unsigned char)*p >= 0x80) {
      /* JSON text is UTF-8 (RFC 8259): a key or value that is not is a bad record. */
      size_t n = utf8_len(p, e);
      if (!n) { j->why = "invalid UTF-8 in a string"; return -1; }
      p += n;
      continue;
    }
    if (*p == '"') break;
    if (*p != '\\') { j->why = "a control character in a string"; return -1; }
    uint32_t cp;
    size_t len;
    if (json_escape(p + 1, e, &cp, &len)) { j->why = "an invalid escape in a string"; return -1; }
    *esc = 1;
    p += 1 + len;
  }
  j->p = p + 1;
  return 0;
}

/* Append the decoded text of the validated string body s[0..n) to b. */
static int json_decode(dbx_buf *b, const char *s, size_t n) {
  if (dbx_buf_reserve(b, n + 1)) return DBX_ENOMEM;  /* decoded is never longer */
  char *o = b->data + b->len;
  size_t k = 0;
  for (size_t i = 0; i < n;) {
    if (s[i] != '\\') { o[k++] = s[i++]; continue; }
    uint32_t cp;
    size_t len;
    if (json_escape(s + i + 1, s + n, &cp, &len)) return DBX_EBADREC;  /* validated before */
    i += 1 + len;
    if (cp < 0x80) {
      o[k++] = (char)cp;
    } else if (cp < 0x800) {
      o[k++] = (char)(0xC0 | (cp >> 6));
      o[k++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      o[k++] = (char)(0xE0 | (cp >> 12));
      o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      o[k++] = (char)(0x80 | (cp & 0x3F));
    } else {
      o[k++] = (char)(0xF0 | (cp >> 18));
      o[k++] = (char)(0x80 | ((cp >> 12) & 0x3F));
      o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      o[k++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  b->len += k;
  return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int json_number(jctx *j) {
  const char *p = j->p, *e = j->e;
  if (p < e && *p == '-') p++;
  if (p >= e || !is_digit(*p)) goto bad;
  if (*p == '0') p++;
  else while (p < e && is_digit(*p)) p++;
  if (p < e && *p == '.') {
    p++;
    if (p >= e || !is_digit(*p)) goto bad;
    while (p < e && is_digit(*p)) p++;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < e && (*p == '+' || *p == '-')) p++;
    if (p >= e || !is_digit(*p)) goto bad;
    while (p < e && is_digit(*p)) p++;
  }
  j->p = p;
  return 0;
bad:
  j->why = "an invalid number";
  return -1;
}

static int json_word(jctx *j, const char *w, size_t n) {
  if ((size_t)(j->e - j->p) < n || memcmp(j->p, w, n) != 0) { j->why = "an invalid value"; return -1; }
  j->p += n;
  return 0;
}

/* Any value at j->p (validated and skipped), nested up to depth. */
static int json_value(jctx *j, int depth) {
  int esc;
  if (j->p >= j->e) { j->why = "a missing value"; return -1; }
  switch (*j->p) {
    case '"': j->p++; return json_string(j, &esc);
    case 't': return json_word(j, "true", 4);
    case 'f': return json_word(j, "false", 5);
    case 'n': return json_word(j, "null", 4);
    case '{': case '[': {
      if (depth >= JSON_MAX_DEPTH) { j->why = "values nested too deep"; return -1; }
      char close = *j->p == '{' ? '}' : ']';
      j->p++;
      jws(j);
      if (j->p < j->e && *j->p == close) { j->p++; return 0; }
      for (;;) {
        if (close == '}') {
          if (j->p >= j->e || *j->p != '"') { j->why = "an object key that is not a string"; return -1; }
          j->p++;
          if (json_string(j, &esc)) return -1;
          jws(j);
          if (j->p >= j->e || *j->p != ':') { j->why = "a missing ':'"; return -1; }
          j->p++;
          jws(j);
        }
        if (json_value(j, depth + 1)) return -1;
        jws(j);
        if (j->p < j->e && *j->p == ',') { j->p++; jws(j); continue; }
        if (j->p < j->e && *j->p == close) { j->p++; return 0; }
        j->why = close == '}' ? "a missing ',' or '}'" : "a missing ',' or ']'";
        return -1;
      }
    }
    default: return json_number(j);
  }
}

/* The JSONL line d[ls..le): fill the wanted slots. 0, DBX_ENOMEM, DBX_EBADREC (*why, *at). */
static int json_record(rec_iter *it, rec_field *fields, const char *d, size_t ls, size_t le, const char **why,
                       size_t *at) {
  jctx j = {d + ls, d + le, NULL};
  const rec_want *w = it->w;
  int rc = DBX_EBADREC;
  jws(&j);
  if (j.p >= j.e || *j.p != '{') { j.why = "not a JSON object"; goto bad; }
  j.p++;
  jws(&j);
  if (j.p < j.e && *j.p == '}') { j.p++; goto end; }
  for (;;) {
    if (j.p >= j.e || *j.p != '"') { j.why = "an object key that is not a string"; goto bad; }
    const char *ks = ++j.p;
    int kesc;
    if (json_string(&j, &kesc)) goto bad;
    const char *key = ks;
    size_t klen = (size_t)(j.p - 1 - ks);
    size_t mark = it->scratch.len;
    if (kesc) {
      if (json_decode(&it->scratch, ks, klen)) { rc = DBX_ENOMEM; goto bad; }
      key = it->scratch.data + mark;
      klen = it->scratch.len - mark;
    }
    uint32_t slot = UINT32_MAX;
    for (uint32_t s = 0; s < w->n; s++)
      if (it->dup[s] == s && it->namelen[s] == klen && memcmp(w->name[s], key, klen) == 0) { slot = s; break; }
    it->scratch.len = mark;
    jws(&j);
    if (j.p >= j.e || *j.p != ':') { j.why = "a missing ':'"; goto bad; }
    j.p++;
    jws(&j);
    const char *vs = j.p;
    if (json_value(&j, 1)) goto bad;
    if (slot != UINT32_MAX) {
      rec_field *f = &fields[slot];
      const char *ve = j.p;
      f->missing = 0;
      it->soff[slot] = SIZE_MAX;
      if (*vs == 'n') {
        f->p = "";
        f->n = 0;
        f->missing = 1;
      } else if (*vs == '"') {
        int esc = memchr(vs + 1, '\\', (size_t)(ve - 1 - (vs + 1))) != NULL;
        if (esc) {
          it->soff[slot] = it->scratch.len;
          if (json_decode(&it->scratch, vs + 1, (size_t)(ve - 1 - (vs + 1)))) { rc = DBX_ENOMEM; goto bad; }
          f->n = it->scratch.len - it->soff[slot];
          if (memchr(it->scratch.data + it->soff[slot], 0, f->n)) { j.why = "a NUL in a field"; goto bad; }
        } else {
          f->p = vs + 1;
          f->n = (size_t)(ve - 1 - (vs + 1));
        }
      } else {
        f->p = vs;
        f->n = (size_t)(ve - vs);
      }
    }
    jws(&j);
    if (j.p < j.e && *j.p == ',') { j.p++; jws(&j); continue; }
    if (j.p < j.e && *j.p == '}') { j.p++; break; }
    j.why = "a missing ',' or '}'";
    goto bad;
  }
end:
  jws(&j);
  if (j.p != j.e) { j.why = "text after the object"; goto bad; }
  return 0;
bad:
  *why = j.why ? j.why : "out of memory";
  *at = (size_t)(j.p - (d + ls));
  return rc;
}

/* ---- the iterator ---- */

void rec_iter_free(rec_iter *it) {
  if (!it) return;
  free(it->colmap);
  free(it->namelen);
  free(it->dup);
  free(it->soff);
  dbx_buf_free(&it->scratch);
  memset(it, 0, sizeof *it);
}

void rec_iter_reset(rec_iter *it, const char *data, size_t n, int skip_header) {
  it->data = data;
  it->n = n;
  it->pos = 0;
  if (skip_header && n) {
    if (it->f == REC_CSV) it->pos = csv_skip(data, n, 0);
    else if (it->f == REC_TSV) it->pos = line_skip(data, n, 0);
  }
}

int rec_iter_init(rec_iter *it, rec_format f, const rec_want *w, const char *data, size_t n, int skip_header) {
  memset(it, 0, sizeof *it);
  if (f != REC_CSV && f != REC_TSV && f != REC_JSONL) return DBX_EINVAL;
  it->f = f;
  it->w = w;
  uint32_t k = w->n;
  if (k) {
    if (!(it->dup = malloc(k * sizeof *it->dup)) || !(it->soff = malloc(k * sizeof *it->soff))) return DBX_ENOMEM;
  }
  if (f == REC_JSONL) {
    if (k && !(it->namelen = malloc(k * sizeof *it->namelen))) return DBX_ENOMEM;
    for (uint32_t s = 0; s < k; s++) {
      if (!w->name || !w->name[s]) return DBX_EINVAL;
      it->namelen[s] = strlen(w->name[s]);
      it->dup[s] = s;
      for (uint32_t t = 0; t < s; t++)
        if (it->dup[t] == t && strcmp(w->name[t], w->name[s]) == 0) { it->dup[s] = t; break; }
    }
  } else {
    uint32_t max = 0;
    for (uint32_t s = 0; s < k; s++) {
      if (!w->col || w->col[s] >= REC_MAX_COL) return DBX_EINVAL;
      if (w->col[s] + 1 > max) max = w->col[s] + 1;
    }
    it->nmap = max;
    if (max && !(it->colmap = malloc(max * sizeof *it->colmap))) return DBX_ENOMEM;
    for (uint32_t c = 0; c < max; c++) it->colmap[c] = UINT32_MAX;
    for (uint32_t s = 0; s < k; s++) {
      uint32_t c = w->col[s];
      if (it->colmap[c] == UINT32_MAX) it->colmap[c] = s;
      it->dup[s] = it->colmap[c];
    }
  }
  rec_iter_reset(it, data, n, skip_header);
  return 0;
}

int rec_next(rec_iter *it, rec_field *fields, size_t *off, dbx_err *err) {
  const char *d = it->data;
  size_t n = it->n;
  const rec_want *w = it->w;
  for (;;) {
    size_t rs = it->pos;
    if (rs >= n) return 0;
    /* Blank lines. */
    if (d[rs] == '\n') { it->pos = rs + 1; continue; }
    if (d[rs] == '\r' && (rs + 1 == n || d[rs + 1] == '\n')) { it->pos = rs + (rs + 1 == n ? 1 : 2); continue; }
    *off = rs;
    it->scratch.len = 0;
    for (uint32_t s = 0; s < w->n; s++) {
      fields[s].p = "";
      fields[s].n = 0;
      fields[s].missing = 1;
      it->soff[s] = SIZE_MAX;
    }
    const char *why = NULL;
    int rc;
    if (it->f == REC_JSONL) {
      const char *nl = memchr(d + rs, '\n', n - rs);
      size_t le = nl ? (size_t)(nl - d) : n;
      it->pos = nl ? le + 1 : n;
      size_t q = rs;
      while (q < le && (d[q] == ' ' || d[q] == '\t' || d[q] == '\r')) q++;
      if (q == le) continue;  /* a blank line */
      size_t at = 0;
      rc = json_record(it, fields, d, rs, le, &why, &at);
      if (rc == DBX_EBADREC)
        return dbx_seterr(err, rc, "JSONL: %s at byte %zu of the line", why, at + 1);
      if (rc) return dbx_seterr(err, rc, "out of memory reading a JSONL record");
    } else {
      sink k = {it, fields, NULL, NULL};
      size_t next = n;
      uint32_t ncol = 0, colbad = 0;
      rc = it->f == REC_CSV ? csv_record(d, n, rs, &k, &next, &ncol, &why, &colbad)
                            : tsv_record(d, n, rs, &k, &next, &ncol, &why, &colbad);
      if (rc == DBX_ENOMEM) return dbx_seterr(err, rc, "out of memory reading a record");
      if (rc) {
        it->pos = it->f == REC_CSV ? csv_skip(d, n, rs) : line_skip(d, n, rs);
        return dbx_seterr(err, rc, "%s: %s in column %u", it->f == REC_CSV ? "CSV" : "TSV", why, colbad + 1);
      }
      it->pos = next;
      if (ncol < it->nmap) {
        uint32_t need = 0;
        for (uint32_t s = 0; s < w->n; s++) if (w->col[s] + 1 > need) need = w->col[s] + 1;
        return dbx_seterr(err, DBX_EBADREC, "%s: %u columns, column %u wanted", it->f == REC_CSV ? "CSV" : "TSV",
                          ncol, need);
      }
    }
    for (uint32_t s = 0; s < w->n; s++) {
      if (it->dup[s] != s) continue;
      if (it->soff[s] != SIZE_MAX) fields[s].p = it->scratch.data + it->soff[s];
    }
    for (uint32_t s = 0; s < w->n; s++)
      if (it->dup[s] != s) fields[s] = fields[it->dup[s]];
    return 1;
  }
}

/* ---- headers ---- */

void rec_names_free(rec_names *names) {
  if (!names) return;
  for (uint32_t i = 0; i < names->n; i++) free(names->name[i]);
  free(names->name);
  memset(names, 0, sizeof *names);
}

int rec_parse_header(rec_format f, const char *data, size_t n, rec_names *out, dbx_err *err) {
  memset(out, 0, sizeof *out);
  if (f != REC_CSV && f != REC_TSV)
    return dbx_seterr(err, DBX_EINVAL, "%s input has no header", rec_format_name(f));
  if (n >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) { data += 3; n -= 3; }
  if (n == 0 || data[0] == '\n' || (data[0] == '\r' && (n == 1 || data[1] == '\n'))) return 0;
  dbx_buf tmp = {0};
  sink k = {NULL, NULL, out, &tmp};
  size_t next;
  uint32_t ncol, colbad;
  const char *why = NULL;
  int rc = f == REC_CSV ? csv_record(data, n, 0, &k, &next, &ncol, &why, &colbad)
                        : tsv_record(data, n, 0, &k, &next, &ncol, &why, &colbad);
  dbx_buf_free(&tmp);
  if (rc) {
    rec_names_free(out);
    if (rc == DBX_EBADREC) return dbx_seterr(err, rc, "a malformed header: %s in column %u", why, colbad + 1);
    return dbx_seterr(err, rc, "out of memory reading the header");
  }
  return 0;
}

int rec_read_header(rec_format f, const char *path, rec_names *out, dbx_err *err) {
  memset(out, 0, sizeof *out);
  if (f != REC_CSV && f != REC_TSV)
    return dbx_seterr(err, DBX_EINVAL, "%s: %s input has no header", path, rec_format_name(f));
  if (strcmp(path, "-") == 0)
    return dbx_seterr(err, DBX_EUSAGE, "standard input: its header cannot be read ahead of the job");
  struct stat st;
  if (stat(path, &st) != 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: cannot stat: %s", path, strerror(e));
  }
  input x;
  memset(&x, 0, sizeof x);
  x.path = (char *)path;
  x.kind = input_kind_of(path);
  input_set_stat(&x, &st);
  reader *r = NULL;
  dbx_buf b = {0};
  int rc = reader_open(&x, &r, err), inq = 0;
  uint64_t lf = 0;
  size_t scanned = 0;
  if (rc) return rc;
  for (;;) {
    if (b.len >= REC_MAX_HEADER) {
      rc = dbx_seterr(err, DBX_EBADREC, "%s line 1: a header of more than %u bytes", path, REC_MAX_HEADER);
      goto done;
    }
    if ((rc = dbx_buf_reserve(&b, 65536))) {
      rc = dbx_seterr(err, rc, "%s: out of memory reading the header", path);
      goto done;
    }
    size_t got;
    if ((rc = reader_read(r, b.data + b.len, 65536, &got, err))) goto done;
    if (got == 0) break;
    b.len += got;
    size_t e = f == REC_CSV ? scanned + rec_csv_eol(b.data + scanned, b.len - scanned, &inq, &lf)
                            : (memchr(b.data + scanned, '\n', b.len - scanned)
                                   ? (size_t)((char *)memchr(b.data + scanned, '\n', b.len - scanned) - b.data)
                                   : b.len);
    if (e < b.len) { b.len = e + 1; break; }
    scanned = b.len;
  }
  dbx_err e2 = {0, ""};
  rc = rec_parse_header(f, b.data ? b.data : "", b.len, out, &e2);
  if (rc) rc = dbx_seterr(err, rc, "%s line 1: %s", path, e2.msg);
done:
  reader_close(r);
  dbx_buf_free(&b);
  return rc;
}
