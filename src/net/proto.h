/* proto.h -- the coordinator/worker wire protocol: versioned msgpack messages (private).
 * Every message is one ZeroMQ frame holding a msgpack array
 *   ["DBX", version, type, fields...]
 * documented in docs/protocol.md. The decoder checks every type and bound and fails with
 * DBX_EPROTO (malformed) or DBX_EVERSION (another protocol version), never crashes. */
#ifndef DBX_NET_PROTO_H
#define DBX_NET_PROTO_H
#include <msgpack.h>
#include <stdint.h>
#include "dbatch.h"
#include "io/batch.h"

#define PROTO_VERSION 1
#define PROTO_MAX_SEGS 65536
#define PROTO_MAX_PATHS (1u << 24)
#define PROTO_MAX_RECORD (1ull << 47)  /* record numbers and counts of a segment */
#define PROTO_MAX_FILES (1u << 20)     /* files relayed with one task or result */
#define PROTO_FILE_NAME_MAX 64         /* a relayed file's name: [A-Za-z0-9_.-], not starting with '.' */

/* A file relayed with a task or a result (a partitioned reduce's map outputs, for a worker
 * that cannot reach the coordinator's spill directory). */
typedef struct msg_file {
  const char *name;
  size_t name_len;
  const char *data;
  size_t len;
} msg_file;

typedef enum {
  MSG_HELLO = 1,     /* worker -> coordinator: slots, host, pid, shared_fs */
  MSG_WELCOME,       /* coordinator -> worker: worker id, heartbeat ms */
  MSG_REFUSE,        /* coordinator -> worker: reason; the worker exits */
  MSG_STAGE,         /* coordinator -> worker: stage id, operator, cfg, broadcast, paths */
  MSG_TASK,          /* coordinator -> worker: stage, index, attempt, batch */
  MSG_RESULT,        /* worker -> coordinator: stage, index, attempt, stats, partial */
  MSG_FAILURE,       /* worker -> coordinator: stage, index, attempt, code, message */
  MSG_HEARTBEAT,     /* both ways */
  MSG_CANCEL,        /* coordinator -> worker: stage, index, attempt */
  MSG_BYE,           /* coordinator -> worker: job over */
  MSG_REHELLO,       /* coordinator -> unknown peer: introduce yourself again */
  MSG_TYPE_MAX
} msg_type;

/* A decoded message. Strings and blobs point into the received frame: valid while the
 * frame and the msg are alive. */
typedef struct msg {
  msg_type type;
  uint64_t version;
  /* HELLO */
  uint64_t slots, pid;
  int shared_fs;
  const char *host; size_t host_len;
  /* WELCOME */
  uint64_t worker_id, heartbeat_ms, max_msg;  /* max_msg: 0 when the coordinator did not say */
  /* REFUSE, FAILURE */
  const char *text; size_t text_len;
  int64_t code;
  /* STAGE, TASK, RESULT, FAILURE, CANCEL. When msg_decode fails on a TASK whose stage, index
   * and attempt were readable, it keeps them and sets ids_ok, so the worker can answer that
   * attempt with a failure instead of leaving it to time out. */
  uint64_t stage, index, attempt;
  int ids_ok;
  /* STAGE */
  const char *op; size_t op_len;
  const char *cfg; size_t cfg_len;
  const char *bcast; size_t bcast_len;
  uint32_t npaths;
  const msgpack_object *paths;  /* npaths STR objects */
  /* STAGE of a plugin operator (optional 6th field): the library's file name (for messages),
   * its XXH64 and its bytes. has_plugin = 0 for built-in operators. */
  int has_plugin;
  const char *plugin_label; size_t plugin_label_len;
  uint64_t plugin_xxh64;
  const char *plugin; size_t plugin_len;
  /* STAGE (optional 7th field): per path, the size and modification time (ns) the
   * coordinator planned with, 16 bytes each (little-endian u64, i64); NULL when absent. */
  const unsigned char *ident; size_t ident_len;
  /* TASK */
  batchdesc batch;              /* seg owned by msg; data.data points into the frame */
  /* TASK, RESULT (optional last field): files relayed with it; has_files = 0 when absent (an
   * empty list is not absent: a task with one asks for its outputs back as files). Names are
   * checked when decoded; msg_file_at reads one. */
  int has_files;
  uint32_t nfiles;
  const msgpack_object *files;
  /* HEARTBEAT from a worker (optional): CPU milliseconds of the process and its children,
   * resident bytes now and at the peak. */
  uint64_t cpu_ms, rss, peak_rss;
  int has_usage;
  /* RESULT */
  uint64_t records, bad_records, bytes;
  const char *bad_note; size_t bad_note_len;
  double map_seconds;
  const char *partial; size_t partial_len;
  msgpack_unpacked u;
} msg;

/* Decode n bytes. On success *m must be released with msg_free(). */
int msg_decode(const char *p, size_t n, msg *m, dbx_err *err);
void msg_free(msg *m);
const char *msg_type_name(int type);

/* Encoders append one message to out (cleared first). */
int msg_hello(dbx_buf *out, uint64_t slots, const char *host, uint64_t pid, int shared_fs);
int msg_welcome(dbx_buf *out, uint64_t worker_id, uint64_t heartbeat_ms, uint64_t max_msg);
int msg_refuse(dbx_buf *out, const char *reason);
/* The library a plugin operator comes from, shipped with its stage. */
typedef struct msg_plugin {
  const char *label;      /* file name, for messages */
  const char *bytes;
  size_t len;
  uint64_t xxh64;         /* XXH64(bytes, len, 0): the worker checks it before loading */
} msg_plugin;
int msg_stage(dbx_buf *out, uint64_t stage, const char *op, const void *cfg, size_t cfg_len,
              const char *bcast, size_t bcast_len, const char *const *paths, uint32_t npaths);
/* msg_stage with the library of a plugin operator as a sixth field (pl NULL: nil) and, when
 * ident is given, the planned identity of each path as a seventh: sizes[i], mtimes[i]. */
typedef struct msg_ident {
  const uint64_t *size;
  const int64_t *mtime_ns;
} msg_ident;
int msg_stage_plugin(dbx_buf *out, uint64_t stage, const char *op, const void *cfg, size_t cfg_len,
                     const char *bcast, size_t bcast_len, const char *const *paths, uint32_t npaths,
                     const msg_plugin *pl, const msg_ident *ident);
int msg_task(dbx_buf *out, uint64_t stage, uint64_t attempt, const batchdesc *b);
int msg_result(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt,
               uint64_t records, uint64_t bad, const char *bad_note, uint64_t bytes,
               double map_seconds, const char *partial, size_t partial_len);
/* The same with files relayed (files may be NULL when nfiles is 0: the list is still sent). */
int msg_task_files(dbx_buf *out, uint64_t stage, uint64_t attempt, const batchdesc *b, const msg_file *files,
                   uint32_t nfiles);
int msg_result_files(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt, uint64_t records, uint64_t bad,
                     const char *bad_note, uint64_t bytes, double map_seconds, const char *partial,
                     size_t partial_len, const msg_file *files, uint32_t nfiles);
/* File i < m->nfiles of a decoded TASK or RESULT. */
void msg_file_at(const msg *m, uint32_t i, msg_file *f);
/* 1 when name (n bytes) is a name a relayed file may have. */
int msg_file_name_ok(const char *name, size_t n);
int msg_failure(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt, int64_t code,
                const char *text);
int msg_simple(dbx_buf *out, msg_type type);  /* HEARTBEAT, BYE, REHELLO */
int msg_heartbeat(dbx_buf *out, uint64_t cpu_ms, uint64_t rss, uint64_t peak_rss);  /* a worker's, with its usage */
int msg_cancel(dbx_buf *out, uint64_t stage, uint64_t index, uint64_t attempt);
#endif
