/* fuzz_keys.c -- the parsers of what a cluster reads from files others may write: the
 * rendezvous (a shared file system), authorized-keys files and key pair files.
 * Invariants: no crash, no read past the input; whatever is accepted is well formed (a
 * rendezvous endpoint is tcp:// or ipc://, every key decodes, a key pair's halves match),
 * and an accepted rendezvous written back and parsed again is the same. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "fuzz_common.h"
#include "net/rendezvous.h"
#include "net/transport.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *p = malloc(size ? size : 1);
  if (!p) return 0;
  memcpy(p, data, size);
  dbx_err err = {0, ""};
  rv_info r;
  if (rv_parse(p, size, "fuzz", &r, &err) == 0) {
    if (strncmp(r.endpoint, "tcp://", 6) && strncmp(r.endpoint, "ipc://", 6)) abort();
    if (r.key[0] && !tr_key_valid(r.key)) abort();
    if (!r.launch[0] || strchr(r.launch, ' ') || strchr(r.launch, '\n')) abort();
    /* Round trip through the writer's format. */
    char text[1024];
    int n = snprintf(text, sizeof text, "launch %s\nendpoint %s\n%s%s%s", r.launch, r.endpoint,
                     r.key[0] ? "coordinator-key " : "", r.key, r.key[0] ? "\n" : "");
    rv_info back;
    if (n > 0 && (size_t)n < sizeof text) {
      if (rv_parse(text, (size_t)n, "again", &back, &err) != 0) abort();
      if (strcmp(back.launch, r.launch) || strcmp(back.endpoint, r.endpoint) || strcmp(back.key, r.key)) abort();
    }
  }
  tr_authz a = {0, NULL, NULL};
  if (tr_authz_parse(p, size, "fuzz", &a, &err) == 0) {
    for (size_t i = 0; i < a.n; i++) {
      if (tr_authz_find(&a, a.keys[i]) < 0) abort();
      if (strnlen(a.names[i], TR_NAME_LEN) >= TR_NAME_LEN) abort();
    }
  }
  tr_authz_free(&a);
  tr_keypair kp;
  if (tr_keypair_parse(p, size, "fuzz", &kp, &err) == 0) {
    char derived[TR_KEY_LEN + 1];
    if (zmq_curve_public(derived, kp.sec) != 0 || strcmp(derived, kp.pub)) abort();
  }
  free(p);
  return 0;
}
