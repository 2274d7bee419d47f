/* dbatch.h -- the public C API of dbatch: error codes, batches, buffers and the operator ABI.
 * This is the only public header; everything under src/ is private to dbatch. */
#ifndef DBATCH_H
#define DBATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DBX_EXTERN __attribute__((visibility("default")))
#else
#define DBX_EXTERN
#endif

#define DBX_ABI_VERSION 1

/* Error codes: one list generates the enum and dbx_strerror(). Codes are negative. */
#define DBX_ERRNO_MAP(XX)                                                     \
  XX(EINVAL,   -1, "invalid argument")                                        \
  XX(ENOMEM,   -2, "out of memory")                                           \
  XX(EIO,      -3, "input/output error")                                      \
  XX(ENOENT,   -4, "no such file or directory")                               \
  XX(EISDIR,   -5, "is a directory")                                          \
  XX(ECORRUPT, -6, "corrupt input")                                           \
  XX(ENOSPC,   -7, "no space left on device")                                 \
  XX(EACCES,   -8, "permission denied")                                       \
  XX(EUSAGE,   -9, "usage error")                                             \
  XX(EBADREC, -10, "bad record")                                              \
  XX(EPROTO,  -11, "protocol error")                                          \
  XX(EVERSION,-12, "protocol version mismatch")                               \
  XX(EDB,     -13, "database error")                                          \
  XX(ETASK,   -14, "task failed")                                             \
  XX(ETIMEDOUT,-15, "timed out")                                              \
  XX(EMODEL,  -16, "bad model file")                                          \
  XX(ECHANGED,-17, "inputs changed")                                          \
  XX(EINTR,   -18, "interrupted")                                             \
  XX(ETOOBIG, -19, "message too large")                                       \
  XX(EBUSY,   -20, "in use by another process")                              \
  XX(ELOST,   -21, "an earlier stage's output is lost")

typedef enum {
  DBX_OK = 0,
#define XX(name, val, msg) DBX_##name = (val),
  DBX_ERRNO_MAP(XX)
#undef XX
} dbx_errno;

/* Static message for a code; never NULL. */
DBX_EXTERN const char *dbx_strerror(int code);

/* Human detail of a failure, filled by the callee. Messages name the file, offset, worker, task. */
#define DBX_ERR_LEN 1024
typedef struct dbx_err {
  int code;
  char msg[DBX_ERR_LEN];
} dbx_err;

/* Set err (may be NULL) and return code, so callers can write `return dbx_seterr(...)`. */
DBX_EXTERN int dbx_seterr(dbx_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A growable byte buffer. Zero-initialise it; free with dbx_buf_free(). */
typedef struct dbx_buf {
  char *data;
  size_t len, cap;
} dbx_buf;

DBX_EXTERN int dbx_buf_reserve(dbx_buf *b, size_t extra);
DBX_EXTERN int dbx_buf_append(dbx_buf *b, const void *p, size_t n);
DBX_EXTERN void dbx_buf_free(dbx_buf *b);

/* One contiguous piece of one input that belongs to a batch. */
typedef struct dbx_segment {
  const char *path;     /* input file, "-" for standard input */
  uint32_t input;       /* index of the input in the stage's input list */
  uint64_t off, len;    /* byte range in the (decompressed) input */
  uint64_t rec_first;   /* index of the first record, or DBX_UNKNOWN when cut by bytes */
  uint64_t rec_count;   /* records in the range, or DBX_UNKNOWN */
  uint64_t start;       /* file offset of the segment's first byte in data (its first line) */
  size_t data_off;      /* where this segment starts in dbx_batch.data */
  size_t data_len;      /* its length there, including a final newline */
} dbx_segment;

#define DBX_UNKNOWN UINT64_MAX

/* A batch as an operator sees it: the bytes of whole records, newline-terminated,
 * and where they came from. The batch and its data belong to the engine. */
typedef struct dbx_batch {
  uint32_t index;       /* position in the stage's plan; merge order follows it */
  uint32_t nseg;
  const dbx_segment *seg;
  const char *data;
  size_t size;
} dbx_batch;

/* Counters an operator reports for one batch. */
typedef struct dbx_stats {
  uint64_t records;
  uint64_t bad_records;
  char bad_note[256];   /* where and why the batch's first bad record was, or "" */
} dbx_stats;

/* "FILE line N" (or "FILE byte N" when the batch does not know its line numbers) for the
 * byte at data offset off of batch b, into out. */
DBX_EXTERN void dbx_batch_where(const dbx_batch *b, size_t off, char *out, size_t cap);

/* A result row handed to a sink: ncol values of the kinds given by the sink schema. */
/* DBX_COL_NUM is a number that is an exact integer or a real, decided per row (the sum of
 * integers stays exact; one real value makes it real): n says which, 0 = integer in i,
 * 1 = real in d, 2 = no value (an empty field, JSON null, SQL NULL). A DBX_COL_TEXT value
 * with s == NULL is no value as well. */
typedef enum { DBX_COL_TEXT, DBX_COL_INT, DBX_COL_REAL, DBX_COL_NUM } dbx_coltype;
#define DBX_NUM_INT 0
#define DBX_NUM_REAL 1
#define DBX_NUM_NULL 2
typedef struct dbx_value {
  const char *s;  size_t n;   /* DBX_COL_TEXT; DBX_COL_NUM: n is DBX_NUM_INT, _REAL or _NULL */
  int64_t i;                  /* DBX_COL_INT, DBX_COL_NUM */
  double d;                   /* DBX_COL_REAL, DBX_COL_NUM */
} dbx_value;

typedef struct dbx_schema {
  uint32_t ncol;
  const char *const *names;
  const dbx_coltype *types;
} dbx_schema;

/* Where finish() writes rows. */
typedef int (*dbx_emit_fn)(void *ctx, const dbx_value *row, dbx_err *err);

/* The operator ABI. A partial is the operator's own object; the engine only moves it
 * around, encodes it to cross a process boundary, and merges partials in a fixed tree
 * over batch indices: merge(left, right) always has the lower indices on the left,
 * so merge needs to be associative, not commutative. */
typedef struct dbx_op {
  const char *name;
  /* New empty partial, owned by the caller (free with partial_free). NULL on ENOMEM. */
  void *(*partial_new)(const void *cfg);
  void (*partial_free)(void *partial);
  /* Add one batch to partial. bcast is the previous stage's broadcast (may be NULL). */
  int (*map)(const void *cfg, const void *bcast, const dbx_batch *b, void *partial,
             dbx_stats *st, dbx_err *err);
  /* left += right. right stays owned by the caller. */
  int (*merge)(const void *cfg, void *left, const void *right, dbx_err *err);
  /* Append a self-contained encoding of partial to out. */
  int (*encode)(const void *cfg, const void *partial, dbx_buf *out, dbx_err *err);
  /* Decode bytes made by encode into a new partial (OUT, owned by the caller). Must reject
   * malformed input with DBX_ECORRUPT, never read out of bounds. */
  int (*decode)(const void *cfg, const char *p, size_t n, void **out, dbx_err *err);
  /* Turn the merged result into rows (through emit) and, for a next stage, a broadcast
   * blob appended to bcast_out (may be NULL when the stage is the last). */
  int (*finish)(const void *cfg, const void *bcast, void *partial, dbx_emit_fn emit,
                void *emit_ctx, dbx_buf *bcast_out, dbx_err *err);
  /* Turn a previous stage's broadcast blob into the object map() receives as bcast
   * (OUT *out, freed with bcast_free). NULL when the operator takes no broadcast. */
  int (*bcast_load)(const void *cfg, const char *p, size_t n, void **out, dbx_err *err);
  void (*bcast_free)(void *bcast);
  const dbx_schema *schema;
  /* Bytes of the configuration struct (workers check what they get). Plugin operators leave
   * it 0: their configuration is the --op-arg text, NUL-terminated ("" when not given). */
  size_t cfg_size;
  /* Optional: left += decode(p, n) in one pass, without building the right partial. It must
   * reject malformed bytes (DBX_ECORRUPT); left may then be partly merged (the job fails). */
  int (*merge_encoded)(const void *cfg, void *left, const char *p, size_t n, dbx_err *err);
  /* ABI 2 and later append new fields here, never in between (see "Plugins" below). */
} dbx_op;

/* ---- Plugins: operators in a shared library, run with `dbatch run --op LIB.so[:NAME]` ----
 *
 * A plugin library exports one table:
 *
 *     static const dbx_op *const my_ops[] = {&my_op};
 *     const dbx_plugin dbatch_plugin = {DBX_ABI_VERSION, 1, my_ops};
 *
 * Build it with `cc -shared -fPIC $(pkg-config --cflags dbatch) -o my.so my.c`, without
 * -ldbatch: the dbx_* functions declared DBX_EXTERN above (dbx_seterr, dbx_buf_*,
 * dbx_batch_where, ...) resolve from the running dbatch executable, which exports them.
 * The library is loaded privately (RTLD_LOCAL) from the bytes the coordinator read, on the
 * coordinator and on every worker (remote workers receive the bytes with the stage), so
 * nothing has to be installed on workers and all of them run the same code. It should need
 * nothing but libc (other libraries must be installed on every worker; $ORIGIN does not work).
 *
 * The operator's cfg is the --op-arg text, a NUL-terminated string; partials, encode,
 * decode and merge follow the rules of dbx_op above (decode sees bytes from the network and
 * must reject anything malformed). map() runs in several threads at once, each on its own
 * partial: keep no mutable global state. finish() writes the rows, in the operator's order,
 * through emit with op->schema, so every sink (TSV, CSV, JSONL, SQLite) takes them. A crash
 * in a plugin kills only its worker: the attempt fails and is retried like any other.
 *
 * ABI versions. abi_version says which header the plugin was compiled against; the rules
 * that keep old plugins working as the engine grows:
 *  - Fields are only ever appended at the end of dbx_op and of dbx_plugin (abi_version stays
 *    the first field of dbx_plugin), and every append bumps DBX_ABI_VERSION.
 *  - The engine knows the size of dbx_op at every version it accepts. It copies exactly
 *    that many bytes of the plugin's operator into its own full-size dbx_op and zero-fills
 *    the rest: it never reads past the end of an older plugin's struct.
 *  - Every callback added after version 1 is optional: NULL means "not provided" and the
 *    engine keeps the behaviour an operator of the older version had.
 *  - A plugin built for a newer version than the running dbatch (or version 0) is refused
 *    before any work starts, naming both versions.
 * So a plugin written against ABI 1 (only the callbacks above) loads unchanged into a dbatch
 * that speaks ABI 2 (for example the keyed aggregates of docs/keyed.md, which will arrive as
 * new optional fields). */
typedef struct dbx_plugin {
  uint32_t abi_version;         /* DBX_ABI_VERSION of the header the plugin was built with */
  uint32_t nops;                /* entries in ops (1..1024) */
  const dbx_op *const *ops;     /* the operators, each with a distinct name ([A-Za-z0-9_.-], <= 63) */
} dbx_plugin;

DBX_EXTERN const char *dbx_version(void);

#ifdef __cplusplus
}
#endif
#endif /* DBATCH_H */
