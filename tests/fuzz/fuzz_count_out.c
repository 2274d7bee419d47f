/* fuzz_count_out.c -- word count's output stage on hostile bytes: the ranges broadcast to
 * output tasks (op_count_output's bcast_load, then the merge of those ranges of two by-count
 * files), a by-count file itself (count_stream_open), and the trailer of an output task's
 * file (count_out_check). The first byte picks which.
 *
 * Invariants besides memory safety: the ranges count_split makes for the fixed files, merged
 * task after task, are the rows of the whole merge (checked once, at start); a trailer that
 * checks out says the bytes before it. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/shuffle.h"
#include "fuzz_common.h"

static kv_part_cfg PC, ONE;  /* two fixed partitions; one partition the fuzz bytes fill */

static void put_entry(FILE *f, uint64_t c, const char *k, size_t n) {
  unsigned char h[12];
  for (int i = 0; i < 8; i++) h[i] = (unsigned char)(c >> (8 * i));
  for (int i = 0; i < 4; i++) h[8 + i] = (unsigned char)(n >> (8 * i));
  if (fwrite(h, 1, 12, f) != 12 || fwrite(k, 1, n, f) != n) fuzz_fail("cannot write a by-count file");
}

/* Every row of [from, to) (NULL: the whole files), key and count appended to out. */
static int rows_of(const kv_part_cfg *pc, const uint64_t *from, const uint64_t *to, dbx_buf *out) {
  count_stream *cs = NULL;
  dbx_err err = {0, ""};
  int rc = from ? count_stream_open_range(pc, from, to, &cs, &err) : count_stream_open(pc, &cs, &err);
  while (!rc) {
    const char *k;
    size_t n;
    uint64_t c;
    int r = count_stream_next(cs, &k, &n, &c, &err);
    if (r <= 0) {
      rc = r;
      break;
    }
    fuzz_touch(k, n);
    if (out && (dbx_buf_append(out, k, n) || dbx_buf_append(out, &c, sizeof c))) fuzz_fail("out of memory");
  }
  count_stream_close(cs);
  return rc;
}

static void setup(void) {
  static char dir[] = "/tmp/fuzz_count_out-XXXXXX", one[] = "/tmp/fuzz_count_out1-XXXXXX";
  if (!mkdtemp(dir) || !mkdtemp(one)) fuzz_fail("mkdtemp");
  PC.r = 2;
  snprintf(PC.dir, sizeof PC.dir, "%s", dir);
  ONE.r = 1;
  snprintf(ONE.dir, sizeof ONE.dir, "%s", one);
  /* Counts 5..1, keys that share 8-byte prefixes and hold zero bytes, dealt to partitions. */
  static const char *const keys[] = {"a", "a\0", "abcdefgh", "abcdefgh\0", "abcdefghi", "b", "zz", "\xff"};
  static const size_t lens[] = {1, 2, 8, 9, 9, 1, 2, 1};  /* in memcmp order */
  FILE *f[2];
  for (int r = 0; r < 2; r++) {
    char path[600];
    snprintf(path, sizeof path, "%s/s0-c%d.kv", dir, r);
    if (!(f[r] = fopen(path, "wb")) || fwrite("DBWC", 1, 4, f[r]) != 4) fuzz_fail("cannot write %s", path);
  }
  int i = 0;
  for (uint64_t c = 5; c >= 1; c--)
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++, i++) put_entry(f[(i * 5 / 3) % 2], c, keys[k], lens[k]);
  fclose(f[0]);
  fclose(f[1]);
  /* The invariant: count_split's ranges, merged in task order, are the whole merge. */
  dbx_buf whole = {0}, pieces = {0};
  if (rows_of(&PC, NULL, NULL, &whole)) fuzz_fail("the fixed by-count files do not merge");
  for (uint32_t T = 1; T <= 5; T++) {
    uint64_t off[6 * 2], rows = 0;
    dbx_err err = {0, ""};
    if (count_split(&PC, T, off, &rows, &err)) fuzz_fail("count_split: %s", err.msg);
    if (rows != 40) fuzz_fail("count_split counted %llu rows, not 40", (unsigned long long)rows);
    pieces.len = 0;
    for (uint32_t t = 0; t < T; t++)
      if (rows_of(&PC, off + t * 2, off + (t + 1) * 2, &pieces)) fuzz_fail("task %u's range does not merge", t);
    if (pieces.len != whole.len || memcmp(pieces.data, whole.data, whole.len))
      fuzz_fail("%u ranges do not make the whole merge", T);
  }
  dbx_buf_free(&whole);
  dbx_buf_free(&pieces);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) setup(), ready = 1;
  if (size < 1) return 0;
  const char *p = (const char *)data + 1;
  size_t n = size - 1;
  switch (data[0] % 3) {
  case 0: {  /* the ranges, as an output task loads them, then merged */
    count_out_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.pc = PC;
    cfg.ntasks = 3;
    cfg.fmt = n ? (unsigned char)p[0] % 4 : 0;  /* 3: refused */
    void *bc = NULL;
    dbx_err err = {0, ""};
    if (op_count_output.bcast_load(&cfg, p, n, &bc, &err)) return 0;
    const uint64_t *off = bc;
    for (uint32_t t = 0; t < 3; t++) (void)rows_of(&PC, off + t * 2, off + (t + 1) * 2, NULL);
    op_count_output.bcast_free(bc);
    break;
  }
  case 1: {  /* a by-count file */
    char path[600];
    snprintf(path, sizeof path, "%s/s0-c0.kv", ONE.dir);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n)) fuzz_fail("cannot write %s", path);
    fclose(f);
    (void)rows_of(&ONE, NULL, NULL, NULL);
    break;
  }
  default: {  /* an output task's file and its trailer */
    int fd = open(fuzz_file(p, n), O_RDONLY);
    if (fd < 0) fuzz_fail("cannot open the scratch file");
    uint64_t rows, bytes;
    if (!count_out_check(fd, &rows, &bytes) && bytes + COUNT_OUT_TRAILER != n)
      fuzz_fail("a trailer checked out saying %llu bytes of %zu", (unsigned long long)bytes, n);
    close(fd);
    break;
  }
  }
  return 0;
}
