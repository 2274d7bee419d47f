/* strmap.c -- open-addressing hash table of byte strings (xxHash3, linear probing).
 *
 * Word counting is bound by cache misses, so a slot is the whole entry (32 bytes, two per
 * cache line): the full hash, the value, and keys of up to 8 bytes stored inline. A lookup
 * of a short word touches one cache line; longer keys add one read of the key arena.
 * Dense ids (insertion order) map to slots through a separate array used only by callers
 * that walk the map. */
#include "util/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "dbatch.h"

static void free_table(strmap_slot *t, size_t n);

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
  free_table(m->t, m->mask + 1);
  free(m->order);
  dbx_buf_free(&m->arena);
  free(m);
}

void strmap_clear(strmap *m) {
  memset(m->t, 0, (m->mask + 1) * sizeof *m->t);
  m->n = 0;
  m->arena.len = 0;
}

size_t strmap_limit(strmap *m, size_t bytes) {
  size_t slots = 1024;
  while (slots * 2 * sizeof(strmap_slot) <= bytes) slots *= 2;
  m->limit = slots;
  return slots / 2 - 1;
}

size_t strmap_aux_bytes(const strmap *m) { return m->n * sizeof *m->order + m->arena.len; }

/* Tables from 2 MB up are mapped apart, 2 MB aligned and advised into huge pages: the lookups
 * of a large vocabulary touch their pages at random, and a TLB miss costs about as much as
 * the cache miss (more under virtualisation). Each thread keeps the last such table it freed
 * and reuses it for the next of the same size (a task's table is the size of the last one):
 * clearing warm memory is several times cheaper than faulting in and zeroing fresh pages. */
#define BIG_TABLE ((size_t)2 << 20)
static _Thread_local void *spare;
static _Thread_local size_t spare_bytes;

static strmap_slot *new_table(size_t n) {
  size_t bytes = n * sizeof(strmap_slot);
  if (bytes < BIG_TABLE) return calloc(n, sizeof(strmap_slot));
  if (spare && spare_bytes == bytes) {
    void *p = spare;
    spare = NULL;
    memset(p, 0, bytes);
    return p;
  }
  char *p = mmap(NULL, bytes + BIG_TABLE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  size_t lead = (BIG_TABLE - (uintptr_t)p % BIG_TABLE) % BIG_TABLE;
  if (lead) munmap(p, lead);
  munmap(p + lead + bytes, BIG_TABLE - lead);
  (void)madvise(p + lead, bytes, MADV_HUGEPAGE);
  return (strmap_slot *)(p + lead);  /* zero, as mapped */
}

static void free_table(strmap_slot *t, size_t n) {
  size_t bytes = n * sizeof(strmap_slot);
  if (!t) return;
  if (bytes < BIG_TABLE) { free(t); return; }
  if (spare) munmap(spare, spare_bytes);
  spare = t;
  spare_bytes = bytes;
}

/* Rehash into a table of nmask + 1 slots (a power of two, larger). */
static int grow_to(strmap *m, size_t nmask) {
  strmap_slot *nt = new_table(nmask + 1);
  if (!nt) return DBX_ENOMEM;
  for (size_t i = 0; i < m->n; i++) {
    const strmap_slot *s = &m->t[m->order[i]];
    size_t j = (size_t)s->hash & nmask;
    while (nt[j].len) j = (j + 1) & nmask;
    nt[j] = *s;
    m->order[i] = (uint32_t)j;
  }
  free_table(m->t, m->mask + 1);
  m->t = nt;
  m->mask = nmask;
  return 0;
}

static int grow(strmap *m) { return grow_to(m, m->mask * 2 + 1); }

uint64_t strmap_hash_long(const char *key, size_t len) { return XXH3_64bits(key, len); }

int strmap_reserve(strmap *m, size_t n) {
  /* One step to the size: each intermediate table would be fresh memory to zero (a task's
   * table of 32 MB came through 2, 4, 8 and 16 MB ones), and its keys rehashed. */
  size_t nmask = m->mask;
  while (n * 2 > nmask) nmask = nmask * 2 + 1;
  if (nmask != m->mask && grow_to(m, nmask)) return DBX_ENOMEM;
  if (n > m->ocap) {
    uint32_t *no = realloc(m->order, n * sizeof *no);
    if (!no) return DBX_ENOMEM;
    m->order = no;
    m->ocap = n;
  }
  return 0;
}

int strmap_add(strmap *m, const char *key, size_t len, uint64_t delta, uint32_t *id) {
  return strmap_add_hashed(m, key, len, strmap_hash(key, len), delta, id);
}

int strmap_insert_at(strmap *m, size_t j, const char *key, size_t len, uint64_t h, uint64_t delta, uint32_t *id) {
  if (len > UINT32_MAX) return DBX_EINVAL;
  if (m->n == m->ocap) {
    size_t nc = m->ocap ? m->ocap * 2 : 512;
    uint32_t *no = realloc(m->order, nc * sizeof *no);
    if (!no) return DBX_ENOMEM;
    m->order = no;
    m->ocap = nc;
  }
  strmap_slot *s = &m->t[j];
  if (len <= STRMAP_INLINE_MAX) {
    s->key = strmap_inline_key(key, len);
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
  if (m->n * 2 > m->mask) {
    /* At the limit: full, until 7/8 of the slots hold keys (then it grows anyway, so a caller
     * that does not empty the map slows down instead of probing a full table for ever). */
    if (m->limit && m->mask + 1 >= m->limit && m->n * 8 < m->mask * 7) return STRMAP_FULL;
    return grow(m);
  }
  return 0;
}

int64_t strmap_find(const strmap *m, const char *key, size_t len) {
  return len ? strmap_find_hashed(m, key, len, strmap_hash(key, len)) : -1;
}

size_t strmap_count(const strmap *m) { return m->n; }

const char *strmap_key(const strmap *m, uint32_t id, size_t *len) {
  const strmap_slot *s = &m->t[m->order[id]];
  *len = s->len;
  return s->len <= STRMAP_INLINE_MAX ? (const char *)&s->key : m->arena.data + s->key;
}

uint64_t strmap_val(const strmap *m, uint32_t id) { return m->t[m->order[id]].val; }
uint64_t strmap_hash_of(const strmap *m, uint32_t id) { return m->t[m->order[id]].hash; }
void strmap_setval(strmap *m, uint32_t id, uint64_t v) { m->t[m->order[id]].val = v; }

size_t strmap_bytes(const strmap *m) {
  return (m->mask + 1) * sizeof *m->t + m->ocap * sizeof *m->order + m->arena.cap;
}
