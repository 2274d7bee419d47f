/* fuzz_reader.c -- the streaming .gz / .zst readers (reader_read) on hostile compressed files,
 * read with buffers of several sizes; then the same file cut into shipped batches of two lines
 * by the splitter and loaded by the loader, as for a streamed input.
 * Invariants: the decompressed bytes do not depend on the buffer size; the batches hold
 * exactly those bytes (lines completed with a newline), each segment its own share.
 * Built per kind (-DFUZZ_KIND=IN_GZ|IN_ZST). */
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>

#include "fuzz_common.h"
#include "io/batch.h"
#include "io/input.h"
#include "io/reader.h"

#ifndef FUZZ_KIND
#error "build with -DFUZZ_KIND=IN_GZ or IN_ZST"
#endif

/* Beyond this many decompressed bytes an input is only read, not checked further: a small
 * file may expand a thousandfold, and the fuzzer should spend its time elsewhere. */
#define LIMIT (8u << 20)

/* Read the whole input with reads of at most cap bytes into out. 0, or the reader's error;
 * 1 when LIMIT was reached. */
static int read_all(const input *in, size_t cap, dbx_buf *out) {
  reader *r = NULL;
  dbx_err err = {0, ""};
  char *buf = malloc(cap);
  int rc;
  if (!buf) fuzz_fail("out of memory");
  out->len = 0;
  if ((rc = reader_open(in, &r, &err))) fuzz_fail("cannot open the scratch file: %s", err.msg);
  for (;;) {
    size_t got = 0;
    if ((rc = reader_read(r, buf, cap, &got, &err))) {
      if (!strstr(err.msg, in->path)) fuzz_fail("a read error that does not name the file: %s", err.msg);
      break;
    }
    if (got > cap) fuzz_fail("read %zu bytes into %zu", got, cap);
    if (got == 0) break;
    if (dbx_buf_append(out, buf, got)) fuzz_fail("out of memory");
    if (out->len > LIMIT) { rc = 1; break; }
  }
  reader_close(r);
  free(buf);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input in;
  memset(&in, 0, sizeof in);
  in.path = (char *)fuzz_file(data, size);
  in.kind = FUZZ_KIND;
  /* Planned as dbatch plans a file: size, modification time and identity, which every read
   * checks. */
  struct stat st;
  if (stat(in.path, &st) != 0) fuzz_fail("cannot stat the scratch file");
  input_set_stat(&in, &st);
  static const size_t caps[] = {65536, 1, 7};
  dbx_buf whole = {0}, other = {0}, got = {0};
  int rc0 = read_all(&in, caps[0], &whole);
  if (rc0 == 0) {
    for (int i = 1; i < 3; i++) {
      if (read_all(&in, caps[i], &other) != 0)
        fuzz_fail("the stream reads with %zu-byte buffers but fails with %zu-byte ones", caps[0], caps[i]);
      if (other.len != whole.len || (whole.len && memcmp(other.data, whole.data, whole.len)))
        fuzz_fail("%zu bytes with %zu-byte reads, %zu with %zu-byte reads", whole.len, caps[0], other.len, caps[i]);
    }
    /* What the splitter must ship: the lines, the last one completed with a newline. */
    if (whole.len && whole.data[whole.len - 1] != '\n' && dbx_buf_append(&whole, "\n", 1)) fuzz_fail("out of memory");
    inputs ins = {&in, 1};
    split_opts so = {0, 2, 0, 0, 0};
    splitter *sp = NULL;
    loader *ld = loader_new();
    dbx_err err = {0, ""};
    const char *paths[1] = {in.path};
    if (!ld || splitter_new(&ins, &so, &sp, &err)) fuzz_fail("splitter_new: %s", err.msg);
    batchdesc b;
    int k;
    while ((k = splitter_next(sp, &b, &err)) == 1) {
      dbx_batch view;
      if (!b.shipped) fuzz_fail("a compressed input cut into batches by reference");
      if (loader_load(ld, &b, paths, &view, &err)) fuzz_fail("loading a shipped batch: %s", err.msg);
      size_t sum = 0;
      for (uint32_t i = 0; i < view.nseg; i++) {
        if (view.seg[i].data_off != sum) fuzz_fail("segment %u starts at %zu, not %zu", i, view.seg[i].data_off, sum);
        sum += view.seg[i].data_len;
      }
      if (sum != view.size) fuzz_fail("segments hold %zu bytes of a %zu-byte batch", sum, view.size);
      if (view.size && dbx_buf_append(&got, view.data, view.size)) fuzz_fail("out of memory");
      batchdesc_free(&b);
    }
    if (k < 0) fuzz_fail("the splitter fails on a stream the reader reads: %s", err.msg);
    if (got.len != whole.len || (got.len && memcmp(got.data, whole.data, got.len)))
      fuzz_fail("the batches hold %zu bytes, the stream %zu", got.len, whole.len);
    splitter_free(sp);
    loader_free(ld);
  }
  dbx_buf_free(&whole);
  dbx_buf_free(&other);
  dbx_buf_free(&got);
  return 0;
}
