/* proto.c -- encoding and bounds-checked decoding of protocol messages with msgpack-c. */
#include "net/proto.h"
#include "util/mpk.h"

#include <stdlib.h>
#include <string.h>

/* Clear out and start a message; the encoders end with mpk_close(), which fails with
 * DBX_ENOMEM (and leaves out empty) if any write failed: a caller never sends half a message. */
static msgpack_packer *head(mpk *m, dbx_buf *out, msg_type t, uint32_t nfields) {
  out->len = 0;
  msgpack_packer *pk = mpk_open(m, out);
  msgpack_pack_array(pk, 3 + nfields);
  msgpack_pack_str_with_body(pk, "DBX", 3);
  msgpack_pack_uint64(pk, PROTO_VERSION);
  msgpack_pack_uint64(pk, (uint64_t)t);
  return pk;
}

/* msgpack bin and str lengths are 32-bit: a longer one cannot be encoded (the frame limit,
 * --max-message, is lower anyway). */
static int too_big(dbx_buf *out, size_t n) {
  out->len = 0;
  return n > UINT32_MAX ? DBX_EINVAL : 0;
}

static void pack_str(msgpack_packer *pk, const char *s) {
  size_t n = s ? strlen(s) : 0;
  msgpack_pack_str_with_body(pk, s ? s : "", n);
}

int msg_hello(dbx_buf *out, uint64_t slots, const char *host, uint64_t pid, int shared_fs) {
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_HELLO, 4);
  msgpack_pack_uint64(pk, slots);
  pack_str(pk, host);
  msgpack_pack_uint64(pk, pid);
  if (shared_fs) msgpack_pack_true(pk); else msgpack_pack_false(pk);
  return mpk_close(&m);
}

int msg_welcome(dbx_buf *out, uint64_t worker_id, uint64_t heartbeat_ms, uint64_t max_msg) {
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_WELCOME, 3);
  msgpack_pack_uint64(pk, worker_id);
  msgpack_pack_uint64(pk, heartbeat_ms);
  msgpack_pack_uint64(pk, max_msg);
  return mpk_close(&m);
}

int msg_refuse(dbx_buf *out, const char *reason) {
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_REFUSE, 1);
  pack_str(pk, reason);
  return mpk_close(&m);
}

int msg_stage_plugin(dbx_buf *out, uint64_t stage, const char *op, const void *cfg, size_t cfg_len,
                     const char *bcast, size_t bcast_len, const char *const *paths, uint32_t npaths,
                     const msg_plugin *pl, const msg_ident *ident) {
  if (too_big(out, bcast_len) || too_big(out, cfg_len) || (pl && too_big(out, pl->len)) ||
      (ident && too_big(out, (size_t)npaths * 16)))
    return DBX_EINVAL;
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_STAGE, ident ? 7 : pl ? 6 : 5);
  msgpack_pack_uint64(pk, stage);
  pack_str(pk, op);
  msgpack_pack_bin_with_body(pk, cfg_len ? cfg : "", cfg_len);
  msgpack_pack_bin_with_body(pk, bcast_len ? bcast : "", bcast_len);
  msgpack_pack_array(pk, npaths);
  for (uint32_t i = 0; i < npaths; i++) pack_str(pk, paths[i]);
  if (pl) {
    msgpack_pack_array(pk, 3);
    pack_str(pk, pl->label);
    msgpack_pack_uint64(pk, pl->xxh64);
    msgpack_pack_bin_with_body(pk, pl->len ? pl->bytes : "", pl->len);
  } else if (ident) {
    msgpack_pack_nil(pk);
  }
  if (ident) {
    msgpack_pack_bin(pk, (size_t)npaths * 16);
    for (uint32_t i = 0; i < npaths; i++) {
      unsigned char b[16];
      uint64_t sz = ident->size[i], mt = (uint64_t)ident->mtime_ns[i];
      for (int k = 0; k < 8; k++) b[k] = (unsigned char)(sz >> (8 * k)), b[8 + k] = (unsigned char)(mt >> (8 * k));
      msgpack_pack_bin_body(pk, b, 16);
    }
  }
  return mpk_close(&m);
}

int msg_stage(dbx_buf *out, uint64_t stage, const char *op, const void *cfg, size_t cfg_len, const char *bcast,
              size_t bcast_len, const char *const *paths, uint32_t npaths) {
  return msg_stage_plugin(out, stage, op, cfg, cfg_len, bcast, bcast_len, paths, npaths, NULL, NULL);
}

int msg_file_name_ok(const char *name, size_t n) {
  if (n == 0 || n > PROTO_FILE_NAME_MAX || name[0] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
          c == '-'))
      return 0;
  }
  return 1;
}

/* [[name, bytes], ...] */
static int pack_files(msgpack_packer *pk, const msg_file *files, uint32_t n) {
  if (n > PROTO_MAX_FILES) return DBX_EINVAL;
  msgpack_pack_array(pk, n);
  for (uint32_t i = 0; i < n; i++) {
    if (!msg_file_name_ok(files[i].name, files[i].name_len) || files[i].len > UINT32_MAX) return DBX_EINVAL;
    msgpack_pack_array(pk, 2);
    msgpack_pack_str_with_body(pk, files[i].name, files[i].name_len);
    msgpack_pack_bin_with_body(pk, files[i].len ? files[i].data : "", files[i].len);
  }
  return 0;
}

static int task_msg(dbx_buf *out, uint64_t stage, uint64_t attempt, const batchdesc *b, int with_files,
                    const msg_file *files, uint32_t nfiles) {
  if (too_big(out, b->shipped ? b->data.len : 0)) return DBX_EINVAL;
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_TASK, 7 + (uint32_t)with_files);
  msgpack_pack_uint64(pk, stage);
  msgpack_pack_uint64(pk, b->index);
  msgpack_pack_uint64(pk, attempt);
  msgpack_pack_array(pk, b->nseg);
  for (uint32_t i = 0; i < b->nseg; i++) {
    const bseg *s = &b->seg[i];
    msgpack_pack_array(pk, 6);
    msgpack_pack_uint64(pk, s->input);
    msgpack_pack_uint64(pk, s->off);
    msgpack_pack_uint64(pk, s->len);
    msgpack_pack_uint64(pk, s->rec_first);
    msgpack_pack_uint64(pk, s->rec_count);
    msgpack_pack_uint64(pk, s->dlen);
  }
  if (b->shipped) msgpack_pack_true(pk); else msgpack_pack_false(pk);
  msgpack_pack_bin_with_body(pk, b->shipped && b->data.len ? b->data.data : "", b->shipped ? b->data.len : 0);
  if (b->whole) msgpack_pack_true(pk); else msgpack_pack_false(pk);
  int rc = with_files ? pack_files(pk, files, nfiles) : 0;
  int rc2 = mpk_close(&m);
  if (rc) out->len = 0;
  return rc ? rc : rc2;
}

int msg_task(dbx_buf *out, uint64_t stage, uint64_t attempt, const batchdesc *b) {
  return task_msg(out, stage, attempt, b, 0, NULL, 0);
}

int msg_task_files(dbx_buf *out, uint64_t stage, uint64_t attempt, const batchdesc *b, const msg_file *files,
                   uint32_t nfiles) {
  return task_msg(out, stage, attempt, b, 1, files, nfiles);
}

static int result_msg(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt, uint64_t records, uint64_t bad,
                      const char *bad_note, uint64_t bytes, double map_seconds, const char *partial,
                      size_t partial_len, int with_files, const msg_file *files, uint32_t nfiles) {
  if (too_big(out, partial_len)) return DBX_EINVAL;
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_RESULT, 9 + (uint32_t)with_files);
  msgpack_pack_uint64(pk, stage);
  msgpack_pack_uint64(pk, index);
  msgpack_pack_uint64(pk, attempt);
  msgpack_pack_uint64(pk, records);
  msgpack_pack_uint64(pk, bad);
  msgpack_pack_uint64(pk, bytes);
  msgpack_pack_double(pk, map_seconds);
  msgpack_pack_bin_with_body(pk, partial_len ? partial : "", partial_len);
  pack_str(pk, bad_note);
  int rc = with_files ? pack_files(pk, files, nfiles) : 0;
  int rc2 = mpk_close(&m);
  if (rc) out->len = 0;
  return rc ? rc : rc2;
}

int msg_result(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt,
               uint64_t records, uint64_t bad, const char *bad_note, uint64_t bytes,
               double map_seconds, const char *partial, size_t partial_len) {
  return result_msg(out, stage, index, attempt, records, bad, bad_note, bytes, map_seconds, partial, partial_len, 0,
                    NULL, 0);
}

int msg_result_files(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt, uint64_t records, uint64_t bad,
                     const char *bad_note, uint64_t bytes, double map_seconds, const char *partial,
                     size_t partial_len, const msg_file *files, uint32_t nfiles) {
  return result_msg(out, stage, index, attempt, records, bad, bad_note, bytes, map_seconds, partial, partial_len, 1,
                    files, nfiles);
}

void msg_file_at(const msg *m, uint32_t i, msg_file *f) {
  const msgpack_object *v = m->files[i].via.array.ptr;
  f->name = v[0].via.str.ptr;
  f->name_len = v[0].via.str.size;
  f->data = v[1].via.bin.ptr;
  f->len = v[1].via.bin.size;
}

int msg_failure(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt, int64_t code,
                const char *text) {
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_FAILURE, 5);
  msgpack_pack_uint64(pk, stage);
  msgpack_pack_uint64(pk, index);
  msgpack_pack_uint64(pk, attempt);
  msgpack_pack_int64(pk, code);
  pack_str(pk, text);
  return mpk_close(&m);
}

int msg_simple(dbx_buf *out, msg_type type) {
  mpk m;
  head(&m, out, type, 0);
  return mpk_close(&m);
}

int msg_heartbeat(dbx_buf *out, uint64_t cpu_ms, uint64_t rss, uint64_t peak_rss) {
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_HEARTBEAT, 3);
  msgpack_pack_uint64(pk, cpu_ms);
  msgpack_pack_uint64(pk, rss);
  msgpack_pack_uint64(pk, peak_rss);
  return mpk_close(&m);
}

int msg_cancel(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt) {
  mpk m;
  msgpack_packer *pk = head(&m, out, MSG_CANCEL, 3);
  msgpack_pack_uint64(pk, stage);
  msgpack_pack_uint64(pk, index);
  msgpack_pack_uint64(pk, attempt);
  return mpk_close(&m);
}

/* ---- decoding ---- */

static const char *const type_names[] = {
    "?", "hello", "welcome", "refuse", "stage", "task", "result", "failure", "heartbeat",
    "cancel", "bye", "rehello",
};

const char *msg_type_name(int t) { return t > 0 && t < MSG_TYPE_MAX ? type_names[t] : "unknown"; }

/* Field readers: each checks the object's type. */
static int get_u64(const msgpack_object *o, uint64_t *v) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return -1;
  *v = o->via.u64;
  return 0;
}

static int get_i64(const msgpack_object *o, int64_t *v) {
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) { *v = (int64_t)o->via.u64; return 0; }
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *v = o->via.i64; return 0; }
  return -1;
}

static int get_str(const msgpack_object *o, const char **p, size_t *n) {
  if (o->type != MSGPACK_OBJECT_STR) return -1;
  *p = o->via.str.ptr;
  *n = o->via.str.size;
  return 0;
}

static int get_bin(const msgpack_object *o, const char **p, size_t *n) {
  if (o->type != MSGPACK_OBJECT_BIN) return -1;
  *p = o->via.bin.ptr;
  *n = o->via.bin.size;
  return 0;
}

static int get_bool(const msgpack_object *o, int *v) {
  if (o->type != MSGPACK_OBJECT_BOOLEAN) return -1;
  *v = o->via.boolean;
  return 0;
}

static int get_double(const msgpack_object *o, double *v) {
  if (o->type != MSGPACK_OBJECT_FLOAT64 && o->type != MSGPACK_OBJECT_FLOAT32) return -1;
  *v = o->via.f64;
  return 0;
}

static const uint32_t nfields[MSG_TYPE_MAX] = {
    [MSG_HELLO] = 4, [MSG_WELCOME] = 2, [MSG_REFUSE] = 1, [MSG_STAGE] = 5, [MSG_TASK] = 7,
    [MSG_RESULT] = 9, [MSG_FAILURE] = 5, [MSG_HEARTBEAT] = 0, [MSG_CANCEL] = 3, [MSG_BYE] = 0,
    [MSG_REHELLO] = 0,
};

/* An optional list of relayed files: [[name (str, msg_file_name_ok), bytes (bin)], ...]. */
static int decode_files(const msgpack_object *o, msg *m) {
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > PROTO_MAX_FILES) return -1;
  for (uint32_t i = 0; i < o->via.array.size; i++) {
    const msgpack_object *e = &o->via.array.ptr[i];
    if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2) return -1;
    const msgpack_object *v = e->via.array.ptr;
    if (v[0].type != MSGPACK_OBJECT_STR || !msg_file_name_ok(v[0].via.str.ptr, v[0].via.str.size) ||
        v[1].type != MSGPACK_OBJECT_BIN)
      return -1;
  }
  m->has_files = 1;
  m->nfiles = o->via.array.size;
  m->files = o->via.array.ptr;
  return 0;
}

static int decode_task(const msgpack_object *f, msg *m) {
  if (get_u64(&f[0], &m->stage) || get_u64(&f[1], &m->index) || get_u64(&f[2], &m->attempt)) return -1;
  if (m->index > UINT32_MAX) return -1;
  m->ids_ok = 1;
  if (f[3].type != MSGPACK_OBJECT_ARRAY || f[3].via.array.size > PROTO_MAX_SEGS) return -1;
  uint32_t n = f[3].via.array.size;
  batchdesc *b = &m->batch;
  b->index = (uint32_t)m->index;
  b->nseg = n;
  b->seg = n ? calloc(n, sizeof *b->seg) : NULL;
  if (n && !b->seg) return -1;
  for (uint32_t i = 0; i < n; i++) {
    const msgpack_object *s = &f[3].via.array.ptr[i];
    if (s->type != MSGPACK_OBJECT_ARRAY || s->via.array.size != 6) return -1;
    const msgpack_object *v = s->via.array.ptr;
    uint64_t in_idx;
    bseg *g = &b->seg[i];
    if (get_u64(&v[0], &in_idx) || in_idx > UINT32_MAX || get_u64(&v[1], &g->off) ||
        get_u64(&v[2], &g->len) || get_u64(&v[3], &g->rec_first) || get_u64(&v[4], &g->rec_count) ||
        get_u64(&v[5], &g->dlen))
      return -1;
    if (g->off + g->len < g->off) return -1;
    /* A known record range stays within what a file can hold (line numbers are computed
     * from it, and a partial naming line 2^63 is refused as impossible). */
    if ((g->rec_first != DBX_UNKNOWN && g->rec_first > PROTO_MAX_RECORD) ||
        (g->rec_count != DBX_UNKNOWN && g->rec_count > PROTO_MAX_RECORD))
      return -1;
    g->input = (uint32_t)in_idx;
  }
  const char *data;
  size_t dn;
  if (get_bool(&f[4], &b->shipped) || get_bin(&f[5], &data, &dn) || get_bool(&f[6], &b->whole)) return -1;
  if (b->shipped) {
    /* The shipped bytes are borrowed from the frame: data.cap = 0 marks them not owned. */
    b->data.data = (char *)data;
    b->data.len = dn;
    b->data.cap = 0;
    /* Every length is checked against what is left, so a sum that wraps around 2^64 cannot
     * pass as the length of data. */
    uint64_t left = dn;
    for (uint32_t i = 0; i < n; i++) {
      if (b->seg[i].dlen > left) return -1;
      left -= b->seg[i].dlen;
    }
    if (left) return -1;
  } else {
    if (dn) return -1;  /* a batch by reference carries no bytes: the worker reads each range */
  }
  return 0;
}

int msg_decode(const char *p, size_t n, msg *m, dbx_err *err) {
  memset(m, 0, sizeof *m);
  msgpack_unpacked_init(&m->u);
  size_t off = 0;
  const char *why = "not a msgpack message";
  if (msgpack_unpack_next(&m->u, p, n, &off) != MSGPACK_UNPACK_SUCCESS || off != n) goto bad;
  const msgpack_object *o = &m->u.data;
  why = "not a dbatch message";
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 3) goto bad;
  const msgpack_object *a = o->via.array.ptr;
  const char *magic;
  size_t ml;
  uint64_t type;
  if (get_str(&a[0], &magic, &ml) || ml != 3 || memcmp(magic, "DBX", 3)) goto bad;
  if (get_u64(&a[1], &m->version) || get_u64(&a[2], &type)) goto bad;
  if (m->version != PROTO_VERSION) {
    /* Keep the type: a HELLO of another version gets a clear refusal. */
    m->type = type < MSG_TYPE_MAX ? (msg_type)type : 0;
    msgpack_unpacked_destroy(&m->u);
    msgpack_unpacked_init(&m->u);
    return dbx_seterr(err, DBX_EVERSION, "protocol version %llu, this dbatch speaks version %d",
                      (unsigned long long)m->version, PROTO_VERSION);
  }
  why = "unknown message type";
  if (type == 0 || type >= MSG_TYPE_MAX) goto bad;
  m->type = (msg_type)type;
  why = "wrong number of fields";
  /* A welcome may carry the coordinator's --max-message as a third field (0: unknown); a
   * stage may carry a plugin library (or nil) as a sixth and its paths' identity as a seventh;
   * a worker's heartbeat carries its resource use (three fields); a task or a result may carry
   * relayed files as a last field. */
  if (o->via.array.size != 3 + nfields[type] && !(type == MSG_WELCOME && o->via.array.size == 3 + 3) &&
      !(type == MSG_HEARTBEAT && o->via.array.size == 3 + 3) &&
      !((type == MSG_TASK || type == MSG_RESULT) && o->via.array.size == 3 + nfields[type] + 1) &&
      !(type == MSG_STAGE && (o->via.array.size == 3 + 6 || o->via.array.size == 3 + 7)))
    goto bad;
  const msgpack_object *f = a + 3;
  why = "a field has the wrong type or is out of range";
  switch (m->type) {
  case MSG_HELLO:
    if (get_u64(&f[0], &m->slots) || m->slots == 0 || m->slots > 4096 ||
        get_str(&f[1], &m->host, &m->host_len) || m->host_len > 255 ||
        get_u64(&f[2], &m->pid) || get_bool(&f[3], &m->shared_fs))
      goto bad;
    break;
  case MSG_WELCOME:
    if (get_u64(&f[0], &m->worker_id) || get_u64(&f[1], &m->heartbeat_ms)) goto bad;
    m->max_msg = 0;
    if (o->via.array.size == 6 && get_u64(&f[2], &m->max_msg)) goto bad;
    break;
  case MSG_REFUSE:
    if (get_str(&f[0], &m->text, &m->text_len)) goto bad;
    break;
  case MSG_STAGE:
    if (get_u64(&f[0], &m->stage) || get_str(&f[1], &m->op, &m->op_len) ||
        get_bin(&f[2], &m->cfg, &m->cfg_len) || get_bin(&f[3], &m->bcast, &m->bcast_len) ||
        f[4].type != MSGPACK_OBJECT_ARRAY || f[4].via.array.size > PROTO_MAX_PATHS)
      goto bad;
    m->npaths = f[4].via.array.size;
    m->paths = f[4].via.array.ptr;
    for (uint32_t i = 0; i < m->npaths; i++)  /* paths become C strings: no NUL inside */
      if (m->paths[i].type != MSGPACK_OBJECT_STR ||
          (m->paths[i].via.str.size && memchr(m->paths[i].via.str.ptr, 0, m->paths[i].via.str.size)))
        goto bad;
    if (o->via.array.size == 3 + 7) {
      /* The planned identity of every path: 16 bytes each, no more, no fewer. */
      const char *id;
      size_t idn;
      if (get_bin(&f[6], &id, &idn) || idn != (size_t)m->npaths * 16) goto bad;
      m->ident = (const unsigned char *)id;
      m->ident_len = idn;
    }
    if (o->via.array.size >= 3 + 6 && f[5].type != MSGPACK_OBJECT_NIL) {
      /* [label (str <= 255, no NUL), xxh64, library (bin, not empty)] */
      const msgpack_object *pl = &f[5];
      if (pl->type != MSGPACK_OBJECT_ARRAY || pl->via.array.size != 3) goto bad;
      const msgpack_object *v = pl->via.array.ptr;
      if (get_str(&v[0], &m->plugin_label, &m->plugin_label_len) || m->plugin_label_len > 255 ||
          (m->plugin_label_len && memchr(m->plugin_label, 0, m->plugin_label_len)) ||
          get_u64(&v[1], &m->plugin_xxh64) || get_bin(&v[2], &m->plugin, &m->plugin_len) || m->plugin_len == 0)
        goto bad;
      m->has_plugin = 1;
    }
    break;
  case MSG_TASK:
    why = "a task field has the wrong type or is out of range (segment lengths must add up to the shipped bytes)";
    if (decode_task(f, m)) goto bad;
    why = "a task's relayed files are malformed (names are [A-Za-z0-9_.-], 1 to 64 bytes, not starting with '.')";
    if (o->via.array.size == 3 + 8 && decode_files(&f[7], m)) goto bad;
    m->ids_ok = 0;
    break;
  case MSG_RESULT:
    if (get_u64(&f[0], &m->stage) || get_u64(&f[1], &m->index) || get_u64(&f[2], &m->attempt) ||
        get_u64(&f[3], &m->records) || get_u64(&f[4], &m->bad_records) ||
        get_u64(&f[5], &m->bytes) || get_double(&f[6], &m->map_seconds) ||
        get_bin(&f[7], &m->partial, &m->partial_len) || get_str(&f[8], &m->bad_note, &m->bad_note_len) ||
        m->bad_note_len > 1024 || m->index > UINT32_MAX)
      goto bad;
    why = "a result's relayed files are malformed (names are [A-Za-z0-9_.-], 1 to 64 bytes, not starting with '.')";
    if (o->via.array.size == 3 + 10 && decode_files(&f[9], m)) goto bad;
    break;
  case MSG_FAILURE:
    if (get_u64(&f[0], &m->stage) || get_u64(&f[1], &m->index) || get_u64(&f[2], &m->attempt) ||
        get_i64(&f[3], &m->code) || get_str(&f[4], &m->text, &m->text_len) || m->index > UINT32_MAX)
      goto bad;
    break;
  case MSG_HEARTBEAT:
    if (o->via.array.size == 3 + 3) {
      if (get_u64(&f[0], &m->cpu_ms) || get_u64(&f[1], &m->rss) || get_u64(&f[2], &m->peak_rss)) goto bad;
      m->has_usage = 1;
    }
    break;
  case MSG_CANCEL:
    if (get_u64(&f[0], &m->stage) || get_u64(&f[1], &m->index) || get_u64(&f[2], &m->attempt)) goto bad;
    break;
  default:
    break;
  }
  return 0;
bad:
  msg_free(m);
  return dbx_seterr(err, DBX_EPROTO, "malformed message (%zu bytes): %s", n, why);
}

void msg_free(msg *m) {
  free(m->batch.seg);
  m->batch.seg = NULL;
  msgpack_unpacked_destroy(&m->u);
  msgpack_unpacked_init(&m->u);
}
