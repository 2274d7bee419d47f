/* transport.c -- CURVE keys, authorized keys, the coordinator's handshake guard, endpoints
 * (see transport.h). Everything read from a key file or a peer is checked here: lengths,
 * the Z85 alphabet, the shape of every ZAP request. */
#define _GNU_SOURCE 1
#include "net/transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "util/log.h"

#define KEYFILE_MAX (64u << 10)      /* a key pair file */
#define AUTHZ_FILE_MAX (64u << 20)   /* an authorized-keys file */

/* ---- keys ---- */

static int z85_ok(const char *s, size_t n, unsigned char out[32]) {
  char z[TR_KEY_LEN + 1];
  if (n != TR_KEY_LEN) return 0;
  memcpy(z, s, TR_KEY_LEN);
  z[TR_KEY_LEN] = 0;
  return zmq_z85_decode(out, z) != NULL;
}

int tr_key_valid(const char *z85) {
  unsigned char raw[32];
  return z85_ok(z85, strlen(z85), raw);
}

int tr_keypair_new(tr_keypair *kp, dbx_err *err) {
  if (!zmq_has("curve"))
    return dbx_seterr(err, DBX_EINVAL, "this libzmq was built without CURVE: keys are not available");
  if (zmq_curve_keypair(kp->pub, kp->sec) != 0)
    return dbx_seterr(err, DBX_EIO, "cannot make a key pair: %s", zmq_strerror(zmq_errno()));
  return 0;
}

/* Write text to path atomically with mode: a temporary file in the same directory, synced,
 * then linked in place (refused when path exists, unless force). */
static int write_file(const char *path, const char *text, mode_t mode, int force, dbx_err *err) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= sizeof tmp)
    return dbx_seterr(err, DBX_EINVAL, "%s: the path is too long", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return dbx_seterr(err, DBX_EIO, "cannot create %s: %s", tmp, strerror(errno));
  size_t n = strlen(text);
  int rc = 0;
  if (fchmod(fd, mode) != 0 || write(fd, text, n) != (ssize_t)n || fsync(fd) != 0)
    rc = dbx_seterr(err, DBX_EIO, "cannot write %s: %s", path, strerror(errno ? errno : EIO));
  if (close(fd) != 0 && !rc) rc = dbx_seterr(err, DBX_EIO, "cannot write %s: %s", path, strerror(errno));
  if (!rc) {
    if (force) {
      if (rename(tmp, path) != 0) rc = dbx_seterr(err, DBX_EIO, "cannot write %s: %s", path, strerror(errno));
    } else if (link(tmp, path) != 0) {
      rc = dbx_seterr(err, errno == EEXIST ? DBX_EINVAL : DBX_EIO, "%s: %s%s", path, strerror(errno),
                      errno == EEXIST ? " (keys are never overwritten: remove it, or give --force)" : "");
    }
  }
  unlink(tmp);
  return rc;
}

int tr_keypair_save(const tr_keypair *kp, const char *path, const char *comment, int force, dbx_err *err) {
  char text[512], pub[512], pubpath[4096];
  snprintf(text, sizeof text,
           "# dbatch key pair (CURVE). Keep this file secret (mode 0600): whoever holds it is this\n"
           "# worker or coordinator. Its public half is in %s.pub.\n"
           "public-key %s\nsecret-key %s\n",
           path, kp->pub, kp->sec);
  if ((size_t)snprintf(pubpath, sizeof pubpath, "%s.pub", path) >= sizeof pubpath)
    return dbx_seterr(err, DBX_EINVAL, "%s: the path is too long", path);
  /* The comment goes on one line, and never starts another key. */
  char safe[TR_NAME_LEN];
  size_t k = 0;
  for (const char *c = comment ? comment : ""; *c && k + 1 < sizeof safe; c++)
    safe[k++] = (unsigned char)*c < 0x20 || *c == 0x7f ? '_' : *c;
  safe[k] = 0;
  snprintf(pub, sizeof pub, "%s%s%s\n", kp->pub, safe[0] ? " " : "", safe);
  /* The public half first: a secret key without it is the one thing to avoid. */
  int rc = write_file(pubpath, pub, 0644, force, err);
  if (!rc && (rc = write_file(path, text, 0600, force, err)) != 0 && !force) unlink(pubpath);
  return rc;
}

static int read_small(const char *path, size_t max, char **out, size_t *len, struct stat *st, dbx_err *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return dbx_seterr(err, errno == ENOENT ? DBX_ENOENT : DBX_EIO, "%s: %s", path, strerror(errno));
  if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
    close(fd);
    return dbx_seterr(err, DBX_EINVAL, "%s: not a regular file", path);
  }
  if ((uint64_t)st->st_size > max) {
    close(fd);
    return dbx_seterr(err, DBX_EINVAL, "%s: %lld bytes, more than a key file holds (%zu)", path,
                      (long long)st->st_size, max);
  }
  char *b = malloc((size_t)st->st_size + 1);
  if (!b) { close(fd); return dbx_seterr(err, DBX_ENOMEM, "%s: out of memory", path); }
  size_t got = 0;
  while (got < (size_t)st->st_size) {
    ssize_t r = read(fd, b + got, (size_t)st->st_size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  b[got] = 0;
  *out = b;
  *len = got;
  return 0;
}

/* The next line of text[*pos..len): its start and length without the newline (and a CR). */
static int next_line(const char *text, size_t len, size_t *pos, const char **line, size_t *n) {
  if (*pos >= len) return 0;
  const char *s = text + *pos;
  const char *nl = memchr(s, '\n', len - *pos);
  size_t l = nl ? (size_t)(nl - s) : len - *pos;
  *pos += l + (nl != NULL);
  if (l && s[l - 1] == '\r') l--;
  *line = s;
  *n = l;
  return 1;
}

static size_t skip_blanks(const char *s, size_t n, size_t i) {
  while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
  return i;
}

static size_t word_end(const char *s, size_t n, size_t i) {
  while (i < n && s[i] != ' ' && s[i] != '\t') i++;
  return i;
}

int tr_keypair_parse(const char *text, size_t len, const char *what, tr_keypair *kp, dbx_err *err) {
  memset(kp, 0, sizeof *kp);
  size_t pos = 0, n, lineno = 0;
  const char *line;
  int have_pub = 0, have_sec = 0;
  unsigned char pub[32], sec[32];
  while (next_line(text, len, &pos, &line, &n)) {
    lineno++;
    size_t i = skip_blanks(line, n, 0);
    if (i == n || line[i] == '#') continue;
    size_t e = word_end(line, n, i);
    int is_pub = e - i == 10 && !memcmp(line + i, "public-key", 10);
    int is_sec = e - i == 10 && !memcmp(line + i, "secret-key", 10);
    size_t k = skip_blanks(line, n, e), ke = word_end(line, n, k);
    unsigned char raw[32];
    if (!is_pub && !is_sec && z85_ok(line + i, e - i, raw))
      return dbx_seterr(err, DBX_EINVAL, "%s is a public key (a .pub): give the key pair file that 'dbatch keygen' "
                        "wrote beside it", what);
    if ((!is_pub && !is_sec) || skip_blanks(line, n, ke) != n)
      return dbx_seterr(err, DBX_EINVAL, "%s line %zu: expected 'public-key KEY' or 'secret-key KEY'", what, lineno);
    if (!z85_ok(line + k, ke - k, is_pub ? pub : sec))
      return dbx_seterr(err, DBX_EINVAL, "%s line %zu: not a key (40 characters of Z85)", what, lineno);
    memcpy(is_pub ? kp->pub : kp->sec, line + k, TR_KEY_LEN);
    if (is_pub) have_pub = 1; else have_sec = 1;
  }
  if (!have_pub || !have_sec)
    return dbx_seterr(err, DBX_EINVAL, "%s: no %s (is it a .pub file? give the key pair file made by 'dbatch keygen')",
                      what, have_pub ? "secret-key line" : "public-key line");
  /* The halves belong together: the public key is derived from the secret one. */
  char derived[TR_KEY_LEN + 1];
  if (zmq_curve_public(derived, kp->sec) != 0 || strcmp(derived, kp->pub) != 0)
    return dbx_seterr(err, DBX_EINVAL, "%s: its public-key is not the public half of its secret-key", what);
  return 0;
}

int tr_keypair_load(const char *path, tr_keypair *kp, dbx_err *err) {
  char *text;
  size_t len;
  struct stat st;
  int rc = read_small(path, KEYFILE_MAX, &text, &len, &st, err);
  if (rc) return rc;
  /* What the file is first (a .pub given for the pair is not to be chmod-ed), then who may
   * read it. */
  rc = tr_keypair_parse(text, len, path, kp, err);
  free(text);
  if (!rc && (st.st_mode & 077)) {
    memset(kp, 0, sizeof *kp);
    return dbx_seterr(err, DBX_EINVAL, "%s: a secret key must not be readable by others (mode %03o): chmod 600 %s",
                      path, (unsigned)(st.st_mode & 0777), path);
  }
  return rc;
}

int tr_pubkey_load(const char *arg, char pub[TR_KEY_LEN + 1], dbx_err *err) {
  unsigned char raw[32];
  struct stat st;
  if (strlen(arg) == TR_KEY_LEN && stat(arg, &st) != 0) {
    if (!z85_ok(arg, TR_KEY_LEN, raw)) return dbx_seterr(err, DBX_EINVAL, "'%s' is neither a file nor a key", arg);
    memcpy(pub, arg, TR_KEY_LEN + 1);
    return 0;
  }
  char *text;
  size_t len;
  int rc = read_small(arg, KEYFILE_MAX, &text, &len, &st, err);
  if (rc) return rc;
  size_t pos = 0, n, lineno = 0;
  const char *line;
  /* A key pair file has a public-key line too: never take a secret for a public key. */
  for (size_t q = 0; q < len;) {  /* a line that starts (after blanks) with secret-key */
    size_t i = q;
    while (i < len && (text[i] == ' ' || text[i] == '\t')) i++;
    if (len - i >= 11 && !memcmp(text + i, "secret-key", 10) && (text[i + 10] == ' ' || text[i + 10] == '\t')) {
      free(text);
      return dbx_seterr(err, DBX_EINVAL, "%s is a secret key file: give its .pub", arg);
    }
    const char *nl = memchr(text + q, '\n', len - q);
    q = nl ? (size_t)(nl - text) + 1 : len;
  }
  rc = 1;  /* nothing found yet */
  while (next_line(text, len, &pos, &line, &n)) {
    lineno++;
    size_t i = skip_blanks(line, n, 0);
    if (i == n || line[i] == '#') continue;
    size_t e = word_end(line, n, i);
    if (e - i == 10 && !memcmp(line + i, "public-key", 10)) i = skip_blanks(line, n, e), e = word_end(line, n, i);
    if (!z85_ok(line + i, e - i, raw)) {
      rc = dbx_seterr(err, DBX_EINVAL, "%s line %zu: not a public key (40 characters of Z85)", arg, lineno);
      break;
    }
    memcpy(pub, line + i, TR_KEY_LEN);
    pub[TR_KEY_LEN] = 0;
    rc = 0;
    break;
  }
  free(text);
  if (rc == 1) rc = dbx_seterr(err, DBX_EINVAL, "%s: no public key in it", arg);
  return rc;
}

/* ---- authorized keys ---- */

int tr_authz_add(tr_authz *a, const char *z85, const char *name, dbx_err *err) {
  unsigned char raw[32];
  if (!z85_ok(z85, strlen(z85), raw)) return dbx_seterr(err, DBX_EINVAL, "not a public key: '%s'", z85);
  if (a->n >= TR_AUTHZ_MAX) return dbx_seterr(err, DBX_EINVAL, "more than %d authorized keys", TR_AUTHZ_MAX);
  if ((a->n & (a->n - 1)) == 0) {  /* grow at powers of two */
    size_t cap = a->n ? a->n * 2 : 4;
    void *k = realloc(a->keys, cap * sizeof *a->keys);
    if (k) a->keys = k;
    void *m = realloc(a->names, cap * sizeof *a->names);
    if (m) a->names = m;
    if (!k || !m) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  memcpy(a->keys[a->n], raw, 32);
  snprintf(a->names[a->n], TR_NAME_LEN, "%s", name ? name : "");
  a->n++;
  return 0;
}

int tr_authz_parse(const char *text, size_t len, const char *what, tr_authz *a, dbx_err *err) {
  size_t pos = 0, n, lineno = 0;
  const char *line;
  while (next_line(text, len, &pos, &line, &n)) {
    lineno++;
    size_t i = skip_blanks(line, n, 0);
    if (i == n || line[i] == '#') continue;
    size_t e = word_end(line, n, i);
    char key[TR_KEY_LEN + 1], name[TR_NAME_LEN];
    if (e - i != TR_KEY_LEN)
      return dbx_seterr(err, DBX_EINVAL, "%s line %zu: not a public key (40 characters of Z85, then an optional name)",
                        what, lineno);
    memcpy(key, line + i, TR_KEY_LEN);
    key[TR_KEY_LEN] = 0;
    size_t c = skip_blanks(line, n, e), cn = n - c;
    if (cn >= TR_NAME_LEN) cn = TR_NAME_LEN - 1;
    memcpy(name, line + c, cn);
    name[cn] = 0;
    int rc = tr_authz_add(a, key, name, err);
    if (rc) {
      char m[DBX_ERR_LEN];
      snprintf(m, sizeof m, "%s", err->msg);
      return dbx_seterr(err, rc, "%s line %zu: %s", what, lineno, m);
    }
  }
  tr_authz_seal(a);
  return 0;
}

int tr_authz_load(const char *path, tr_authz *a, dbx_err *err) {
  char *text;
  size_t len;
  struct stat st;
  int rc = read_small(path, AUTHZ_FILE_MAX, &text, &len, &st, err);
  if (rc) return rc;
  rc = tr_authz_parse(text, len, path, a, err);
  free(text);
  if (!rc && a->n == 0) rc = dbx_seterr(err, DBX_EINVAL, "%s: no keys in it: no worker could join", path);
  return rc;
}

/* Sort keys (and their names with them): insertion of an index permutation would do, but a
 * plain sort of (key, name) records is simpler and the lists are short. */
typedef struct kn { unsigned char k[32]; char name[TR_NAME_LEN]; } kn;
static int kn_cmp(const void *x, const void *y) { return memcmp(((const kn *)x)->k, ((const kn *)y)->k, 32); }

void tr_authz_seal(tr_authz *a) {
  if (a->n < 2) return;
  kn *v = malloc(a->n * sizeof *v);
  if (!v) return;  /* left unsorted: find falls back to a scan */
  for (size_t i = 0; i < a->n; i++) memcpy(v[i].k, a->keys[i], 32), memcpy(v[i].name, a->names[i], TR_NAME_LEN);
  qsort(v, a->n, sizeof *v, kn_cmp);
  for (size_t i = 0; i < a->n; i++) memcpy(a->keys[i], v[i].k, 32), memcpy(a->names[i], v[i].name, TR_NAME_LEN);
  free(v);
}

long tr_authz_find(const tr_authz *a, const unsigned char key[32]) {
  size_t lo = 0, hi = a->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = memcmp(a->keys[mid], key, 32);
    if (c == 0) return (long)mid;
    if (c < 0) lo = mid + 1; else hi = mid;
  }
  for (size_t i = 0; i < a->n; i++)  /* unsorted (a seal that ran out of memory) */
    if (!memcmp(a->keys[i], key, 32)) return (long)i;
  return -1;
}

void tr_authz_free(tr_authz *a) {
  free(a->keys);
  free(a->names);
  memset(a, 0, sizeof *a);
}

/* ---- endpoints ---- */

int tr_endpoint(const char *arg, const char *what, char *out, size_t cap, dbx_err *err) {
  if (!arg || !*arg) return dbx_seterr(err, DBX_EUSAGE, "%s needs HOST:PORT", what);
  if (!strncmp(arg, "ipc://", 6) || !strncmp(arg, "tcp://", 6)) {
    if ((size_t)snprintf(out, cap, "%s", arg) >= cap) return dbx_seterr(err, DBX_EUSAGE, "%s: too long", what);
  } else if (strstr(arg, "://")) {
    return dbx_seterr(err, DBX_EUSAGE, "%s %s: only tcp://HOST:PORT (or HOST:PORT) and ipc://PATH", what, arg);
  } else if ((size_t)snprintf(out, cap, "tcp://%s", arg) >= cap) {
    return dbx_seterr(err, DBX_EUSAGE, "%s: too long", what);
  }
  if (!strncmp(out, "tcp://", 6)) {
    const char *colon = strrchr(out + 6, ':');
    const char *rb = strrchr(out + 6, ']');
    if (!colon || colon == out + 6 || (rb && colon < rb) || !colon[1])
      return dbx_seterr(err, DBX_EUSAGE, "%s %s: give HOST:PORT (a port is needed)", what, arg);
    for (const char *p = colon + 1; *p; p++)
      if ((*p < '0' || *p > '9') && !(p == colon + 1 && *p == '*' && !p[1]))
        return dbx_seterr(err, DBX_EUSAGE, "%s %s: the port '%s' is not a number", what, arg, colon + 1);
  }
  return 0;
}

int tr_endpoint_loopback(const char *ep) {
  if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9)) return 1;
  if (strncmp(ep, "tcp://", 6)) return 0;
  const char *h = ep + 6;
  /* tcp://IFACE;HOST:PORT names a source address first: judge the destination. */
  const char *semi = strchr(h, ';');
  if (semi) h = semi + 1;
  if (!strncmp(h, "localhost:", 10)) return 1;
  if (!strncmp(h, "[::1]:", 6)) return 1;
  /* 127.0.0.0/8, written as an address: a name such as 127.0.0.1.example.org is not. */
  const char *colon = strrchr(h, ':');
  char host[64];
  struct in_addr a;
  if (!colon || (size_t)(colon - h) >= sizeof host) return 0;
  memcpy(host, h, (size_t)(colon - h));
  host[colon - h] = 0;
  return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/* ---- the coordinator's guard ---- */

struct tr_guard {
  void *zap, *mon;
  tr_authz a;
  pthread_t th;
  int started;
  volatile int stop;
  unsigned long refused, logged;
  char monep[64];
};

/* Enough log lines to see who knocks, never a flood from a scanner. */
static int guard_should_log(tr_guard *g) {
  unsigned long n = __atomic_add_fetch(&g->refused, 1, __ATOMIC_RELAXED);
  return n <= 20 || n % 1000 == 0;
}

static int recv_frames(void *s, zmq_msg_t *f, int max, int *n) {
  *n = 0;
  int more = 1;
  while (more) {
    zmq_msg_t tmp, *m = *n < max ? &f[*n] : &tmp;
    zmq_msg_init(m);
    if (zmq_msg_recv(m, s, 0) < 0) { zmq_msg_close(m); return -1; }
    more = zmq_msg_more(m);
    if (m == &tmp) zmq_msg_close(m); else (*n)++;
  }
  return 0;
}

static void zap_reply(void *s, const zmq_msg_t *reqid, const char *status, const char *text, const char *user) {
  zmq_send(s, "1.0", 3, ZMQ_SNDMORE);
  zmq_send(s, zmq_msg_data((zmq_msg_t *)reqid), zmq_msg_size((zmq_msg_t *)reqid), ZMQ_SNDMORE);
  zmq_send(s, status, strlen(status), ZMQ_SNDMORE);
  zmq_send(s, text, strlen(text), ZMQ_SNDMORE);
  zmq_send(s, user, strlen(user), ZMQ_SNDMORE);
  zmq_send(s, "", 0, 0);
}

/* One ZAP request (RFC 27): version, request id, domain, address, identity, mechanism,
 * then the mechanism's credentials (CURVE: the client's 32-byte public key). */
static void zap_answer(tr_guard *g) {
  zmq_msg_t f[8];
  int n = 0;
  if (recv_frames(g->zap, f, 8, &n) != 0) return;
  char addr[64] = "?";
  if (n >= 4) {
    size_t al = zmq_msg_size(&f[3]);
    log_escape(addr, sizeof addr, zmq_msg_data(&f[3]), al < 48 ? al : 48);
  }
  if (n < 2) {
    /* Not even a request id: nothing can be answered (libzmq never sends this). */
  } else if (n != 7 || zmq_msg_size(&f[0]) != 3 || memcmp(zmq_msg_data(&f[0]), "1.0", 3) != 0 ||
             zmq_msg_size(&f[5]) != 5 || memcmp(zmq_msg_data(&f[5]), "CURVE", 5) != 0 ||
             zmq_msg_size(&f[6]) != 32) {
    if (guard_should_log(g)) log_warn("refused a peer at %s: it did not present a CURVE key", addr);
    zap_reply(g->zap, &f[1], "400", "a CURVE key is required", "");
  } else {
    long i = tr_authz_find(&g->a, zmq_msg_data(&f[6]));
    if (i >= 0) {
      log_debug("admitted a worker at %s with key %s", addr, g->a.names[i][0] ? g->a.names[i] : "(unnamed)");
      zap_reply(g->zap, &f[1], "200", "OK", g->a.names[i]);
    } else {
      char z[TR_KEY_LEN + 1] = "?";
      zmq_z85_encode(z, zmq_msg_data(&f[6]), 32);
      if (guard_should_log(g))
        log_warn("refused a worker at %s: its key %s is not in the authorized keys", addr, z);
      zap_reply(g->zap, &f[1], "400", "key not authorized", "");
    }
  }
  for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
}

/* A handshake that failed before ZAP was asked (no key, or keys that do not decrypt): the
 * monitor knows only our own endpoint, not the peer's. */
static void monitor_event(tr_guard *g) {
  zmq_msg_t f[2];
  int n = 0;
  if (recv_frames(g->mon, f, 2, &n) != 0) return;
  if (n == 2 && zmq_msg_size(&f[0]) == 6) {
    uint16_t ev;
    uint32_t val;
    memcpy(&ev, zmq_msg_data(&f[0]), 2);
    memcpy(&val, (char *)zmq_msg_data(&f[0]) + 2, 4);
    char ep[128];
    size_t el = zmq_msg_size(&f[1]);
    log_escape(ep, sizeof ep, zmq_msg_data(&f[1]), el < 100 ? el : 100);
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && guard_should_log(g)) {
      if (val == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        log_warn("refused a peer on %s at the handshake: it has no key (this coordinator requires CURVE keys)", ep);
      else
        log_warn("refused a peer on %s at the handshake: its handshake did not decrypt (a wrong coordinator key?)", ep);
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL && guard_should_log(g)) {
      log_warn("refused a peer on %s at the handshake", ep);
    }
  }
  for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
}

static void *guard_thread(void *arg) {
  tr_guard *g = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  while (!__atomic_load_n(&g->stop, __ATOMIC_ACQUIRE)) {
    zmq_pollitem_t it[2] = {{g->zap, 0, ZMQ_POLLIN, 0}, {g->mon, 0, ZMQ_POLLIN, 0}};
    int r = zmq_poll(it, g->mon ? 2 : 1, 100);
    if (r < 0) {
      if (zmq_errno() == EINTR) continue;
      break;
    }
    if (it[0].revents & ZMQ_POLLIN) zap_answer(g);
    if (g->mon && (it[1].revents & ZMQ_POLLIN)) monitor_event(g);
  }
  return NULL;
}

int tr_guard_start(void *zctx, void *sock, const tr_keypair *kp, tr_authz *a, tr_guard **out, dbx_err *err) {
  static int seq;
  tr_guard *g = calloc(1, sizeof *g);
  if (!g) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  g->a = *a;
  memset(a, 0, sizeof *a);
  int one = 1, zero = 0;
  /* The handler is bound before any CURVE endpoint exists: libzmq admits every peer of a
   * CURVE socket when no handler answers. */
  if (!(g->zap = zmq_socket(zctx, ZMQ_REP)) || zmq_setsockopt(g->zap, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
      zmq_bind(g->zap, "inproc://zeromq.zap.01") != 0) {
    int e = zmq_errno();
    tr_guard_stop(g);
    return dbx_seterr(err, DBX_EIO, "cannot start the key check (ZAP handler): %s", zmq_strerror(e));
  }
  if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp->sec, TR_KEY_LEN) != 0) {
    int e = zmq_errno();
    tr_guard_stop(g);
    return dbx_seterr(err, DBX_EIO, "cannot use the coordinator's key: %s", zmq_strerror(e));
  }
  snprintf(g->monep, sizeof g->monep, "inproc://dbatch-guard-%d-%d", (int)getpid(), __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
  if (zmq_socket_monitor(sock, g->monep, ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0 &&
      (g->mon = zmq_socket(zctx, ZMQ_PAIR)) != NULL) {
    zmq_setsockopt(g->mon, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(g->mon, g->monep) != 0) {
      zmq_close(g->mon);
      g->mon = NULL;
    }
  }
  int prc = pthread_create(&g->th, NULL, guard_thread, g);
  if (prc) {
    tr_guard_stop(g);
    return dbx_seterr(err, DBX_ENOMEM, "cannot start the key check thread: %s", strerror(prc));
  }
  g->started = 1;
  *out = g;
  return 0;
}

unsigned long tr_guard_refused(const tr_guard *g) {
  return g ? __atomic_load_n(&g->refused, __ATOMIC_RELAXED) : 0;
}

void tr_guard_stop(tr_guard *g) {
  if (!g) return;
  __atomic_store_n(&g->stop, 1, __ATOMIC_RELEASE);
  if (g->started) pthread_join(g->th, NULL);
  if (g->mon) zmq_close(g->mon);
  if (g->zap) zmq_close(g->zap);
  tr_authz_free(&g->a);
  free(g);
}

/* ---- the worker's side ---- */

int tr_client_secure(void *sock, const tr_keypair *mine, const char *server_pub, dbx_err *err) {
  if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_pub, TR_KEY_LEN) != 0 ||
      zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, mine->pub, TR_KEY_LEN) != 0 ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, mine->sec, TR_KEY_LEN) != 0)
    return dbx_seterr(err, DBX_EIO, "cannot use the keys: %s", zmq_strerror(zmq_errno()));
  return 0;
}

void *tr_watch(void *zctx, void *sock) {
  static int seq;
  char ep[64];
  snprintf(ep, sizeof ep, "inproc://dbatch-watch-%d-%d", (int)getpid(), __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
  int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
  if (zmq_socket_monitor(sock, ep, events) != 0) return NULL;
  void *mon = zmq_socket(zctx, ZMQ_PAIR);
  int zero = 0;
  if (!mon) return NULL;
  zmq_setsockopt(mon, ZMQ_LINGER, &zero, sizeof zero);
  if (zmq_connect(mon, ep) != 0) {
    zmq_close(mon);
    return NULL;
  }
  return mon;
}

int tr_watch_next(void *mon, int keyed, char *why, size_t cap) {
  zmq_msg_t f[2];
  int n = 0, out = TR_HS_NONE;
  zmq_pollitem_t it = {mon, 0, ZMQ_POLLIN, 0};
  if (!mon || zmq_poll(&it, 1, 0) <= 0 || recv_frames(mon, f, 2, &n) != 0) return TR_HS_NONE;
  if (n == 2 && zmq_msg_size(&f[0]) == 6) {
    uint16_t ev;
    uint32_t val;
    memcpy(&ev, zmq_msg_data(&f[0]), 2);
    memcpy(&val, (char *)zmq_msg_data(&f[0]) + 2, 4);
    log_debug("handshake event %u (value %#x)", (unsigned)ev, (unsigned)val);
    if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      out = TR_HS_OK;
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
      out = TR_HS_REFUSED;
      snprintf(why, cap, "the coordinator refused this worker's key (status %u): add its public key (the .pub of "
               "--key) to the coordinator's --authorized-keys", (unsigned)val);
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && val == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
      out = TR_HS_MISMATCH;
      snprintf(why, cap, keyed ? "the coordinator does not use keys (it was started without --key), but this worker "
                                 "was given --coordinator-key"
                               : "the coordinator requires keys: give this worker --key FILE and --coordinator-key PUB");
    } else {
      out = TR_HS_FAILED;
      snprintf(why, cap, keyed ? "the handshake failed: this coordinator does not hold the secret half of "
                                 "--coordinator-key (a wrong key, or a coordinator started without --key)"
                               : "the handshake failed: the coordinator probably requires keys (give --key FILE and "
                                 "--coordinator-key PUB), or what listens there is not a dbatch coordinator");
    }
  }
  for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
  return out;
}
