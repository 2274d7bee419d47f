/* floor.c -- bench/coordinator-scale: the floor under the coordinator. A bare ZeroMQ ROUTER
 * (CURVE with --key, admitting any client key: no ZAP handler) that does on the wire what
 * `dbatch bench-tasks --listen` does -- welcome each hello, and once --wait-workers have
 * joined keep slots + --prefetch noop tasks in flight on every worker, a new task for every
 * result -- and nothing else: no task table, no scheduler, no merge, no UI. Its tasks/s,
 * CPU and memory per connection are what libzmq itself costs on this machine, so the gap
 * to the coordinator's numbers is dbatch's own.
 *
 * Usage: floor --listen tcp://HOST:PORT [--key FILE [--zap]] [--wait-workers N] [--prefetch K]
 *              [--spin-us U] [--no-zero-copy]
 * --zap answers the handshakes from a ZAP handler thread (admitting every key), like the
 * coordinator's guard; --spin-us burns U microseconds of CPU per result, to play a main loop
 * as slow as the coordinator's and see what its backlog costs in memory; --no-zero-copy
 * turns libzmq's zero-copy receive off (what that backlog pins, see README.md).
 * Says "waiting for workers" on standard error once bound (what the load generator waits
 * for); stops on SIGTERM. */
#define _GNU_SOURCE 1
#include <getopt.h>
#include <pthread.h>
#include <time.h>
#include <msgpack.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { MSG_HELLO = 1, MSG_WELCOME, MSG_TASK = 5, MSG_RESULT };

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

typedef struct peer {
  unsigned char rid[256];
  size_t len;
  uint32_t slots;
} peer;

static peer *P;
static size_t np, cap;
static uint32_t *slot_of;  /* open addressing over rid hashes: index + 1, 0 empty */
static size_t hcap;

static uint64_t hash(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static void rehash(void) {
  size_t nc = hcap ? hcap * 2 : 1024;
  uint32_t *ns = calloc(nc, sizeof *ns);
  for (size_t i = 0; i < np; i++) {
    size_t k = hash(P[i].rid, P[i].len) & (nc - 1);
    while (ns[k]) k = (k + 1) & (nc - 1);
    ns[k] = (uint32_t)i + 1;
  }
  free(slot_of);
  slot_of = ns;
  hcap = nc;
}

static peer *find(const unsigned char *rid, size_t n, int add) {
  if (!hcap || np * 2 >= hcap) rehash();
  size_t k = hash(rid, n) & (hcap - 1);
  while (slot_of[k]) {
    peer *p = &P[slot_of[k] - 1];
    if (p->len == n && !memcmp(p->rid, rid, n)) return p;
    k = (k + 1) & (hcap - 1);
  }
  if (!add) return NULL;
  if (np == cap) {
    cap = cap ? cap * 2 : 1024;
    P = realloc(P, cap * sizeof *P);
  }
  peer *p = &P[np];
  memcpy(p->rid, rid, n);
  p->len = n;
  slot_of[k] = (uint32_t)++np;
  return p;
}

static void *router;

/* --zap: a ZAP handler admitting every key, as the coordinator's guard does for listed keys
 * (libzmq then keeps a ZAP pipe per connection). */
static void *zap_thread(void *arg) {
  void *zap = arg;
  zmq_msg_t f[8];
  while (!stop) {
    zmq_pollitem_t it = {zap, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 100) <= 0) continue;
    int n = 0, more = 1;
    while (more && n < 8) {
      zmq_msg_init(&f[n]);
      if (zmq_msg_recv(&f[n], zap, 0) < 0) break;
      more = zmq_msg_more(&f[n]);
      n++;
    }
    if (n >= 2) {
      zmq_send(zap, "1.0", 3, ZMQ_SNDMORE);
      zmq_send(zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
      zmq_send(zap, "200", 3, ZMQ_SNDMORE);
      zmq_send(zap, "OK", 2, ZMQ_SNDMORE);
      zmq_send(zap, "", 0, ZMQ_SNDMORE);
      zmq_send(zap, "", 0, 0);
    }
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
  }
  return NULL;
}

static void spin(double us) {
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  do clock_gettime(CLOCK_MONOTONIC, &b);
  while ((double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3 < us);
}
static msgpack_sbuffer sb;
static msgpack_packer pk;
static uint64_t next_index;

static void head(int type, uint32_t nfields) {
  msgpack_sbuffer_clear(&sb);
  msgpack_pack_array(&pk, 3 + nfields);
  msgpack_pack_str_with_body(&pk, "DBX", 3);
  msgpack_pack_uint64(&pk, 1);
  msgpack_pack_uint64(&pk, (uint64_t)type);
}

static void send_to(const peer *p) {
  zmq_send(router, p->rid, p->len, ZMQ_SNDMORE);
  zmq_send(router, sb.data, sb.size, 0);
}

/* A task as msg_task() encodes one of bench-tasks: no segments, nothing shipped. */
static void send_task(const peer *p) {
  head(MSG_TASK, 7);
  msgpack_pack_uint64(&pk, 1);
  msgpack_pack_uint64(&pk, next_index++);
  msgpack_pack_uint64(&pk, 1);
  msgpack_pack_array(&pk, 0);
  msgpack_pack_false(&pk);
  msgpack_pack_bin_with_body(&pk, "", 0);
  msgpack_pack_false(&pk);
  send_to(p);
}

int main(int argc, char **argv) {
  const char *listen = NULL, *key = NULL;
  size_t wait_workers = 0;
  uint32_t prefetch = 16;
  int zap = 0, zero_copy = 1;
  double spin_us = 0;
  static const struct option lo[] = {{"listen", required_argument, NULL, 'l'},
                                     {"key", required_argument, NULL, 'k'},
                                     {"wait-workers", required_argument, NULL, 'w'},
                                     {"prefetch", required_argument, NULL, 'p'},
                                     {"zap", no_argument, NULL, 'z'},
                                     {"no-zero-copy", no_argument, NULL, 'c'},
                                     {"spin-us", required_argument, NULL, 's'},
                                     {NULL, 0, NULL, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (o == 'l') listen = optarg;
    else if (o == 'k') key = optarg;
    else if (o == 'w') wait_workers = strtoul(optarg, NULL, 10);
    else if (o == 'p') prefetch = (uint32_t)strtoul(optarg, NULL, 10);
    else if (o == 'z') zap = 1;
    else if (o == 'c') zero_copy = 0;
    else if (o == 's') spin_us = atof(optarg);
    else return 2;
  }
  if (!listen) { fprintf(stderr, "usage: floor --listen tcp://HOST:PORT [--key FILE] [--wait-workers N]\n"); return 2; }
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  void *ctx = zmq_ctx_new();
  /* ZMQ_ZERO_COPY_RECV (10, a DRAFT context option that libzmq 4.3 honours): off, a received
   * message is copied out of the engine's 8 KB receive buffer instead of pinning it. */
  if (!zero_copy && zmq_ctx_set(ctx, 10, 0) != 0) fprintf(stderr, "floor: cannot turn zero-copy receive off\n");
  router = zmq_socket(ctx, ZMQ_ROUTER);
  int one = 1, zero = 0;
  zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
  if (key && zap) {
    void *z = zmq_socket(ctx, ZMQ_REP);
    zmq_setsockopt(z, ZMQ_LINGER, &zero, sizeof zero);
    pthread_t th;
    if (zmq_bind(z, "inproc://zeromq.zap.01") || pthread_create(&th, NULL, zap_thread, z)) return 1;
  }
  if (key) {
    char line[512], sec[41] = "";
    FILE *f = fopen(key, "r");
    while (f && fgets(line, sizeof line, f)) sscanf(line, "secret-key %40s", sec);
    if (f) fclose(f);
    if (strlen(sec) != 40) { fprintf(stderr, "floor: no secret-key in %s\n", key); return 1; }
    zmq_setsockopt(router, ZMQ_CURVE_SERVER, &one, sizeof one);
    zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, sec, 40);
  }
  if (zmq_bind(router, listen)) { fprintf(stderr, "floor: %s: %s\n", listen, zmq_strerror(zmq_errno())); return 1; }
  fprintf(stderr, "floor: waiting for workers on %s\n", listen);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  zmq_msg_t id, body;
  zmq_msg_init(&id);
  zmq_msg_init(&body);
  int started = 0;
  while (!stop) {
    zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 500) <= 0) continue;
    while (!stop && zmq_msg_recv(&id, router, ZMQ_DONTWAIT) >= 0) {
      if (!zmq_msg_more(&id) || zmq_msg_recv(&body, router, 0) < 0) continue;
      size_t off = 0;
      if (msgpack_unpack_next(&up, zmq_msg_data(&body), zmq_msg_size(&body), &off) != MSGPACK_UNPACK_SUCCESS ||
          up.data.type != MSGPACK_OBJECT_ARRAY || up.data.via.array.size < 3)
        continue;
      const msgpack_object *a = up.data.via.array.ptr;
      int type = (int)a[2].via.u64;
      if (zmq_msg_size(&id) > 255) continue;
      if (type == MSG_HELLO) {
        peer *p = find(zmq_msg_data(&id), zmq_msg_size(&id), 1);
        p->slots = up.data.via.array.size > 3 ? (uint32_t)a[3].via.u64 : 1;
        head(MSG_WELCOME, 3);
        msgpack_pack_uint64(&pk, (uint64_t)(p - P) + 1);
        msgpack_pack_uint64(&pk, 1000);
        msgpack_pack_uint64(&pk, 1u << 30);
        send_to(p);
        if (started)
          for (uint32_t k = 0; k < p->slots + prefetch; k++) send_task(p);
      } else if (type == MSG_RESULT) {
        peer *p = find(zmq_msg_data(&id), zmq_msg_size(&id), 0);
        if (spin_us > 0) spin(spin_us);
        if (p) send_task(p);
      }
      if (!started && np >= wait_workers) {
        started = 1;
        for (size_t i = 0; i < np; i++)
          for (uint32_t k = 0; k < P[i].slots + prefetch; k++) send_task(&P[i]);
      }
    }
  }
  zmq_msg_close(&id);
  zmq_msg_close(&body);
  zmq_close(router);
  zmq_ctx_term(ctx);
  return 0;
}
