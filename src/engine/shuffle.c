/* shuffle.c -- the partitioned reduce of keyed stages: partition files, the reduce stage's
 * operator, and the coordinator's ordered stream over reduced partitions. See shuffle.h. */
#define _GNU_SOURCE 1
#include "engine/shuffle.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ops/ops.h"
#include "sink/sink.h"


int shuffle_check(const kv_part_cfg *pc, dbx_err *err) {
  if (pc->r > SHUFFLE_R_MAX || !memchr(pc->dir, 0, sizeof pc->dir) || (pc->r && pc->dir[0] != '/'))
    return dbx_seterr(err, DBX_EPROTO, "malformed partition configuration");
  return 0;
}

/* The directory a configuration's files are in: its own, or in this thread the one
 * shuffle_use_dir gave (a worker that cannot reach the coordinator's spill directory runs a
 * relayed task in a private one). */
static __thread const char *local_dir;
void shuffle_use_dir(const char *dir) { local_dir = dir; }
static const char *pdir(const kv_part_cfg *pc) { return local_dir ? local_dir : pc->dir; }

static void map_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t index, uint32_t r) {
  snprintf(out, cap, "%s/s%u-m%u-p%u.kv", pdir(pc), pc->stage, index, r);
}

static void red_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t r) {
  snprintf(out, cap, "%s/s%u-r%u.kv", pdir(pc), pc->stage, r);
}


static void cnt_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t r) {
  snprintf(out, cap, "%s/s%u-c%u.kv", pdir(pc), pc->stage, r);
}

static void put_u64(char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (char)(v >> (8 * i)); }
static uint64_t get_u64(const char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | (unsigned char)p[i];
  return v;
}

/* madvise(DONTNEED) the whole pages of map[from, to) of a read-only file mapping; the new
 * release point. */
static size_t release_prefix(char *map, size_t from, size_t to) {
  return (size_t)(kv_drop_pages(map + from, map + to) - map);
}

/* By-count file: "DBWC", then entries [u64 count][u32 klen][key], count descending, then key. */
typedef struct cref { const char *k; uint32_t n; uint64_t c; } cref;

/* A private temporary file in the spill directory: *fd and its name in tmp. The name is
 * made unique by mkostemp (O_EXCL), not by the process and thread ids: workers on other
 * machines or in other containers share the directory, and there the same ids are common
 * (each container's worker is pid 1). */
static int open_tmp(const kv_part_cfg *pc, char *tmp, size_t cap, int *fd, dbx_err *err) {
  snprintf(tmp, cap, "%s/.tmp-XXXXXX", pdir(pc));
  *fd = mkostemp(tmp, O_CLOEXEC);
  if (*fd < 0) {
    int e = errno;
    return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: cannot create a partition file: %s",
                      pdir(pc), strerror(e));
  }
  return 0;
}

/* Write all of data[0..n) to fd, a file of kind what ("a partition file"). */
static int put_file(const kv_part_cfg *pc, int fd, const char *data, size_t n, const char *what, dbx_err *err) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = write(fd, data + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      int e = k < 0 ? errno : ENOSPC;
      return dbx_seterr(err, e == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: writing %s: %s", pdir(pc), what,
                        strerror(e));
    }
    done += (size_t)k;
  }
  return 0;
}

static int put_all(const kv_part_cfg *pc, int fd, const char *data, size_t n, dbx_err *err) {
  return put_file(pc, fd, data, n, "a partition file", err);
}

/* Close fd (made by open_tmp as tmp) and rename it to path, unless rc (the writing's status)
 * is an error; on any error tmp is removed. */
static int commit_tmp(const kv_part_cfg *pc, int fd, const char *tmp, const char *path, int rc, dbx_err *err) {
  if (close(fd) != 0 && !rc)
    rc = dbx_seterr(err, errno == ENOSPC ? DBX_ENOSPC : DBX_EIO, "spill directory %s: %s", pdir(pc), strerror(errno));
  if (!rc && rename(tmp, path) != 0) rc = dbx_seterr(err, DBX_EIO, "spill directory %s: %s", pdir(pc), strerror(errno));
  if (rc) unlink(tmp);
  return rc;
}

/* Write data to path atomically (a private temporary name, then rename). */
static int write_file(const kv_part_cfg *pc, const char *path, const char *data, size_t n, dbx_err *err) {
  char tmp[SHUFFLE_DIR_MAX + 128];
  int fd;
  int rc = open_tmp(pc, tmp, sizeof tmp, &fd, err);
  return rc ? rc : commit_tmp(pc, fd, tmp, path, put_all(pc, fd, data, n, err), err);
}

/* v[0..n), in key order, into count order (descending, keys ascending among equal counts):
 * a stable radix sort on the count alone keeps the key order of equal counts, in a pass per
 * byte in which the counts differ (one or two for the counts of text). */
static int sort_by_count(cref *v, uint64_t n) {
  if (n < 2) return 0;
  uint64_t all_or = 0, all_and = ~(uint64_t)0;
  for (uint64_t i = 0; i < n; i++) all_or |= ~v[i].c, all_and &= ~v[i].c;
  cref *tmp = malloc(n * sizeof *tmp);
  if (!tmp) return DBX_ENOMEM;
  cref *src = v, *dst = tmp;
  for (int byte = 0; byte < 8; byte++) {
    int sh = 8 * byte;
    if (((all_or ^ all_and) >> sh & 0xff) == 0) continue;  /* the same in every count */
    uint64_t cnt[256] = {0};
    for (uint64_t i = 0; i < n; i++) cnt[(~src[i].c >> sh) & 0xff]++;
    uint64_t sum = 0;
    for (int b = 0; b < 256; b++) { uint64_t c = cnt[b]; cnt[b] = sum; sum += c; }
    for (uint64_t i = 0; i < n; i++) dst[cnt[(~src[i].c >> sh) & 0xff]++] = src[i];
    cref *t = src; src = dst; dst = t;
  }
  if (src != v) memcpy(v, src, n * sizeof *v);
  free(tmp);
  return 0;
}

/* Append a by-count entry: [u64 count][u32 klen][key]. */
static int append_entry(dbx_buf *out, uint64_t count, const char *k, size_t n) {
  char h[12];
  put_u64(h, count);
  for (int b = 0; b < 4; b++) h[8 + b] = (char)((uint32_t)n >> (8 * b));
  return dbx_buf_append(out, h, sizeof h) || (n && dbx_buf_append(out, k, n));
}

/* Write count-sorted entries v[0..k) as a by-count file into a temporary file and commit it
 * to path (its "DBWC" header first). */
static int put_by_count(const kv_part_cfg *pc, const cref *v, uint64_t k, const char *path, dbx_err *err) {
  char tmp[SHUFFLE_DIR_MAX + 128];
  int fd = -1;
  dbx_buf out = {0};
  int rc = open_tmp(pc, tmp, sizeof tmp, &fd, err);
  if (!rc && dbx_buf_append(&out, "DBWC", 4)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (uint64_t i = 0; i < k && !rc; i++) {
    if (append_entry(&out, v[i].c, v[i].k, v[i].n)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    if (!rc && out.len >= (1u << 20)) {
      rc = put_all(pc, fd, out.data, out.len, err);
      out.len = 0;
    }
  }
  if (!rc && out.len) rc = put_all(pc, fd, out.data, out.len, err);
  dbx_buf_free(&out);
  return fd >= 0 ? commit_tmp(pc, fd, tmp, path, rc, err) : rc;
}

/* The by-count file of partition r from its reduced result (in key order). In memory it takes
 * 48 bytes per entry (an index and the sort's copy): past the task's memory, the entries are
 * sorted in runs of what fits, written as by-count files of their own, and merged. */
static int write_by_count(const kv_part_cfg *pc, uint32_t r, kvpart *res, dbx_err *err) {
  kv_cursor c;
  int rc = kv_cursor_init(&c, res, err);
  if (rc) return rc;
  uint64_t n = kv_count(res), chunk = n;
  if (pc->memory && pc->memory / (2 * sizeof(cref)) < n) chunk = pc->memory / (2 * sizeof(cref));
  if (chunk < 65536) chunk = n < 65536 ? n : 65536;
  cref *v = malloc((chunk ? chunk : 1) * sizeof *v);
  if (!v) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  char path[SHUFFLE_DIR_MAX + 64];
  cnt_path(path, sizeof path, pc, r);
  /* Runs: by-count files under a stage number of their own (random: two attempts of this
   * task may run at once), consecutive ranges of keys each, so stable in key order. */
  kv_part_cfg runs = *pc;
  runs.r = 0;
  if (chunk < n && getrandom(&runs.stage, sizeof runs.stage, 0) != (ssize_t)sizeof runs.stage)
    rc = dbx_seterr(err, DBX_EIO, "getrandom: %s", strerror(errno));
  kv_entry e;
  for (uint64_t done = 0; !rc && (done < n || done == 0);) {
    uint64_t k = 0;
    while (k < chunk && kv_cursor_next(&c, &e)) v[k++] = (cref){e.key, (uint32_t)e.klen, get_u64(e.state)};
    if (sort_by_count(v, k)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    if (rc) break;
    if (chunk >= n) {
      rc = put_by_count(pc, v, k, path, err);
      break;
    }
    char rp[SHUFFLE_DIR_MAX + 64];
    cnt_path(rp, sizeof rp, &runs, runs.r);
    if (!(rc = put_by_count(pc, v, k, rp, err))) runs.r++;
    done += k;
    if (!k) break;
  }
  free(v);
  if (!rc && runs.r) {
    /* The runs merged in count order, into the partition's by-count file. */
    count_stream *cs = NULL;
    char tmp[SHUFFLE_DIR_MAX + 128];
    int fd = -1;
    dbx_buf out = {0};
    rc = count_stream_open(&runs, &cs, err);
    if (!rc) rc = open_tmp(pc, tmp, sizeof tmp, &fd, err);
    if (!rc && dbx_buf_append(&out, "DBWC", 4)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    while (!rc) {
      const char *k;
      size_t kn;
      uint64_t cnt;
      int got = count_stream_next(cs, &k, &kn, &cnt, err);
      if (got <= 0) {
        rc = got;
        break;
      }
      if (append_entry(&out, cnt, k, kn)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
      if (!rc && out.len >= (1u << 20)) {
        rc = put_all(pc, fd, out.data, out.len, err);
        out.len = 0;
      }
    }
    if (!rc && out.len) rc = put_all(pc, fd, out.data, out.len, err);
    count_stream_close(cs);
    dbx_buf_free(&out);
    if (fd >= 0) rc = commit_tmp(pc, fd, tmp, path, rc, err);
  }
  for (uint32_t i = 0; i < runs.r; i++) {
    char rp[SHUFFLE_DIR_MAX + 64];
    cnt_path(rp, sizeof rp, &runs, i);
    unlink(rp);
  }
  return rc;
}

void shuffle_budget(const kv_part_cfg *pc, kvpart *p) {
  if (pc->r && pc->memory) kv_set_budget(p, (size_t)pc->memory, pdir(pc));
}

static void spilled_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t index) {
  snprintf(out, cap, "%s/s%u-m%u.spilled", pdir(pc), pc->stage, index);
}

/* Map a file read-only (len 0: no mapping). */
static int map_file(const char *path, const char *what, char **map, size_t *len, dbx_err *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  *map = NULL;
  *len = 0;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    return dbx_seterr(err, e == ENOENT ? DBX_ENOENT : DBX_EIO, "%s %s: %s", what, path, strerror(e));
  }
  if (sb.st_size > 0) {
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      close(fd);
      return dbx_seterr(err, DBX_EIO, "%s %s: %s", what, path, strerror(e));
    }
    *map = m;
    *len = (size_t)sb.st_size;
  }
  close(fd);
  return 0;
}

/* Validate a mapped run as a keyed partial of spec (then give its pages back: the merge
 * reads them again in order). */
static int view_file(const kv_spec *spec, const char *path, const char *what, int level, char **map, size_t *len,
                     kvpart **p, dbx_err *err) {
  int rc = map_file(path, what, map, len, err);
  if (rc) return rc;
  dbx_err e = {0, ""};
  rc = *map ? kv_decode_file_view(spec, *map, *len, level, p, &e) : kv_decode_view(spec, "", 0, p, &e);
  if (rc) return dbx_seterr(err, rc == DBX_ENOMEM ? rc : DBX_ECORRUPT, "%s %s: %s", what, path, e.msg);
  if (*len) madvise(*map, *len, MADV_DONTNEED);
  return 0;
}

/* Merge the runs in files paths[0..n) (batch i = i of nbatch) into path, atomically. levels:
 * they are one task's levels (kv_merge_to_fd). */
static int merge_files(const kv_part_cfg *pc, const kv_spec *spec, const char *what, char (*paths)[SHUFFLE_DIR_MAX + 96],
                       uint32_t n, int levels, const char *path, dbx_err *err) {
  char **maps = calloc(n ? n : 1, sizeof *maps);
  size_t *lens = calloc(n ? n : 1, sizeof *lens);
  kvpart **parts = calloc(n ? n : 1, sizeof *parts);
  uint32_t *idx = calloc(n ? n : 1, sizeof *idx);
  int rc = maps && lens && parts && idx ? 0 : dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (uint32_t i = 0; i < n && !rc; i++) {
    idx[i] = i;
    rc = view_file(spec, paths[i], what, levels, &maps[i], &lens[i], &parts[i], err);
  }
  char tmp[SHUFFLE_DIR_MAX + 128];
  int fd = -1;
  if (!rc) rc = open_tmp(pc, tmp, sizeof tmp, &fd, err);
  if (!rc) {
    rc = commit_tmp(pc, fd, tmp, path, kv_merge_to_fd(spec, parts, idx, n, n, 1, levels, fd, pdir(pc), err), err);
  }
  for (uint32_t i = 0; i < n && parts; i++) {
    kv_free(parts[i]);
    if (maps[i]) munmap(maps[i], lens[i]);
  }
  free(maps);
  free(lens);
  free(parts);
  free(idx);
  return rc;
}

/* Unless rc, write the R partition encodings parts[0..R) to their files: the final names
 * (level < 0) or a level's. parts is freed. */
static int write_parts(const kv_part_cfg *pc, dbx_buf *parts, uint32_t index, const char *lvl, int level, int rc,
                       dbx_err *err) {
  for (uint32_t r = 0; r < pc->r && !rc; r++) {
    char path[SHUFFLE_DIR_MAX + 96];
    if (level < 0) map_path(path, sizeof path, pc, index, r);
    else snprintf(path, sizeof path, "%s-p%u.%d", lvl, r, level);
    rc = write_file(pc, path, parts[r].data, parts[r].len, err);
  }
  for (uint32_t r = 0; r < pc->r; r++) dbx_buf_free(&parts[r]);
  free(parts);
  return rc;
}

/* Split p into its R partition files: the final names (level < 0) or a level's. */
static int write_split(const kv_part_cfg *pc, kvpart *p, uint32_t index, const char *lvl, int level, dbx_err *err) {
  dbx_buf *parts = calloc(pc->r, sizeof *parts);
  if (!parts) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  return write_parts(pc, parts, index, lvl, level, kv_split(p, pc->r, parts, err), err);
}

int shuffle_write_map_counts(const kv_part_cfg *pc, const kv_spec *spec, const strmap *m, uint32_t index, dbx_err *err) {
  int rc = shuffle_check(pc, err);
  if (rc || !pc->r) return rc;
  dbx_buf *parts = calloc(pc->r, sizeof *parts);
  if (!parts) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  return write_parts(pc, parts, index, NULL, -1, kv_split_counts(spec, m, pc->r, parts, err), err);
}

/* Unless rc, merge each partition's runs of levels 0..levels-1 (named after lvl) into the
 * task's partition file, then note the bytes spilled; the level files are removed either way. */
/* A task's levels are merged LEVEL_FANIN at a time: a key with millions of values makes
 * thousands of levels (one a pair_flush), each costing its merge some 11 KB (its partial, the
 * page under each of its cursors). */
#define LEVEL_FANIN 64

/* Merge the level files paths[0..n) of partition r into out, in passes of at most LEVEL_FANIN
 * files; the intermediate files are named after lvl and removed, paths[] is overwritten. */
static int merge_level_files(const kv_part_cfg *pc, const kv_spec *spec, const char *lvl, uint32_t r,
                             char (*paths)[SHUFFLE_DIR_MAX + 96], uint32_t n, const char *out, dbx_err *err) {
  int rc = 0;
  for (uint32_t pass = 0; !rc && n > LEVEL_FANIN; pass++) {
    uint32_t m = 0;
    for (uint32_t g = 0; g < n; g += LEVEL_FANIN, m++) {
      uint32_t k = n - g < LEVEL_FANIN ? n - g : LEVEL_FANIN;
      char merged[SHUFFLE_DIR_MAX + 96];
      snprintf(merged, sizeof merged, "%s-p%u.m%u-%u", lvl, r, pass, m);
      if (!rc) rc = merge_files(pc, spec, "spilled run", paths + g, k, 1, merged, err);
      for (uint32_t j = g; j < g + k; j++) unlink(paths[j]);
      snprintf(paths[m], sizeof paths[m], "%s", merged);  /* m <= g: its group is merged */
    }
    n = m;
  }
  if (!rc) rc = merge_files(pc, spec, "spilled run", paths, n, 1, out, err);
  for (uint32_t j = 0; j < n; j++) unlink(paths[j]);
  return rc;
}

static int merge_levels(const kv_part_cfg *pc, const kv_spec *spec, uint32_t index, const char *lvl, int levels,
                        uint64_t total, int rc, dbx_err *err) {
  char (*paths)[SHUFFLE_DIR_MAX + 96] = calloc((size_t)levels ? (size_t)levels : 1, sizeof *paths);
  if (!paths && !rc) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (uint32_t r = 0; r < pc->r && paths; r++) {
    for (int l = 0; l < levels; l++) snprintf(paths[l], sizeof paths[l], "%s-p%u.%d", lvl, r, l);
    if (!rc) {
      char path[SHUFFLE_DIR_MAX + 64];
      map_path(path, sizeof path, pc, index, r);
      rc = merge_level_files(pc, spec, lvl, r, paths, (uint32_t)levels, path, err);
    } else {
      for (int l = 0; l < levels; l++) unlink(paths[l]);
    }
  }
  free(paths);
  if (!rc) {
    char path[SHUFFLE_DIR_MAX + 64], b[8];
    put_u64(b, total);
    spilled_path(path, sizeof path, pc, index);
    rc = write_file(pc, path, b, sizeof b, err);
  }
  return rc;
}

/* The prefix of a task's level files: 128 random bits, never the same as another task's
 * anywhere (the process and thread ids repeat across the machines and containers that share
 * the spill directory, and two tasks under one name merged each other's runs). */
static void level_name(const kv_part_cfg *pc, char *lvl, size_t cap) {
  static __thread unsigned seq;
  uint64_t r[2] = {0, 0};
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r[0] ^= (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    r[1] ^= (uint64_t)getpid() << 32 ^ (uint64_t)gettid() ^ (uint64_t)(uintptr_t)&seq;
  }
  snprintf(lvl, cap, "%s/.tmp-lvl-%016llx%016llx-%u", pdir(pc), (unsigned long long)r[0], (unsigned long long)r[1], seq++);
}

void shuffle_levels_init(const kv_part_cfg *pc, shuffle_levels *L) {
  level_name(pc, L->lvl, sizeof L->lvl);
  L->n = 0;
  L->bytes = 0;
}

int shuffle_level_counts(const kv_part_cfg *pc, const kv_spec *spec, const strmap *m, shuffle_levels *L, dbx_err *err) {
  dbx_buf *parts = calloc(pc->r, sizeof *parts);
  if (!parts) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = kv_split_counts(spec, m, pc->r, parts, err);
  for (uint32_t r = 0; r < pc->r && !rc; r++) L->bytes += parts[r].len;
  rc = write_parts(pc, parts, 0, L->lvl, L->n, rc, err);
  L->n++;  /* even when it failed: some of its files may exist */
  if (!rc && kv_spill_fault) kv_spill_fault();
  return rc;
}

int shuffle_levels_finish(const kv_part_cfg *pc, const kv_spec *spec, uint32_t index, shuffle_levels *L, int rc,
                          dbx_err *err) {
  rc = merge_levels(pc, spec, index, L->lvl, L->n, L->bytes, rc, err);
  L->n = 0;
  return rc;
}

/* Write the runs of value pairs a level's table wrote out (kv_take_pairs: fd of bytes, closed
 * here) as further levels, *levels counting them. */
static int write_pair_levels(const kv_part_cfg *pc, const kv_spec *spec, int fd, uint64_t bytes, uint32_t index,
                             const char *lvl, int *levels, dbx_err *err) {
  if (fd < 0) return 0;
  int rc = 0;
  char *m = NULL;
  if (bytes) {
    m = mmap(NULL, (size_t)bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) m = NULL, rc = dbx_seterr(err, DBX_EIO, "spill directory %s: %s", pdir(pc), strerror(errno));
  }
  close(fd);
  size_t dropped = 0;
  for (uint64_t o = 0; !rc && o < bytes;) {
    uint64_t n = bytes - o < 8 ? UINT64_MAX : get_u64(m + o);
    if (n > bytes - o - 8) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "spill directory %s: a run of value pairs is damaged", pdir(pc));
      break;
    }
    kvpart *part = NULL;
    dbx_err e = {0, ""};
    if ((rc = kv_decode_file_view(spec, m + o + 8, (size_t)n, 1, &part, &e))) {
      rc = dbx_seterr(err, rc == DBX_ENOMEM ? rc : DBX_ECORRUPT, "spill directory %s: a run of value pairs: %s", pdir(pc),
                      e.msg);
      break;
    }
    rc = write_split(pc, part, index, lvl, *levels, err);
    (*levels)++;  /* even when it failed: some of its files may exist */
    kv_free(part);
    o += 8 + n;
    dropped = release_prefix(m, dropped, (size_t)o);  /* a run at a time in memory */
  }
  if (m) munmap(m, (size_t)bytes);
  return rc;
}

int shuffle_write_map(const kv_part_cfg *pc, kvpart *p, uint32_t index, dbx_err *err) {
  int rc = shuffle_check(pc, err);
  if (rc || !pc->r) return rc;
  int fd = -1, pfd = -1;
  uint64_t bytes = 0, pbytes = 0, total = 0;
  if ((rc = kv_take_spill(p, &fd, &bytes, err))) return rc;
  kv_take_pairs(p, &pfd, &pbytes);
  if (fd < 0 && pfd < 0) {
    rc = write_split(pc, p, index, NULL, -1, err);
    if (!rc) kv_clear(p);
    return rc;
  }
  /* Levels: the table that froze, then tables of the records it spilled, each under the
   * budget, each spilling what it cannot hold to the next. Their keys are disjoint. The runs
   * of value pairs each table wrote out follow it as levels of their own. */
  char lvl[SHUFFLE_DIR_MAX + 64];
  level_name(pc, lvl, sizeof lvl);
  int levels = 0;
  kvpart *cur = p;
  for (;;) {
    rc = write_split(pc, cur, index, lvl, levels, err);
    if (cur != p) kv_free(cur);
    else kv_clear(p);
    cur = NULL;
    levels++;  /* even when it failed: some of its files may exist */
    total += pbytes;
    int prc = write_pair_levels(pc, kv_spec_of(p), pfd, pbytes, index, lvl, &levels, err);
    pfd = -1;
    if (!rc) rc = prc;
    if (rc) break;
    if (fd < 0) break;
    total += bytes;
    char *m = NULL;
    if (bytes) {
      m = mmap(NULL, (size_t)bytes, PROT_READ, MAP_PRIVATE, fd, 0);
      if (m == MAP_FAILED) m = NULL, rc = dbx_seterr(err, DBX_EIO, "spill directory %s: %s", pdir(pc), strerror(errno));
    }
    close(fd);
    fd = -1;
    if (!rc && !(cur = kv_new_like(p))) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    if (!rc) rc = kv_replay(cur, m, (size_t)bytes, err);
    if (m) munmap(m, (size_t)bytes);
    if (!rc) rc = kv_take_spill(cur, &fd, &bytes, err);
    if (cur) kv_take_pairs(cur, &pfd, &pbytes);
    if (rc) break;
  }
  kv_free(cur);
  if (fd >= 0) close(fd);
  if (pfd >= 0) close(pfd);
  return merge_levels(pc, kv_spec_of(p), index, lvl, levels, total, rc, err);
}

int shuffle_write_empty(const kv_part_cfg *pc, const kv_spec *spec, uint32_t index, dbx_err *err) {
  kvpart *p = kv_new(spec);
  if (!p) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = shuffle_write_map(pc, p, index, err);
  kv_free(p);
  return rc;
}

/* ---- the reduce stage's operator ---- */

static void kvm_free(void *p) { kv_free(p); }
static int kvm_merge(const void *cfg, void *l, const void *r, dbx_err *err) {
  (void)cfg;
  return kv_merge(l, (kvpart *)r, err);
}
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
  (void)st;  /* a reduce task reads no input records */
  char (*paths)[SHUFFLE_DIR_MAX + 96] = calloc(c->nmap ? c->nmap : 1, sizeof *paths);
  if (!paths) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (uint32_t i = 0; i < c->nmap; i++) map_path(paths[i], sizeof paths[i], &c->pc, i, r);
  char path[SHUFFLE_DIR_MAX + 64];
  red_path(path, sizeof path, &c->pc, r);
  rc = merge_files(&c->pc, &c->spec, "map output", paths, c->nmap, 0, path, err);
  free(paths);
  /* A map output that is not there was lost (deleted, or never reached this file system):
   * its map task must run again, which no retry of this task does. */
  if (rc == DBX_ENOENT) {
    char why[DBX_ERR_LEN];
    snprintf(why, sizeof why, "%s", err->msg);
    rc = dbx_seterr(err, DBX_ELOST, "%s", why);
  }
  if (!rc && c->by_count) {
    char *m = NULL;
    size_t n = 0;
    kvpart *res = NULL;
    rc = view_file(&c->spec, path, "reduced partition", 0, &m, &n, &res, err);
    if (!rc) rc = write_by_count(&c->pc, r, res, err);
    kv_free(res);
    if (m) munmap(m, n);
  }
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

/* Sift entry i of a heap of indices down: before(ctx, a, b) says a comes out first. */
static void heap_down(uint32_t *heap, uint32_t n, uint32_t i, int (*before)(const void *ctx, uint32_t a, uint32_t b),
                      const void *ctx) {
  for (;;) {
    uint32_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && before(ctx, heap[l], heap[m])) m = l;
    if (r < n && before(ctx, heap[r], heap[m])) m = r;
    if (m == i) return;
    uint32_t t = heap[i];
    heap[i] = heap[m];
    heap[m] = t;
    i = m;
  }
}

typedef struct part {
  char *map;          /* the mapped file */
  size_t len;
  kvpart *p;
  kv_cursor c;
  kv_entry head;
  int have;
  size_t drop_m, drop_q;  /* pages before these offsets were given back */
} part;

struct kv_stream {
  uint32_t n;
  part *v;
  uint32_t *heap;  /* the parts with an entry, the smallest key first (by part on a tie) */
  uint32_t nheap;
  int heaped;      /* heap built (at the first kv_stream_next) */
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
  free(s->heap);
  free(s);
}

static kv_stream *stream_new(uint32_t n) {
  kv_stream *s = calloc(1, sizeof *s);
  if (!s || !(s->v = calloc(n ? n : 1, sizeof *s->v)) || !(s->heap = calloc(n ? n : 1, sizeof *s->heap))) {
    if (s) free(s->v);
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
    if (!rc) rc = x->map ? kv_decode_file_view(spec, x->map, x->len, 0, &x->p, err) : kv_decode_view(spec, "", 0, &x->p, err);
    if (!rc && x->len) madvise(x->map, x->len, MADV_DONTNEED);  /* read again in order, page by page */
    if (!rc) rc = kv_cursor_init(&x->c, x->p, err);
    if (!rc) x->c.mapped = x->map != NULL;
    if (!rc && x->map) x->drop_m = 0, x->drop_q = (size_t)(x->c.q - x->map);
    if (!rc) x->have = kv_cursor_next(&x->c, &x->head);
    else if (rc == DBX_ECORRUPT) {
      char why[DBX_ERR_LEN];  /* err->msg cannot be formatted into itself */
      snprintf(why, sizeof why, "%s", err->msg);
      rc = dbx_seterr(err, rc, "reduced partition %s: %s", path, why);
    }
  }
  if (rc) {
    kv_stream_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

static int part_before(const kv_stream *s, uint32_t a, uint32_t b) {
  int c = cmp_key(&s->v[a].head, &s->v[b].head);
  return c ? c < 0 : a < b;
}

static int part_before_v(const void *s, uint32_t a, uint32_t b) { return part_before(s, a, b); }
static void part_down(kv_stream *s, uint32_t i) { heap_down(s->heap, s->nheap, i, part_before_v, s); }

/* The next entry in key order: a heap over the partitions (log R comparisons an entry). */
int kv_stream_next(kv_stream *s, kv_entry *e) {
  if (!s->heaped) {
    for (uint32_t i = 0; i < s->n; i++)
      if (s->v[i].have) s->heap[s->nheap++] = i;
    for (uint32_t i = s->nheap / 2; i-- > 0;) part_down(s, i);
    s->heaped = 1;
  }
  if (!s->nheap) return 0;
  part *best = &s->v[s->heap[0]];
  *e = best->head;
  best->have = kv_cursor_next(&best->c, &best->head);
  if (!best->have) s->heap[0] = s->heap[--s->nheap];
  part_down(s, 0);
  if (best->map) {
    /* Pages behind the entry handed out (it stays the caller's until the next call). */
    size_t m = (size_t)(e->key - 4 - best->map), q = (size_t)(e->pairs - best->map);
    if (m > best->drop_m + (16u << 20)) best->drop_m = release_prefix(best->map, best->drop_m, m);
    if (q > best->drop_q + (16u << 20)) best->drop_q = release_prefix(best->map, best->drop_q, q);
  }
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
  }
  for (uint32_t i = 0; i < nmap; i++) {
    spilled_path(path, sizeof path, pc, i);
    unlink(path);
  }
  /* Temporary files of a worker killed while it wrote them (a partition file, a level): the
   * directory is this job's own and no task runs any more. */
  DIR *d = opendir(pdir(pc));
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (!strncmp(e->d_name, ".tmp-", 5) && snprintf(path, sizeof path, "%s/%s", pdir(pc), e->d_name) < (int)sizeof path)
      unlink(path);
  if (d) closedir(d);
}

/* ---- the by-count stream ---- */

typedef struct cpart {
  char *map;
  size_t maplen;      /* bytes mapped (the file) */
  size_t len, pos;    /* the entries read are [pos, len): the file's, or a task's range */
  size_t dropped;     /* pages before this offset were given back */
  int keep;           /* give nothing back: the bytes are a message's, not a mapped file's */
  const char *key;
  size_t klen;
  uint64_t count;
  uint64_t pfx;       /* the key's first 8 bytes, big-endian, zero-padded (key_cmp) */
  int have;
} cpart;

struct count_stream {
  uint32_t n;
  cpart *v;
  uint32_t *heap;  /* the partitions with an entry, the next row's first (cpart_before) */
  uint32_t nheap;
};

/* Does partition a's entry come out before b's: a greater count, then a smaller key, then
 * (never for honest files: a key is in one partition) the lower partition. */
/* A key's first 8 bytes as a big-endian number, zero-padded: compared as numbers, then by
 * length when equal and short, such prefixes order keys as memcmp does (a zero byte pads, and
 * no byte is less). Most rows of a word count share their count, so the merge compares words:
 * as numbers, it does not call memcmp for most of them. */
static inline uint64_t key_prefix(const char *k, size_t n) {
  unsigned char b[8] = {0};
  memcpy(b, k, n < 8 ? n : 8);
  uint64_t v;
  memcpy(&v, b, 8);
  return __builtin_bswap64(v);
}

/* memcmp order of keys x and y (with their key_prefix): < 0, 0 or > 0. */
static inline int key_cmp(uint64_t px, const char *x, size_t nx, uint64_t py, const char *y, size_t ny) {
  if (px != py) return px < py ? -1 : 1;
  if (nx > 8 && ny > 8) {
    int m = memcmp(x + 8, y + 8, (nx < ny ? nx : ny) - 8);
    if (m) return m;
  }
  return nx < ny ? -1 : nx > ny;
}

static int cpart_before(const count_stream *s, uint32_t a, uint32_t b) {
  const cpart *x = &s->v[a], *y = &s->v[b];
  if (x->count != y->count) return x->count > y->count;
  int m = key_cmp(x->pfx, x->key, x->klen, y->pfx, y->key, y->klen);
  return m ? m < 0 : a < b;
}

static int cpart_before_v(const void *s, uint32_t a, uint32_t b) { return cpart_before(s, a, b); }
static void cheap_down(count_stream *s, uint32_t i) { heap_down(s->heap, s->nheap, i, cpart_before_v, s); }

void count_stream_close(count_stream *s) {
  if (!s) return;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->v[i].map && s->v[i].maplen) munmap(s->v[i].map, s->v[i].maplen);
  free(s->v);
  free(s->heap);
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
  uint64_t pfx = key_prefix(k, n);
  /* Strictly after the previous entry: a smaller count, or the same count and a greater key. */
  if (x->have && !(c < x->count || (c == x->count && key_cmp(x->pfx, x->key, x->klen, pfx, k, n) < 0)))
    return dbx_seterr(err, DBX_ECORRUPT, "a by-count partition file out of order");
  x->key = k, x->klen = n, x->count = c, x->pfx = pfx, x->have = 1;
  x->pos += 12 + n;
  /* Give back the pages behind the previous entry (it is still the caller's): the stream's
   * memory stays small whatever the size of the partitions. */
  size_t behind = (size_t)(k - x->map) - 12;
  if (!x->keep && behind > x->dropped + (16u << 20)) x->dropped = release_prefix(x->map, x->dropped, behind);
  return 0;
}

int count_stream_open(const kv_part_cfg *pc, count_stream **out, dbx_err *err) {
  return count_stream_open_range(pc, NULL, NULL, out, err);
}

int count_stream_open_range(const kv_part_cfg *pc, const uint64_t *from, const uint64_t *to, count_stream **out,
                            dbx_err *err) {
  count_stream *s = calloc(1, sizeof *s);
  if (!s || !(s->v = calloc(pc->r ? pc->r : 1, sizeof *s->v)) || !(s->heap = calloc(pc->r ? pc->r : 1, sizeof *s->heap))) {
    if (s) free(s->v);
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
    x->maplen = x->len = (size_t)sb.st_size;
    x->map = mmap(NULL, x->len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (x->map == MAP_FAILED) {
      x->map = NULL;
      x->maplen = x->len = 0;
      rc = dbx_seterr(err, DBX_EIO, "by-count partition %s: %s", path, strerror(errno));
      break;
    }
    if (memcmp(x->map, "DBWC", 4)) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "by-count partition %s: bad header", path);
      break;
    }
    x->pos = 4;
    if (from) {
      /* A task's range (count_split): where entries begin, or the end. */
      if (from[r] < 4 || from[r] > to[r] || to[r] > x->len) {
        rc = dbx_seterr(err, DBX_ECORRUPT, "by-count partition %s: a range [%llu, %llu) outside its %zu bytes", path,
                        (unsigned long long)from[r], (unsigned long long)to[r], x->len);
        break;
      }
      x->pos = (size_t)from[r];
      x->len = (size_t)to[r];
      x->dropped = x->pos & ~(size_t)4095;
    }
    rc = cpart_next(x, err);
    if (!rc && x->have) s->heap[s->nheap++] = r;
  }
  if (rc) {
    count_stream_close(s);
    return rc;
  }
  for (uint32_t i = s->nheap / 2; i-- > 0;) cheap_down(s, i);
  *out = s;
  return 0;
}

/* The next row of the merge: a heap over the partitions (log R comparisons a row). */
int count_stream_next(count_stream *s, const char **key, size_t *klen, uint64_t *count, dbx_err *err) {
  if (!s->nheap) return 0;
  cpart *best = &s->v[s->heap[0]];
  *key = best->key, *klen = best->klen, *count = best->count;
  int rc = cpart_next(best, err);
  if (rc) return rc;
  if (!best->have) s->heap[0] = s->heap[--s->nheap];
  cheap_down(s, 0);
  return 1;
}

/* ---- the by-count rows formatted on the workers ---- */

/* Does entry x come out before boundary b (an entry, or the end when !b->have)? */
static int cpart_entry_before(const cpart *x, const cpart *b) {
  if (!b->have) return 1;
  if (x->count != b->count) return x->count > b->count;
  return key_cmp(x->pfx, x->key, x->klen, b->pfx, b->key, b->klen) < 0;
}

static size_t cpart_at(const cpart *x) { return x->have ? (size_t)(x->key - x->map) - 12 : x->len; }

int count_split(const kv_part_cfg *pc, uint32_t ntasks, uint64_t *off, uint64_t *rows, dbx_err *err) {
  uint32_t R = pc->r, nb = ntasks - 1;
  count_stream *b = NULL, *s = NULL;
  cpart *bd = calloc(nb ? nb : 1, sizeof *bd);
  if (!bd) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  int rc = count_stream_open(pc, &b, err);
  if (!rc) rc = count_stream_open(pc, &s, err);
  /* The boundaries: the entries of partition 0 at even steps of its bytes. Partitions are cut
   * by a hash of the key, so each holds a like share of every part of the global order. (Their
   * keys stay readable: a page given back is read again from the file.) */
  cpart *x = rc ? NULL : &b->v[0];
  for (uint32_t t = 0; t < nb && !rc; t++) {
    size_t want = 4 + (x->len - 4) / ntasks * (t + 1);
    while (!rc && x->have && cpart_at(x) < want) rc = cpart_next(x, err);
    bd[t] = *x;
  }
  /* Every partition cut at them in one walk: task t + 1 starts at the first entry that does not
   * come before boundary t. */
  uint64_t total = 0;
  for (uint32_t r = 0; r < R && !rc; r++) {
    cpart *y = &s->v[r];
    off[r] = 4;
    uint32_t t = 0;
    for (;;) {
      while (t < nb && !(y->have && cpart_entry_before(y, &bd[t]))) off[(size_t)(++t) * R + r] = cpart_at(y);
      if (!y->have) break;
      total++;
      if ((rc = cpart_next(y, err))) break;
    }
    off[(size_t)ntasks * R + r] = y->len;
  }
  count_stream_close(b);
  count_stream_close(s);
  free(bd);
  if (!rc) *rows = total;
  return rc;
}

void count_out_path(char *out, size_t cap, const kv_part_cfg *pc, uint32_t t) {
  snprintf(out, cap, "%s/s%u-o%u.rows", pdir(pc), pc->stage, t);
}

/* The broadcast of the output stage: "DBCS", u32 tasks, u32 partitions, then count_split's
 * (tasks + 1) x partitions offsets, all little-endian. */
int count_split_encode(const kv_part_cfg *pc, uint32_t ntasks, const uint64_t *off, dbx_buf *out) {
  char h[12];
  memcpy(h, "DBCS", 4);
  for (int i = 0; i < 4; i++) h[4 + i] = (char)(ntasks >> (8 * i)), h[8 + i] = (char)(pc->r >> (8 * i));
  int rc = dbx_buf_append(out, h, sizeof h);
  for (size_t i = 0; !rc && i < (size_t)(ntasks + 1) * pc->r; i++) {
    char v[8];
    put_u64(v, off[i]);
    rc = dbx_buf_append(out, v, 8);
  }
  return rc;
}

static int co_check(const count_out_cfg *c, dbx_err *err) {
  int rc = shuffle_check(&c->pc, err);
  if (!rc && (!c->pc.r || !c->ntasks || c->ntasks > COUNT_OUT_MAX || c->fmt < 0 || c->fmt > 2))
    rc = dbx_seterr(err, DBX_EPROTO, "malformed output configuration");
  return rc;
}

static void *co_new(const void *cfg) {
  (void)cfg;
  return calloc(1, 1);  /* the rows go to a file; the partial is nothing */
}
static void co_free(void *p) { free(p); }
static int co_merge(const void *cfg, void *l, const void *r, dbx_err *err) {
  (void)cfg; (void)l; (void)r; (void)err;
  return 0;
}
static int co_encode(const void *cfg, const void *p, dbx_buf *out, dbx_err *err) {
  (void)cfg; (void)p; (void)out; (void)err;
  return 0;
}
static int co_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  (void)cfg; (void)p;
  if (n) return dbx_seterr(err, DBX_ECORRUPT, "an output task's partial holds %zu bytes, not none", n);
  return (*out = calloc(1, 1)) ? 0 : DBX_ENOMEM;
}
static int co_finish(const void *cfg, const void *bc, void *p, dbx_emit_fn emit, void *ctx, dbx_buf *bcast, dbx_err *err) {
  (void)cfg; (void)bc; (void)p; (void)emit; (void)ctx; (void)bcast; (void)err;
  return 0;  /* the coordinator copies the tasks' files into the output */
}

static int co_bcast_load(const void *cfgp, const char *p, size_t n, void **out, dbx_err *err) {
  const count_out_cfg *c = cfgp;
  int rc = co_check(c, err);
  if (rc) return rc;
  size_t k = (size_t)(c->ntasks + 1) * c->pc.r;
  uint32_t t = 0, r = 0;
  for (int i = 3; n >= 12 && i >= 0; i--) t = t << 8 | (unsigned char)p[4 + i], r = r << 8 | (unsigned char)p[8 + i];
  if (n < 12 || memcmp(p, "DBCS", 4) || t != c->ntasks || r != c->pc.r || (n - 12) / 8 != k || (n - 12) % 8)
    return dbx_seterr(err, DBX_ECORRUPT, "malformed output ranges");
  uint64_t *off = malloc(k * sizeof *off);
  if (!off) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  for (size_t i = 0; i < k; i++) off[i] = get_u64(p + 12 + 8 * i);
  *out = off;
  return 0;
}

/* Output task t: the rows of its range of every partition, merged and formatted as the sink
 * would, into DIR/s<stage>-o<t>.rows (atomically: a retry writes the same bytes). */
static int co_map(const void *cfgp, const void *bcast, const dbx_batch *b, void *partial, dbx_stats *st, dbx_err *err) {
  (void)partial; (void)st;
  const count_out_cfg *c = cfgp;
  const uint64_t *off = bcast;
  int rc = co_check(c, err);
  if (rc) return rc;
  uint32_t t = b->index, R = c->pc.r;
  if (!off || t >= c->ntasks) return dbx_seterr(err, DBX_EPROTO, "output task %u of %u", t, c->ntasks);
  count_stream *cs = NULL;
  char tmp[SHUFFLE_DIR_MAX + 128], path[SHUFFLE_DIR_MAX + 64];
  int fd = -1;
  dbx_buf out = {0};
  uint64_t nrows = 0, nbytes = 0;
  rc = count_stream_open_range(&c->pc, off + (size_t)t * R, off + (size_t)(t + 1) * R, &cs, err);
  if (!rc) rc = open_tmp(&c->pc, tmp, sizeof tmp, &fd, err);
  while (!rc) {
    dbx_value row[2];
    memset(row, 0, sizeof row);
    uint64_t n;
    int r = count_stream_next(cs, &row[0].s, &row[0].n, &n, err);
    if (r <= 0) {
      rc = r;
      break;
    }
    row[1].i = (int64_t)n;
    if (sink_format_row(c->fmt, op_wordcount.schema, row, &out)) rc = dbx_seterr(err, DBX_ENOMEM, "out of memory");
    nrows++;
    if (!rc && out.len >= (1u << 20)) {
      rc = put_file(&c->pc, fd, out.data, out.len, "an output task's rows", err);
      nbytes += out.len;
      out.len = 0;
    }
  }
  if (!rc && out.len) rc = put_file(&c->pc, fd, out.data, out.len, "an output task's rows", err);
  nbytes += out.len;
  if (!rc) {
    /* The trailer: a file cut short (or damaged) is told from a whole one. */
    char tr[COUNT_OUT_TRAILER];
    memcpy(tr, "DBXROWS1", 8);
    put_u64(tr + 8, nrows);
    put_u64(tr + 16, nbytes);
    rc = put_file(&c->pc, fd, tr, sizeof tr, "an output task's rows", err);
  }
  count_stream_close(cs);
  dbx_buf_free(&out);
  if (fd >= 0) {
    count_out_path(path, sizeof path, &c->pc, t);
    rc = commit_tmp(&c->pc, fd, tmp, path, rc, err);
  }
  return rc;
}

int count_out_check(int fd, uint64_t *rows, uint64_t *bytes) {
  struct stat sb;
  char tr[COUNT_OUT_TRAILER];
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < COUNT_OUT_TRAILER) return -1;
  off_t at = sb.st_size - COUNT_OUT_TRAILER;
  if (pread(fd, tr, sizeof tr, at) != (ssize_t)sizeof tr || memcmp(tr, "DBXROWS1", 8)) return -1;
  *rows = get_u64(tr + 8);
  *bytes = get_u64(tr + 16);
  return *bytes == (uint64_t)at ? 0 : -1;
}

const dbx_op op_count_output = {
    "count-output", co_new, co_free, co_map, co_merge, co_encode, co_decode, co_finish,
    co_bcast_load, free, NULL, sizeof(count_out_cfg), NULL,
};

int shuffle_check_reduced(const kv_part_cfg *pc, int by_count, dbx_err *err) {
  char path[SHUFFLE_DIR_MAX + 64];
  struct stat sb;
  for (uint32_t r = 0; r < pc->r; r++) {
    red_path(path, sizeof path, pc, r);
    if (stat(path, &sb) != 0) return dbx_seterr(err, DBX_ELOST, "reduced partition %s: %s", path, strerror(errno));
    if (!by_count) continue;
    cnt_path(path, sizeof path, pc, r);
    if (stat(path, &sb) != 0) return dbx_seterr(err, DBX_ELOST, "by-count partition %s: %s", path, strerror(errno));
  }
  return 0;
}

uint32_t shuffle_lost(const kv_part_cfg *pc, uint32_t nmap, int by_count, uint8_t *maps, uint8_t *reds) {
  char path[SHUFFLE_DIR_MAX + 64];
  struct stat sb;
  uint32_t lost = 0;
  for (uint32_t i = 0; i < nmap; i++) {
    maps[i] = 0;
    for (uint32_t r = 0; r < pc->r && !maps[i]; r++) {
      map_path(path, sizeof path, pc, i, r);
      maps[i] = stat(path, &sb) != 0;
    }
    lost += maps[i];
  }
  for (uint32_t r = 0; r < pc->r; r++) {
    red_path(path, sizeof path, pc, r);
    reds[r] = stat(path, &sb) != 0;
    if (by_count && !reds[r]) {
      cnt_path(path, sizeof path, pc, r);
      reds[r] = stat(path, &sb) != 0;
    }
  }
  return lost;
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
  /* Map tasks past their memory bound spilled raw records too. */
  for (uint32_t i = 0; i < nmap; i++) {
    char b[8];
    spilled_path(path, sizeof path, pc, i);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    if (read(fd, b, 8) == 8) total += get_u64(b);
    close(fd);
  }
  return total;
}

/* ---- relayed files ---- */

int shuffle_relay_output(const shuffle_relay *rl, uint32_t index, const char *name, size_t n, uint32_t *required) {
  char want[64];
  const kv_part_cfg *pc = &rl->pc;
  if (!rl->reduce) {
    /* s<stage>-m<index>-p<r>.kv for r < R (required), s<stage>-m<index>.spilled */
    *required = pc->r;
    int k = snprintf(want, sizeof want, "s%u-m%u-p", pc->stage, index);
    if (n > (size_t)k + 3 && !memcmp(name, want, (size_t)k) && !memcmp(name + n - 3, ".kv", 3)) {
      uint64_t r = 0;
      size_t i = (size_t)k;
      if (name[i] == '0' && n - 3 != i + 1) return -1;  /* no leading zeros: one name per file */
      for (; i < n - 3; i++) {
        if (name[i] < '0' || name[i] > '9' || r > SHUFFLE_R_MAX) return -1;
        r = r * 10 + (uint64_t)(name[i] - '0');
      }
      return r < pc->r ? (int)r : -1;
    }
    k = snprintf(want, sizeof want, "s%u-m%u.spilled", pc->stage, index);
    return n == (size_t)k && !memcmp(name, want, n) ? (int)pc->r : -1;
  }
  /* s<stage>-r<index>.kv (required), s<stage>-c<index>.kv (required when by count) */
  *required = rl->by_count ? 2 : 1;
  int k = snprintf(want, sizeof want, "s%u-r%u.kv", pc->stage, index);
  if (n == (size_t)k && !memcmp(name, want, n)) return 0;
  k = snprintf(want, sizeof want, "s%u-c%u.kv", pc->stage, index);
  if (rl->by_count && n == (size_t)k && !memcmp(name, want, n)) return 1;
  return -1;
}

int shuffle_relay_check(const shuffle_relay *rl, uint32_t index, int k, const char *data, size_t n, dbx_err *err) {
  const kv_part_cfg *pc = &rl->pc;
  if (!rl->reduce && (uint32_t)k == pc->r)
    return n == 8 ? 0 : dbx_seterr(err, DBX_ECORRUPT, "a spilled-bytes note of %zu bytes, not 8", n);
  uint32_t want = rl->reduce ? index : (uint32_t)k;
  int rc = 0;
  if (rl->reduce && k == 1) {  /* the by-count file: "DBWC", then entries as cpart_next reads them */
    cpart x = {.map = (char *)data, .len = n, .pos = 4, .keep = 1};
    if (n < 4 || memcmp(data, "DBWC", 4)) return dbx_seterr(err, DBX_ECORRUPT, "a by-count file: bad header");
    while (!(rc = cpart_next(&x, err)) && x.have)
      if (kv_partition_of(x.key, x.klen, pc->r) != want)
        return dbx_seterr(err, DBX_ECORRUPT, "a by-count file holds a key of partition %u, not %u",
                          kv_partition_of(x.key, x.klen, pc->r), want);
    return rc;
  }
  kvpart *p = NULL;
  kv_cursor c;
  kv_entry e;
  rc = kv_decode_view(&rl->spec, n ? data : "", n, &p, err);
  if (!rc) rc = kv_cursor_init(&c, p, err);
  while (!rc && kv_cursor_next(&c, &e))
    if (kv_partition_of(e.key, e.klen, pc->r) != want)
      rc = dbx_seterr(err, DBX_ECORRUPT, "a partition file holds a key of partition %u, not %u",
                      kv_partition_of(e.key, e.klen, pc->r), want);
  kv_free(p);
  return rc;
}

void shuffle_relay_input(const shuffle_relay *rl, uint32_t i, uint32_t index, char *path, size_t cap, size_t *name_off) {
  map_path(path, cap, &rl->pc, i, index);
  *name_off = strlen(pdir(&rl->pc)) + 1;
}

int shuffle_put_file(const kv_part_cfg *pc, const char *name, const char *data, size_t n, dbx_err *err) {
  char path[SHUFFLE_DIR_MAX + 128];
  snprintf(path, sizeof path, "%s/%s", pdir(pc), name);
  return write_file(pc, path, data, n, err);
}
