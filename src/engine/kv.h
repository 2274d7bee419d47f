/* kv.h -- keyed results: key -> aggregates, the partial under `run --reduce`, `groupby` and
 * `cooccur` (private). See docs/keyed.md.
 *
 * A keyed partial has two sides. While a task maps its batch, records go into a hash table
 * (kv_add). Before it leaves the task (encode, merge, finish) the table is sealed into a
 * sorted run: the entries in key order, serialized (the encoding itself, so encode is a copy,
 * decode a validation, and merge a linear merge of two runs with no hashing). Runs merge in
 * the engine's fixed tree over batch indices, the left one always holding the earlier
 * batches, so first/last follow input order and floating sums are bit-identical whatever the
 * workers did.
 *
 * Aggregates with a set per key (distinct, top:K) count (key, value) pairs in a second table
 * whose entries sort by key, then aggregate, then value: walking both runs together gives a
 * key's pairs right after its main entry. */
#ifndef DBX_ENGINE_KV_H
#define DBX_ENGINE_KV_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"

typedef enum {
  KA_COUNT = 1,  /* records of the key (INT) */
  KA_SUM,        /* exact int64 while every value is an integer, else double (NUM) */
  KA_MIN,        /* NUM */
  KA_MAX,        /* NUM */
  KA_MEAN,       /* sum / numeric values (NUM, always real) */
  KA_FIRST,      /* first value in input order (TEXT) */
  KA_LAST,       /* last value in input order (TEXT) */
  KA_DISTINCT,   /* number of distinct values (INT) */
  KA_TOP,        /* the k most frequent values, "v1=c1,v2=c2" (TEXT) */
} kv_kind;

#define KV_AGG_MAX 32
#define KV_NAME_MAX 64
#define KV_TOP_MAX 1000

typedef struct kv_agg {
  uint8_t kind;              /* kv_kind */
  uint8_t col;               /* which value of a record feeds it (index into kv_add's vals) */
  uint16_t pad;
  uint32_t k;                /* KA_TOP: how many values */
  char name[KV_NAME_MAX];    /* its column name in the output: the spec as written */
} kv_agg;

/* Plain bytes: it travels inside operator configurations. */
typedef struct kv_spec {
  uint32_t nagg;
  uint32_t nval;             /* values per record (max col + 1) */
  kv_agg agg[KV_AGG_MAX];
} kv_spec;

/* Parse "count,sum,top:3" (run --reduce: every aggregate reads value 0) or, with columns,
 * "count,sum:qty,top:3:item" (groupby: col_of maps a column name to a value index, adding it
 * to the caller's list; < 0 refuses it with a message in err). Appends to s. 0 or DBX_EUSAGE. */
typedef int (*kv_col_fn)(void *ctx, const char *name, size_t n, dbx_err *err);
int kv_spec_parse(kv_spec *s, const char *text, kv_col_fn col_of, void *ctx, dbx_err *err);
/* Check a spec that came over the wire (kinds, columns, names). */
int kv_spec_check(const kv_spec *s, dbx_err *err);
/* The output column type of aggregate i (DBX_COL_INT, DBX_COL_NUM, DBX_COL_TEXT). */
dbx_coltype kv_agg_type(const kv_spec *s, uint32_t i);

/* A value of a record: bytes, or missing (an empty CSV field, a JSON null). */
typedef struct kv_val {
  const char *p;
  size_t n;
  int missing;
} kv_val;

/* Numbers (see docs/keyed.md): 1 and *i for an integer ([+-]?[0-9]+ within int64), 2 and *d
 * for a finite decimal real (what strtod reads in full, no hex, inf, nan or spaces), 0 when
 * p[0..n) is not a number. */
int kv_parse_num(const char *p, size_t n, int64_t *i, double *d);

typedef struct kvpart kvpart;

kvpart *kv_new(const kv_spec *s);
void kv_free(kvpart *p);
/* One record: key (any bytes) and its nval values. A value a numeric aggregate cannot read is a
 * bad record: DBX_EBADREC with a message ("... is not a number"), and nothing is added. An
 * integer sum past int64 is DBX_EBADREC too (the job cannot give an exact answer). */
int kv_add(kvpart *p, const char *key, size_t klen, const kv_val *vals, dbx_err *err);
/* The same with the key's hash computed ahead (kv_hash), for callers that prefetch: a
 * lookup in a large table waits on two cache misses (its slot, its entry), so a caller
 * holding records in a short queue calls kv_prefetch(hash) when a record enters it,
 * kv_prefetch_entry(hash) half way, and kv_add_hashed when it leaves: the misses overlap. */
uint64_t kv_hash(const char *key, size_t klen);
void kv_prefetch(const kvpart *p, uint64_t hash);
void kv_prefetch_entry(const kvpart *p, uint64_t hash);
int kv_add_hashed(kvpart *p, const char *key, size_t klen, uint64_t hash, const kv_val *vals, dbx_err *err);
/* 1 when a kv_add error is an overflowing sum (DBX_EBADREC like a value that is not a
 * number, but no skipping can give an exact answer: it fails the job). */
int kv_err_overflow(const dbx_err *e);
/* For a spec whose aggregates are all count: add n to key's counts (word count's partials
 * moved onto keyed ones). */
int kv_add_count(kvpart *p, const char *key, size_t klen, uint64_t n, dbx_err *err);
/* The same with the key's hash (kv_hash) computed ahead, for callers that prefetch. */
int kv_add_count_hashed(kvpart *p, const char *key, size_t klen, uint64_t hash, uint64_t n, dbx_err *err);
/* Entries held (sealed or not). */
uint64_t kv_count(const kvpart *p);
/* 1 when nothing was ever added to p (no entry, nothing spilled). */
int kv_untouched(const kvpart *p);
/* Bytes of memory held. */
size_t kv_bytes(const kvpart *p);

/* The dbx_op pieces, for operators built on keyed partials. */
int kv_merge(kvpart *left, kvpart *right, dbx_err *err);         /* right is left unchanged in meaning */
int kv_encode(kvpart *p, dbx_buf *out, dbx_err *err);            /* seals p */
int kv_decode(const kv_spec *s, const char *buf, size_t n, kvpart **out, dbx_err *err);

/* Walking a sealed partial in key order. */
typedef struct kv_entry {
  const char *key;
  size_t klen;
  const char *state;         /* the serialized states of its aggregates */
  const char *pairs;         /* its (aggregate, value, count) pairs, in order */
  uint64_t npairs;
  int mapped;                /* the bytes are a read-only file mapping's (kv_value gives back
                                the pages of the pairs it has read) */
} kv_entry;
typedef struct kv_cursor {
  const kvpart *p;
  const char *m, *mend;      /* main run */
  const char *q, *qend;      /* pair run */
  int mapped;                /* set by the caller: the run is a read-only file mapping, whose
                                pages a long run of one key's pairs is given back as it is
                                walked (they are read again from the file when used) */
} kv_cursor;
int kv_cursor_init(kv_cursor *c, kvpart *p, dbx_err *err);  /* seals p */
/* 1 and *e for the next key, 0 at the end. */
int kv_cursor_next(kv_cursor *c, kv_entry *e);
/* Output value of aggregate i of entry e into *v (text values point into e or into scratch,
 * valid until the next call with the same scratch). */
int kv_value(const kv_spec *s, uint32_t i, const kv_entry *e, dbx_buf *scratch, dbx_value *v, dbx_err *err);

/* One entry as a row (scratch: KV_AGG_MAX buffers, reused across calls). */
int kv_emit_entry(const kv_spec *s, const kv_entry *e, uint32_t nkeycol, dbx_buf *scratch, dbx_emit_fn emit, void *ctx,
                  dbx_err *err);

/* Partitions (engine/shuffle.h). The partition of a key among r: a stable hash, the same on
 * every machine and in every version of a job's journal. */
uint32_t kv_partition_of(const char *key, size_t klen, uint32_t r);
/* Seal p and split it into r encodings (out[0..r), reused), entry i going to
 * kv_partition_of(its key); a key's value pairs go with it. */
int kv_split(kvpart *p, uint32_t r, dbx_buf *out, dbx_err *err);
/* What kv_split makes, byte for byte, of a partial of spec s (all aggregates counts) holding
 * the keys of m with their values as counts: word count's own table split without moving it
 * into a keyed table first. */
typedef struct strmap strmap;
int kv_split_counts(const kv_spec *s, const strmap *m, uint32_t r, dbx_buf *out, dbx_err *err);
/* Empty p (it stays usable). */
void kv_clear(kvpart *p);
/* kv_decode's checks, then a partial that reads buf[0..n) in place (buf must outlive it and
 * it must not be merged into): for results too big to copy, from a mapped file. */
int kv_decode_view(const kv_spec *s, const char *buf, size_t n, kvpart **out, dbx_err *err);
/* The same for a run of a task's own level files, which may hold carriers: main entries with
 * a count of 0 and every state empty, there for their value pairs (kv_take_pairs). Never for
 * bytes from a peer. */
int kv_decode_level_view(const kv_spec *s, const char *buf, size_t n, kvpart **out, dbx_err *err);
/* kv_decode_view (level 0) or kv_decode_level_view (level 1) of a read-only file mapping,
 * whose pages are given back as they are checked: a file bigger than memory is read through. */
/* Give back the whole pages of a read-only file mapping in [from, to) (madvise DONTNEED:
 * they are read again from the file if touched again). The new release point. */
const char *kv_drop_pages(const char *from, const char *to);
int kv_decode_file_view(const kv_spec *s, const char *map, size_t n, int level, kvpart **out, dbx_err *err);

/* Bounded memory. Once p holds more than budget bytes (kv_bytes) its table is frozen: records
 * of keys it holds still go in, records of other keys are written raw, in input order, to an
 * unlinked file in spill_dir (which must outlive p). Each key's records thus all meet the same
 * table in input order: the states are the bytes they would be without a budget. */
void kv_set_budget(kvpart *p, size_t budget, const char *spill_dir);
/* The spill file (*fd, positioned at its end; -1 when nothing spilled) and its size; p forgets
 * it and is no longer frozen. A full disk is DBX_ENOSPC naming the directory. */
int kv_take_spill(kvpart *p, int *fd, uint64_t *bytes, dbx_err *err);
/* The value pairs p wrote out (a budget holds them too: past half of it the pair table is
 * written out as a sorted run and started again): *fd an unlinked file of *bytes, a sequence
 * of [u64 length][a partial of carriers and pairs] (kv_decode_level_view), or -1. The caller
 * closes it. */
int kv_take_pairs(kvpart *p, int *fd, uint64_t *bytes);
const kv_spec *kv_spec_of(const kvpart *p);
/* Fault injection (tests only, DBATCH_FAULT crash_in_spill): called after spilled records
 * are written. */
extern void (*kv_spill_fault)(void);
/* A new empty partial with p's aggregates and budget. */
kvpart *kv_new_like(const kvpart *p);
/* Add the records of a spill file (its bytes: zstd frames of records) to p, in order. */
int kv_replay(kvpart *p, const char *data, size_t n, dbx_err *err);
/* The same for records not compressed (one frame's content). */
int kv_replay_records(kvpart *p, const char *data, size_t n, dbx_err *err);
/* Merge n sealed partials into one encoding written to fd (at offset 0, an empty file), in
 * bounded memory: src[i] holds batch idx[i] (increasing, < nbatch) and each key's states
 * fold in the engine's tree over nbatch batch indices (engine/agg.c), so the bytes are those
 * of merging the partials in an agg. Value pairs wait in an unlinked file in dir. mapped:
 * the runs are read-only file mappings, whose pages behind the merge are given back. */
int kv_merge_to_fd(const kv_spec *s, kvpart **src, const uint32_t *idx, uint32_t n, uint32_t nbatch, int mapped,
                   int levels, int fd, const char *dir, dbx_err *err);
/* levels: the runs are one task's levels (shuffle.c), whose keys' states are each in one
 * level, other levels holding only carriers of the key's value pairs (kv_take_pairs). */

/* A whole keyed result as rows: the key split at NUL bytes into nkeycol columns (1: the key
 * as is), then every aggregate. */
int kv_emit_rows(const kv_spec *s, kvpart *p, uint32_t nkeycol, dbx_emit_fn emit, void *ctx, dbx_err *err);
#endif
