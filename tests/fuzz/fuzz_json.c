/* fuzz_json.c -- the JSON object reader behind JSONL corpora (json_object_strings) and
 * `dbatch jobs` (json_object_fields, which also returns numbers and literals as text).
 * Invariants: every value it reports lies inside its output buffer; a value that is valid
 * UTF-8, written back with the JSON writer (json_str) and read again, comes back byte for
 * byte; both readers accept the same inputs and agree on every string, and a value only
 * json_object_fields reports is a number, true, false or null. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "fuzz_common.h"
#include "util/json.h"

static int valid_utf8(const char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
    if (k <= 0) return 0;
    i += (size_t)k;
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const keys[] = {"label", "text", "id"};
  size_t off[3], len[3];
  const char *why = NULL;
  dbx_buf out = {0};
  /* A copy of exactly size bytes: the reader must not look past its length. */
  char *p = malloc(size ? size : 1);
  if (!p) fuzz_fail("out of memory");
  memcpy(p, data, size);
  if (json_object_strings(p, size, keys, 3, &out, off, len, &why) == 0) {
    for (int k = 0; k < 3; k++) {
      if (len[k] == SIZE_MAX) continue;
      if (off[k] > out.len || len[k] > out.len - off[k])
        fuzz_fail("value %d at %zu+%zu outside the %zu decoded bytes", k, off[k], len[k], out.len);
      if (len[k]) fuzz_touch(out.data + off[k], len[k]);
    }
    if (len[0] != SIZE_MAX && len[0] && valid_utf8(out.data + off[0], len[0])) {
      dbx_buf js = {0}, back = {0};
      size_t o2[3], l2[3];
      const char *w2 = NULL;
      if (json_raw(&js, "{\"label\": ") || json_str(&js, out.data + off[0], len[0]) || json_raw(&js, "}"))
        fuzz_fail("out of memory");
      if (json_object_strings(js.data, js.len, keys, 3, &back, o2, l2, &w2))
        fuzz_fail("json_str wrote a string json_object_strings rejects: %s", w2);
      if (l2[0] != len[0] || memcmp(back.data + o2[0], out.data + off[0], len[0]))
        fuzz_fail("a string does not read back as written (%zu bytes, back %zu)", len[0], l2[0]);
      dbx_buf_free(&js);
      dbx_buf_free(&back);
    }
  } else if (!why) {
    fuzz_fail("rejected without a reason");
  } else {
    fuzz_touch(why, strlen(why));
  }
  dbx_buf fo = {0};
  size_t foff[3], flen[3];
  const char *fwhy = NULL;
  int frc = json_object_fields(p, size, keys, 3, &fo, foff, flen, &fwhy);
  int src = why ? 1 : 0;  /* json_object_strings set why only when it rejected */
  if ((frc != 0) != src) fuzz_fail("json_object_fields %s what json_object_strings %s", frc ? "rejects" : "accepts",
                                   src ? "rejects" : "accepts");
  for (int k = 0; !frc && k < 3; k++) {
    if (flen[k] == SIZE_MAX) {
      if (len[k] != SIZE_MAX) fuzz_fail("value %d: a string json_object_fields does not report", k);
      continue;
    }
    if (foff[k] > fo.len || flen[k] > fo.len - foff[k]) fuzz_fail("field %d outside its buffer", k);
    if (len[k] != SIZE_MAX) {
      if (flen[k] != len[k] || (len[k] && memcmp(fo.data + foff[k], out.data + off[k], len[k]))) fuzz_fail("value %d differs", k);
    } else {
      char c = flen[k] ? fo.data[foff[k]] : 0;
      if (!(c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n'))
        fuzz_fail("value %d: '%c' starts no number or literal", k, c);
    }
  }
  dbx_buf_free(&fo);
  free(p);
  dbx_buf_free(&out);
  return 0;
}
