/* kv.c -- keyed partials: a hash table while mapping, sorted runs everywhere else.
 *
 * Run layout (little endian), which is also the encoding after a short header:
 *   main entry: u32 klen, key, then per aggregate its state:
 *     COUNT                 u64 n
 *     SUM MEAN MIN MAX      u64 n (numeric values seen), u8 real, 8 bytes (i64 or f64)
 *     FIRST LAST            u8 has, u32 len, len bytes
 *     DISTINCT TOP          nothing (their values are pair entries)
 *   pair entry: u32 klen, key, u8 agg, u32 vlen, value, u64 count
 * Main entries are strictly increasing by key (bytewise, shorter first on a common prefix);
 * pair entries strictly increasing by (key, agg, value), and every pair's key is a main key.
 * Encoding: "DBKV" u8 version, u8 nagg, nagg kinds, u64 nmain, u64 npair, main run, pair run. */
#define _GNU_SOURCE 1
#include "engine/kv.h"
#include "util/strmap.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define KV_VERSION 1
/* The largest count a partial holds, decoded or merged: one bound for both, so what a merge
 * makes decodes again (a run spilled or sent on after merging). Two of them add up without
 * wrapping. One task's partial holds fewer than 2^48 (a task reads < 2^48 bytes). */
#define KV_COUNT_MAX (1ull << 62)
#define KV_KEY_MAX (1u << 30)

/* ---- little-endian fields ---- */

static void put64(char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (char)(v >> (8 * i)); }
static void put32(char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (char)(v >> (8 * i)); }
static uint64_t get64(const char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
  return v;
}
static uint32_t get32(const char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
  return v;
}
static double getd(const char *p) {
  uint64_t u = get64(p);
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}
static void putd(char *p, double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  put64(p, u);
}

/* ---- the spec ---- */

static int kind_pairs(int k) { return k == KA_DISTINCT || k == KA_TOP; }
static int kind_num(int k) { return k == KA_SUM || k == KA_MIN || k == KA_MAX || k == KA_MEAN; }
static int kind_text(int k) { return k == KA_FIRST || k == KA_LAST; }

/* Bytes of one aggregate's state in the hash table (fixed). */
static size_t mem_size(int k) {
  if (k == KA_COUNT) return 8;
  if (kind_num(k)) return 17;
  if (kind_text(k)) return 13;   /* u8 has, u32 len, u64 offset into the blob arena */
  return 0;
}

dbx_coltype kv_agg_type(const kv_spec *s, uint32_t i) {
  int k = s->agg[i].kind;
  return k == KA_COUNT ? DBX_COL_INT : kind_num(k) || k == KA_DISTINCT ? DBX_COL_NUM : DBX_COL_TEXT;
}

int kv_spec_check(const kv_spec *s, dbx_err *err) {
  if (s->nagg < 1 || s->nagg > KV_AGG_MAX || s->nval > KV_AGG_MAX)
    return dbx_seterr(err, DBX_EPROTO, "keyed: malformed aggregate list");
  for (uint32_t i = 0; i < s->nagg; i++) {
    const kv_agg *a = &s->agg[i];
    if (a->kind < KA_COUNT || a->kind > KA_TOP || a->col >= (s->nval ? s->nval : 1) ||
        !memchr(a->name, 0, sizeof a->name) || !a->name[0] ||
        (a->kind == KA_TOP && (a->k < 1 || a->k > KV_TOP_MAX)))
      return dbx_seterr(err, DBX_EPROTO, "keyed: malformed aggregate %u", i);
  }
  return 0;
}

int kv_spec_parse(kv_spec *s, const char *text, kv_col_fn col_of, void *ctx, dbx_err *err) {
  static const struct { const char *name; int kind; } kinds[] = {
      {"count", KA_COUNT}, {"sum", KA_SUM}, {"min", KA_MIN}, {"max", KA_MAX}, {"mean", KA_MEAN},
      {"first", KA_FIRST}, {"last", KA_LAST}, {"distinct", KA_DISTINCT}, {"top", KA_TOP},
  };
  const char *p = text;
  if (!*p) return dbx_seterr(err, DBX_EUSAGE, "an empty aggregate list");
  for (;;) {
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (!n) return dbx_seterr(err, DBX_EUSAGE, "an empty aggregate in '%s'", text);
    if (n >= KV_NAME_MAX) return dbx_seterr(err, DBX_EUSAGE, "aggregate '%.*s' is too long", (int)n, p);
    if (s->nagg >= KV_AGG_MAX) return dbx_seterr(err, DBX_EUSAGE, "more than %d aggregates", KV_AGG_MAX);
    kv_agg *a = &s->agg[s->nagg];
    memset(a, 0, sizeof *a);
    memcpy(a->name, p, n);
    const char *colon = memchr(p, ':', n);
    size_t kn = colon ? (size_t)(colon - p) : n;
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
      if (strlen(kinds[i].name) == kn && !memcmp(kinds[i].name, p, kn)) a->kind = (uint8_t)kinds[i].kind;
    if (!a->kind)
      return dbx_seterr(err, DBX_EUSAGE,
                        "unknown aggregate '%.*s' (count, sum, min, max, mean, first, last, distinct, top:K)", (int)n, p);
    const char *rest = colon ? colon + 1 : NULL;
    size_t rn = colon ? n - kn - 1 : 0;
    if (a->kind == KA_TOP) {
      char *end;
      errno = 0;
      unsigned long k = rest && rn && isdigit((unsigned char)rest[0]) ? strtoul(rest, &end, 10) : 0;
      if (!k || k > KV_TOP_MAX || errno || (end != rest + rn && *end != ':'))
        return dbx_seterr(err, DBX_EUSAGE, "'%.*s': top needs a count K, 1..%d (top:K%s)", (int)n, p, KV_TOP_MAX,
                          col_of ? ":COLUMN" : "");
      a->k = (uint32_t)k;
      rn -= (size_t)(end - rest);
      rest = end;
      if (rn) { rest++; rn--; } else rest = NULL;
    }
    if (col_of) {
      if (a->kind == KA_COUNT) {
        if (rest) return dbx_seterr(err, DBX_EUSAGE, "'%.*s': count takes no column (it counts rows)", (int)n, p);
      } else {
        if (!rest || !rn)
          return dbx_seterr(err, DBX_EUSAGE, "'%.*s' needs a column: %.*s:COLUMN", (int)n, p, (int)(n), p);
        int c = col_of(ctx, rest, rn, err);
        if (c < 0) return c;
        a->col = (uint8_t)c;
        if ((uint32_t)c + 1 > s->nval) s->nval = (uint32_t)c + 1;
      }
    } else {
      if (rest) return dbx_seterr(err, DBX_EUSAGE, "'%.*s': a reducer of --reduce takes no column", (int)n, p);
      s->nval = 1;
    }
    s->nagg++;
    if (!e) break;
    p = e + 1;
  }
  if (!s->nval) s->nval = 1;
  return 0;
}

/* ---- numbers ---- */

/* The common cases without strtod: an integer of at most 18 digits, and a decimal
 * [+-]D+.D* or [+-]D*.D+ of at most 15 digits, whose value (an exact integer below 2^53
 * divided by an exact power of ten) is one correctly rounded division: the same double
 * strtod gives. -1 when p is not of that shape (the caller takes the long way). */
static int parse_fast(const char *p, size_t n, int64_t *iv, double *dv) {
  static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
  size_t i = 0;
  int neg = 0;
  if (n && (p[0] == '-' || p[0] == '+')) neg = p[0] == '-', i = 1;
  uint64_t m = 0;
  int nd = 0, frac = -1;
  for (; i < n; i++) {
    char c = p[i];
    if (c >= '0' && c <= '9') {
      m = m * 10 + (uint64_t)(c - '0');
      if (++nd > 18) return -1;
      if (frac >= 0) frac++;
    } else if (c == '.' && frac < 0) {
      frac = 0;
    } else {
      return -1;
    }
  }
  if (!nd) return -1;
  if (frac < 0) {
    *iv = neg ? -(int64_t)m : (int64_t)m;
    return 1;
  }
  if (nd > 15) return -1;
  double v = (double)m / pow10[frac];
  *dv = neg ? -v : v;
  return 2;
}

/* Cost: a value longer than 400 bytes (a long run of zeros is still a number) is copied to
 * the heap to be NUL-terminated; 0 also when that allocation fails. */
int kv_parse_num(const char *p, size_t n, int64_t *iv, double *dv) {
  int f = parse_fast(p, n, iv, dv);
  if (f >= 0) return f;
  if (!n) return 0;
  size_t i = 0;
  if (p[0] == '+' || p[0] == '-') i = 1;
  size_t d0 = i;
  while (i < n && p[i] >= '0' && p[i] <= '9') i++;
  int isint = i == n && i > d0;
  /* A real: digits, '.', an exponent; nothing strtod would read as hex, inf or nan. */
  int digits = i > d0;
  for (size_t j = i; j < n && !isint; j++) {
    char c = p[j];
    if (c >= '0' && c <= '9') digits = 1;
    else if (c != '.' && c != 'e' && c != 'E' && c != '+' && c != '-') return 0;
  }
  if (!digits) return 0;
  char small[408], *tmp = n < sizeof small ? small : malloc(n + 1);
  if (!tmp) return 0;
  memcpy(tmp, p, n);
  tmp[n] = 0;
  int kind = 0;
  char *end;
  if (isint) {
    errno = 0;
    long long v = strtoll(tmp, &end, 10);
    if (!errno && end == tmp + n) {
      *iv = v;
      kind = 1;
    }
  }
  if (!kind) {
    double v = strtod(tmp, &end);
    if (end == tmp + n && isfinite(v)) {
      *dv = v;
      kind = 2;
    }
  }
  if (tmp != small) free(tmp);
  return kind;
}

/* Exact order of an integer and a double (finite): -1, 0, 1 as i <, ==, > d. A cast of i to
 * double rounds past 2^53, so INT64_MAX would equal 2^63. */
static int cmp_int_real(int64_t i, double d) {
  if (d >= 9223372036854775808.0) return -1;
  if (d < -9223372036854775808.0) return 1;
  double t = trunc(d);   /* within int64 now */
  int64_t ti = (int64_t)t;
  if (i != ti) return i < ti ? -1 : 1;
  return d > t ? -1 : d < t ? 1 : 0;
}

/* Order of two numeric states' values (u8 real, then i64 or f64 at x + 1). */
static int cmp_numval(int ra, const char *a, int rb, const char *b) {
  if (!ra && !rb) {
    int64_t x = (int64_t)get64(a), y = (int64_t)get64(b);
    return x < y ? -1 : x > y;
  }
  if (ra && rb) {
    double x = getd(a), y = getd(b);
    return x < y ? -1 : x > y;
  }
  return ra ? -cmp_int_real((int64_t)get64(b), getd(a)) : cmp_int_real((int64_t)get64(a), getd(b));
}

/* ---- the hash table of a mapping task ---- */

/* Entries live in one arena, each 8-byte aligned and contiguous: header, bytes, state, so
 * a lookup that hits touches its slot and one entry. A slot holds the entry's offset / 8 + 1
 * in its low 40 bits and the top 24 bits of its hash, so most misses never leave the slot
 * array. */
typedef struct hent {
  uint64_t hash;
  uint32_t len;    /* all the bytes: key, then for pairs u8 agg and the value */
  uint32_t klen;   /* the key's */
} hent;

#define SLOT_OFF_BITS 40
#define SLOT_OFF_MASK ((1ull << SLOT_OFF_BITS) - 1)

typedef struct htab {
  uint64_t *slot;  /* 0 = empty */
  uint64_t cap;    /* slots, a power of two */
  uint64_t n;      /* entries */
  dbx_buf a;       /* the arena */
  size_t ssize;
} htab;

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }
static hent *ent_at(const htab *h, uint64_t off) { return (hent *)(void *)(h->a.data + off); }
static char *ent_bytes(hent *e) { return (char *)(e + 1); }
static char *ent_state(hent *e) { return (char *)(e + 1) + align8(e->len); }
static size_t ent_size(const htab *h, const hent *e) { return sizeof *e + align8(e->len) + align8(h->ssize); }

static void htab_free(htab *h) {
  if (!h) return;
  free(h->slot);
  dbx_buf_free(&h->a);
  free(h);
}

static int htab_grow(htab *h) {
  uint64_t nc = h->cap ? h->cap * 2 : 1024;
  uint64_t *ns = calloc(nc, sizeof *ns);
  if (!ns) return DBX_ENOMEM;
  for (uint64_t i = 0; i < h->cap; i++) {
    uint64_t s = h->slot[i];
    if (!s) continue;
    uint64_t j = ent_at(h, ((s & SLOT_OFF_MASK) - 1) * 8)->hash & (nc - 1);
    while (ns[j]) j = (j + 1) & (nc - 1);
    ns[j] = s;
  }
  free(h->slot);
  h->slot = ns;
  h->cap = nc;
  return 0;
}

/* Find (key, tail) or insert it with zeroed state. OUT *st: its state, valid until the next
 * insertion into h. */
static int htab_get_h(htab *h, const char *key, size_t klen, const char *tail, size_t tlen, uint64_t hash, char **st) {
  size_t len = klen + tlen;
  if (len > UINT32_MAX - 16) return DBX_EINVAL;
  uint64_t tag = hash & ~SLOT_OFF_MASK;
  if ((h->n + 1) * 2 > h->cap && htab_grow(h)) return DBX_ENOMEM;
  uint64_t j = hash & (h->cap - 1);
  for (;;) {
    uint64_t s = h->slot[j];
    if (!s) break;
    if ((s & ~SLOT_OFF_MASK) == tag) {
      hent *e = ent_at(h, ((s & SLOT_OFF_MASK) - 1) * 8);
      const char *b = ent_bytes(e);
      if (e->hash == hash && e->len == len && e->klen == klen && !memcmp(b, key, klen) &&
          (!tlen || !memcmp(b + klen, tail, tlen))) {
        *st = ent_state(e);
        return 0;
      }
    }
    j = (j + 1) & (h->cap - 1);
  }
  size_t need = sizeof(hent) + align8(len) + align8(h->ssize);
  uint64_t off = h->a.len;
  if ((off / 8 + 1) > SLOT_OFF_MASK || dbx_buf_reserve(&h->a, need)) return DBX_ENOMEM;
  hent *e = ent_at(h, off);
  e->hash = hash;
  e->len = (uint32_t)len;
  e->klen = (uint32_t)klen;
  memcpy(ent_bytes(e), key, klen);
  if (tlen) memcpy(ent_bytes(e) + klen, tail, tlen);
  *st = ent_state(e);
  memset(*st, 0, h->ssize);
  h->a.len += need;
  h->slot[j] = (off / 8 + 1) | tag;
  h->n++;
  return 0;
}

static int htab_get(htab *h, const char *key, size_t klen, const char *tail, size_t tlen, char **st) {
  uint64_t hash = tlen ? XXH3_64bits_withSeed(key, klen, XXH3_64bits(tail, tlen)) : strmap_hash(key, klen);
  return htab_get_h(h, key, klen, tail, tlen, hash, st);
}

/* Find key (no tail) without inserting it: 1 when present. */
static int htab_has(const htab *h, const char *key, size_t klen, uint64_t hash) {
  uint64_t tag = hash & ~SLOT_OFF_MASK;
  if (!h->cap) return 0;
  for (uint64_t j = hash & (h->cap - 1);; j = (j + 1) & (h->cap - 1)) {
    uint64_t s = h->slot[j];
    if (!s) return 0;
    if ((s & ~SLOT_OFF_MASK) != tag) continue;
    hent *e = ent_at(h, ((s & SLOT_OFF_MASK) - 1) * 8);
    if (e->hash == hash && e->len == klen && e->klen == klen && !memcmp(ent_bytes(e), key, klen)) return 1;
  }
}

/* ---- the partial ---- */

struct kvpart {
  kv_spec s;
  size_t off[KV_AGG_MAX];   /* each aggregate's state offset in a hash entry */
  htab *h, *hp;             /* while mapping (NULL when nothing is pending) */
  dbx_buf blob;             /* first/last values of h */
  size_t blob_dead;         /* bytes of blob no state points to (last values replaced) */
  dbx_buf tail;             /* scratch: a pair's aggregate byte and value */
  dbx_buf run;              /* sealed: main run then pair run */
  uint64_t nmain, npair;
  size_t pair_off;          /* where the pair run starts in run */
  int has_pairs;
  int borrowed;             /* run.data belongs to the caller (kv_decode_view) */
  /* Bounded memory (kv_set_budget): past budget bytes the table is frozen; records of keys
   * not in it are written raw to an unlinked file in spill_dir, in input order. */
  size_t budget;
  const char *spill_dir;
  int frozen;
  int spill_fd;
  dbx_buf sbuf, zbuf;        /* records to spill; their compressed frame */
  uint64_t spilled;
  /* Value pairs (distinct:, top:) of the keys the table holds, past half the budget: written
   * out as sorted runs, each [u64 length][a partial of pair carriers] (pair_flush), to an
   * unlinked file in spill_dir. Their counts add, so where they are counted changes nothing. */
  int pair_fd;
  uint64_t pair_bytes;
};

kvpart *kv_new(const kv_spec *s) {
  if (kv_spec_check(s, NULL)) return NULL;
  kvpart *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->s = *s;
  p->spill_fd = -1;
  p->pair_fd = -1;
  size_t o = 0;
  for (uint32_t i = 0; i < s->nagg; i++) {
    p->off[i] = o;
    o += mem_size(s->agg[i].kind);
    if (kind_pairs(s->agg[i].kind)) p->has_pairs = 1;
  }
  return p;
}

void kv_free(kvpart *p) {
  if (!p) return;
  htab_free(p->h);
  htab_free(p->hp);
  dbx_buf_free(&p->blob);
  dbx_buf_free(&p->tail);
  dbx_buf_free(&p->sbuf);
  dbx_buf_free(&p->zbuf);
  if (p->spill_fd >= 0) close(p->spill_fd);
  if (p->pair_fd >= 0) close(p->pair_fd);
  if (!p->borrowed) dbx_buf_free(&p->run);
  free(p);
}

int kv_untouched(const kvpart *p) {
  return kv_count(p) == 0 && p->spill_fd < 0 && p->sbuf.len == 0 && p->spilled == 0 && !p->frozen && p->pair_fd < 0;
}

uint64_t kv_count(const kvpart *p) { return p->nmain + (p->h ? p->h->n : 0); }

size_t kv_bytes(const kvpart *p) {
  size_t b = sizeof *p + p->run.cap + p->blob.cap;
  const htab *hs[2] = {p->h, p->hp};
  for (int i = 0; i < 2; i++)
    if (hs[i]) b += hs[i]->cap * sizeof *hs[i]->slot + hs[i]->a.cap;
  return b;
}

/* ---- bounded memory: a frozen table, keys past it spilled raw ---- */

#define SPILL_BUF (1u << 20)

static int spill_err(const kvpart *p, int e, dbx_err *err) {
  return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: %s", p->spill_dir, strerror(e));
}

/* Spilled records go to the file as zstd frames (fast level, checksummed), one per flush,
 * each holding whole records and its decompressed size: kv_replay reads a frame at a time. */
static int spill_flush(kvpart *p, dbx_err *err) {
  if (!p->sbuf.len) return 0;
  size_t cap = ZSTD_compressBound(p->sbuf.len);
  if (p->zbuf.cap < cap && dbx_buf_reserve(&p->zbuf, cap)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory spilling");
  /* With a checksum: a spill file damaged on disk is refused, not replayed as other records. */
  ZSTD_CCtx *cc = ZSTD_createCCtx();
  if (!cc) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory spilling");
  ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 1);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
  size_t zn = ZSTD_compress2(cc, p->zbuf.data, cap, p->sbuf.data, p->sbuf.len);
  ZSTD_freeCCtx(cc);
  if (ZSTD_isError(zn)) return dbx_seterr(err, DBX_EIO, "keyed: cannot compress spilled records: %s", ZSTD_getErrorName(zn));
  if (p->spill_fd < 0) {
    char path[4200];
    snprintf(path, sizeof path, "%s/.tmp-spill-XXXXXX", p->spill_dir);
    p->spill_fd = mkostemp(path, O_CLOEXEC);
    if (p->spill_fd < 0) return spill_err(p, errno, err);
    unlink(path);  /* nothing is left behind by a killed worker */
  }
  size_t done = 0;
  while (done < zn) {
    ssize_t k = write(p->spill_fd, p->zbuf.data + done, zn - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return spill_err(p, k < 0 ? errno : ENOSPC, err);
    done += (size_t)k;
  }
  p->spilled += done;
  p->sbuf.len = 0;
  if (kv_spill_fault) kv_spill_fault();
  return 0;
}

void (*kv_spill_fault)(void);

/* Before a record of key goes into the table: 1 when it does (the table is under its budget,
 * or holds the key), 0 when the record was spilled instead, < 0 an error. Records of one key
 * all go the same way, in input order, so every key's states are what they would be without
 * a budget: bit for bit, floating sums and first/last too. Raw record: u8 'c', u32 klen, key,
 * u64 n (kv_add_count), or u8 'v', u32 klen, key, then per value u8 missing, u32 len, bytes. */
static int spill_gate(kvpart *p, const char *key, size_t klen, uint64_t hash, const kv_val *vals, uint64_t n,
                      dbx_err *err) {
  if (!p->h) return 1;
  if (!p->frozen) {
    if (kv_bytes(p) <= p->budget) return 1;
    p->frozen = 1;
  }
  if (htab_has(p->h, key, klen, hash)) return 1;
  char h[5];
  h[0] = vals ? 'v' : 'c';
  put32(h + 1, (uint32_t)klen);
  int rc = dbx_buf_append(&p->sbuf, h, 5) || dbx_buf_append(&p->sbuf, key, klen);
  if (!vals) {
    char c[8];
    put64(c, n);
    rc = rc || dbx_buf_append(&p->sbuf, c, 8);
  }
  for (uint32_t i = 0; vals && i < p->s.nval && !rc; i++) {
    char v[5];
    v[0] = (char)(vals[i].missing != 0);
    size_t len = vals[i].missing ? 0 : vals[i].n;
    if (len > UINT32_MAX - 64) return dbx_seterr(err, DBX_EBADREC, "a value of %zu bytes", len);
    put32(v + 1, (uint32_t)len);
    rc = dbx_buf_append(&p->sbuf, v, 5) || (len && dbx_buf_append(&p->sbuf, vals[i].p, len));
  }
  if (rc) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
  if (p->sbuf.len >= SPILL_BUF && (rc = spill_flush(p, err))) return rc;
  return 0;
}

void kv_set_budget(kvpart *p, size_t budget, const char *spill_dir) {
  p->budget = budget;
  p->spill_dir = spill_dir;
}

const kv_spec *kv_spec_of(const kvpart *p) { return &p->s; }

kvpart *kv_new_like(const kvpart *p) {
  kvpart *q = kv_new(&p->s);
  if (q) kv_set_budget(q, p->budget, p->spill_dir);
  return q;
}

int kv_take_spill(kvpart *p, int *fd, uint64_t *bytes, dbx_err *err) {
  int rc = spill_flush(p, err);
  if (rc) return rc;
  *fd = p->spill_fd;
  *bytes = p->spilled;
  p->spill_fd = -1;
  p->spilled = 0;
  p->frozen = 0;
  return 0;
}

int kv_replay(kvpart *p, const char *d, size_t n, dbx_err *err) {
  dbx_buf raw = {0};
  size_t o = 0;
  int rc = 0;
  while (o < n && !rc) {
    size_t fn = ZSTD_findFrameCompressedSize(d + o, n - o);
    unsigned long long rn = ZSTD_isError(fn) ? ZSTD_CONTENTSIZE_ERROR : ZSTD_getFrameContentSize(d + o, fn);
    /* A frame holds what one flush held: a buffer's worth plus one record, within 4 GiB. */
    if (ZSTD_isError(fn) || rn == ZSTD_CONTENTSIZE_ERROR || rn == ZSTD_CONTENTSIZE_UNKNOWN || rn > UINT32_MAX) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "a spill file is damaged at byte %zu (not a whole zstd frame)", o);
      break;
    }
    raw.len = 0;
    if (raw.cap < rn + 1 && dbx_buf_reserve(&raw, (size_t)rn + 1)) {
      rc = dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory reading spilled records");
      break;
    }
    size_t got = ZSTD_decompress(raw.data, (size_t)rn, d + o, fn);
    if (ZSTD_isError(got) || got != rn) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "a spill file is damaged at byte %zu (%s)", o,
                      ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short frame");
      break;
    }
    rc = kv_replay_records(p, raw.data, got, err);
    o += fn;
  }
  dbx_buf_free(&raw);
  return rc;
}

int kv_replay_records(kvpart *p, const char *d, size_t n, dbx_err *err) {
  kv_val vals[KV_AGG_MAX];
  size_t o = 0;
  while (o < n) {
    if (n - o < 5 || (d[o] != 'v' && d[o] != 'c')) return dbx_seterr(err, DBX_ECORRUPT, "a spill file is damaged at byte %zu", o);
    char tag = d[o];
    uint32_t kl = get32(d + o + 1);
    o += 5;
    if (n - o < kl) return dbx_seterr(err, DBX_ECORRUPT, "a spill file is damaged at byte %zu", o);
    const char *key = d + o;
    o += kl;
    int rc;
    if (tag == 'c') {
      if (n - o < 8) return dbx_seterr(err, DBX_ECORRUPT, "a spill file is damaged at byte %zu", o);
      rc = kv_add_count(p, key, kl, get64(d + o), err);
      if (rc == DBX_EINVAL) rc = dbx_seterr(err, DBX_ECORRUPT, "a spill file holds counts of other aggregates");
      o += 8;
    } else {
      for (uint32_t i = 0; i < p->s.nval && i < KV_AGG_MAX; i++) {
        if (n - o < 5) return dbx_seterr(err, DBX_ECORRUPT, "a spill file is damaged at byte %zu", o);
        uint32_t len = get32(d + o + 1);
        vals[i].missing = d[o] != 0;
        o += 5;
        if (n - o < len) return dbx_seterr(err, DBX_ECORRUPT, "a spill file is damaged at byte %zu", o);
        vals[i].p = d + o;
        vals[i].n = len;
        o += len;
      }
      rc = kv_add(p, key, kl, vals, err);
    }
    if (rc) return rc;
  }
  return 0;
}

/* Copy the first/last values the states point to into a fresh blob: replaced last values
 * are garbage, and the blob would otherwise grow with the records of a key, not its values. */
static int compact_blob(kvpart *p) {
  const kv_spec *s = &p->s;
  dbx_buf fresh = {0};
  if (dbx_buf_reserve(&fresh, p->blob.len + 1)) return DBX_ENOMEM;  /* no append below can fail */
  for (size_t off = 0; off < p->h->a.len;) {
    hent *e = ent_at(p->h, off);
    char *st = ent_state(e);
    for (uint32_t i = 0; i < s->nagg; i++) {
      char *x = st + p->off[i];
      if (!kind_text(s->agg[i].kind) || !x[0]) continue;
      uint32_t len = get32(x + 1);
      uint64_t at = fresh.len;
      if (len) (void)dbx_buf_append(&fresh, p->blob.data + get64(x + 5), len);
      put64(x + 5, at);
    }
    off += ent_size(p->h, e);
  }
  dbx_buf_free(&p->blob);
  p->blob = fresh;
  p->blob_dead = 0;
  return 0;
}

/* The arena exists from the start: with nothing in it, it would be NULL, and
 * NULL + 0 passed to memcmp is undefined behaviour. */
static htab *htab_new(size_t ssize) {
  htab *h = calloc(1, sizeof *h);
  if (h && dbx_buf_reserve(&h->a, 256)) {
    free(h);
    return NULL;
  }
  if (h) h->ssize = ssize;
  return h;
}

static int num_add_int(char *st, int64_t v, int kind) {
  uint64_t n = get64(st);
  int real = st[8];
  if (kind == KA_MIN || kind == KA_MAX) {
    if (n) {
      char w[8];
      put64(w, (uint64_t)v);
      int c = cmp_numval(real, st + 9, 0, w);
      if (kind == KA_MIN ? c <= 0 : c >= 0) { put64(st, n + 1); return 0; }
    }
    put64(st, n + 1);
    st[8] = 0;
    put64(st + 9, (uint64_t)v);
    return 0;
  }
  if (!real) {
    int64_t cur = (int64_t)get64(st + 9), r;
    if (__builtin_add_overflow(cur, v, &r)) return DBX_EBADREC;
    put64(st + 9, (uint64_t)r);
  } else {
    putd(st + 9, getd(st + 9) + (double)v);
  }
  put64(st, n + 1);
  return 0;
}

static void num_add_real(char *st, double v, int kind) {
  uint64_t n = get64(st);
  int real = st[8];
  if (kind == KA_MIN || kind == KA_MAX) {
    if (n) {
      char w[8];
      putd(w, v);
      int c = cmp_numval(real, st + 9, 1, w);
      if (kind == KA_MIN ? c <= 0 : c >= 0) { put64(st, n + 1); return; }
    }
    put64(st, n + 1);
    st[8] = 1;
    putd(st + 9, v);
    return;
  }
  double cur = real ? getd(st + 9) : (double)(int64_t)get64(st + 9);
  st[8] = 1;
  putd(st + 9, cur + v);
  put64(st, n + 1);
}

static void show_key(char *out, size_t cap, const char *key, size_t klen) {
  size_t o = 0;
  for (size_t i = 0; i < klen && o + 5 < cap; i++) {
    unsigned char c = (unsigned char)key[i];
    if (c >= 0x20 && c != 0x7f && c != '\\') out[o++] = (char)c;
    else o += (size_t)snprintf(out + o, cap - o, c == 0 ? "|" : "\\x%02x", c);
  }
  if (o >= cap) o = cap - 1;
  out[o] = 0;
}

uint64_t kv_hash(const char *key, size_t klen) { return strmap_hash(key, klen); }

int kv_err_overflow(const dbx_err *e) { return e->code == DBX_EBADREC && strstr(e->msg, " overflows ") != NULL; }

static int sort_entries(htab *h, uint64_t **out);
static int put_pair(hent *e, dbx_buf *out);
static size_t header_len(const kv_spec *s);
static void put_split_header(char *h, const kv_spec *s, uint64_t nmain, uint64_t npair);

/* Bytes of the empty states of one entry (kv_decode_level_view): a count of 0, numbers
 * without values, no first/last value. */
static size_t empty_states_len(const kv_spec *s) {
  size_t n = 0;
  for (uint32_t i = 0; i < s->nagg; i++) {
    int kd = s->agg[i].kind;
    n += kd == KA_COUNT ? 8 : kind_num(kd) ? 17 : kind_text(kd) ? 5 : 0;
  }
  return n;
}

/* Write the pair table out as one sorted run and start it again empty. The run is a partial
 * whose main entries are carriers: each key of its pairs once, with empty states (legal in a
 * task's level files only). The key's real states stay in the table. */
static int pair_flush(kvpart *p, dbx_err *err) {
  const kv_spec *s = &p->s;
  uint64_t *ix = NULL;
  dbx_buf run = {0}, pairs = {0};
  uint64_t nmain = 0;
  size_t es = empty_states_len(s), hl = header_len(s);
  int rc = sort_entries(p->hp, &ix);
  if (!rc && dbx_buf_append(&run, "\0\0\0\0\0\0\0\0", 8)) rc = DBX_ENOMEM;  /* its length, below */
  if (!rc && dbx_buf_reserve(&run, 8 + hl)) rc = DBX_ENOMEM;
  if (!rc) memset(run.data + 8, 0, hl), run.len = 8 + hl;
  const hent *prev = NULL;
  for (uint64_t k = 0; k < p->hp->n && !rc; k++) {
    hent *e = ent_at(p->hp, ix[k]);
    if (!prev || prev->klen != e->klen || memcmp(ent_bytes((hent *)prev), ent_bytes(e), e->klen)) {
      char kl[4];
      put32(kl, e->klen);
      if (dbx_buf_append(&run, kl, 4) || dbx_buf_append(&run, ent_bytes(e), e->klen) || dbx_buf_reserve(&run, es)) {
        rc = DBX_ENOMEM;
        break;
      }
      memset(run.data + run.len, 0, es);
      run.len += es;
      nmain++;
      prev = e;
    }
    if (put_pair(e, &pairs)) rc = DBX_ENOMEM;
  }
  if (!rc && dbx_buf_append(&run, pairs.data ? pairs.data : "", pairs.len)) rc = DBX_ENOMEM;
  uint64_t npair = p->hp->n;
  free(ix);
  dbx_buf_free(&pairs);
  if (rc) {
    dbx_buf_free(&run);
    return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory spilling value pairs");
  }
  put64(run.data, run.len - 8);
  put_split_header(run.data + 8, s, nmain, npair);
  if (p->pair_fd < 0) {
    char path[4200];
    snprintf(path, sizeof path, "%s/.tmp-pairs-XXXXXX", p->spill_dir);
    p->pair_fd = mkostemp(path, O_CLOEXEC);
    if (p->pair_fd < 0) rc = spill_err(p, errno, err);
    else unlink(path);  /* nothing is left behind by a killed worker */
  }
  for (size_t done = 0; !rc && done < run.len;) {
    ssize_t w = write(p->pair_fd, run.data + done, run.len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) rc = spill_err(p, w < 0 ? errno : ENOSPC, err);
    else done += (size_t)w;
  }
  if (!rc) p->pair_bytes += run.len;
  dbx_buf_free(&run);
  if (rc) return rc;
  htab_free(p->hp);
  if (!(p->hp = htab_new(8))) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
  if (kv_spill_fault) kv_spill_fault();
  return 0;
}

int kv_take_pairs(kvpart *p, int *fd, uint64_t *bytes) {
  *fd = p->pair_fd;
  *bytes = p->pair_bytes;
  p->pair_fd = -1;
  p->pair_bytes = 0;
  return 0;
}

void kv_prefetch(const kvpart *p, uint64_t hash) {
  const htab *h = p->h;
  if (h && h->cap) __builtin_prefetch(&h->slot[hash & (h->cap - 1)]);
}

void kv_prefetch_entry(const kvpart *p, uint64_t hash) {
  const htab *h = p->h;
  if (!h || !h->cap) return;
  uint64_t s = h->slot[hash & (h->cap - 1)];
  if (s && (s & ~SLOT_OFF_MASK) == (hash & ~SLOT_OFF_MASK)) {
    const char *e = h->a.data + ((s & SLOT_OFF_MASK) - 1) * 8;
    __builtin_prefetch(e);
    __builtin_prefetch(e + 64);  /* its states often end on the next cache line */
  }
}

int kv_add(kvpart *p, const char *key, size_t klen, const kv_val *vals, dbx_err *err) {
  return kv_add_hashed(p, key, klen, kv_hash(key, klen), vals, err);
}

int kv_add_hashed(kvpart *p, const char *key, size_t klen, uint64_t hash, const kv_val *vals, dbx_err *err) {
  const kv_spec *s = &p->s;
  int64_t iv[KV_AGG_MAX];
  double dv[KV_AGG_MAX];
  int kindv[KV_AGG_MAX];
  if (klen > KV_KEY_MAX) return dbx_seterr(err, DBX_EBADREC, "a key of %zu bytes (at most %u)", klen, KV_KEY_MAX);
  /* Read every number first: a bad record adds nothing. */
  for (uint32_t c = 0; c < KV_AGG_MAX; c++) kindv[c] = -1;   /* not only nval: a spec from a peer may say 0 */
  for (uint32_t i = 0; i < s->nagg; i++) {
    const kv_agg *a = &s->agg[i];
    if (!kind_num(a->kind) || kindv[a->col] >= 0) continue;
    const kv_val *v = &vals[a->col];
    if (v->missing) { kindv[a->col] = 0; continue; }
    kindv[a->col] = kv_parse_num(v->p, v->n, &iv[a->col], &dv[a->col]);
    if (!kindv[a->col]) {
      char shown[80];
      show_key(shown, sizeof shown, v->p, v->n < 60 ? v->n : 60);
      return dbx_seterr(err, DBX_EBADREC, "'%s%s' is not a number (for %s)", shown, v->n > 60 ? "..." : "", a->name);
    }
  }
  if (p->budget) {
    int g = spill_gate(p, key, klen, hash, vals, 0, err);
    if (g <= 0) return g;
  }
  if (!p->h) {
    size_t ss = 0;
    for (uint32_t i = 0; i < s->nagg; i++) ss += mem_size(s->agg[i].kind);
    if (!(p->h = htab_new(ss))) return DBX_ENOMEM;
    if (p->has_pairs && !(p->hp = htab_new(8))) return DBX_ENOMEM;
  }
  char *st;
  if (htab_get_h(p->h, key, klen, NULL, 0, hash, &st)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
  /* Sums are checked before any state changes, so an overflow adds nothing either: past
   * int64 while every value is an integer, past the largest double once one is a real (a
   * non-finite sum has no output, and a peer's partial holding one is refused as corrupt). */
  for (uint32_t i = 0; i < s->nagg; i++) {
    const kv_agg *a = &s->agg[i];
    char *x = st + p->off[i];
    if ((a->kind != KA_SUM && a->kind != KA_MEAN) || kindv[a->col] <= 0) continue;
    int64_t r;
    int over = 0;
    if (kindv[a->col] == 1 && !x[8]) over = __builtin_add_overflow((int64_t)get64(x + 9), iv[a->col], &r);
    else {
      double cur = x[8] ? getd(x + 9) : (double)(int64_t)get64(x + 9);
      over = !isfinite(cur + (kindv[a->col] == 1 ? (double)iv[a->col] : dv[a->col]));
    }
    if (over) {
      char shown[80];
      show_key(shown, sizeof shown, key, klen < 60 ? klen : 60);
      return dbx_seterr(err, DBX_EBADREC, "the %s of key '%s%s' overflows 64-bit %s", a->name, shown,
                        klen > 60 ? "..." : "", kindv[a->col] == 1 && !x[8] ? "integers" : "floating point");
    }
  }
  for (uint32_t i = 0; i < s->nagg; i++) {
    const kv_agg *a = &s->agg[i];
    char *x = st + p->off[i];
    const kv_val *v = &vals[a->col];
    switch (a->kind) {
    case KA_COUNT: put64(x, get64(x) + 1); break;
    case KA_SUM: case KA_MEAN: case KA_MIN: case KA_MAX:
      if (kindv[a->col] == 1) num_add_int(x, iv[a->col], a->kind);
      else if (kindv[a->col] == 2) num_add_real(x, dv[a->col], a->kind);
      break;
    case KA_FIRST: case KA_LAST:
      if (v->missing || (a->kind == KA_FIRST && x[0])) break;
      if (v->n > UINT32_MAX) return dbx_seterr(err, DBX_EBADREC, "a value of %zu bytes", v->n);
      if (x[0] && get32(x + 1) >= v->n) {  /* a last value no longer than the one it replaces */
        p->blob_dead += get32(x + 1) - v->n;
        if (v->n) memcpy(p->blob.data + get64(x + 5), v->p, v->n);
        put32(x + 1, (uint32_t)v->n);
        break;
      }
      if (x[0]) p->blob_dead += get32(x + 1);
      x[0] = 1;
      put32(x + 1, (uint32_t)v->n);
      put64(x + 5, p->blob.len);
      if (v->n && dbx_buf_append(&p->blob, v->p, v->n)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
      if (p->blob_dead > (1u << 20) && p->blob_dead > p->blob.len / 2 && compact_blob(p))
        return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
      break;
    case KA_DISTINCT: case KA_TOP: {
      if (v->missing) break;
      if (v->n > UINT32_MAX - 64) return dbx_seterr(err, DBX_EBADREC, "a value of %zu bytes", v->n);
      /* Pairs of one column are shared by its distinct and top aggregates: keyed by the
       * first set aggregate reading that column. */
      uint32_t slot = i;
      for (uint32_t j = 0; j < i; j++)
        if (kind_pairs(s->agg[j].kind) && s->agg[j].col == a->col) { slot = j; break; }
      if (slot != i) break;
      p->tail.len = 0;
      if (dbx_buf_append(&p->tail, (char[]){(char)slot}, 1) || (v->n && dbx_buf_append(&p->tail, v->p, v->n)))
        return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
      char *c;
      if (htab_get(p->hp, key, klen, p->tail.data, p->tail.len, &c)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
      put64(c, get64(c) + 1);
      if (p->budget && p->hp->cap * sizeof *p->hp->slot + p->hp->a.cap > p->budget / 2) {
        int rc = pair_flush(p, err);
        if (rc) return rc;
      }
      break;
    }
    }
  }
  return 0;
}

/* ---- sealing: hash table -> sorted run ---- */

static int cmp_bytes(const char *a, size_t an, const char *b, size_t bn) {
  int c = memcmp(a, b, an < bn ? an : bn);
  return c ? c : an < bn ? -1 : an > bn;
}

/* Sorting compares a 16-byte big-endian prefix of the key first (no trip to the arena),
 * then, on a tie, the whole key and the pair tail. */
typedef struct sref {
  uint64_t p1, p2;
  uint64_t off;
} sref;

/* The first 8 bytes of p[0..n) as a big-endian number, zero-padded: such prefixes compare
 * as the keys do (memcmp, then the shorter first) unless equal. */
static uint64_t prefix8(const char *p, size_t n) {
  unsigned char b[8] = {0};
  if (n) memcpy(b, p, n < 8 ? n : 8);
  uint64_t v;
  memcpy(&v, b, 8);
  return __builtin_bswap64(v);
}

static int cmp_hent(const void *x, const void *y, void *arg) {
  const sref *ra = x, *rb = y;
  if (ra->p1 != rb->p1) return ra->p1 < rb->p1 ? -1 : 1;
  if (ra->p2 != rb->p2) return ra->p2 < rb->p2 ? -1 : 1;
  const htab *h = arg;
  const hent *a = ent_at(h, ra->off), *b = ent_at(h, rb->off);
  const char *ab = (const char *)(a + 1), *bb = (const char *)(b + 1);
  int c = cmp_bytes(ab, a->klen, bb, b->klen);
  if (c) return c;
  /* Pairs: the aggregate byte, then the value. */
  return cmp_bytes(ab + a->klen, a->len - a->klen, bb + b->klen, b->len - b->klen);
}

/* Sort r[0..n) by p1: least significant byte first, 8 stable counting passes, skipping a
 * byte that is the same in every entry (ASCII keys share their top bits). */
static int radix_p1(sref *r, uint64_t n) {
  sref *tmp = malloc(n * sizeof *tmp);
  if (!tmp) return DBX_ENOMEM;
  sref *src = r, *dst = tmp;
  for (int byte = 0; byte < 8; byte++) {
    uint64_t cnt[256] = {0};
    int shift = 8 * byte;
    for (uint64_t i = 0; i < n; i++) cnt[(src[i].p1 >> shift) & 0xff]++;
    if (cnt[(src[0].p1 >> shift) & 0xff] == n) continue;
    uint64_t pos = 0;
    for (int b = 0; b < 256; b++) {
      uint64_t c = cnt[b];
      cnt[b] = pos;
      pos += c;
    }
    for (uint64_t i = 0; i < n; i++) dst[cnt[(src[i].p1 >> shift) & 0xff]++] = src[i];
    sref *t = src;
    src = dst;
    dst = t;
  }
  if (src != r) memcpy(r, src, n * sizeof *r);
  free(tmp);
  return 0;
}

/* The entries' offsets in key order. The prefix is of the key alone (zero-padded), so a
 * shorter key sorts first on a common prefix, as cmp_bytes says. */
static int sort_entries(htab *h, uint64_t **out) {
  sref *r = malloc((h->n ? h->n : 1) * sizeof *r);
  if (!r) return DBX_ENOMEM;
  uint64_t k = 0;
  for (uint64_t off = 0; off < h->a.len && k < h->n; off += ent_size(h, ent_at(h, off))) {
    hent *e = ent_at(h, off);
    const char *b = ent_bytes(e);
    r[k].p1 = prefix8(b, e->klen);
    r[k].p2 = e->klen > 8 ? prefix8(b + 8, e->klen - 8) : 0;
    r[k++].off = off;
  }
  if (h->n < 64) {
    qsort_r(r, h->n, sizeof *r, cmp_hent, h);
  } else if (radix_p1(r, h->n)) {
    free(r);
    return DBX_ENOMEM;
  }
  /* Runs of equal first prefixes (keys sharing 8 bytes) are ordered by the rest. */
  for (uint64_t i = 0; i < h->n;) {
    uint64_t j = i + 1;
    while (j < h->n && r[j].p1 == r[i].p1) j++;
    if (j - i > 1) qsort_r(r + i, j - i, sizeof *r, cmp_hent, h);
    i = j;
  }
  uint64_t *ix = (uint64_t *)(void *)r;   /* compact in place: ix[i] is written after r[i] is read */
  for (uint64_t i = 0; i < h->n; i++) ix[i] = r[i].off;
  *out = ix;
  return 0;
}

/* Append entry e of p's main table, serialized, to out. */
static int put_main(const kvpart *p, hent *e, dbx_buf *out) {
  const kv_spec *s = &p->s;
  const char *st = ent_state(e);
  size_t need = 4 + e->klen + p->h->ssize;
  for (uint32_t i = 0; i < s->nagg; i++)
    if (kind_text(s->agg[i].kind)) need += get32(st + p->off[i] + 1);
  if (dbx_buf_reserve(out, need)) return DBX_ENOMEM;
  char *w = out->data + out->len;
  put32(w, e->klen);
  memcpy(w + 4, ent_bytes(e), e->klen);
  w += 4 + e->klen;
  for (uint32_t i = 0; i < s->nagg; i++) {
    const char *x = st + p->off[i];
    int kd = s->agg[i].kind;
    if (kd == KA_COUNT) { memcpy(w, x, 8); w += 8; }
    else if (kind_num(kd)) { memcpy(w, x, 17); w += 17; }
    else if (kind_text(kd)) {
      uint32_t len = get32(x + 1);
      w[0] = x[0];
      put32(w + 1, len);
      if (len) memcpy(w + 5, p->blob.data + get64(x + 5), len);
      w += 5 + len;
    }
  }
  out->len = (size_t)(w - out->data);
  return 0;
}

/* Append entry e of a pair table, serialized, to out. */
static int put_pair(hent *e, dbx_buf *out) {
  const char *b = ent_bytes(e);
  uint32_t vlen = e->len - e->klen - 1;
  if (dbx_buf_reserve(out, 4 + e->klen + 1 + 4 + vlen + 8)) return DBX_ENOMEM;
  char *w = out->data + out->len;
  put32(w, e->klen);
  memcpy(w + 4, b, e->klen);
  w += 4 + e->klen;
  *w++ = b[e->klen];
  put32(w, vlen);
  memcpy(w + 4, b + e->klen + 1, vlen);
  w += 4 + vlen;
  memcpy(w, ent_state(e), 8);
  w += 8;
  out->len = (size_t)(w - out->data);
  return 0;
}

/* Serialize the pending tables into a run (main then pairs) in out. */
static int serialize(kvpart *p, dbx_buf *out, uint64_t *nmain, uint64_t *npair, size_t *pair_off) {
  uint64_t *ix = NULL;
  int rc = 0;
  out->len = 0;
  *nmain = *npair = 0;
  if (!p->h) { *pair_off = 0; return 0; }
  if ((rc = sort_entries(p->h, &ix))) return rc;
  for (uint64_t k = 0; k < p->h->n && !rc; k++) rc = put_main(p, ent_at(p->h, ix[k]), out);
  free(ix);
  ix = NULL;
  *nmain = p->h->n;
  *pair_off = out->len;
  if (!rc && p->hp) {
    if ((rc = sort_entries(p->hp, &ix))) return rc;
    for (uint64_t k = 0; k < p->hp->n && !rc; k++) rc = put_pair(ent_at(p->hp, ix[k]), out);
    *npair = p->hp->n;
    free(ix);
  }
  return rc;
}

/* ---- walking runs ---- */

/* Length of the main entry at m (already validated). */
static size_t main_len(const kv_spec *s, const char *m) {
  size_t o = 4 + get32(m);
  for (uint32_t i = 0; i < s->nagg; i++) {
    int kd = s->agg[i].kind;
    if (kd == KA_COUNT) o += 8;
    else if (kind_num(kd)) o += 17;
    else if (kind_text(kd)) o += 5 + get32(m + o + 1);
  }
  return o;
}

static size_t pair_len(const char *q) {
  uint32_t kl = get32(q);
  return 4 + kl + 1 + 4 + get32(q + 4 + kl + 1) + 8;
}

static int cmp_main(const char *a, const char *b) {
  return cmp_bytes(a + 4, get32(a), b + 4, get32(b));
}

static int cmp_pair(const char *a, const char *b) {
  uint32_t ak = get32(a), bk = get32(b);
  int c = cmp_bytes(a + 4, ak, b + 4, bk);
  if (c) return c;
  const char *at = a + 4 + ak, *bt = b + 4 + bk;
  if (at[0] != bt[0]) return (unsigned char)at[0] < (unsigned char)bt[0] ? -1 : 1;
  return cmp_bytes(at + 5, get32(at + 1), bt + 5, get32(bt + 1));
}

/* Merge the states of one key: left (earlier batches) and right into out. */
static int merge_states(const kv_spec *s, const char *l, const char *r, dbx_buf *out, dbx_err *err) {
  size_t lo = 4 + get32(l), ro = 4 + get32(r);
  if (dbx_buf_append(out, l, lo)) return DBX_ENOMEM;
  for (uint32_t i = 0; i < s->nagg; i++) {
    int kd = s->agg[i].kind;
    const char *x = l + lo, *y = r + ro;
    char w[17];
    if (kd == KA_COUNT) {
      uint64_t a = get64(x), b = get64(y);
      if (a + b < a || a + b > KV_COUNT_MAX) return dbx_seterr(err, DBX_ECORRUPT, "keyed: a count overflows");
      put64(w, a + b);
      if (dbx_buf_append(out, w, 8)) return DBX_ENOMEM;
      lo += 8, ro += 8;
    } else if (kind_num(kd)) {
      uint64_t nl = get64(x), nr = get64(y);
      int rl = x[8], rr = y[8];
      if (!nr) memcpy(w, x, 17);
      else if (!nl) memcpy(w, y, 17);
      else if (kd == KA_MIN || kd == KA_MAX) {
        int c = cmp_numval(rr, y + 9, rl, x + 9);
        int take_right = kd == KA_MIN ? c < 0 : c > 0;
        memcpy(w, take_right ? y : x, 17);
      } else if (!rl && !rr) {
        int64_t a = (int64_t)get64(x + 9), b = (int64_t)get64(y + 9), c;
        if (__builtin_add_overflow(a, b, &c)) {
          char shown[80];
          show_key(shown, sizeof shown, l + 4, get32(l) < 60 ? get32(l) : 60);
          return dbx_seterr(err, DBX_EBADREC, "the %s of key '%s' overflows 64-bit integers", s->agg[i].name, shown);
        }
        w[8] = 0;
        put64(w + 9, (uint64_t)c);
      } else {
        double a = rl ? getd(x + 9) : (double)(int64_t)get64(x + 9);
        double b = rr ? getd(y + 9) : (double)(int64_t)get64(y + 9);
        if (!isfinite(a + b)) {
          char shown[80];
          show_key(shown, sizeof shown, l + 4, get32(l) < 60 ? get32(l) : 60);
          return dbx_seterr(err, DBX_EBADREC, "the %s of key '%s' overflows 64-bit floating point", s->agg[i].name,
                            shown);
        }
        w[8] = 1;
        putd(w + 9, a + b);
      }
      if (nl && nr) {
        if (nl + nr > KV_COUNT_MAX) return dbx_seterr(err, DBX_ECORRUPT, "keyed: a count overflows");
        put64(w, nl + nr);
      }
      if (dbx_buf_append(out, w, 17)) return DBX_ENOMEM;
      lo += 17, ro += 17;
    } else if (kind_text(kd)) {
      size_t xl = 5 + get32(x + 1), yl = 5 + get32(y + 1);
      const char *pick = kd == KA_FIRST ? (x[0] ? x : y) : (y[0] ? y : x);
      if (dbx_buf_append(out, pick, pick == x ? xl : yl)) return DBX_ENOMEM;
      lo += xl, ro += yl;
    }
  }
  return 0;
}

/* out = merge of runs a (earlier) and b. */
static int merge_runs(const kv_spec *s, const dbx_buf *a, uint64_t an, size_t aoff, uint64_t ap,
                      const dbx_buf *b, uint64_t bn, size_t boff, uint64_t bp, dbx_buf *out, uint64_t *nmain,
                      uint64_t *npair, size_t *pair_off, dbx_err *err) {
  out->len = 0;
  if (dbx_buf_reserve(out, a->len + b->len)) return DBX_ENOMEM;
  const char *x = a->data, *xe = a->data ? a->data + aoff : NULL;
  const char *y = b->data, *ye = b->data ? b->data + boff : NULL;
  uint64_t n = 0;
  int rc;
  (void)an; (void)bn; (void)ap; (void)bp;
  while (x < xe || y < ye) {
    int c = x >= xe ? 1 : y >= ye ? -1 : cmp_main(x, y);
    if (c < 0) {
      size_t l = main_len(s, x);
      if (dbx_buf_append(out, x, l)) return DBX_ENOMEM;
      x += l;
    } else if (c > 0) {
      size_t l = main_len(s, y);
      if (dbx_buf_append(out, y, l)) return DBX_ENOMEM;
      y += l;
    } else {
      if ((rc = merge_states(s, x, y, out, err))) return rc == DBX_ENOMEM ? dbx_seterr(err, rc, "keyed: out of memory") : rc;
      x += main_len(s, x);
      y += main_len(s, y);
    }
    n++;
  }
  *nmain = n;
  *pair_off = out->len;
  x = xe, y = ye;
  xe = a->data ? a->data + a->len : NULL;
  ye = b->data ? b->data + b->len : NULL;
  n = 0;
  while (x < xe || y < ye) {
    int c = x >= xe ? 1 : y >= ye ? -1 : cmp_pair(x, y);
    if (c < 0) {
      size_t l = pair_len(x);
      if (dbx_buf_append(out, x, l)) return DBX_ENOMEM;
      x += l;
    } else if (c > 0) {
      size_t l = pair_len(y);
      if (dbx_buf_append(out, y, l)) return DBX_ENOMEM;
      y += l;
    } else {
      size_t l = pair_len(x);
      uint64_t cx = get64(x + l - 8), cy = get64(y + pair_len(y) - 8);
      if (cx + cy > KV_COUNT_MAX) return dbx_seterr(err, DBX_ECORRUPT, "keyed: a count overflows");
      if (dbx_buf_append(out, x, l)) return DBX_ENOMEM;
      put64(out->data + out->len - 8, cx + cy);
      x += l;
      y += pair_len(y);
    }
    n++;
  }
  *npair = n;
  return 0;
}

/* Fold pending hash tables into the run (the run holds earlier records than the tables). */
static int seal(kvpart *p, dbx_err *err) {
  if (!p->h) return 0;
  dbx_buf fresh = {0};
  uint64_t nm, np;
  size_t po;
  int rc = serialize(p, &fresh, &nm, &np, &po);
  if (rc) {
    dbx_buf_free(&fresh);
    return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
  }
  htab_free(p->h);
  htab_free(p->hp);
  p->h = p->hp = NULL;
  dbx_buf_free(&p->blob);
  p->blob_dead = 0;
  if (!p->run.len) {
    dbx_buf_free(&p->run);
    p->run = fresh;
    p->nmain = nm, p->npair = np, p->pair_off = po;
    return 0;
  }
  dbx_buf out = {0};
  rc = merge_runs(&p->s, &p->run, p->nmain, p->pair_off, p->npair, &fresh, nm, po, np, &out, &nm, &np, &po, err);
  dbx_buf_free(&fresh);
  if (rc) {
    dbx_buf_free(&out);
    return rc;
  }
  dbx_buf_free(&p->run);
  p->run = out;
  p->nmain = nm, p->npair = np, p->pair_off = po;
  return 0;
}

int kv_merge(kvpart *left, kvpart *right, dbx_err *err) {
  int rc = seal(left, err);
  if (!rc) rc = seal(right, err);
  if (rc) return rc;
  if (!right->run.len) return 0;
  if (!left->run.len) {
    if (dbx_buf_append(&left->run, right->run.data, right->run.len)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
    left->nmain = right->nmain, left->npair = right->npair, left->pair_off = right->pair_off;
    return 0;
  }
  dbx_buf out = {0};
  uint64_t nm, np;
  size_t po;
  rc = merge_runs(&left->s, &left->run, left->nmain, left->pair_off, left->npair, &right->run, right->nmain,
                  right->pair_off, right->npair, &out, &nm, &np, &po, err);
  if (rc) {
    dbx_buf_free(&out);
    return rc;
  }
  dbx_buf_free(&left->run);
  left->run = out;
  left->nmain = nm, left->npair = np, left->pair_off = po;
  return 0;
}

/* ---- encoding ---- */

static size_t header_len(const kv_spec *s) { return 4 + 1 + 1 + s->nagg + 8 + 8; }

int kv_encode(kvpart *p, dbx_buf *out, dbx_err *err) {
  int rc = seal(p, err);
  if (rc) return rc;
  const kv_spec *s = &p->s;
  char h[4 + 2 + KV_AGG_MAX + 16];
  memcpy(h, "DBKV", 4);
  h[4] = KV_VERSION;
  h[5] = (char)s->nagg;
  for (uint32_t i = 0; i < s->nagg; i++) h[6 + i] = (char)s->agg[i].kind;
  put64(h + 6 + s->nagg, p->nmain);
  put64(h + 14 + s->nagg, p->npair);
  if (dbx_buf_reserve(out, header_len(s) + p->run.len) || dbx_buf_append(out, h, header_len(s)) ||
      (p->run.len && dbx_buf_append(out, p->run.data, p->run.len)))
    return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
  return 0;
}

#define BAD(...) do { rc = dbx_seterr(err, DBX_ECORRUPT, "keyed partial: " __VA_ARGS__); goto fail; } while (0)

/* Give back the whole pages of a read-only file mapping in [from, to): they are read again
 * from the file if touched again. The new release point. */
const char *kv_drop_pages(const char *from, const char *to) {
  uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)from + pg - 1) & ~(pg - 1),
            b = (uintptr_t)to & ~(pg - 1);
  if (b <= a) return from;
  madvise((void *)a, b - a, MADV_DONTNEED);
  return (const char *)b;
}

/* Validate buf; then copy it (borrow 0) or read it in place (borrow 1, kv_decode_view). */
static int decode_impl(const kv_spec *s, const char *buf, size_t n, int borrow, int level, int mapped, kvpart **out,
                       dbx_err *err) {
  const char *dropped = buf;  /* mapped: pages before this were given back (by each walk) */
  int rc = 0;
  kvpart *p = NULL;
  size_t hl = header_len(s);
  if (n < hl || memcmp(buf, "DBKV", 4) || buf[4] != KV_VERSION || (unsigned char)buf[5] != s->nagg)
    return dbx_seterr(err, DBX_ECORRUPT, "keyed partial: bad header");
  for (uint32_t i = 0; i < s->nagg; i++)
    if ((unsigned char)buf[6 + i] != s->agg[i].kind) return dbx_seterr(err, DBX_ECORRUPT, "keyed partial: other aggregates");
  uint64_t nm = get64(buf + 6 + s->nagg), np = get64(buf + 14 + s->nagg);
  const char *q = buf + hl, *end = buf + n, *prev = NULL;
  int has_pairs = 0;
  for (uint32_t i = 0; i < s->nagg; i++) has_pairs |= kind_pairs(s->agg[i].kind);
  if (np && !has_pairs) return dbx_seterr(err, DBX_ECORRUPT, "keyed partial: value pairs without a set aggregate");
  /* Main entries. */
  for (uint64_t k = 0; k < nm; k++) {
    if ((size_t)(end - q) < 4) BAD("truncated entry %llu", (unsigned long long)k);
    uint32_t kl = get32(q);
    if (kl > KV_KEY_MAX || (size_t)(end - q) - 4 < kl) BAD("key length %u past the end", kl);
    size_t o = 4 + kl;
    for (uint32_t i = 0; i < s->nagg; i++) {
      int kd = s->agg[i].kind;
      size_t left = (size_t)(end - q) - o;
      if (kd == KA_COUNT) {
        if (left < 8) BAD("truncated state");
        uint64_t c = get64(q + o);
        if ((!c && !level) || c > KV_COUNT_MAX) BAD("count %llu", (unsigned long long)c);  /* 0: a carrier */
        o += 8;
      } else if (kind_num(kd)) {
        if (left < 17) BAD("truncated state");
        uint64_t c = get64(q + o);
        int real = q[o + 8];
        if (c > KV_COUNT_MAX || (real != 0 && real != 1)) BAD("numeric state");
        if (real && !isfinite(getd(q + o + 9))) BAD("a non-finite number");
        if (!c && (real || get64(q + o + 9))) BAD("a number without values");
        o += 17;
      } else if (kind_text(kd)) {
        if (left < 5) BAD("truncated state");
        int has = q[o];
        uint32_t len = get32(q + o + 1);
        if ((has != 0 && has != 1) || (!has && len) || left - 5 < len) BAD("text state");
        o += 5 + len;
      }
    }
    if (prev && cmp_main(prev, q) >= 0) BAD("keys out of order at entry %llu", (unsigned long long)k);
    prev = q;
    q += o;
    if (mapped && prev > dropped + (1u << 20)) dropped = kv_drop_pages(dropped, prev);
  }
  const char *pairs = q;
  const char *m = buf + hl, *mend = pairs, *dropped_m = m;
  dropped = pairs;
  prev = NULL;
  for (uint64_t k = 0; k < np; k++) {
    size_t left = (size_t)(end - q);
    if (left < 4) BAD("truncated pair");
    uint32_t kl = get32(q);
    if (kl > KV_KEY_MAX || left - 4 < (size_t)kl + 5) BAD("pair key past the end");
    unsigned char slot = (unsigned char)q[4 + kl];
    uint32_t vl = get32(q + 4 + kl + 1);
    if (left - 4 - kl - 5 < (size_t)vl + 8) BAD("pair value past the end");
    if (slot >= s->nagg || !kind_pairs(s->agg[slot].kind)) BAD("a pair of aggregate %u", slot);
    for (uint32_t j = 0; j < slot; j++)
      if (kind_pairs(s->agg[j].kind) && s->agg[j].col == s->agg[slot].col) BAD("a pair of a shared column");
    uint64_t c = get64(q + 4 + kl + 5 + vl);
    if (!c || c > KV_COUNT_MAX) BAD("pair count %llu", (unsigned long long)c);
    if (prev && cmp_pair(prev, q) >= 0) BAD("pairs out of order at %llu", (unsigned long long)k);
    /* Its key is a main key: advance the main walk to it. */
    while (m < mend && cmp_bytes(m + 4, get32(m), q + 4, kl) < 0) m += main_len(s, m);
    if (m >= mend || cmp_bytes(m + 4, get32(m), q + 4, kl)) BAD("a pair whose key has no entry");
    prev = q;
    q += pair_len(q);
    if (mapped && prev > dropped + (1u << 20)) dropped = kv_drop_pages(dropped, prev);
    if (mapped && m > dropped_m + (1u << 20)) dropped_m = kv_drop_pages(dropped_m, m);
  }
  if (q != end) BAD("%zu bytes after the last entry", (size_t)(end - q));
  if (!(p = kv_new(s))) return DBX_ENOMEM;
  if (borrow) {
    p->borrowed = 1;
    p->run.data = (char *)(uintptr_t)(buf + hl);
    p->run.len = n - hl;
  } else if (n > hl && dbx_buf_append(&p->run, buf + hl, n - hl)) {
    kv_free(p);
    return DBX_ENOMEM;
  }
  p->nmain = nm, p->npair = np, p->pair_off = (size_t)(pairs - (buf + hl));
  *out = p;
  return 0;
fail:
  kv_free(p);
  return rc;
}

int kv_decode(const kv_spec *s, const char *buf, size_t n, kvpart **out, dbx_err *err) {
  return decode_impl(s, buf, n, 0, 0, 0, out, err);
}

/* ---- reading a sealed partial ---- */

int kv_cursor_init(kv_cursor *c, kvpart *p, dbx_err *err) {
  int rc = seal(p, err);
  if (rc) return rc;
  c->p = p;
  c->m = p->run.data;
  c->mend = p->run.data ? p->run.data + p->pair_off : NULL;
  c->q = c->mend;
  c->qend = p->run.data ? p->run.data + p->run.len : NULL;
  c->mapped = 0;
  return 0;
}

int kv_cursor_next(kv_cursor *c, kv_entry *e) {
  if (c->m >= c->mend) return 0;
  const kv_spec *s = &c->p->s;
  e->klen = get32(c->m);
  e->key = c->m + 4;
  e->state = c->m + 4 + e->klen;
  e->pairs = c->q;
  e->npairs = 0;
  e->mapped = c->mapped;
  const char *dropped = c->q;
  while (c->q < c->qend && !cmp_bytes(c->q + 4, get32(c->q), e->key, e->klen)) {
    c->q += pair_len(c->q);
    e->npairs++;
    if (c->mapped && c->q > dropped + (16u << 10)) dropped = kv_drop_pages(dropped, c->q);
  }
  /* A long run of pairs: all of its pages, not all but the last 16 KB (a merge holds a cursor
   * on every level of a task, thousands for a key with millions of values; each reads its
   * pairs again as it goes). */
  if (c->mapped && dropped != e->pairs) kv_drop_pages(dropped, c->q);
  c->m += main_len(s, c->m);
  return 1;
}

typedef struct topv { const char *v; uint32_t n; uint64_t c; } topv;
static int cmp_top(const void *x, const void *y) {
  const topv *a = x, *b = y;
  if (a->c != b->c) return a->c > b->c ? -1 : 1;
  return cmp_bytes(a->v, a->n, b->v, b->n);
}

int kv_value(const kv_spec *s, uint32_t i, const kv_entry *e, dbx_buf *scratch, dbx_value *v, dbx_err *err) {
  memset(v, 0, sizeof *v);
  const char *x = e->state;
  for (uint32_t j = 0; j < i; j++) {
    int kd = s->agg[j].kind;
    x += kd == KA_COUNT ? 8 : kind_num(kd) ? 17 : kind_text(kd) ? 5 + get32(x + 1) : 0;
  }
  const kv_agg *a = &s->agg[i];
  switch (a->kind) {
  case KA_COUNT: v->i = (int64_t)get64(x); return 0;
  case KA_SUM: case KA_MIN: case KA_MAX: case KA_MEAN: {
    uint64_t n = get64(x);
    if (!n) { v->n = DBX_NUM_NULL; return 0; }
    int real = x[8];
    if (a->kind == KA_MEAN) {
      v->n = DBX_NUM_REAL;
      v->d = (real ? getd(x + 9) : (double)(int64_t)get64(x + 9)) / (double)n;
    } else if (real) {
      v->n = DBX_NUM_REAL;
      v->d = getd(x + 9);
    } else {
      v->n = DBX_NUM_INT;
      v->i = (int64_t)get64(x + 9);
    }
    return 0;
  }
  case KA_FIRST: case KA_LAST:
    if (x[0]) {
      v->s = x + 5;
      v->n = get32(x + 1);
      if (!v->n) v->s = "";
    }
    return 0;
  case KA_DISTINCT: case KA_TOP: {
    uint32_t slot = i;
    for (uint32_t j = 0; j < i; j++)
      if (kind_pairs(s->agg[j].kind) && s->agg[j].col == a->col) { slot = j; break; }
    uint64_t nv = 0, nt = 0;
    const char *q = e->pairs;
    scratch->len = 0;
    /* top: the best a->k values so far, in a heap whose root is the worst of them, so a key
     * with millions of values holds k of them, not all. */
    const char *dropped = e->pairs;
    for (uint64_t k = 0; k < e->npairs; k++, q += pair_len(q)) {
      if (e->mapped && (k & 65535) == 65535 && q > dropped + (16u << 20)) dropped = kv_drop_pages(dropped, q);
      uint32_t kl = get32(q);
      if ((unsigned char)q[4 + kl] != slot) continue;
      nv++;
      if (a->kind != KA_TOP || !a->k) continue;
      topv t = {q + 4 + kl + 5, get32(q + 4 + kl + 1), get64(q + pair_len(q) - 8)};
      uint64_t at = 0;
      if (nt < a->k) {
        if (dbx_buf_append(scratch, &t, sizeof t)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
        topv *h = (topv *)(void *)scratch->data;
        for (at = nt++; at && cmp_top(&h[(at - 1) / 2], &t) < 0; at = (at - 1) / 2) h[at] = h[(at - 1) / 2];
        h[at] = t;
        continue;
      }
      topv *h = (topv *)(void *)scratch->data;
      if (cmp_top(&t, &h[0]) >= 0) continue;
      for (;;) {  /* t replaces the root, sifted down */
        uint64_t l = 2 * at + 1, m = l;
        if (l >= nt) break;
        if (l + 1 < nt && cmp_top(&h[l + 1], &h[l]) > 0) m = l + 1;
        if (cmp_top(&h[m], &t) <= 0) break;
        h[at] = h[m];
        at = m;
      }
      h[at] = t;
    }
    if (a->kind == KA_DISTINCT) {
      if (nv) v->i = (int64_t)nv;
      v->n = nv ? DBX_NUM_INT : DBX_NUM_NULL;
      return 0;
    }
    if (!nv) return 0;
    topv *t = (topv *)(void *)scratch->data;
    qsort(t, nt, sizeof *t, cmp_top);
    size_t used = (size_t)nt * sizeof *t;
    uint64_t k = nt;
    for (uint64_t j = 0; j < k; j++) {
      /* A copy: every append may move the buffer t lives in. */
      topv cur = ((const topv *)(const void *)scratch->data)[j];
      char num[32];
      int nn = snprintf(num, sizeof num, "%s%llu", "=", (unsigned long long)cur.c);
      if ((j && dbx_buf_append(scratch, ",", 1)) || dbx_buf_append(scratch, cur.v, cur.n) ||
          dbx_buf_append(scratch, num, (size_t)nn))
        return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
    }
    v->s = scratch->data + used;
    v->n = scratch->len - used;
    return 0;
  }
  }
  return dbx_seterr(err, DBX_EINVAL, "keyed: unknown aggregate");
}

int kv_emit_entry(const kv_spec *s, const kv_entry *e, uint32_t nkeycol, dbx_buf *scratch, dbx_emit_fn emit, void *ctx,
                  dbx_err *err) {
  dbx_value row[KV_AGG_MAX * 2];
  if (nkeycol < 1 || nkeycol > KV_AGG_MAX) return dbx_seterr(err, DBX_EINVAL, "keyed: bad key columns");
  memset(row, 0, sizeof row);
  const char *k = e->key, *kend = e->key + e->klen;
  for (uint32_t j = 0; j < nkeycol; j++) {
    const char *z = j + 1 < nkeycol ? memchr(k, 0, (size_t)(kend - k)) : NULL;
    if (j + 1 < nkeycol && !z) return dbx_seterr(err, DBX_ECORRUPT, "keyed: a key with too few fields");
    if (!z) z = kend;
    row[j].s = k;
    row[j].n = (size_t)(z - k);
    k = z + 1;
  }
  int rc = 0;
  for (uint32_t i = 0; i < s->nagg && !rc; i++) rc = kv_value(s, i, e, &scratch[i], &row[nkeycol + i], err);
  return rc ? rc : emit(ctx, row, err);
}

int kv_emit_rows(const kv_spec *s, kvpart *p, uint32_t nkeycol, dbx_emit_fn emit, void *ctx, dbx_err *err) {
  kv_cursor c;
  int rc = kv_cursor_init(&c, p, err);
  if (rc || !emit) return rc;
  dbx_buf scratch[KV_AGG_MAX];
  memset(scratch, 0, sizeof scratch);
  kv_entry e;
  while (!rc && kv_cursor_next(&c, &e)) rc = kv_emit_entry(s, &e, nkeycol, scratch, emit, ctx, err);
  for (uint32_t i = 0; i < KV_AGG_MAX; i++) dbx_buf_free(&scratch[i]);
  return rc;
}

/* ---- merging sealed runs into a file (the reduce side; bounded memory) ---- */

typedef struct msrc {
  kv_cursor c;
  kv_entry e;
  uint64_t pfx;      /* prefix8 of e.key: most comparisons of the merge end there */
  uint32_t idx;
  int have;
  const char *dropped_m, *dropped_q;   /* mapped pages released up to here */
} msrc;

typedef struct wout {
  int fd;
  dbx_buf b;
  const char *dir;
} wout;

static int wout_flush(wout *w, dbx_err *err) {
  size_t done = 0;
  while (done < w->b.len) {
    ssize_t k = write(w->fd, w->b.data + done, w->b.len - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      int e = k < 0 ? errno : ENOSPC;
      return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: %s", w->dir, strerror(e));
    }
    done += (size_t)k;
  }
  w->b.len = 0;
  return 0;
}

static int wout_put(wout *w, const void *p, size_t n, dbx_err *err) {
  if (n < SPILL_BUF) {
    if (dbx_buf_append(&w->b, p, n)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
    return w->b.len >= SPILL_BUF ? wout_flush(w, err) : 0;
  }
  /* A long range (the value pairs of a key with millions of values) goes out in pieces of
   * the buffer's size, not through a copy of its own size. */
  int rc = wout_flush(w, err);
  for (size_t o = 0; !rc && o < n; o += SPILL_BUF) {
    size_t k = n - o < SPILL_BUF ? n - o : SPILL_BUF;
    if (dbx_buf_append(&w->b, (const char *)p + o, k)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
    rc = wout_flush(w, err);
  }
  return rc;
}

/* The next entry of a source into a->e (and its prefix); 0 at the end. */
static int msrc_next(msrc *a) {
  if (!kv_cursor_next(&a->c, &a->e)) return 0;
  a->pfx = prefix8(a->e.key, a->e.klen);
  return 1;
}

/* Key order of two sources' entries: the prefixes, then the bytes after them. */
static int msrc_cmp(const msrc *a, const msrc *b) {
  if (a->pfx != b->pfx) return a->pfx < b->pfx ? -1 : 1;
  if (a->e.klen <= 8 || b->e.klen <= 8) return a->e.klen < b->e.klen ? -1 : a->e.klen > b->e.klen;
  return cmp_bytes(a->e.key + 8, a->e.klen - 8, b->e.key + 8, b->e.klen - 8);
}

/* Heap order: key, then batch index. */
static int msrc_less(const msrc *a, const msrc *b) {
  int c = msrc_cmp(a, b);
  return c ? c < 0 : a->idx < b->idx;
}

static void heap_down(msrc **h, uint32_t n, uint32_t i) {
  for (;;) {
    uint32_t l = 2 * i + 1, m = i;
    if (l < n && msrc_less(h[l], h[m])) m = l;
    if (l + 1 < n && msrc_less(h[l + 1], h[m])) m = l + 1;
    if (m == i) return;
    msrc *t = h[i];
    h[i] = h[m];
    h[m] = t;
    i = m;
  }
}

static void heap_up(msrc **h, uint32_t i) {
  while (i && msrc_less(h[i], h[(i - 1) / 2])) {
    msrc *t = h[i];
    h[i] = h[(i - 1) / 2];
    h[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
}

/* A folded entry: in a source run (p) or at off in the arena. */
typedef struct fref {
  const char *p;
  size_t off;
} fref;

static const char *fref_at(const fref *f, const dbx_buf *arena) { return f->p ? f->p : arena->data + f->off; }

/* The states of one key held by g[a..b) (batch indices increasing, all in [lo, lo + 2^L)),
 * folded as the engine's tree over batch indices folds them (engine/agg.c: a node merges its
 * halves, an empty half is the identity). */
static int fold(const kv_spec *s, msrc **g, uint32_t a, uint32_t b, uint64_t lo, unsigned L, dbx_buf *arena,
                fref *out, dbx_err *err) {
  while (b - a > 1) {
    uint64_t mid = lo + ((uint64_t)1 << (L - 1));
    uint32_t m = a;
    while (m < b && g[m]->idx < mid) m++;
    if (m == a) { lo = mid; L--; continue; }
    if (m == b) { L--; continue; }
    fref l, r;
    int rc = fold(s, g, a, m, lo, L - 1, arena, &l, err);
    if (!rc) rc = fold(s, g, m, b, mid, L - 1, arena, &r, err);
    if (rc) return rc;
    size_t need = main_len(s, fref_at(&l, arena)) + main_len(s, fref_at(&r, arena));
    if (dbx_buf_reserve(arena, need)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
    out->p = NULL;
    out->off = arena->len;
    return merge_states(s, fref_at(&l, arena), fref_at(&r, arena), arena, err);
  }
  out->p = g[a]->e.key - 4;
  out->off = 0;
  return 0;
}

/* The value pairs of one key held by g[0..n): merged through a heap of pair cursors
 * (pq: n slots), counts added. */
typedef struct pcur { const char *q; uint64_t left; const char *dropped; } pcur;
static int pcur_less(const pcur *a, const pcur *b) { return cmp_pair(a->q, b->q) < 0; }
static void pheap_down(pcur *h, uint32_t n, uint32_t i) {
  for (;;) {
    uint32_t l = 2 * i + 1, m = i;
    if (l < n && pcur_less(&h[l], &h[m])) m = l;
    if (l + 1 < n && pcur_less(&h[l + 1], &h[m])) m = l + 1;
    if (m == i) return;
    pcur t = h[i];
    h[i] = h[m];
    h[m] = t;
    i = m;
  }
}

/* mapped: the runs are read-only file mappings, whose pages behind each cursor are given back
 * as it goes (one key may hold millions of pairs). */
static int fold_pairs(msrc **g, uint32_t n, pcur *h, wout *w, uint64_t *npair, int mapped, dbx_err *err) {
  uint32_t nh = 0;
  for (uint32_t j = 0; j < n; j++)
    if (g[j]->e.npairs) h[nh++] = (pcur){g[j]->e.pairs, g[j]->e.npairs, g[j]->e.pairs};
  for (uint32_t i = nh / 2; i-- > 0;) pheap_down(h, nh, i);
  const char *cur = NULL;
  uint64_t sum = 0;
  int rc = 0;
  while (!rc && (nh || cur)) {
    if (cur && (!nh || cmp_pair(h[0].q, cur))) {
      char c[8];
      put64(c, sum);
      if (!(rc = wout_put(w, cur, pair_len(cur) - 8, err))) rc = wout_put(w, c, 8, err);
      (*npair)++;
      cur = NULL;
      continue;
    }
    const char *q = h[0].q;
    size_t l = pair_len(q);
    if (!cur) cur = q, sum = 0;
    sum += get64(q + l - 8);
    if (sum > KV_COUNT_MAX) return dbx_seterr(err, DBX_ECORRUPT, "keyed: a count overflows");
    if (--h[0].left) {
      h[0].q = q + l;
      /* (cur may lie in a page given back: it is read again from the file) */
      if (mapped && h[0].q > h[0].dropped + (16u << 10)) h[0].dropped = kv_drop_pages(h[0].dropped, q);
    } else {
      if (mapped) kv_drop_pages(h[0].dropped, q + l);  /* done with this run's pairs of the key */
      h[0] = h[--nh];
    }
    pheap_down(h, nh, 0);
  }
  return rc;
}

/* Give back the pages of a mapped run that are behind both of its cursors. */
static void release_behind(msrc *x) {
  if (x->c.m > x->dropped_m + (16u << 20)) x->dropped_m = kv_drop_pages(x->dropped_m, x->c.m);
  if (x->c.q > x->dropped_q + (16u << 20)) x->dropped_q = kv_drop_pages(x->dropped_q, x->c.q);
}

/* Are the states of main entry m all empty (a carrier of value pairs, or an entry as empty as one)? */
static int states_empty(const kv_spec *s, const char *m) {
  const char *x = m + 4 + get32(m);
  for (uint32_t i = 0; i < s->nagg; i++) {
    int kd = s->agg[i].kind;
    if (kd == KA_COUNT) {
      if (get64(x)) return 0;
      x += 8;
    } else if (kind_num(kd)) {
      if (get64(x)) return 0;
      x += 17;
    } else if (kind_text(kd)) {
      if (x[0]) return 0;
      x += 5 + get32(x + 1);
    }
  }
  return 1;
}

int kv_merge_to_fd(const kv_spec *s, kvpart **src, const uint32_t *idx, uint32_t n, uint32_t nbatch, int mapped,
                   int levels, int fd, const char *dir, dbx_err *err) {
  int rc = 0, pair_fd = -1, has_pairs = 0;
  msrc *v = calloc(n ? n : 1, sizeof *v);
  msrc **h = calloc(n ? n : 1, sizeof *h), **g = calloc(n ? n : 1, sizeof *g);
  pcur *ph = calloc(n ? n : 1, sizeof *ph);
  wout mw = {fd, {0}, dir}, pw = {-1, {0}, dir};
  dbx_buf arena = {0};
  uint64_t nmain = 0, npair = 0;
  uint32_t nh = 0;
  for (uint32_t i = 0; i < s->nagg; i++) has_pairs |= kind_pairs(s->agg[i].kind);
  if (!v || !h || !g || !ph) { rc = dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory"); goto done; }
  unsigned L = 0;
  while (((uint64_t)1 << L) < nbatch) L++;
  for (uint32_t i = 0; i < n && !rc; i++) {
    if (i && idx[i] <= idx[i - 1]) rc = dbx_seterr(err, DBX_EINVAL, "internal error: runs out of batch order");
    if (idx[i] >= (nbatch ? nbatch : 1)) rc = dbx_seterr(err, DBX_EINVAL, "internal error: run of batch %u of %u", idx[i], nbatch);
    if (!rc) rc = kv_cursor_init(&v[i].c, src[i], err);
    if (rc) break;
    v[i].c.mapped = mapped;
    v[i].idx = idx[i];
    v[i].dropped_m = v[i].c.m;
    v[i].dropped_q = v[i].c.q;
    if ((v[i].have = msrc_next(&v[i]))) {
      h[nh] = &v[i];
      heap_up(h, nh++);
    }
  }
  if (!rc && has_pairs) {
    char path[4200];
    snprintf(path, sizeof path, "%s/.tmp-pairs-XXXXXX", dir);
    if ((pair_fd = mkostemp(path, O_CLOEXEC)) < 0) rc = spill_err(&(kvpart){.spill_dir = dir}, errno, err);
    else unlink(path);
    pw.fd = pair_fd;
  }
  char hdr[4 + 2 + KV_AGG_MAX + 16];
  size_t hl = header_len(s);
  memset(hdr, 0, sizeof hdr);
  if (!rc) rc = wout_put(&mw, hdr, hl, err);
  uint64_t since = 0;
  while (!rc && nh) {
    /* Every source holding the smallest key, in batch order. */
    uint32_t k = 0;
    g[k++] = h[0];
    h[0] = h[--nh];
    heap_down(h, nh, 0);
    while (nh && !msrc_cmp(h[0], g[0])) {
      g[k++] = h[0];
      h[0] = h[--nh];
      heap_down(h, nh, 0);
    }
    arena.len = 0;
    fref f;
    /* A task's levels hold a key's states in one of them; the others carry only its value
     * pairs, with empty states: the states are the one non-empty entry's, as they were. */
    uint32_t real = 0, nreal = 0;
    for (uint32_t j = 0; levels && j < k; j++)
      if (!states_empty(s, g[j]->e.key - 4)) real = j, nreal++;
    if (levels && nreal <= 1) f.p = g[real]->e.key - 4, f.off = 0;
    else rc = fold(s, g, 0, k, 0, L, &arena, &f, err);
    const char *ent = rc ? NULL : fref_at(&f, &arena);
    if (!rc) rc = wout_put(&mw, ent, main_len(s, ent), err);
    nmain++;
    if (!rc && has_pairs) {
      if (k == 1) {
        /* Where the cursor stopped: the end of the key's pairs (walking them again here to
         * find it would bring every page of a long run back, none given back). */
        const char *q = g[0]->c.q;
        /* In pieces, the pages behind each given back: one key may hold millions of pairs. */
        for (const char *at = g[0]->e.pairs; !rc && at < q;) {
          size_t piece = (size_t)(q - at) < (16u << 20) ? (size_t)(q - at) : 16u << 20;
          rc = wout_put(&pw, at, piece, err);
          at += piece;
          if (mapped && at < q) kv_drop_pages(g[0]->e.pairs, at);
        }
        npair += g[0]->e.npairs;
      } else {
        rc = fold_pairs(g, k, ph, &pw, &npair, mapped, err);
      }
    }
    for (uint32_t j = 0; j < k && !rc; j++) {
      if ((g[j]->have = msrc_next(g[j]))) {
        h[nh] = g[j];
        heap_up(h, nh++);
      }
      if (mapped && ++since % 4096 == 0) release_behind(g[j]);
    }
  }
  if (!rc) rc = wout_flush(&mw, err);
  if (!rc && pair_fd >= 0) rc = wout_flush(&pw, err);
  /* The pair run follows the main run. */
  if (!rc && pair_fd >= 0 && npair) {
    off_t po = 0;
    if (lseek(pair_fd, 0, SEEK_SET) < 0) rc = spill_err(&(kvpart){.spill_dir = dir}, errno, err);
    char *buf = rc ? NULL : malloc(SPILL_BUF);
    if (!rc && !buf) rc = dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
    while (!rc) {
      ssize_t r = read(pair_fd, buf, SPILL_BUF);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) rc = spill_err(&(kvpart){.spill_dir = dir}, errno, err);
      if (r <= 0) break;
      mw.b.len = 0;
      if (dbx_buf_append(&mw.b, buf, (size_t)r)) rc = dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
      else rc = wout_flush(&mw, err);
      po += r;
    }
    free(buf);
    (void)po;
  }
  if (!rc) {
    memcpy(hdr, "DBKV", 4);
    hdr[4] = KV_VERSION;
    hdr[5] = (char)s->nagg;
    for (uint32_t a = 0; a < s->nagg; a++) hdr[6 + a] = (char)s->agg[a].kind;
    put64(hdr + 6 + s->nagg, nmain);
    put64(hdr + 14 + s->nagg, npair);
    if (pwrite(fd, hdr, hl, 0) != (ssize_t)hl) rc = spill_err(&(kvpart){.spill_dir = dir}, errno ? errno : EIO, err);
  }
done:
  if (pair_fd >= 0) close(pair_fd);
  dbx_buf_free(&mw.b);
  dbx_buf_free(&pw.b);
  dbx_buf_free(&arena);
  free(v);
  free(h);
  free(g);
  free(ph);
  return rc;
}

/* ---- partitions (engine/shuffle.c) ---- */

void kv_clear(kvpart *p) {
  htab_free(p->h);
  htab_free(p->hp);
  p->h = p->hp = NULL;
  dbx_buf_free(&p->blob);
  p->blob_dead = 0;
  if (!p->borrowed) dbx_buf_free(&p->run);
  memset(&p->run, 0, sizeof p->run);
  p->borrowed = 0;
  p->nmain = p->npair = 0;
  p->pair_off = 0;
}

uint32_t kv_partition_of(const char *key, size_t klen, uint32_t r) {
  return (uint32_t)(XXH3_64bits_withSeed(key, klen, 0x64626174) % r);
}

/* The header of a split's encoding (header_len bytes at h): magic, version, aggregates,
 * entry and pair counts. */
static void put_split_header(char *h, const kv_spec *s, uint64_t nmain, uint64_t npair) {
  memcpy(h, "DBKV", 4);
  h[4] = KV_VERSION;
  h[5] = (char)s->nagg;
  for (uint32_t a = 0; a < s->nagg; a++) h[6 + a] = (char)s->agg[a].kind;
  put64(h + 6 + s->nagg, nmain);
  put64(h + 14 + s->nagg, npair);
}

int kv_split(kvpart *p, uint32_t r, dbx_buf *out, dbx_err *err) {
  /* A table never sealed splits straight from its entries (no run in between: one copy of
   * the data less, in time and at the memory peak of a map task); else from the run. */
  int direct = p->h && !p->run.len;
  int rc = direct ? 0 : seal(p, err);
  if (rc) return rc;
  const kv_spec *s = &p->s;
  uint64_t *nm = calloc(r, sizeof *nm), *np = calloc(r, sizeof *np);
  dbx_buf *pairs = calloc(r, sizeof *pairs);
  if (!nm || !np || !pairs) { rc = DBX_ENOMEM; goto done; }
  for (uint32_t i = 0; i < r; i++) out[i].len = 0;
  /* Main entries go straight after a header placeholder; pair entries wait aside. */
  size_t hl = header_len(s);
  size_t guess = (direct ? p->h->a.len : p->run.len) / r + 64;
  for (uint32_t i = 0; i < r && !rc; i++) rc = dbx_buf_reserve(&out[i], hl + guess);
  for (uint32_t i = 0; i < r && !rc; i++) out[i].len = hl;
  kv_cursor c;
  kv_entry e;
  if (!rc && direct) {
    uint64_t *ix = NULL;
    if (!(rc = sort_entries(p->h, &ix)))
      for (uint64_t k = 0; k < p->h->n && !rc; k++) {
        hent *he = ent_at(p->h, ix[k]);
        uint32_t q = kv_partition_of(ent_bytes(he), he->klen, r);
        if (!(rc = put_main(p, he, &out[q]))) nm[q]++;
      }
    free(ix);
    ix = NULL;
    if (!rc && p->hp && !(rc = sort_entries(p->hp, &ix)))
      for (uint64_t k = 0; k < p->hp->n && !rc; k++) {
        hent *he = ent_at(p->hp, ix[k]);
        uint32_t q = kv_partition_of(ent_bytes(he), he->klen, r);
        if (!(rc = put_pair(he, &pairs[q]))) np[q]++;
      }
    free(ix);
    if (!rc) {
      htab_free(p->h);
      htab_free(p->hp);
      p->h = p->hp = NULL;
      dbx_buf_free(&p->blob);
      p->blob_dead = 0;
    }
  }
  if (!rc && !direct) rc = kv_cursor_init(&c, p, err);
  while (!rc && !direct && kv_cursor_next(&c, &e)) {
    uint32_t k = kv_partition_of(e.key, e.klen, r);
    const char *start = e.key - 4;
    if (dbx_buf_append(&out[k], start, main_len(s, start))) { rc = DBX_ENOMEM; break; }
    nm[k]++;
    const char *q = e.pairs;
    for (uint64_t j = 0; j < e.npairs; j++) q += pair_len(q);
    if (e.npairs && dbx_buf_append(&pairs[k], e.pairs, (size_t)(q - e.pairs))) { rc = DBX_ENOMEM; break; }
    np[k] += e.npairs;
  }
  for (uint32_t i = 0; i < r && !rc; i++) {
    if (pairs[i].len && dbx_buf_append(&out[i], pairs[i].data, pairs[i].len)) { rc = DBX_ENOMEM; break; }
    put_split_header(out[i].data, s, nm[i], np[i]);
  }
done:
  if (rc == DBX_ENOMEM) rc = dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory splitting a partial");
  for (uint32_t i = 0; pairs && i < r; i++) dbx_buf_free(&pairs[i]);
  free(pairs);
  free(nm);
  free(np);
  return rc;
}

/* kv_split_counts sorts sref entries whose off packs what the output needs, so that the big
 * table is read once in memory order and not again at random in key order: bits 0-31 the
 * slot, 32-36 the key's length when it is 1 to 16 bytes (then p1, p2 are the whole key), 37-63
 * the count when it fits (else 0: read from the slot). */
#define SC_SLOT(o) ((uint32_t)(o))
#define SC_LEN(o) ((size_t)((o) >> 32 & 31))
#define SC_COUNT(o) ((o) >> 37)
#define SC_COUNT_MAX (((uint64_t)1 << 27) - 1)

static const char *sc_key(const strmap *m, const sref *e, char *buf, size_t *len) {
  size_t n = SC_LEN(e->off);
  if (!n) {
    const strmap_slot *s = &m->t[SC_SLOT(e->off)];
    *len = s->len;
    return s->len <= STRMAP_INLINE_MAX ? (const char *)&s->key : m->arena.data + s->key;
  }
  for (int b = 0; b < 8; b++) buf[b] = (char)(e->p1 >> (56 - 8 * b));
  for (int b = 0; b < 8; b++) buf[8 + b] = (char)(e->p2 >> (56 - 8 * b));
  *len = n;
  return buf;
}

/* Key order, as cmp_hent's: whole short keys are in p1, p2 (zero-padded: a tie there is
 * decided by the length). */
static int cmp_sc(const void *x, const void *y, void *arg) {
  const sref *ra = x, *rb = y;
  if (ra->p1 != rb->p1) return ra->p1 < rb->p1 ? -1 : 1;
  if (ra->p2 != rb->p2) return ra->p2 < rb->p2 ? -1 : 1;
  char ba[16], bb[16];
  size_t la, lb;
  const char *a = sc_key(arg, ra, ba, &la), *b = sc_key(arg, rb, bb, &lb);
  return cmp_bytes(a, la, b, lb);
}

int kv_split_counts(const kv_spec *s, const strmap *m, uint32_t r, dbx_buf *out, dbx_err *err) {
  if (s->nagg == 0 || r == 0) return dbx_seterr(err, DBX_EINVAL, "keyed: counts split under a spec without counts");
  for (uint32_t i = 0; i < s->nagg; i++)
    if (s->agg[i].kind != KA_COUNT) return dbx_seterr(err, DBX_EINVAL, "keyed: counts split under a spec with other aggregates");
  uint64_t n = strmap_count(m);
  int rc = 0;
  uint64_t *nm = calloc(r, sizeof *nm);
  sref *v = malloc((n ? n : 1) * sizeof *v);
  if (!nm || !v) { rc = DBX_ENOMEM; goto done; }
  /* The slots in memory order (a big table is read straight through once), then sorted by
   * key as sort_entries sorts a table's entries. */
  uint64_t k = 0;
  for (size_t j = 0; j <= m->mask && k < n; j++) {
    const strmap_slot *sl = &m->t[j];
    if (!sl->len) continue;
    const char *key = sl->len <= STRMAP_INLINE_MAX ? (const char *)&sl->key : m->arena.data + sl->key;
    v[k].p1 = prefix8(key, sl->len);
    v[k].p2 = sl->len > 8 ? prefix8(key + 8, sl->len - 8) : 0;
    v[k].off = (uint64_t)j | (uint64_t)(sl->len <= 16 ? sl->len : 0) << 32 |
               (sl->val <= SC_COUNT_MAX ? sl->val : 0) << 37;
    k++;
  }
  if (k != n) { rc = dbx_seterr(err, DBX_EINVAL, "keyed: a word count table of %llu keys holds %llu",
                                (unsigned long long)n, (unsigned long long)k); goto done; }
  if (n < 64) qsort_r(v, n, sizeof *v, cmp_sc, (void *)m);
  else if ((rc = radix_p1(v, n))) goto done;
  for (uint64_t i = 0; i < n;) {
    uint64_t j = i + 1;
    while (j < n && v[j].p1 == v[i].p1) j++;
    if (j - i > 1) qsort_r(v + i, j - i, sizeof *v, cmp_sc, (void *)m);
    i = j;
  }
  size_t hl = header_len(s), st = 8 * (size_t)s->nagg;
  for (uint32_t i = 0; i < r && !rc; i++) {
    out[i].len = 0;
    rc = dbx_buf_reserve(&out[i], hl + (n / r + 1) * (4 + 8 + st));
    out[i].len = hl;
  }
  for (uint64_t i = 0; i < n && !rc; i++) {
    size_t len;
    char kb[16];
    const char *key = sc_key(m, &v[i], kb, &len);
    uint64_t c = SC_COUNT(v[i].off) ? SC_COUNT(v[i].off) : m->t[SC_SLOT(v[i].off)].val;
    if (c == 0 || c > KV_COUNT_MAX) {
      rc = dbx_seterr(err, DBX_EBADREC, "keyed: a count of 0 or past 2^62");
      break;
    }
    uint32_t q = kv_partition_of(key, len, r);
    if ((rc = dbx_buf_reserve(&out[q], 4 + len + st))) break;
    char *w = out[q].data + out[q].len;
    put32(w, (uint32_t)len);
    memcpy(w + 4, key, len);
    for (uint32_t a = 0; a < s->nagg; a++) put64(w + 4 + len + 8 * a, c);
    out[q].len += 4 + len + st;
    nm[q]++;
  }
  for (uint32_t i = 0; i < r && !rc; i++) put_split_header(out[i].data, s, nm[i], 0);
done:
  free(nm);
  free(v);
  return rc == DBX_ENOMEM ? dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory splitting a partial") : rc;
}

int kv_decode_view(const kv_spec *s, const char *buf, size_t n, kvpart **out, dbx_err *err) {
  return decode_impl(s, buf, n, 1, 0, 0, out, err);
}

int kv_decode_level_view(const kv_spec *s, const char *buf, size_t n, kvpart **out, dbx_err *err) {
  return decode_impl(s, buf, n, 1, 1, 0, out, err);
}

int kv_decode_file_view(const kv_spec *s, const char *map, size_t n, int level, kvpart **out, dbx_err *err) {
  return decode_impl(s, map, n, 1, level, 1, out, err);
}

int kv_add_count(kvpart *p, const char *key, size_t klen, uint64_t n, dbx_err *err) {
  return kv_add_count_hashed(p, key, klen, kv_hash(key, klen), n, err);
}

int kv_add_count_hashed(kvpart *p, const char *key, size_t klen, uint64_t hash, uint64_t n, dbx_err *err) {
  const kv_spec *s = &p->s;
  for (uint32_t i = 0; i < s->nagg; i++)
    if (s->agg[i].kind != KA_COUNT) return dbx_seterr(err, DBX_EINVAL, "keyed: counts added to a spec with other aggregates");
  if (p->budget) {
    int g = spill_gate(p, key, klen, hash, NULL, n, err);
    if (g <= 0) return g;
  }
  if (!p->h && !(p->h = htab_new(8 * s->nagg))) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
  char *st;
  if (htab_get_h(p->h, key, klen, NULL, 0, hash, &st)) return dbx_seterr(err, DBX_ENOMEM, "keyed: out of memory");
  for (uint32_t i = 0; i < s->nagg; i++) {
    uint64_t c = get64(st + 8 * i);
    if (c + n < c || c + n > KV_COUNT_MAX) return dbx_seterr(err, DBX_EBADREC, "keyed: a count past 2^62");
    put64(st + 8 * i, c + n);
  }
  return 0;
}
