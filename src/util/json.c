/* json.c -- minimal JSON writer: correct escaping, shortest round-trip numbers. */
#include "util/json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
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

int json_int(dbx_buf *b, int64_t v) {
  char t[32];
  int k = snprintf(t, sizeof t, "%lld", (long long)v);
  return dbx_buf_append(b, t, (size_t)k);
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

int json_key(dbx_buf *b, const char *key, int first) {
  int rc = first ? 0 : dbx_buf_append(b, ",", 1);
  if (!rc) rc = json_cstr(b, key);
  return rc ? rc : dbx_buf_append(b, ":", 1);
}
