/* strmap.h -- byte-string keys to dense ids with a 64-bit value each (private).
 * The counting table behind word count and the vocabulary of the text classifier. */
#ifndef DBX_UTIL_STRMAP_H
#define DBX_UTIL_STRMAP_H
#include <stddef.h>
#include <stdint.h>

#include "dbatch.h"

typedef struct strmap strmap;

/* New empty map, owned by the caller; NULL on ENOMEM. */
strmap *strmap_new(void);
/* Make room for n keys in all without growing (saves the rehashes of a known-size build). */
int strmap_reserve(strmap *m, size_t n);
/* Frees the map and every key; accepts NULL. */
void strmap_free(strmap *m);
/* Remove every key; the memory held stays (for the next keys). */
void strmap_clear(strmap *m);
/* Keep the slot array within bytes: an insertion that would grow it past that inserts the key
 * without growing and returns STRMAP_FULL, and every insertion does until the caller empties
 * the map (strmap_clear, which keeps the array: no rehash and no fresh pages the next time).
 * Without a limit (the default) the map grows as it needs. */
#define STRMAP_FULL 1
/* Returns the most keys the limited map holds without being full. */
size_t strmap_limit(strmap *m, size_t bytes);
/* The bytes of keys and ids held besides the slot array (what a limit does not bound). */
size_t strmap_aux_bytes(const strmap *m);

/* Find key, inserting it with value 0 if absent, then add delta to its value.
 * OUT *id: the key's dense id (ids are 0..count-1 in insertion order). 0, DBX_ENOMEM, or
 * STRMAP_FULL (done; see strmap_limit). */
int strmap_add(strmap *m, const char *key, size_t len, uint64_t delta, uint32_t *id);
/* The same with the key's hash already computed by strmap_hash(): callers that look up many
 * keys hash them ahead and strmap_prefetch() their slots, so cache misses overlap. */
uint64_t strmap_hash_long(const char *key, size_t len);
static inline uint64_t strmap_hash(const char *key, size_t len);
static inline void strmap_prefetch(const strmap *m, uint64_t hash);
static inline int strmap_add_hashed(strmap *m, const char *key, size_t len, uint64_t hash, uint64_t delta,
                                    uint32_t *id);
/* Id of key, or -1 when absent; the same with the hash computed ahead (strmap_hash). */
int64_t strmap_find(const strmap *m, const char *key, size_t len);
static inline int64_t strmap_find_hashed(const strmap *m, const char *key, size_t len, uint64_t h);

size_t strmap_count(const strmap *m);
/* The key of id; the pointer is valid until the next insertion. */
const char *strmap_key(const strmap *m, uint32_t id, size_t *len);
uint64_t strmap_val(const strmap *m, uint32_t id);
/* The stored hash of id's key, for re-inserting it elsewhere without hashing again. */
uint64_t strmap_hash_of(const strmap *m, uint32_t id);
void strmap_setval(strmap *m, uint32_t id, uint64_t v);
/* Bytes of memory held (for the summary and the memory benchmark). */
size_t strmap_bytes(const strmap *m);

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "strmap packs short keys assuming a little-endian machine"
#endif
#include <string.h>

/* A key of 1 to 8 bytes in memory order, zero-padded, without a byte-wise copy: a memcpy of
 * variable length followed by a 64-bit load stalls store forwarding. */
static inline uint64_t strmap_inline_key(const char *key, size_t len) {
  const unsigned char *p = (const unsigned char *)key;
  if (len >= 4) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + len - 4, 4);
    return (uint64_t)lo | (uint64_t)hi << (8 * (len - 4));
  }
  return (uint64_t)p[0] | (uint64_t)p[len >> 1] << (8 * (len >> 1)) | (uint64_t)p[len - 1] << (8 * (len - 1));
}

/* The hash of a short key from its packed bytes: a few multiplies, no branch on the length
 * (words have every length, and a mispredicted branch costs more than the hash). */
static inline uint64_t strmap_hash_short(uint64_t ik, size_t len) {
  uint64_t x = ik ^ ((uint64_t)len * 0x9e3779b97f4a7c15u);
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93u;
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93u;
  return x ^ x >> 32;
}

/* The layout, here so that the lookup of a key already in the table (nearly every word of
 * a text) inlines into the loops that count. Word counting is bound by cache misses, so a
 * slot is the whole entry (32 bytes, two per cache line): the full hash, the value, and keys
 * of up to 8 bytes stored inline. A lookup of a short word touches one cache line; longer
 * keys add one read of the key arena. Dense ids (insertion order) map to slots through a
 * separate array used only by callers that walk the map. */
#define STRMAP_INLINE_MAX 8
typedef struct strmap_slot {
  uint64_t hash;
  uint64_t val;
  uint64_t key;    /* the key bytes when len <= STRMAP_INLINE_MAX, else its arena offset */
  uint32_t len;    /* 0 = empty slot (keys are never empty) */
  uint32_t id;
} strmap_slot;

struct strmap {
  strmap_slot *t;
  size_t mask;
  size_t limit;    /* the most slots, a power of two (0: no limit) */
  uint32_t *order; /* id -> slot index */
  size_t n, ocap;
  dbx_buf arena;
};

/* Insert key at slot j, found empty by the probe (the slow path of strmap_add_hashed). */
int strmap_insert_at(strmap *m, size_t j, const char *key, size_t len, uint64_t h, uint64_t delta, uint32_t *id);

static inline int strmap_same_key(const strmap *m, const strmap_slot *s, const char *key, size_t len, uint64_t ik) {
  if (s->len != len) return 0;
  if (len <= STRMAP_INLINE_MAX) return s->key == ik;
  return memcmp(m->arena.data + s->key, key, len) == 0;
}

/* The key bytes of an occupied slot of m. */
static inline const char *strmap_slot_key(const strmap *m, const strmap_slot *s) {
  return s->len <= STRMAP_INLINE_MAX ? (const char *)&s->key : m->arena.data + s->key;
}

static inline void strmap_prefetch(const strmap *m, uint64_t hash) { __builtin_prefetch(&m->t[(size_t)hash & m->mask]); }

static inline int strmap_add_hashed(strmap *m, const char *key, size_t len, uint64_t h, uint64_t delta,
                                    uint32_t *id) {
  if (len == 0) return DBX_EINVAL;
  uint64_t ik = len <= STRMAP_INLINE_MAX ? strmap_inline_key(key, len) : 0;
  size_t j = (size_t)h & m->mask;
  for (;;) {
    strmap_slot *s = &m->t[j];
    if (!s->len) return strmap_insert_at(m, j, key, len, h, delta, id);
    if (s->hash == h && strmap_same_key(m, s, key, len, ik)) {
      s->val += delta;
      if (id) *id = s->id;
      return 0;
    }
    j = (j + 1) & m->mask;
  }
}

static inline int64_t strmap_find_hashed(const strmap *m, const char *key, size_t len, uint64_t h) {
  if (len == 0) return -1;
  uint64_t ik = len <= STRMAP_INLINE_MAX ? strmap_inline_key(key, len) : 0;
  size_t j = (size_t)h & m->mask;
  for (;;) {
    const strmap_slot *s = &m->t[j];
    if (!s->len) return -1;
    if (s->hash == h && strmap_same_key(m, s, key, len, ik)) return s->id;
    j = (j + 1) & m->mask;
  }
}

/* The hash every keyed table of dbatch uses (strmap, and kv's through kv_hash). */
static inline uint64_t strmap_hash(const char *key, size_t len) {
  if (len - 1 < 8) return strmap_hash_short(strmap_inline_key(key, len), len);
  return strmap_hash_long(key, len);
}
#endif
