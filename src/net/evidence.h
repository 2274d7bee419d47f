/* evidence.h -- what a local worker is running, in memory it shares with its coordinator
 * (private). The coordinator creates one small memfd per local worker and hands it over as
 * descriptor DBATCH_EVIDENCE_FD; each task thread of the worker writes the attempt it is
 * mapping into its slot before map() and clears it after. Unlike a message, this survives
 * the worker's crash: when a local worker dies, its coordinator reads exactly which attempts
 * were running, and blames only those (a result that finished but was still in the
 * worker's send queue blames nobody). */
#ifndef DBX_NET_EVIDENCE_H
#define DBX_NET_EVIDENCE_H
#include <stdint.h>

#define EVIDENCE_FD 3
#define EVIDENCE_MAGIC 0x3144495645584244ull /* "DBXEVID1" little-endian */
#define EVIDENCE_SIZE 4096

typedef struct evidence_slot {
  uint64_t stage;      /* the coordinator's stage id */
  uint32_t index;      /* task */
  uint32_t attempt;
  uint32_t running;    /* 1 while map() runs; written last (release) */
  uint32_t pad;
} evidence_slot;

typedef struct evidence_page {
  uint64_t magic;      /* written by the worker once it maps the page: it keeps evidence */
  uint32_t nslots;
  uint32_t pad;
  evidence_slot slot[(EVIDENCE_SIZE - 16) / sizeof(evidence_slot)];
} evidence_page;

#define EVIDENCE_MAX_SLOTS ((EVIDENCE_SIZE - 16) / sizeof(evidence_slot))
#endif
