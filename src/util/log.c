/* log.c -- one line per message on standard error. The level is process-wide configuration,
 * set once by the CLI before any work starts. Lines are escaped (log.h): names that come
 * from data or peers may hold terminal escape sequences. */
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static log_level g_level = LOG_WARN;

void log_set_level(log_level lv) { g_level = lv; }
log_level log_get_level(void) { return g_level; }

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is not one.
 * Overlong forms, surrogates and code points past U+10FFFF are not valid. */
static size_t utf8_len(const unsigned char *s, size_t n, unsigned *cp) {
  unsigned c = s[0];
  size_t k;
  unsigned v, min;
  if (c < 0x80) { *cp = c; return 1; }
  if (c >= 0xc2 && c <= 0xdf) { k = 2; v = c & 0x1f; min = 0x80; }
  else if (c >= 0xe0 && c <= 0xef) { k = 3; v = c & 0x0f; min = 0x800; }
  else if (c >= 0xf0 && c <= 0xf4) { k = 4; v = c & 0x07; min = 0x10000; }
  else return 0;
  if (n < k) return 0;
  for (size_t i = 1; i < k; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v < 0xe000)) return 0;
  *cp = v;
  return k;
}

/* The escape for the character at s, written to e (at least 8 bytes); its length, and in
 * *used the bytes of s it stands for. 0 when the character is kept as it is. */
static size_t escape_one(const unsigned char *s, size_t n, char *e, size_t *used) {
  static const char hex[] = "0123456789abcdef";
  unsigned cp = 0;
  size_t k = utf8_len(s, n, &cp);
  *used = k ? k : 1;
  if (k && cp >= 0x20 && cp != 0x7f && !(cp >= 0x80 && cp < 0xa0)) return 0;
  if (k == 1 && (cp == 0x1b || cp == '\t' || cp == '\n' || cp == '\r')) {
    e[0] = '\\';
    e[1] = cp == 0x1b ? 'e' : cp == '\t' ? 't' : cp == '\n' ? 'n' : 'r';
    return 2;
  }
  if (k == 2) { /* a C1 control character */
    memcpy(e, "\\u00", 4);
    e[4] = hex[cp >> 4];
    e[5] = hex[cp & 15];
    return 6;
  }
  e[0] = '\\';
  e[1] = 'x';
  e[2] = hex[s[0] >> 4];
  e[3] = hex[s[0] & 15];
  return 4;
}

int log_escape_buf(dbx_buf *b, const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, run = 0;
  while (i < n) {
    char e[8];
    size_t used, el = escape_one(p + i, n - i, e, &used);
    if (!el) { i += used; run += used; continue; }
    if (dbx_buf_append(b, s + i - run, run) || dbx_buf_append(b, e, el)) return DBX_ENOMEM;
    run = 0;
    i += used;
  }
  return dbx_buf_append(b, s + n - run, run);
}

size_t log_escape(char *out, size_t cap, const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t o = 0;
  if (!cap) return 0;
  for (size_t i = 0; i < n;) {
    char e[8];
    size_t used, el = escape_one(p + i, n - i, e, &used);
    const char *src = el ? e : s + i;
    size_t len = el ? el : used;
    if (o + len >= cap) break;
    memcpy(out + o, src, len);
    o += len;
    i += used;
  }
  out[o] = 0;
  return o;
}

void log_fputs_escaped(const char *s, FILE *f) {
  dbx_buf b = {0};
  if (log_escape_buf(&b, s, strlen(s)) == 0 && b.len) fwrite(b.data, 1, b.len, f);
  dbx_buf_free(&b);
}

void log_vmsg(log_level lv, const char *fmt, va_list ap) {
  if (lv > g_level) return;
  char line[2048], safe[4 * sizeof line];
  vsnprintf(line, sizeof line, fmt, ap);
  log_escape(safe, sizeof safe, line, strlen(line));
  const char *tag = lv == LOG_ERROR ? "error: " : lv == LOG_WARN ? "warning: " : "";
  /* One fprintf per line: lines from the dashboard's thread never interleave with ours. */
  fprintf(stderr, "dbatch: %s%s\n", tag, safe);
}

void log_msg(log_level lv, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  log_vmsg(lv, fmt, ap);
  va_end(ap);
}
