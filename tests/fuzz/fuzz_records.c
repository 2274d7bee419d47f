/* fuzz_records.c -- the record layer of keyed jobs (io/records.c): the fuzz bytes are a
 * batch's data read as CSV, TSV or JSONL (-DFUZZ_FORMAT=REC_CSV|REC_TSV|REC_JSONL), with the
 * first byte choosing a cut point and whether the header is skipped. Invariants: records move
 * forward inside the data, every field's bytes are readable (in the data or the scratch),
 * a missing field is empty, a field wanted twice is the same; and cutting the data where the
 * splitter would (the first record start at or after a point: rec_csv_eol for CSV, a line
 * start otherwise) and reading both pieces gives exactly the records of the whole, which is
 * what lets batches never cut a record. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "io/records.h"

#ifndef FUZZ_FORMAT
#error "build with -DFUZZ_FORMAT=REC_CSV, REC_TSV or REC_JSONL"
#endif

static const uint32_t cols[] = {0, 2, 0, 5};
static const char *const names[] = {"a", "b", "a", "\xc3\xa9", ""};

/* Every record of d[0..n) appended to out as "offset:kind:fields" text. */
static void read_all(const char *d, size_t n, int skip, size_t base, dbx_buf *out) {
  rec_want w = {FUZZ_FORMAT == REC_JSONL ? 5 : 4, cols, names};
  rec_iter it;
  rec_field f[5];
  dbx_err err = {0, ""};
  size_t off, last = 0;
  int rc, first = 1;
  if (rec_iter_init(&it, FUZZ_FORMAT, &w, d, n, skip)) fuzz_fail("rec_iter_init failed");
  while ((rc = rec_next(&it, f, &off, &err)) != 0) {
    if (off >= n || (!first && off <= last)) fuzz_fail("record offset %zu out of order (last %zu, n %zu)", off, last, n);
    first = 0;
    last = off;
    char head[64];
    int k = snprintf(head, sizeof head, "%zu:%d:", off + base, rc);
    dbx_buf_append(out, head, (size_t)k);
    if (rc < 0) {
      if (rc != DBX_EBADREC || !err.msg[0]) fuzz_fail("rec_next failed with %d without a message", rc);
      continue;
    }
    for (uint32_t i = 0; i < w.n; i++) {
      if (!f[i].p) fuzz_fail("field %u has no pointer", i);
      fuzz_touch(f[i].p, f[i].n);
      if (f[i].missing && f[i].n) fuzz_fail("a missing field with %zu bytes", f[i].n);
      if (memchr(f[i].p, 0, f[i].n)) fuzz_fail("a NUL in field %u", i);
      dbx_buf_append(out, f[i].missing ? "~" : "=", 1);
      char len[32];
      k = snprintf(len, sizeof len, "%zu,", f[i].n);
      dbx_buf_append(out, len, (size_t)k);
      dbx_buf_append(out, f[i].p, f[i].n);
    }
    if (f[0].n != f[2].n || f[0].missing != f[2].missing || memcmp(f[0].p, f[2].p, f[0].n) != 0)
      fuzz_fail("the same field wanted twice differs");
    dbx_buf_append(out, "\n", 1);
  }
  rec_iter_free(&it);
}

/* The first record start at or after x (n when none). */
static size_t record_start(const char *d, size_t n, size_t x) {
  size_t pos = 0;
  while (pos < x) {
    size_t e;
    if (FUZZ_FORMAT == REC_CSV) {
      int q = 0;
      uint64_t lf = 0;
      e = pos + rec_csv_eol(d + pos, n - pos, &q, &lf);
    } else {
      const char *nl = memchr(d + pos, '\n', n - pos);
      e = nl ? (size_t)(nl - d) : n;
    }
    if (e >= n) return n;
    pos = e + 1;
  }
  return pos;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int skip = data[0] & 1;
  size_t n = size - 1;
  /* A copy of exactly n bytes, so ASan sees any read past the end. */
  char *d = malloc(n ? n : 1);
  if (!d) return 0;
  memcpy(d, data + 1, n);
  dbx_buf whole = {0}, parts = {0};
  read_all(d, n, skip, 0, &whole);
  size_t cut = record_start(d, n, n ? (size_t)(data[0] >> 1) % (n + 1) : 0);
  if (cut > 0 && cut < n && d[cut - 1] != '\n') fuzz_fail("a record start %zu not after an LF", cut);
  /* Each piece in its own allocation, as two batches. */
  char *a = malloc(cut ? cut : 1), *b = malloc(n - cut ? n - cut : 1);
  if (a && b) {
    memcpy(a, d, cut);
    memcpy(b, d + cut, n - cut);
    read_all(a, cut, skip, 0, &parts);
    read_all(b, n - cut, skip && cut == 0, cut, &parts);
    if (whole.len != parts.len || (whole.len && memcmp(whole.data, parts.data, whole.len) != 0))
      fuzz_fail("the records of the whole (%zu bytes of text) differ from those of its pieces cut at %zu (%zu)",
                whole.len, cut, parts.len);
  }
  if (FUZZ_FORMAT != REC_JSONL) {
    rec_names h;
    dbx_err err = {0, ""};
    if (rec_parse_header(FUZZ_FORMAT, d, n, &h, &err) == 0) {
      for (uint32_t i = 0; i < h.n; i++) fuzz_touch(h.name[i], strlen(h.name[i]) + 1);
      rec_names_free(&h);
    } else if (!err.msg[0]) {
      fuzz_fail("rec_parse_header failed without a message");
    }
  }
  free(a);
  free(b);
  free(d);
  dbx_buf_free(&whole);
  dbx_buf_free(&parts);
  return 0;
}
