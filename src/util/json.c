/* json.c -- minimal JSON writer: correct escaping, shortest round-trip numbers. */
#include "util/json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <utf8proc.h>

int json_raw(dbx_buf *b, const char *s) { return dbx_buf_append(b, s, strlen(s)); }

int json_str(dbx_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  int rc = dbx_buf_append(b, "\"", 1);
  size_t i = 0;
  while (!rc && i < n) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x80) {
      utf8proc_int32_t cp;
      utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
      if (k < 0) { rc = dbx_buf_append(b, "\xef\xbf\xbd", 3); i++; }
      else { rc = dbx_buf_append(b, s + i, (size_t)k); i += (size_t)k; }
      continue;
    }
    char esc[7];
    switch (c) {
    case '"': rc = dbx_buf_append(b, "\\\"", 2); break;
    case '\\': rc = dbx_buf_append(b, "\\\\", 2); break;
    case '\n': rc = dbx_buf_append(b, "\\n", 2); break;
    case '\r': rc = dbx_buf_append(b, "\\r", 2); break;
    case '\t': rc = dbx_buf_append(b, "\\t", 2); break;
    default:
      if (c < 0x20 || c == 0x7f) {
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        rc = dbx_buf_append(b, esc, 6);
      } else {
        rc = dbx_buf_append(b, s + i, 1);
      }
    }
    i++;
  }
  return rc ? rc : dbx_buf_append(b, "\"", 1);
}

int json_cstr(dbx_buf *b, const char *s) { return json_str(b, s, strlen(s)); }

/* Decimal digits by hand: every count of every output row comes through here. */
int json_int(dbx_buf *b, int64_t v) {
  char t[24], *e = t + sizeof t, *p = e;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--p = '-';
  return dbx_buf_append(b, p, (size_t)(e - p));
}

int json_real(dbx_buf *b, double v) {
  if (!isfinite(v)) return json_raw(b, "null");
  char t[40];
  /* The shortest %.Ng that reads back exactly: stable output, no spurious digits. */
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(t, sizeof t, "%.*g", prec, v);
    if (strtod(t, NULL) == v) break;
  }
  return json_raw(b, t);
}

int json_repr(dbx_buf *b, double v) {
  if (!isfinite(v)) return json_raw(b, "null");
  char t[48], dig[24], out[64];
  /* The fewest digits that read back: reading back is monotonic in the digits, so a
   * binary search over 1..17 of them. */
  int lo = 0, hi = 16;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    snprintf(t, sizeof t, "%.*e", mid, v);
    if (strtod(t, NULL) == v) hi = mid;
    else lo = mid + 1;
  }
  snprintf(t, sizeof t, "%.*e", lo, v);
  /* t: [-]D[.DDD]e[+-]XX */
  const char *p = t;
  int neg = *p == '-';
  if (neg) p++;
  size_t nd = 0;
  for (; *p && *p != 'e'; p++)
    if (*p != '.') dig[nd++] = *p;
  dig[nd] = 0;
  int e = atoi(p + 1);
  while (nd > 1 && dig[nd - 1] == '0') dig[--nd] = 0;
  size_t o = 0;
  if (neg) out[o++] = '-';
  if (e >= -4 && e < 16) {
    if (e < 0) {
      out[o++] = '0', out[o++] = '.';
      for (int i = 0; i < -e - 1; i++) out[o++] = '0';
      for (size_t i = 0; i < nd; i++) out[o++] = dig[i];
    } else {
      for (int i = 0; i <= e; i++) out[o++] = (size_t)i < nd ? dig[i] : '0';
      out[o++] = '.';
      if ((size_t)e + 1 >= nd) out[o++] = '0';
      for (size_t i = (size_t)e + 1; i < nd; i++) out[o++] = dig[i];
    }
    out[o] = 0;
  } else {
    out[o++] = dig[0];
    if (nd > 1) {
      out[o++] = '.';
      for (size_t i = 1; i < nd; i++) out[o++] = dig[i];
    }
    snprintf(out + o, sizeof out - o, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
  }
  return json_raw(b, out);
}

int json_ms(dbx_buf *b, double v) {
  if (!isfinite(v)) return json_raw(b, "null");
  char t[40];
  int k = snprintf(t, sizeof t, "%.3f", v);
  return dbx_buf_append(b, t, (size_t)k);
}

int json_key(dbx_buf *b, const char *key, int first) {
  int rc = first ? 0 : dbx_buf_append(b, ",", 1);
  if (!rc) rc = json_cstr(b, key);
  return rc ? rc : dbx_buf_append(b, ":", 1);
}

/* ---- reading ---- */

typedef struct jr {
  const char *p, *end;
  const char *why;
} jr;

static void ws(jr *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\r' || *r->p == '\n')) r->p++;
}

static int hex4(jr *r, uint32_t *v) {
  if (r->end - r->p < 4) return -1;
  *v = 0;
  for (int i = 0; i < 4; i++) {
    char c = r->p[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    *v = *v << 4 | (uint32_t)d;
  }
  r->p += 4;
  return 0;
}

/* A string at r->p (after the quote); appended decoded to out when out is not NULL. */
static int jstring(jr *r, dbx_buf *out) {
  for (;;) {
    if (r->p >= r->end) { r->why = "unterminated string"; return -1; }
    char c = *r->p++;
    if (c == '"') return 0;
    if ((unsigned char)c < 0x20) { r->why = "control character in a string"; return -1; }
    if (c != '\\') {
      if (out && dbx_buf_append(out, &c, 1)) return -1;
      continue;
    }
    if (r->p >= r->end) { r->why = "unterminated escape"; return -1; }
    char e = *r->p++, o;
    switch (e) {
    case '"': o = '"'; break;
    case '\\': o = '\\'; break;
    case '/': o = '/'; break;
    case 'b': o = '\b'; break;
    case 'f': o = '\f'; break;
    case 'n': o = '\n'; break;
    case 'r': o = '\r'; break;
    case 't': o = '\t'; break;
    case 'u': {
      uint32_t cp, lo;
      if (hex4(r, &cp)) { r->why = "bad \\u escape"; return -1; }
      if (cp >= 0xd800 && cp < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u') {
        const char *save = r->p;
        r->p += 2;
        if (!hex4(r, &lo) && lo >= 0xdc00 && lo < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        else r->p = save;
      }
      if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;  /* a lone surrogate: as Python's 'replace' */
      unsigned char enc[4];
      utf8proc_ssize_t k = utf8proc_encode_char((utf8proc_int32_t)cp, enc);
      if (out && dbx_buf_append(out, enc, (size_t)k)) return -1;
      continue;
    }
    default: r->why = "bad escape"; return -1;
    }
    if (out && dbx_buf_append(out, &o, 1)) return -1;
  }
}

static int jvalue(jr *r, int depth);

static int digits(jr *r) {
  const char *s = r->p;
  while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
  return r->p > s;
}

/* A number exactly as RFC 8259 writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
 * so 01, 1., .5, +1, 1e and --1 are refused, as Python's json refuses them. */
static int jnumber(jr *r) {
  r->why = "malformed number";
  if (r->p < r->end && *r->p == '-') r->p++;
  if (r->p >= r->end) return -1;
  if (*r->p == '0') {
    r->p++;
  } else if (!digits(r)) {
    return -1;
  }
  if (r->p < r->end && *r->p == '.') {
    r->p++;
    if (!digits(r)) return -1;
  }
  if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
    r->p++;
    if (r->p < r->end && (*r->p == '+' || *r->p == '-')) r->p++;
    if (!digits(r)) return -1;
  }
  /* What follows a number must end it: 0123 or 1.5.2 are not one number. */
  if (r->p < r->end && (*r->p == '.' || (*r->p >= '0' && *r->p <= '9') || *r->p == 'e' || *r->p == 'E' ||
                        *r->p == '+' || *r->p == '-'))
    return -1;
  r->why = NULL;
  return 0;
}

static int jcontainer(jr *r, int depth, char close) {
  ws(r);
  if (r->p < r->end && *r->p == close) { r->p++; return 0; }
  for (;;) {
    ws(r);
    if (close == '}') {
      if (r->p >= r->end || *r->p != '"') { r->why = "expected a key"; return -1; }
      r->p++;
      if (jstring(r, NULL)) return -1;
      ws(r);
      if (r->p >= r->end || *r->p != ':') { r->why = "expected ':'"; return -1; }
      r->p++;
    }
    if (jvalue(r, depth + 1)) return -1;
    ws(r);
    if (r->p < r->end && *r->p == ',') { r->p++; continue; }
    if (r->p < r->end && *r->p == close) { r->p++; return 0; }
    r->why = "expected ',' or a closing bracket";
    return -1;
  }
}

static int jvalue(jr *r, int depth) {
  if (depth > 64) { r->why = "nested too deep"; return -1; }
  ws(r);
  if (r->p >= r->end) { r->why = "missing value"; return -1; }
  char c = *r->p;
  if (c == '"') { r->p++; return jstring(r, NULL); }
  if (c == '{' || c == '[') { r->p++; return jcontainer(r, depth, c == '{' ? '}' : ']'); }
  const char *lits[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(lits[i]);
    if ((size_t)(r->end - r->p) >= n && !memcmp(r->p, lits[i], n)) { r->p += n; return 0; }
  }
  if (c == '-' || (c >= '0' && c <= '9')) return jnumber(r);
  r->why = "unexpected character";
  return -1;
}

static int object_fields(const char *p, size_t n, const char *const *keys, size_t nkeys, dbx_buf *out, size_t *off,
                         size_t *len, const char **why, int scalars) {
  jr r = {p, p + n, NULL};
  out->len = 0;
  for (size_t k = 0; k < nkeys; k++) len[k] = SIZE_MAX;
  ws(&r);
  if (r.p >= r.end || *r.p != '{') { *why = "not a JSON object"; return DBX_ECORRUPT; }
  r.p++;
  ws(&r);
  if (r.p < r.end && *r.p == '}') { r.p++; goto tail; }
  for (;;) {
    ws(&r);
    if (r.p >= r.end || *r.p != '"') { r.why = "expected a key"; goto bad; }
    r.p++;
    dbx_buf key = {0};
    int krc = jstring(&r, &key);
    long which = -1;
    for (size_t k = 0; !krc && k < nkeys; k++)
      if (key.len == strlen(keys[k]) && !memcmp(key.data, keys[k], key.len)) which = (long)k;
    dbx_buf_free(&key);
    if (krc) goto bad;
    ws(&r);
    if (r.p >= r.end || *r.p != ':') { r.why = "expected ':'"; goto bad; }
    r.p++;
    ws(&r);
    if (which >= 0 && r.p < r.end && *r.p == '"') {
      r.p++;
      off[which] = out->len;
      if (jstring(&r, out)) goto bad;
      len[which] = out->len - off[which];
    } else {
      const char *v = r.p;
      if (jvalue(&r, 1)) goto bad;
      if (which >= 0 && scalars && *v != '{' && *v != '[') {  /* a number, true, false, null: its text */
        off[which] = out->len;
        if (dbx_buf_append(out, v, (size_t)(r.p - v))) goto bad;
        len[which] = out->len - off[which];
      }
    }
    ws(&r);
    if (r.p < r.end && *r.p == ',') { r.p++; continue; }
    if (r.p < r.end && *r.p == '}') { r.p++; break; }
    r.why = "expected ',' or '}'";
    goto bad;
  }
tail:
  ws(&r);
  if (r.p != r.end) { *why = "trailing characters after the object"; return DBX_ECORRUPT; }
  return 0;
bad:
  *why = r.why ? r.why : "out of memory";
  return DBX_ECORRUPT;
}

int json_object_strings(const char *p, size_t n, const char *const *keys, size_t nkeys, dbx_buf *out,
                        size_t *off, size_t *len, const char **why) {
  return object_fields(p, n, keys, nkeys, out, off, len, why, 0);
}

int json_object_fields(const char *p, size_t n, const char *const *keys, size_t nkeys, dbx_buf *out, size_t *off,
                       size_t *len, const char **why) {
  return object_fields(p, n, keys, nkeys, out, off, len, why, 1);
}
