/* strmap.c -- open-addressing hash table of byte strings (xxHash3, linear probing).
 *
 * Word counting is bound by cache misses, so a slot is the whole entry (32 bytes, two per
 * cache line): the full hash, the value, and keys of up to 8 bytes stored inline. A lookup
 * of a short word touches one cache line; longer keys add one read of the key arena.
 * Dense ids (insertion order) map to slots through a separate array used only by callers
 * that walk the map. */
#include "util/strmap.h"

#include <stdlib.h>
#include <string.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "dbatch.h"

#define INLINE_MAX 8

typedef struct slot {
  uint64_t hash;
  uint64_t val;
  uint64_t key;    /* the key bytes when len <= INLINE_MAX, else its arena offset */
  uint32_t len;    /* 0 = empty slot (keys are never empty) */
  uint32_t id;
} slot;

struct strmap {
  slot *t;
  size_t mask;
  uint32_t *order; /* id -> slot index */
  size_t n, ocap;
  dbx_buf arena;
};

strmap *strmap_new(void) {
  strmap *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->mask = 1023;
  m->t = calloc(m->mask + 1, sizeof *m->t);
  if (!m->t) { free(m); return NULL; }
  return m;
}

void strmap_free(strmap *m) {
  if (!m) return;
  free(m->t);
  free(m->order);
  dbx_buf_free(&m->arena);
  free(m);
}

void strmap_clear(strmap *m) {
  memset(m->t, 0, (m->mask + 1) * sizeof *m->t);
  m->n = 0;
  m->arena.len = 0;
}

static int grow(strmap *m) {
  size_t nmask = m->mask * 2 + 1;
  slot *nt = calloc(nmask + 1, sizeof *nt);
  if (!nt) return DBX_ENOMEM;
  for (size_t i = 0; i < m->n; i++) {
    const slot *s = &m->t[m->order[i]];
    size_t j = (size_t)s->hash & nmask;
    while (nt[j].len) j = (j + 1) & nmask;
    nt[j] = *s;
    m->order[i] = (uint32_t)j;
  }
  free(m->t);
  m->t = nt;
  m->mask = nmask;
  return 0;
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "strmap packs short keys assuming a little-endian machine"
#endif

/* The key's bytes (len <= 8) in memory order, zero-padded, without a byte-wise copy: a
 * memcpy of variable length followed by a 64-bit load stalls store forwarding. */
static inline uint64_t inline_key(const char *key, size_t len) {
  const unsigned char *p = (const unsigned char *)key;
  if (len >= 4) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + len - 4, 4);
    return (uint64_t)lo | (uint64_t)hi << (8 * (len - 4));
  }
  return (uint64_t)p[0] | (uint64_t)p[len >> 1] << (8 * (len >> 1)) |
         (uint64_t)p[len - 1] << (8 * (len - 1));
}

static inline int same_key(const strmap *m, const slot *s, const char *key, size_t len, uint64_t ik) {
  if (s->len != len) return 0;
  if (len <= INLINE_MAX) return s->key == ik;
  return memcmp(m->arena.data + s->key, key, len) == 0;
}

uint64_t strmap_hash(const char *key, size_t len) { return XXH3_64bits(key, len); }

void strmap_prefetch(const strmap *m, uint64_t hash) {
  __builtin_prefetch(&m->t[(size_t)hash & m->mask]);
}

int strmap_reserve(strmap *m, size_t n) {
  while (n * 2 > m->mask)
    if (grow(m)) return DBX_ENOMEM;
  if (n > m->ocap) {
    uint32_t *no = realloc(m->order, n * sizeof *no);
    if (!no) return DBX_ENOMEM;
    m->order = no;
    m->ocap = n;
  }
  return 0;
}

int strmap_add(strmap *m, const char *key, size_t len, uint64_t delta, uint32_t *id) {
  return strmap_add_hashed(m, key, len, XXH3_64bits(key, len), delta, id);
}

int strmap_add_hashed(strmap *m, const char *key, size_t len, uint64_t h, uint64_t delta,
                      uint32_t *id) {
  if (len == 0 || len > UINT32_MAX) return DBX_EINVAL;
  uint64_t ik = len <= INLINE_MAX ? inline_key(key, len) : 0;
  size_t j = (size_t)h & m->mask;
  for (;;) {
    slot *s = &m->t[j];
    if (!s->len) break;
    if (s->hash == h && same_key(m, s, key, len, ik)) {
      s->val += delta;
      if (id) *id = s->id;
      return 0;
    }
    j = (j + 1) & m->mask;
  }
  if (m->n == m->ocap) {
    size_t nc = m->ocap ? m->ocap * 2 : 512;
    uint32_t *no = realloc(m->order, nc * sizeof *no);
    if (!no) return DBX_ENOMEM;
    m->order = no;
    m->ocap = nc;
  }
  slot *s = &m->t[j];
  if (len <= INLINE_MAX) {
    s->key = ik;
  } else {
    s->key = m->arena.len;
    if (dbx_buf_append(&m->arena, key, len)) return DBX_ENOMEM;
  }
  s->hash = h;
  s->val = delta;
  s->len = (uint32_t)len;
  s->id = (uint32_t)m->n;
  m->order[m->n] = (uint32_t)j;
  if (id) *id = (uint32_t)m->n;
  m->n++;
  /* Keep the load factor under 1/2: probes stay short for the skewed key sets of text. */
  if (m->n * 2 > m->mask) return grow(m);
  return 0;
}

int64_t strmap_find(const strmap *m, const char *key, size_t len) {
  if (len == 0) return -1;
  uint64_t h = XXH3_64bits(key, len);
  uint64_t ik = len <= INLINE_MAX ? inline_key(key, len) : 0;
  size_t j = (size_t)h & m->mask;
  for (;;) {
    const slot *s = &m->t[j];
    if (!s->len) return -1;
    if (s->hash == h && same_key(m, s, key, len, ik)) return s->id;
    j = (j + 1) & m->mask;
  }
}

size_t strmap_count(const strmap *m) { return m->n; }

const char *strmap_key(const strmap *m, uint32_t id, size_t *len) {
  const slot *s = &m->t[m->order[id]];
  *len = s->len;
  return s->len <= INLINE_MAX ? (const char *)&s->key : m->arena.data + s->key;
}

uint64_t strmap_val(const strmap *m, uint32_t id) { return m->t[m->order[id]].val; }
uint64_t strmap_hash_of(const strmap *m, uint32_t id) { return m->t[m->order[id]].hash; }
void strmap_setval(strmap *m, uint32_t id, uint64_t v) { m->t[m->order[id]].val = v; }

size_t strmap_bytes(const strmap *m) {
  return (m->mask + 1) * sizeof *m->t + m->ocap * sizeof *m->order + m->arena.cap;
}
