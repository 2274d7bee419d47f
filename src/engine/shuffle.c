/* shuffle.c -- the partitioned reduce of keyed stages: partition files, the reduce stage's
 * operator, and the coordinator's ordered stream over reduced partitions. See shuffle.h. */
#define _GNU_SOURCE 1
#include "engine/shuffle.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/agg.h"

int shuffle_check(const kv_part_cfg *pc, dbx_err *err) {
  if (pc->r > SHUFFLE_R_MAX || !memchr(pc->dir, 0, sizeof pc->dir) || (pc->r && pc->dir[0] != '/'))
    return dbx_seterr(err, DBX_EPROTO, "malformed partition configuration");
  return 0;
}

static void map_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t index, uint32_t r) {
  snprintf(out, cap, "%s/s%u-m%u-p%u.kv", pc->dir, pc->stage, index, r);
}

static void red_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t r) {
  snprintf(out, cap, "%s/s%u-r%u.kv", pc->dir, pc->stage, r);
}

static int write_file(const kv_part_cfg *pc, const char *path, const char *data, size_t n, dbx_err *err);

static void cnt_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t r) {
  snprintf(out, cap, "%s/s%u-c%u.kv", pc->dir, pc->stage, r);
}

static void put_u64(char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (char)(v >> (8 * i)); }
static uint64_t get_u64(const char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
  return v;
}

/* By-count file: "DBWC", then entries [u64 count][u32 klen][key], count descending, then key. */
typedef struct cref { const char *k; uint32_t n; uint64_t c; } cref;
static int cmp_cref(const void *x, const void *y) {
  const cref *a = x, *b = y;
  if (a->c != b->c) return a->c > b->c ? -1 : 1;
  int c = memcmp(a->k, b->k, a->n < b->n ? a->n : b->n);
  return c ? c : a->n < b->n ? -1 : a->n > b->n;
}

static int write_by_count(const kv_part_cfg *pc, uint32_t r, kvpart *res, dbx_err *err) {
  kv_cursor c;
  int rc = kv_cursor_init(&c, res, err);
  if (rc) return rc;
  uint64_t n = kv_count(res);
  cref *v = malloc((n ? n : 1) * sizeof *v);
  dbx_buf out = {0};
  if (!v) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  kv_entry e;
  uint64_t k = 0;
  while (k < n && kv_cursor_next(&c, &e)) v[k++] = (cref){e.key, (uint32_t)e.klen, get_u64(e.state)};
  qsort(v, k, sizeof *v, cmp_cref);
  rc = dbx_buf_append(&out, "DBWC", 4);
  for (uint64_t i = 0; i < k && !rc; i++) {
    char h[12];
    put_u64(h, v[i].c);
    for (int b = 0; b < 4; b++) h[8 + b] = (char)(v[i].n >> (8 * b));
    rc = dbx_buf_append(&out, h, sizeof h);
    if (!rc && v[i].n) rc = dbx_buf_append(&out, v[i].k, v[i].n);
  }
  free(v);
  if (rc) {
    dbx_buf_free(&out);
    return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  char path[SHUFFLE_DIR_MAX + 64];
  cnt_path(path, sizeof path, pc, r);
  rc = write_file(pc, path, out.data, out.len, err);
  dbx_buf_free(&out);
  return rc;
}

/* Write data to path atomically (a private temporary name, then rename). */
static int write_file(const kv_part_cfg *pc, const char *path, const char *data, size_t n, dbx_err *err) {
  static __thread unsigned seq;
  char tmp[SHUFFLE_DIR_MAX + 128];
  snprintf(tmp, sizeof tmp, "%s/.tmp-%d-%lx-%u", pc->dir, (int)getpid(), (unsigned long)gettid(), seq++);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: cannot create a partition file: %s",
                      pc->dir, strerror(e));
  }
  size_t done = 0;
  while (done < n) {
    ssize_t k = write(fd, data + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      int e = k < 0 ? errno : ENOSPC;
      close(fd);
      unlink(tmp);
      return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: writing a partition file: %s",
                        pc->dir, strerror(e));
    }
    done += (size_t)k;
  }
  if (close(fd) != 0 || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: %s", pc->dir, strerror(e));
  }
  return 0;
}

int shuffle_write_map(const kv_part_cfg *pc, kvpart *p, uint32_t index, dbx_err *err) {
  int rc = shuffle_check(pc, err);
  if (rc || !pc->r) return rc;
  dbx_buf *parts = calloc(pc->r, sizeof *parts);
  if (!parts) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  rc = kv_split(p, pc->r, parts, err);
  for (uint32_t r = 0; r < pc->r && !rc; r++) {
    char path[SHUFFLE_DIR_MAX + 64];
    map_path(path, sizeof path, pc, index, r);
    rc = write_file(pc, path, parts[r].data, parts[r].len, err);
  }
  for (uint32_t r = 0; r < pc->r; r++) dbx_buf_free(&parts[r]);
  free(parts);
  if (!rc) kv_clear(p);
  return rc;
}

int shuffle_write_empty(const kv_part_cfg *pc, const kv_spec *spec, uint32_t index, dbx_err *err) {
  kvpart *p = kv_new(spec);
  if (!p) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = shuffle_write_map(pc, p, index, err);
  kv_free(p);
  return rc;
}

/* Read a whole file into *out (malloc'd). */
static int read_file(const char *path, const char *what, char **out, size_t *n, dbx_err *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    return dbx_seterr(err, e == ENOENT ? DBX_ENOENT : DBX_EIO, "%s %s: %s", what, path, strerror(e));
  }
  char *b = malloc(sb.st_size ? (size_t)sb.st_size : 1);
  size_t done = 0;
  while (b && done < (size_t)sb.st_size) {
    ssize_t k = read(fd, b + done, (size_t)sb.st_size - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    done += (size_t)k;
  }
  close(fd);
  if (!b || done != (size_t)sb.st_size) {
    free(b);
    return dbx_seterr(err, b ? DBX_EIO : DBX_ENOMEM, "%s %s: cannot read it", what, path);
  }
  *out = b;
  *n = done;
  return 0;
}

/* ---- the reduce stage's operator ---- */

static void *kvm_new(const void *cfg) { return kv_new(cfg); }
static void kvm_free(void *p) { kv_free(p); }
static int kvm_merge(const void *cfg, void *l, const void *r, dbx_err *err) {
  (void)cfg;
  return kv_merge(l, (kvpart *)r, err);
}
/* The merge tree of a reduce task: keyed partials under the stage's aggregates (cfg: a kv_spec). */
static const dbx_op kv_merge_op = {"kv-merge", kvm_new, kvm_free, NULL, kvm_merge, NULL, NULL, NULL,
                                   NULL, NULL, NULL, sizeof(kv_spec), NULL};

static int sh_check(const shuffle_cfg *c, dbx_err *err) {
  int rc = kv_spec_check(&c->spec, err);
  if (!rc) rc = shuffle_check(&c->pc, err);
  if (!rc && (!c->pc.r || c->by_count > 1 || (c->by_count && (c->spec.nagg != 1 || c->spec.agg[0].kind != KA_COUNT))))
    rc = dbx_seterr(err, DBX_EPROTO, "malformed reduce configuration");
  return rc;
}

static void *sh_new(const void *cfgp) {
  const shuffle_cfg *c = cfgp;
  return sh_check(c, NULL) ? NULL : kv_new(&c->spec);
}

static int sh_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st, dbx_err *err) {
  (void)bcast; (void)partial;
  const shuffle_cfg *c = cfgp;
  int rc = sh_check(c, err);
  if (rc) return rc;
  uint32_t r = b->index;
  if (r >= c->pc.r) return dbx_seterr(err, DBX_EPROTO, "reduce task %u of %u partitions", r, c->pc.r);
  agg *a = agg_new(&kv_merge_op, &c->spec);
  if (!a) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (uint32_t i = 0; i < c->nmap && !rc; i++) {
    char path[SHUFFLE_DIR_MAX + 64], *data = NULL;
    size_t n = 0;
    map_path(path, sizeof path, &c->pc, i, r);
    rc = read_file(path, "map output", &data, &n, err);
    kvpart *p = NULL;
    if (!rc) {
      dbx_err e = {0, ""};
      rc = kv_decode(&c->spec, data, n, &p, &e);
      if (rc) rc = dbx_seterr(err, DBX_ECORRUPT, "map output %s: %s", path, e.msg);
    }
    free(data);
    if (!rc) rc = agg_add(a, i, p, err);
    else kv_free(p);
  }
  void *res = NULL;
  if (!rc) rc = agg_finish(a, c->nmap, &res, err);
  agg_free(a);
  dbx_buf enc = {0};
  (void)st;  /* a reduce task reads no input records */
  if (!rc) rc = kv_encode(res, &enc, err);
  if (!rc) {
    char path[SHUFFLE_DIR_MAX + 64];
    red_path(path, sizeof path, &c->pc, r);
    rc = write_file(&c->pc, path, enc.data, enc.len, err);
  }
  if (!rc && c->by_count) rc = write_by_count(&c->pc, r, res, err);
  dbx_buf_free(&enc);
  kv_free(res);
  return rc;
}

static int sh_merge(const void *cfg, void *l, const void *r, dbx_err *err) { return kvm_merge(cfg, l, r, err); }
static int sh_encode(const void *cfg, const void *p, dbx_buf *out, dbx_err *err) {
  (void)cfg;
  return kv_encode((kvpart *)p, out, err);
}
static int sh_decode(const void *cfgp, const char *p, size_t n, void **out, dbx_err *err) {
  const shuffle_cfg *c = cfgp;
  int rc = sh_check(c, err);
  return rc ? rc : kv_decode(&c->spec, p, n, (kvpart **)out, err);
}
static int sh_finish(const void *cfg, const void *bc, void *p, dbx_emit_fn emit, void *ctx, dbx_buf *bcast,
                     dbx_err *err) {
  (void)cfg; (void)bc; (void)p; (void)emit; (void)ctx; (void)bcast; (void)err;
  return 0;  /* the rows come from the reduced files (kv_stream_open) */
}

const dbx_op op_shuffle_reduce = {
    "shuffle-reduce", sh_new, kvm_free, sh_map, sh_merge, sh_encode, sh_decode, sh_finish,
    NULL, NULL, NULL, sizeof(shuffle_cfg), NULL,
};

/* ---- the ordered stream ---- */

typedef struct part {
  char *map;          /* the mapped file */
  size_t len;
  kvpart *p;
  kv_cursor c;
  kv_entry head;
  int have;
} part;

struct kv_stream {
  uint32_t n;
  part *v;
};

static int cmp_key(const kv_entry *a, const kv_entry *b) {
  int c = memcmp(a->key, b->key, a->klen < b->klen ? a->klen : b->klen);
  return c ? c : a->klen < b->klen ? -1 : a->klen > b->klen;
}

void kv_stream_close(kv_stream *s) {
  if (!s) return;
  for (uint32_t i = 0; i < s->n; i++) {
    kv_free(s->v[i].p);
    if (s->v[i].map && s->v[i].len) munmap(s->v[i].map, s->v[i].len);
  }
  free(s->v);
  free(s);
}

static kv_stream *stream_new(uint32_t n) {
  kv_stream *s = calloc(1, sizeof *s);
  if (!s || !(s->v = calloc(n ? n : 1, sizeof *s->v))) {
    free(s);
    return NULL;
  }
  s->n = n;
  return s;
}

int kv_stream_of(kvpart *p, kv_stream **out, dbx_err *err) {
  kv_stream *s = stream_new(1);
  if (!s) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = kv_cursor_init(&s->v[0].c, p, err);
  if (rc) {
    kv_stream_close(s);
    return rc;
  }
  s->v[0].have = kv_cursor_next(&s->v[0].c, &s->v[0].head);
  *out = s;
  return 0;
}

int kv_stream_open(const kv_part_cfg *pc, const kv_spec *spec, kv_stream **out, dbx_err *err) {
  kv_stream *s = stream_new(pc->r);
  if (!s) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = 0;
  for (uint32_t r = 0; r < pc->r && !rc; r++) {
    char path[SHUFFLE_DIR_MAX + 64];
    red_path(path, sizeof path, pc, r);
    part *x = &s->v[r];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
      rc = dbx_seterr(err, DBX_EIO, "reduced partition %s: %s", path, strerror(errno));
      if (fd >= 0) close(fd);
      break;
    }
    x->len = (size_t)sb.st_size;
    if (x->len) {
      x->map = mmap(NULL, x->len, PROT_READ, MAP_PRIVATE, fd, 0);
      if (x->map == MAP_FAILED) {
        x->map = NULL;
        x->len = 0;
        rc = dbx_seterr(err, DBX_EIO, "reduced partition %s: %s", path, strerror(errno));
      }
    }
    close(fd);
    if (!rc) rc = kv_decode_view(spec, x->map ? x->map : "", x->len, &x->p, err);
    if (!rc) rc = kv_cursor_init(&x->c, x->p, err);
    if (!rc) x->have = kv_cursor_next(&x->c, &x->head);
    else if (rc == DBX_ECORRUPT) rc = dbx_seterr(err, rc, "reduced partition %s: %s", path, err->msg);
  }
  if (rc) {
    kv_stream_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

int kv_stream_next(kv_stream *s, kv_entry *e) {
  part *best = NULL;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->v[i].have && (!best || cmp_key(&s->v[i].head, &best->head) < 0)) best = &s->v[i];
  if (!best) return 0;
  *e = best->head;
  best->have = kv_cursor_next(&best->c, &best->head);
  return 1;
}

void shuffle_remove(const kv_part_cfg *pc, uint32_t nmap) {
  if (!pc->r) return;
  char path[SHUFFLE_DIR_MAX + 64];
  for (uint32_t r = 0; r < pc->r; r++) {
    for (uint32_t i = 0; i < nmap; i++) {
      map_path(path, sizeof path, pc, i, r);
      unlink(path);
    }
    red_path(path, sizeof path, pc, r);
    unlink(path);
    cnt_path(path, sizeof path, pc, r);
    unlink(path);
  }
}

/* ---- the by-count stream ---- */

typedef struct cpart {
  char *map;
  size_t len, pos;
  const char *key;
  size_t klen;
  uint64_t count;
  int have;
} cpart;

struct count_stream {
  uint32_t n;
  cpart *v;
};

void count_stream_close(count_stream *s) {
  if (!s) return;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->v[i].map && s->v[i].len) munmap(s->v[i].map, s->v[i].len);
  free(s->v);
  free(s);
}

/* Advance x to its next entry, checking bounds and order. */
static int cpart_next(cpart *x, dbx_err *err) {
  if (x->pos == x->len) { x->have = 0; return 0; }
  if (x->len - x->pos < 12) return dbx_seterr(err, DBX_ECORRUPT, "a by-count partition file ends inside an entry");
  uint64_t c = get_u64(x->map + x->pos);
  uint32_t n = 0;
  for (int b = 3; b >= 0; b--) n = (n << 8) | (unsigned char)x->map[x->pos + 8 + b];
  if (x->len - x->pos - 12 < n || !c) return dbx_seterr(err, DBX_ECORRUPT, "a malformed by-count partition file");
  const char *k = x->map + x->pos + 12;
  if (x->have) {
    /* Strictly after the previous entry: a smaller count, or the same count and a greater key. */
    int after = c < x->count;
    if (c == x->count) {
      int m = memcmp(x->key, k, x->klen < n ? x->klen : n);
      after = m < 0 || (!m && x->klen < n);
    }
    if (!after) return dbx_seterr(err, DBX_ECORRUPT, "a by-count partition file out of order");
  }
  x->key = k, x->klen = n, x->count = c, x->have = 1;
  x->pos += 12 + n;
  return 0;
}

int count_stream_open(const kv_part_cfg *pc, count_stream **out, dbx_err *err) {
  count_stream *s = calloc(1, sizeof *s);
  if (!s || !(s->v = calloc(pc->r ? pc->r : 1, sizeof *s->v))) {
    free(s);
    return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  }
  s->n = pc->r;
  int rc = 0;
  for (uint32_t r = 0; r < pc->r && !rc; r++) {
    char path[SHUFFLE_DIR_MAX + 64];
    cnt_path(path, sizeof path, pc, r);
    cpart *x = &s->v[r];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || sb.st_size < 4) {
      rc = dbx_seterr(err, DBX_EIO, "by-count partition %s: %s", path, fd < 0 ? strerror(errno) : "too short");
      if (fd >= 0) close(fd);
      break;
    }
    x->len = (size_t)sb.st_size;
    x->map = mmap(NULL, x->len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (x->map == MAP_FAILED) {
      x->map = NULL;
      x->len = 0;
      rc = dbx_seterr(err, DBX_EIO, "by-count partition %s: %s", path, strerror(errno));
      break;
    }
    if (memcmp(x->map, "DBWC", 4)) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "by-count partition %s: bad header", path);
      break;
    }
    x->pos = 4;
    rc = cpart_next(x, err);
  }
  if (rc) {
    count_stream_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

int count_stream_next(count_stream *s, const char **key, size_t *klen, uint64_t *count, dbx_err *err) {
  cpart *best = NULL;
  for (uint32_t i = 0; i < s->n; i++) {
    cpart *x = &s->v[i];
    if (!x->have) continue;
    if (!best || x->count > best->count ||
        (x->count == best->count && cmp_cref(&(cref){x->key, (uint32_t)x->klen, 0}, &(cref){best->key, (uint32_t)best->klen, 0}) < 0))
      best = x;
  }
  if (!best) return 0;
  *key = best->key, *klen = best->klen, *count = best->count;
  int rc = cpart_next(best, err);
  return rc ? rc : 1;
}

uint64_t shuffle_bytes(const kv_part_cfg *pc, uint32_t nmap) {
  uint64_t total = 0;
  char path[SHUFFLE_DIR_MAX + 64];
  struct stat sb;
  for (uint32_t r = 0; r < pc->r; r++) {
    for (uint32_t i = 0; i < nmap; i++) {
      map_path(path, sizeof path, pc, i, r);
      if (stat(path, &sb) == 0) total += (uint64_t)sb.st_size;
    }
    red_path(path, sizeof path, pc, r);
    if (stat(path, &sb) == 0) total += (uint64_t)sb.st_size;
  }
  return total;
}
