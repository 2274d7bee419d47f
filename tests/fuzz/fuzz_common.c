/* fuzz_common.c -- helpers shared by the libFuzzer targets (see fuzz_common.h). */
#define _GNU_SOURCE 1  /* memfd_create */
#include "fuzz_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io/corpus.h"

void fuzz_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fuzz invariant broken: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  abort();
}

const char *fuzz_file(const void *p, size_t n) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("dbx-fuzz", MFD_CLOEXEC);
    if (fd < 0) fuzz_fail("memfd_create failed");
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) != 0) fuzz_fail("ftruncate failed");
  size_t done = 0;
  while (done < n) {
    ssize_t k = pwrite(fd, (const char *)p + done, n - done, (off_t)done);
    if (k <= 0) fuzz_fail("pwrite to the scratch file failed");
    done += (size_t)k;
  }
  return path;
}

volatile unsigned char fuzz_sink;

void fuzz_touch(const void *p, size_t n) {
  const unsigned char *c = p;
  unsigned char x = 0;
  for (size_t i = 0; i < n; i++) x ^= c[i];
  fuzz_sink ^= x;
}

int fuzz_emit(void *ctx, const dbx_value *row, dbx_err *err) {
  fuzz_rows *r = ctx;
  for (uint32_t i = 0; i < r->ntext; i++) fuzz_touch(row[i].s, row[i].n);
  r->rows++;
  return 0;
}

void fuzz_batch_make(fuzz_batch *fb, const char *p, size_t n, const char *path) {
  fb->data.len = 0;
  if (dbx_buf_append(&fb->data, n ? p : "", n)) fuzz_fail("out of memory");
  if (n && p[n - 1] != '\n' && dbx_buf_append(&fb->data, "\n", 1)) fuzz_fail("out of memory");
  if (!fb->data.data && dbx_buf_reserve(&fb->data, 1)) fuzz_fail("out of memory");
  memset(&fb->seg, 0, sizeof fb->seg);
  fb->seg.path = path;
  fb->seg.input = 0;
  fb->seg.off = 0;
  fb->seg.len = n;
  fb->seg.rec_first = 0;
  fb->seg.rec_count = DBX_UNKNOWN;
  fb->seg.data_off = 0;
  fb->seg.data_len = fb->data.len;
  fb->view.index = 0;
  fb->view.nseg = 1;
  fb->view.seg = &fb->seg;
  fb->view.data = fb->data.data;
  fb->view.size = fb->data.len;
}

void fuzz_batch_free(fuzz_batch *fb) { dbx_buf_free(&fb->data); }

void fuzz_envelope(uint32_t ninputs, const char *payload, size_t n, dbx_buf *out) {
  input v[8];
  corpus c;
  memset(&c, 0, sizeof c);
  memset(v, 0, sizeof v);
  if (ninputs > 8) ninputs = 8;
  for (uint32_t i = 0; i < ninputs; i++) v[i].path = (char *)"corpus.tsv";
  c.format = CORPUS_TSV;
  c.in.v = v;
  c.in.n = ninputs;
  if (nb_envelope(&c, payload, n, out)) fuzz_fail("nb_envelope failed");
}

static const char train_tsv[] =
    "spam\tbuy cheap pills now, cheap cheap\n"
    "ham\tmeeting notes for the project review\n"
    "spam\twin money now click here\n"
    "eggs\tbreakfast with eggs and toast\n"
    "ham\tthe review of the project is on monday\n"
    "eggs\tscrambled eggs, fried eggs, boiled eggs\n";

const fuzz_nb *fuzz_nb_get(void) {
  static fuzz_nb nb;
  static int ready;
  if (ready) return &nb;
  dbx_err err = {0, ""};
  nb.cfg.format = CORPUS_TSV;
  nb.train = train_tsv;
  fuzz_batch fb = {0};
  fuzz_batch_make(&fb, train_tsv, sizeof train_tsv - 1, "train.tsv");
  dbx_stats st = {0, 0, ""};

  fuzz_envelope(1, NULL, 0, &nb.env_none);
  if (op_nb_vocab.bcast_load(&nb.cfg, nb.env_none.data, nb.env_none.len, &nb.bc_none, &err)) goto fail;
  void *vp = op_nb_vocab.partial_new(&nb.cfg);
  if (!vp || op_nb_vocab.map(&nb.cfg, nb.bc_none, &fb.view, vp, &st, &err) ||
      op_nb_vocab.encode(&nb.cfg, vp, &nb.part_vocab, &err) ||
      op_nb_vocab.finish(&nb.cfg, nb.bc_none, vp, NULL, NULL, &nb.vocab, &err))
    goto fail;
  op_nb_vocab.partial_free(vp);

  fuzz_envelope(1, nb.vocab.data, nb.vocab.len, &nb.env_vocab);
  if (op_nb_fit.bcast_load(&nb.cfg, nb.env_vocab.data, nb.env_vocab.len, &nb.bc_vocab, &err)) goto fail;
  void *fp = op_nb_fit.partial_new(&nb.cfg);
  if (!fp || op_nb_fit.map(&nb.cfg, nb.bc_vocab, &fb.view, fp, &st, &err) ||
      op_nb_fit.encode(&nb.cfg, fp, &nb.part_fit, &err) ||
      op_nb_fit.finish(&nb.cfg, nb.bc_vocab, fp, NULL, NULL, &nb.model, &err))
    goto fail;
  op_nb_fit.partial_free(fp);

  fuzz_envelope(1, nb.model.data, nb.model.len, &nb.env_model);
  if (op_nb_predict.bcast_load(&nb.cfg, nb.env_model.data, nb.env_model.len, &nb.bc_model, &err)) goto fail;
  void *pp = op_nb_predict.partial_new(&nb.cfg);
  if (!pp || op_nb_predict.map(&nb.cfg, nb.bc_model, &fb.view, pp, &st, &err) ||
      op_nb_predict.encode(&nb.cfg, pp, &nb.part_predict, &err))
    goto fail;
  op_nb_predict.partial_free(pp);
  fuzz_batch_free(&fb);
  ready = 1;
  return &nb;
fail:
  fuzz_fail("training the fixed naive Bayes corpus failed: %s", err.msg);
}
