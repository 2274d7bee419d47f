/* fuzz_wire.c -- the wire-message decoder (msg_decode) and what a worker does with what it
 * decodes: a STAGE sets up the operator, its configuration and broadcast; a TASK is loaded
 * (shipped bytes, or byte ranges of a real file) and mapped; a RESULT's partial is decoded as
 * the coordinator would.
 *
 * Input: a sequence of frames, each a 2-byte little-endian length and that many bytes (the
 * last frame takes what is left). Before any STAGE, tasks run under a word count stage with
 * two inputs. Every input path is the same small TSV file: the fuzzer must not open files it
 * names itself. The noop operator's tasks are not run: noop sleeps as long as its
 * configuration says (a benchmark aid). */
#include <stdlib.h>
#include <string.h>

#include "engine/job.h"
#include "fuzz_common.h"
#include "net/proto.h"

typedef struct fstage {
  const dbx_op *op;
  char *cfg;
  void *bcast;
  uint32_t npaths;
} fstage;

static const char file_text[] =
    "spam\tbuy cheap pills now\nham\tmeeting notes for the review\n"
    "eggs\tfried eggs and toast\nno tab on this line\n\nspam\twin money";
static const char *file_path;

static void stage_free(fstage *s) {
  if (s->bcast) s->op->bcast_free(s->bcast);
  free(s->cfg);
  memset(s, 0, sizeof *s);
}

/* As the worker's make_stage(): op by name, configuration of the op's size, broadcast loaded
 * when one was sent. 0 or -1 (the worker refuses the stage). */
static int stage_make(fstage *s, const msg *m) {
  char name[64];
  dbx_err err = {0, ""};
  snprintf(name, sizeof name, "%.*s", (int)(m->op_len < 63 ? m->op_len : 63), m->op);
  const dbx_op *op = ops_find(name);
  if (!op || m->cfg_len != op->cfg_size) return -1;
  stage_free(s);
  s->op = op;
  s->cfg = malloc(m->cfg_len + 1);
  if (!s->cfg) fuzz_fail("out of memory");
  if (m->cfg_len) memcpy(s->cfg, m->cfg, m->cfg_len);
  s->npaths = m->npaths;
  fuzz_touch(m->paths, m->npaths * sizeof *m->paths);
  if (op->bcast_load && m->bcast_len && op->bcast_load(s->cfg, m->bcast, m->bcast_len, &s->bcast, &err)) {
    s->bcast = NULL;
    stage_free(s);
    return -1;
  }
  return 0;
}

static void stage_default(fstage *s) {
  stage_free(s);
  s->op = &op_wordcount;
  s->cfg = calloc(1, sizeof(wc_cfg));
  if (!s->cfg) fuzz_fail("out of memory");
  s->npaths = 2;
}

/* As the worker's run_item(): inputs checked against the stage, the batch mapped, the partial
 * encoded; then decoded as the coordinator does. */
static void run_task(const fstage *s, const msg *m, loader *ld) {
  dbx_err err = {0, ""};
  for (uint32_t i = 0; i < m->batch.nseg; i++)
    if (m->batch.seg[i].input >= s->npaths) return;
  if (s->op == &op_noop) return;
  const char **paths = malloc((s->npaths ? s->npaths : 1) * sizeof *paths);
  if (!paths) fuzz_fail("out of memory");
  for (uint32_t i = 0; i < s->npaths; i++) paths[i] = file_path;
  void *part = NULL;
  dbx_stats st = {0, 0, ""};
  uint64_t bytes = 0;
  if (engine_map_task(s->op, s->cfg, s->bcast, ld, &m->batch, paths, &part, &st, &bytes, &err) == 0) {
    dbx_buf enc = {0};
    void *back = NULL;
    if (s->op->encode(s->cfg, part, &enc, &err) || s->op->decode(s->cfg, enc.data, enc.len, &back, &err))
      fuzz_fail("%s: the partial of a task does not survive encode + decode: %s", s->op->name, err.msg);
    s->op->partial_free(back);
    s->op->partial_free(part);
    dbx_buf_free(&enc);
  }
  free(paths);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  /* The scratch file is written once and never again in this target. */
  file_path = strdup(fuzz_file(file_text, sizeof file_text - 1));
  fuzz_nb_get();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fstage s = {0};
  stage_default(&s);
  loader *ld = loader_new();
  if (!ld) fuzz_fail("out of memory");
  size_t pos = 0;
  while (pos < size) {
    size_t n = size - pos >= 2 ? (size_t)data[pos] | (size_t)data[pos + 1] << 8 : 0;
    pos += size - pos >= 2 ? 2 : size - pos;
    if (n > size - pos) n = size - pos;
    /* A frame of its own, so a read past its end is seen even mid-input. */
    char *frame = malloc(n ? n : 1);
    if (!frame) fuzz_fail("out of memory");
    memcpy(frame, data + pos, n);
    pos += n;
    msg m;
    dbx_err err = {0, ""};
    if (msg_decode(frame, n, &m, &err) == 0) {
      fuzz_touch(msg_type_name((int)m.type), 1);
      /* Relayed files: every name decoded is one a worker or the coordinator may create. */
      for (uint32_t i = 0; m.has_files && i < m.nfiles; i++) {
        msg_file f;
        msg_file_at(&m, i, &f);
        if (!msg_file_name_ok(f.name, f.name_len) || memchr(f.name, '/', f.name_len)) fuzz_fail("a relayed file name that climbs out");
        fuzz_touch(f.data, f.len);
      }
      switch (m.type) {
      case MSG_STAGE: stage_make(&s, &m); break;
      case MSG_TASK: if (s.op) run_task(&s, &m, ld); break;
      case MSG_RESULT:
        if (s.op) {
          void *part = NULL;
          if (s.op->decode(s.cfg, m.partial, m.partial_len, &part, &err) == 0) s.op->partial_free(part);
        }
        break;
      case MSG_HELLO: fuzz_touch(m.host, m.host_len); break;
      case MSG_REFUSE: case MSG_FAILURE: fuzz_touch(m.text, m.text_len); break;
      default: break;
      }
      msg_free(&m);
    } else if (err.code == 0) {
      fuzz_fail("msg_decode failed without saying why");
    }
    free(frame);
  }
  loader_free(ld);
  stage_free(&s);
  return 0;
}
