/* sched.c -- round-robin, random and least-loaded task placement. O(workers) per pick. */
#include "engine/sched.h"

#include <string.h>

void sched_init(sched *s, sched_policy p, uint64_t seed) {
  s->policy = p;
  s->rr_next = 0;
  s->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
}

static uint64_t next_rand(sched *s) {
  uint64_t x = s->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  s->rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

static int has_room(const sched_worker *w) { return w->usable && w->inflight < w->cap; }

long sched_pick(sched *s, const sched_worker *w, size_t n) {
  if (n == 0) return -1;
  switch (s->policy) {
  case POLICY_ROUND_ROBIN:
    for (size_t k = 0; k < n; k++) {
      size_t i = (s->rr_next + k) % n;
      if (has_room(&w[i])) {
        s->rr_next = (i + 1) % n;
        return (long)i;
      }
    }
    return -1;
  case POLICY_RANDOM: {
    size_t room = 0;
    for (size_t i = 0; i < n; i++) room += (size_t)has_room(&w[i]);
    if (!room) return -1;
    size_t k = (size_t)(next_rand(s) % room);
    for (size_t i = 0; i < n; i++)
      if (has_room(&w[i]) && k-- == 0) return (long)i;
    return -1;
  }
  case POLICY_LEAST_LOADED:
  default: {
    long best = -1;
    for (size_t i = 0; i < n; i++) {
      if (!has_room(&w[i])) continue;
      if (best < 0) { best = (long)i; continue; }
      const sched_worker *a = &w[i], *b = &w[best];
      /* Compare inflight/slots exactly: a.inflight * b.slots vs b.inflight * a.slots. */
      uint64_t la = (uint64_t)a->inflight * b->slots, lb = (uint64_t)b->inflight * a->slots;
      if (la < lb || (la == lb && a->mean_task > 0 && (b->mean_task == 0 || a->mean_task < b->mean_task)))
        best = (long)i;
    }
    return best;
  }
  }
}

int sched_parse(const char *name) {
  if (strcmp(name, "least-loaded") == 0) return POLICY_LEAST_LOADED;
  if (strcmp(name, "round-robin") == 0) return POLICY_ROUND_ROBIN;
  if (strcmp(name, "random") == 0) return POLICY_RANDOM;
  return -1;
}

const char *sched_name(sched_policy p) {
  return p == POLICY_ROUND_ROBIN ? "round-robin" : p == POLICY_RANDOM ? "random" : "least-loaded";
}
