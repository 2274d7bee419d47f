/* sched.h -- load-balancing policies: which worker gets the next task (private).
 * The scheduler knows workers only as slots, tasks in flight and recent task times. */
#ifndef DBX_ENGINE_SCHED_H
#define DBX_ENGINE_SCHED_H
#include <stddef.h>
#include <stdint.h>

typedef enum { POLICY_LEAST_LOADED = 0, POLICY_ROUND_ROBIN, POLICY_RANDOM } sched_policy;

typedef struct sched_worker {
  int usable;          /* alive, welcomed, not excluded */
  uint32_t slots;      /* tasks it runs at once */
  uint32_t cap;        /* tasks it may hold: slots + prefetch */
  uint32_t inflight;
  double mean_task;    /* recent mean task seconds (0 = none yet) */
} sched_worker;

typedef struct sched {
  sched_policy policy;
  size_t rr_next;      /* round-robin cursor (join order) */
  uint64_t rng;        /* random: xorshift64* state, from --seed */
} sched;

void sched_init(sched *s, sched_policy p, uint64_t seed);
/* Index of the worker to get the next task, or -1 when none has room. Workers are in join
 * order. round-robin: the next worker after the previous pick that has room; random:
 * uniform among those with room; least-loaded: lowest inflight/slots, ties to the shorter
 * recent mean task time, then join order. */
long sched_pick(sched *s, const sched_worker *w, size_t n);
/* "least-loaded", ... -> policy; -1 if unknown. */
int sched_parse(const char *name);
const char *sched_name(sched_policy p);
#endif
