/* json.h -- appending JSON text to a dbx_buf (private). Used by the JSONL sink and summaries. */
#ifndef DBX_UTIL_JSON_H
#define DBX_UTIL_JSON_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"

/* Append s (n bytes) as a JSON string literal. Invalid UTF-8 becomes U+FFFD. */
int json_str(dbx_buf *b, const char *s, size_t n);
int json_cstr(dbx_buf *b, const char *s);
int json_int(dbx_buf *b, int64_t v);
/* Shortest text that reads back as the same double; non-finite values become null. */
int json_real(dbx_buf *b, double v);
/* A number as Python's repr writes a float: the shortest digits that read back exactly, in
 * fixed notation from 1e-4 to 1e16 (always with a fraction: 10.0) and in scientific outside
 * (1e+20, 1.5e-05); non-finite values become null. What keyed results (DBX_COL_NUM) use. */
int json_repr(dbx_buf *b, double v);
int json_raw(dbx_buf *b, const char *s);
/* v with 3 decimals: for times, where shortest round-trip text costs more than it is worth. */
int json_ms(dbx_buf *b, double v);
/* "key": -- with a leading comma when not first. */
int json_key(dbx_buf *b, const char *key, int first);

/* Read one JSON object (a JSONL line) and decode the string values of the given keys into
 * out, back to back: value k is out->data[off[k] .. off[k]+len[k]), len[k] = SIZE_MAX when
 * the key is absent or not a string. Other values are skipped. 0, or DBX_ECORRUPT with a
 * short reason in *why for anything that is not one well-formed object (trailing spaces ok). */
int json_object_strings(const char *p, size_t n, const char *const *keys, size_t nkeys, dbx_buf *out,
                        size_t *off, size_t *len, const char **why);
/* The same, and a number, true, false or null comes back as its text ("12", "true"). */
int json_object_fields(const char *p, size_t n, const char *const *keys, size_t nkeys, dbx_buf *out, size_t *off,
                       size_t *len, const char **why);
#endif
