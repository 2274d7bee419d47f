/* strmap.h -- byte-string keys to dense ids with a 64-bit value each (private).
 * The counting table behind word count and the vocabulary of the text classifier. */
#ifndef DBX_UTIL_STRMAP_H
#define DBX_UTIL_STRMAP_H
#include <stddef.h>
#include <stdint.h>

typedef struct strmap strmap;

/* New empty map, owned by the caller; NULL on ENOMEM. */
strmap *strmap_new(void);
/* Make room for n keys in all without growing (saves the rehashes of a known-size build). */
int strmap_reserve(strmap *m, size_t n);
/* Frees the map and every key; accepts NULL. */
void strmap_free(strmap *m);
/* Remove every key; the memory held stays (for the next keys). */
void strmap_clear(strmap *m);

/* Find key, inserting it with value 0 if absent, then add delta to its value.
 * OUT *id: the key's dense id (ids are 0..count-1 in insertion order). 0 or DBX_ENOMEM. */
int strmap_add(strmap *m, const char *key, size_t len, uint64_t delta, uint32_t *id);
/* The same with the key's hash already computed by strmap_hash(): callers that look up many
 * keys hash them ahead and strmap_prefetch() their slots, so cache misses overlap. */
uint64_t strmap_hash(const char *key, size_t len);
void strmap_prefetch(const strmap *m, uint64_t hash);
int strmap_add_hashed(strmap *m, const char *key, size_t len, uint64_t hash, uint64_t delta,
                      uint32_t *id);
/* Id of key, or -1 when absent. */
int64_t strmap_find(const strmap *m, const char *key, size_t len);

size_t strmap_count(const strmap *m);
/* The key of id; the pointer is valid until the next insertion. */
const char *strmap_key(const strmap *m, uint32_t id, size_t *len);
uint64_t strmap_val(const strmap *m, uint32_t id);
/* The stored hash of id's key, for re-inserting it elsewhere without hashing again. */
uint64_t strmap_hash_of(const strmap *m, uint32_t id);
void strmap_setval(strmap *m, uint32_t id, uint64_t v);
/* Bytes of memory held (for the summary and the memory benchmark). */
size_t strmap_bytes(const strmap *m);
#endif
