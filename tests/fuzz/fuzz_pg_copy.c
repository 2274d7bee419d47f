/* fuzz_pg_copy.c -- the PostgreSQL sink's row formatter (sink_pg_format_row), which turns
 * result rows made from users' data into COPY's text format.
 * Invariants, checked against an independent reading of the same bytes: a text value is
 * accepted exactly when it is valid UTF-8 (utf8proc's decoder, surrogates and overlongs
 * refused) without a NUL byte; an accepted row is one line of tab-separated fields whose
 * unescaped text is the value itself, byte for byte, and whose numbers read back exactly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "fuzz_common.h"
#include "sink/sink_internal.h"

static int valid_utf8(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n;) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
    if (k <= 0 || cp == 0) return 0;
    i += (size_t)k;
  }
  return 1;
}

/* Undo COPY text escapes in s[0..n) into out; the length, or -1 for a stray backslash. */
static long unescape(const char *s, size_t n, char *out) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '\\') {
      out[k++] = s[i];
      continue;
    }
    if (++i == n) return -1;
    switch (s[i]) {
    case '\\': out[k++] = '\\'; break;
    case 't': out[k++] = '\t'; break;
    case 'n': out[k++] = '\n'; break;
    case 'r': out[k++] = '\r'; break;
    default: return -1;
    }
  }
  return (long)k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 17) return 0;
  int64_t iv;
  double dv;
  memcpy(&iv, data, 8);
  memcpy(&dv, data + 8, 8);
  unsigned numkind = data[16] % 3;
  const char *text = (const char *)data + 17;
  size_t n = size - 17;
  static const char *const names[] = {"t", "i", "d", "n"};
  static const dbx_coltype types[] = {DBX_COL_TEXT, DBX_COL_INT, DBX_COL_REAL, DBX_COL_NUM};
  dbx_schema sc = {4, names, types};
  dbx_value row[4];
  memset(row, 0, sizeof row);
  row[0].s = text;
  row[0].n = n;
  row[1].i = iv;
  row[2].d = dv;
  row[3].n = numkind == 0 ? DBX_NUM_INT : numkind == 1 ? DBX_NUM_REAL : DBX_NUM_NULL;
  row[3].i = iv;
  row[3].d = dv;
  dbx_buf b = {0};
  dbx_err err = {0, ""};
  int rc = sink_pg_format_row(&b, &sc, row, 1, "fuzz", &err);
  int ok = valid_utf8(data + 17, n);
  if (rc == DBX_ENOMEM) goto done;
  if (ok != (rc == 0)) fuzz_fail("text of %zu bytes: valid UTF-8 without NUL %d, formatter said %d (%s)", n, ok, rc, err.msg);
  if (rc) {
    if (!strstr(err.msg, "row 1, column t")) fuzz_fail("error does not name the row and column: %s", err.msg);
    goto done;
  }
  if (!b.len || b.data[b.len - 1] != '\n' || memchr(b.data, '\n', b.len - 1)) fuzz_fail("not one line");
  /* Four fields. */
  const char *f[4];
  size_t fl[4], at = 0;
  for (int c = 0; c < 4; c++) {
    const char *e = memchr(b.data + at, c < 3 ? '\t' : '\n', b.len - at);
    if (!e) fuzz_fail("field %d missing", c);
    f[c] = b.data + at;
    fl[c] = (size_t)(e - f[c]);
    at += fl[c] + 1;
  }
  if (at != b.len) fuzz_fail("more than four fields");
  char *back = malloc(fl[0] + 1);
  long k = back ? unescape(f[0], fl[0], back) : -2;
  if (k == -1 || (k >= 0 && ((size_t)k != n || memcmp(back, text, n)))) fuzz_fail("text does not read back");
  free(back);
  char num[64];
  snprintf(num, sizeof num, "%.*s", (int)(fl[1] < 63 ? fl[1] : 63), f[1]);
  if (strtoll(num, NULL, 10) != iv) fuzz_fail("bigint %s does not read back", num);
  snprintf(num, sizeof num, "%.*s", (int)(fl[2] < 63 ? fl[2] : 63), f[2]);
  double back_d = !strcmp(num, "NaN") ? NAN : !strcmp(num, "Infinity") ? INFINITY : !strcmp(num, "-Infinity") ? -INFINITY
                                                                                                               : strtod(num, NULL);
  if (isnan(dv) ? !isnan(back_d) : memcmp(&back_d, &dv, 8) && !(dv == 0 && back_d == 0))
    fuzz_fail("double %s does not read back", num);
  if (numkind == 2 && (fl[3] != 2 || memcmp(f[3], "\\N", 2))) fuzz_fail("a missing number is not \\N");
done:
  dbx_buf_free(&b);
  return 0;
}
