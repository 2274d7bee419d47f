/* transport.h -- how dbatch's links are made safe (private): CURVE key pairs and their
 * files, the authorized keys of a coordinator, the guard thread that admits or refuses peers
 * at the handshake (ZeroMQ's ZAP), endpoints, and reading a worker's handshake failures.
 *
 * Key files (docs/security.md):
 *   FILE      "# dbatch key pair ..." comment lines, then "public-key Z85" and
 *             "secret-key Z85"; mode 0600, refused when others can read it.
 *   FILE.pub  "Z85 COMMENT": one line, the shape of an authorized-keys line.
 *   authorized keys: one public key per line, "#" comments and blank lines; text after the
 *             key (separated by blanks) names it in logs. */
#ifndef DBX_NET_TRANSPORT_H
#define DBX_NET_TRANSPORT_H
#include <stddef.h>
#include "dbatch.h"

#define TR_KEY_LEN 40          /* a CURVE key in Z85 */
#define TR_AUTHZ_MAX 100000    /* keys in one authorized-keys file */
#define TR_NAME_LEN 64         /* the comment kept for a key, for logs */

typedef struct tr_keypair {
  char pub[TR_KEY_LEN + 1];
  char sec[TR_KEY_LEN + 1];
} tr_keypair;

typedef struct tr_authz {
  size_t n;
  unsigned char (*keys)[32];   /* decoded, sorted for lookup */
  char (*names)[TR_NAME_LEN];  /* the comment of keys[i] ("" when none) */
} tr_authz;

/* 1 when z85 (NUL-terminated) is a key: 40 characters of Z85. */
int tr_key_valid(const char *z85);
/* A new key pair into memory. */
int tr_keypair_new(tr_keypair *kp, dbx_err *err);
/* Write kp to path (mode 0600, created anew: an existing file is refused unless force) and
 * its public half to path.pub with comment. Both appear whole or not at all. */
int tr_keypair_save(const tr_keypair *kp, const char *path, const char *comment, int force, dbx_err *err);
/* Read a key pair file; refused when group or others may read it. */
int tr_keypair_load(const char *path, tr_keypair *kp, dbx_err *err);
/* Parse the text of a key pair file (fuzzed). what names it in errors. */
int tr_keypair_parse(const char *text, size_t len, const char *what, tr_keypair *kp, dbx_err *err);
/* A public key: arg is a FILE.pub (its first key) or the 40 characters of a key. */
int tr_pubkey_load(const char *arg, char pub[TR_KEY_LEN + 1], dbx_err *err);

int tr_authz_load(const char *path, tr_authz *a, dbx_err *err);
/* Parse authorized-keys text (fuzzed); errors name what and the line. */
int tr_authz_parse(const char *text, size_t len, const char *what, tr_authz *a, dbx_err *err);
/* Add one public key (Z85) with a name. */
int tr_authz_add(tr_authz *a, const char *z85, const char *name, dbx_err *err);
/* The index of key (32 bytes) in a, or -1. a must have been sorted by tr_authz_seal. */
long tr_authz_find(const tr_authz *a, const unsigned char key[32]);
void tr_authz_seal(tr_authz *a);
void tr_authz_free(tr_authz *a);

/* "HOST:PORT" or "tcp://HOST:PORT" or "ipc://PATH" into a ZeroMQ endpoint (out, cap bytes);
 * what names the option in errors. */
int tr_endpoint(const char *arg, const char *what, char *out, size_t cap, dbx_err *err);
/* 1 when the endpoint is reachable only from this machine (ipc://, tcp on 127.0.0.0/8,
 * ::1 or localhost). */
int tr_endpoint_loopback(const char *ep);

/* The coordinator's guard: set CURVE server options on sock (call before binding the
 * endpoints it is to cover), and answer the handshakes of peers from a thread of its own:
 * a listed key is admitted, anything else refused and logged with the peer's address.
 * a is taken over. */
typedef struct tr_guard tr_guard;
int tr_guard_start(void *zctx, void *sock, const tr_keypair *kp, tr_authz *a, tr_guard **out, dbx_err *err);
/* Peers refused so far. */
unsigned long tr_guard_refused(const tr_guard *g);
/* Stop the thread (before the context is terminated). NULL ok. */
void tr_guard_stop(tr_guard *g);

/* A worker's side: mine and the coordinator's public key on sock, before connect. */
int tr_client_secure(void *sock, const tr_keypair *mine, const char *server_pub, dbx_err *err);

/* Watching a worker's handshakes: a monitor socket on sock (inproc name unique per call). */
void *tr_watch(void *zctx, void *sock);
/* The outcome of the next handshake event on mon, if one is waiting: TR_HS_NONE (nothing
 * to say), TR_HS_OK, or a failure with why filled (cap bytes) for a message. */
enum { TR_HS_NONE = 0, TR_HS_OK, TR_HS_REFUSED, TR_HS_MISMATCH, TR_HS_FAILED };
int tr_watch_next(void *mon, int keyed, char *why, size_t cap);
#endif
