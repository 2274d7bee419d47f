/* strmap.c -- open-addressing hash table of byte strings (xxHash3, linear probing).
 * Slots hold a 32-bit hash tag and the entry index, so a probe touches one cache line
 * and compares keys only when tags agree. Keys live in one arena. */
#include "util/strmap.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "dbatch.h"

typedef struct {
  uint64_t off;   /* key position in the arena */
  uint64_t val;
  uint32_t len;
} entry;

struct strmap {
  uint64_t *slots;  /* 0 = empty, else (tag << 32) | (index + 1) */
  size_t mask;
  entry *ent;
  size_t n, ncap;
  dbx_buf arena;
};

strmap *strmap_new(void) {
  strmap *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->mask = 1023;
  m->slots = calloc(m->mask + 1, sizeof *m->slots);
  if (!m->slots) { free(m); return NULL; }
  return m;
}

void strmap_free(strmap *m) {
  if (!m) return;
  free(m->slots);
  free(m->ent);
  dbx_buf_free(&m->arena);
  free(m);
}

static int grow(strmap *m) {
  size_t nmask = m->mask * 2 + 1;
  uint64_t *ns = calloc(nmask + 1, sizeof *ns);
  if (!ns) return DBX_ENOMEM;
  for (size_t i = 0; i < m->n; i++) {
    const entry *e = &m->ent[i];
    uint64_t h = XXH3_64bits(m->arena.data + e->off, e->len);
    size_t j = (size_t)h & nmask;
    while (ns[j]) j = (j + 1) & nmask;
    ns[j] = ((h >> 32) << 32) | (uint64_t)(i + 1);
  }
  free(m->slots);
  m->slots = ns;
  m->mask = nmask;
  return 0;
}

int strmap_add(strmap *m, const char *key, size_t len, uint64_t delta, uint32_t *id) {
  uint64_t h = XXH3_64bits(key, len);
  uint64_t tag = (h >> 32) << 32;
  size_t j = (size_t)h & m->mask;
  for (;;) {
    uint64_t s = m->slots[j];
    if (!s) break;
    if ((s & 0xffffffff00000000ull) == tag) {
      entry *e = &m->ent[(uint32_t)s - 1];
      if (e->len == len && memcmp(m->arena.data + e->off, key, len) == 0) {
        e->val += delta;
        if (id) *id = (uint32_t)s - 1;
        return 0;
      }
    }
    j = (j + 1) & m->mask;
  }
  if (m->n == m->ncap) {
    size_t nc = m->ncap ? m->ncap * 2 : 512;
    entry *ne = realloc(m->ent, nc * sizeof *ne);
    if (!ne) return DBX_ENOMEM;
    m->ent = ne;
    m->ncap = nc;
  }
  if (len > UINT32_MAX) return DBX_EINVAL;
  entry *e = &m->ent[m->n];
  e->off = m->arena.len;
  e->len = (uint32_t)len;
  e->val = delta;
  if (dbx_buf_append(&m->arena, key, len)) return DBX_ENOMEM;
  m->slots[j] = tag | (uint64_t)(m->n + 1);
  if (id) *id = (uint32_t)m->n;
  m->n++;
  /* Keep the load factor under 1/2: probes stay short for the skewed key sets of text. */
  if (m->n * 2 > m->mask) return grow(m);
  return 0;
}

int64_t strmap_find(const strmap *m, const char *key, size_t len) {
  uint64_t h = XXH3_64bits(key, len);
  uint64_t tag = (h >> 32) << 32;
  size_t j = (size_t)h & m->mask;
  for (;;) {
    uint64_t s = m->slots[j];
    if (!s) return -1;
    if ((s & 0xffffffff00000000ull) == tag) {
      const entry *e = &m->ent[(uint32_t)s - 1];
      if (e->len == len && memcmp(m->arena.data + e->off, key, len) == 0)
        return (int64_t)((uint32_t)s - 1);
    }
    j = (j + 1) & m->mask;
  }
}

size_t strmap_count(const strmap *m) { return m->n; }

const char *strmap_key(const strmap *m, uint32_t id, size_t *len) {
  *len = m->ent[id].len;
  return m->arena.data + m->ent[id].off;
}

uint64_t strmap_val(const strmap *m, uint32_t id) { return m->ent[id].val; }
void strmap_setval(strmap *m, uint32_t id, uint64_t v) { m->ent[id].val = v; }

size_t strmap_bytes(const strmap *m) {
  return (m->mask + 1) * sizeof *m->slots + m->ncap * sizeof *m->ent + m->arena.cap;
}
