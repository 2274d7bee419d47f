/* reader.c -- plain, gzip (zlib, concatenated members) and zstd streaming readers. */
#include "io/reader.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "util/err.h"

#define RAW_CHUNK (256 * 1024)

struct reader {
  const char *path;    /* borrowed from the input */
  in_kind kind;
  int fd, own_fd;
  int planned;         /* a file with a planned size: reading must end exactly there */
  uint64_t want;       /* its planned size on disk */
  uint64_t raw_read;   /* bytes read from fd */
  unsigned char *raw;  /* compressed bytes */
  size_t raw_len, raw_pos;
  uint64_t raw_off;    /* compressed bytes consumed */
  int raw_eof;
  z_stream zs;
  int zs_init, z_member_done;
  ZSTD_DCtx *zd;
  size_t zstd_last;    /* last ZSTD_decompressStream hint: 0 when a frame is complete */
};

int reader_open(const input *in, reader **out, dbx_err *err) {
  reader *r = calloc(1, sizeof *r);
  if (!r) return DBX_ENOMEM;
  r->path = in->path;
  r->kind = in->kind;
  r->zstd_last = 0;
  if (strcmp(in->path, "-") == 0) {
    r->fd = STDIN_FILENO;
  } else {
    /* O_NONBLOCK: a FIFO put in the file's place must not block the open; fstat then
     * refuses anything that is not the regular file that was planned. */
    r->fd = open(in->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (r->fd < 0) {
      int e = errno;
      free(r);
      return dbx_seterr(err, err_from_errno(e), "%s: cannot open: %s", in->path, strerror(e));
    }
    r->own_fd = 1;
    struct stat st;
    int rc = 0;
    if (fstat(r->fd, &st) != 0) {
      int e = errno;
      rc = dbx_seterr(err, err_from_errno(e), "%s: cannot stat: %s", in->path, strerror(e));
    } else if (!S_ISREG(st.st_mode)) {
      rc = dbx_seterr(err, DBX_EUSAGE, "%s: not a regular file; give a stream as '-'", in->path);
    } else if (in->kind != IN_STREAM) {
      rc = input_check(in, &st, err);
      r->planned = 1;
      r->want = in->size;
    }
    if (!rc && fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) & ~O_NONBLOCK) != 0) {
      int e = errno;
      rc = dbx_seterr(err, err_from_errno(e), "%s: cannot open: %s", in->path, strerror(e));
    }
    if (rc) {
      close(r->fd);
      free(r);
      return rc;
    }
  }
  /* A .gz or .zst name on standard input or a pipe still means compressed. */
  in_kind k = input_kind_of(in->path);
  if (k == IN_GZ || k == IN_ZST) r->kind = k;
  if (r->kind == IN_GZ || r->kind == IN_ZST) {
    r->raw = malloc(RAW_CHUNK);
    if (!r->raw) goto nomem;
  }
  if (r->kind == IN_GZ) {
    if (inflateInit2(&r->zs, 15 + 32) != Z_OK) goto nomem;
    r->zs_init = 1;
  } else if (r->kind == IN_ZST) {
    r->zd = ZSTD_createDCtx();
    if (!r->zd) goto nomem;
  }
  *out = r;
  return 0;
nomem:
  reader_close(r);
  return DBX_ENOMEM;
}

/* The end of a planned file must come exactly at its planned size: earlier means it was
 * truncated, later that it grew, both while the job ran. */
static int check_end(reader *r, dbx_err *err) {
  if (!r->planned || r->raw_read == r->want) return 0;
  return dbx_seterr(err, DBX_ECHANGED, "%s: input changed while the job ran: reading it ended at byte %llu, "
                    "it had %llu bytes when the job was planned; no result was committed: run the job "
                    "again once the file is stable", r->path, (unsigned long long)r->raw_read,
                    (unsigned long long)r->want);
}

/* read(2) that retries EINTR; counts bytes into raw_read and checks the planned end. */
static int read_fd(reader *r, char *buf, size_t cap, size_t *got, dbx_err *err) {
  ssize_t k;
  do k = read(r->fd, buf, cap); while (k < 0 && errno == EINTR);
  if (k < 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: read error at byte %llu: %s", r->path,
                      (unsigned long long)r->raw_read, strerror(e));
  }
  r->raw_read += (uint64_t)k;
  *got = (size_t)k;
  if (k == 0 || (r->planned && r->raw_read > r->want)) return check_end(r, err);
  return 0;
}

static int fill_raw(reader *r, dbx_err *err) {
  if (r->raw_pos < r->raw_len || r->raw_eof) return 0;
  size_t k;
  int rc = read_fd(r, (char *)r->raw, RAW_CHUNK, &k, err);
  if (rc) return rc;
  r->raw_len = k;
  r->raw_pos = 0;
  if (k == 0) r->raw_eof = 1;
  return 0;
}

static int read_gz(reader *r, char *buf, size_t cap, size_t *got, dbx_err *err) {
  *got = 0;
  while (*got == 0) {
    int rc = fill_raw(r, err);
    if (rc) return rc;
    if (r->raw_pos == r->raw_len) {
      if (r->z_member_done || r->raw_off == 0) return 0;
      return dbx_seterr(err, DBX_ECORRUPT, "%s: truncated gzip data (ends at compressed byte %llu)",
                        r->path, (unsigned long long)r->raw_off);
    }
    if (r->z_member_done) {  /* another gzip member follows: concatenated files are one stream */
      inflateReset(&r->zs);
      r->z_member_done = 0;
    }
    r->zs.next_in = r->raw + r->raw_pos;
    r->zs.avail_in = (uInt)(r->raw_len - r->raw_pos);
    r->zs.next_out = (Bytef *)buf;
    r->zs.avail_out = (uInt)(cap > (1u << 30) ? (1u << 30) : cap);
    int zrc = inflate(&r->zs, Z_NO_FLUSH);
    size_t used = (r->raw_len - r->raw_pos) - r->zs.avail_in;
    r->raw_pos += used;
    r->raw_off += used;
    *got = (size_t)((char *)r->zs.next_out - buf);
    if (zrc == Z_STREAM_END) {
      r->z_member_done = 1;
    } else if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
      return dbx_seterr(err, DBX_ECORRUPT, "%s: corrupt gzip data near compressed byte %llu: %s",
                        r->path, (unsigned long long)r->raw_off, r->zs.msg ? r->zs.msg : "inflate failed");
    }
  }
  return 0;
}

static int read_zst(reader *r, char *buf, size_t cap, size_t *got, dbx_err *err) {
  *got = 0;
  while (*got == 0) {
    int rc = fill_raw(r, err);
    if (rc) return rc;
    if (r->raw_pos == r->raw_len) {
      if (r->zstd_last == 0) return 0;
      return dbx_seterr(err, DBX_ECORRUPT, "%s: truncated zstd data (ends at compressed byte %llu)",
                        r->path, (unsigned long long)r->raw_off);
    }
    ZSTD_inBuffer in = {r->raw, r->raw_len, r->raw_pos};
    ZSTD_outBuffer o = {buf, cap, 0};
    size_t z = ZSTD_decompressStream(r->zd, &o, &in);
    r->raw_off += in.pos - r->raw_pos;
    r->raw_pos = in.pos;
    if (ZSTD_isError(z))
      return dbx_seterr(err, DBX_ECORRUPT, "%s: corrupt zstd data near compressed byte %llu: %s",
                        r->path, (unsigned long long)r->raw_off, ZSTD_getErrorName(z));
    r->zstd_last = z;
    *got = o.pos;
  }
  return 0;
}

int reader_read(reader *r, char *buf, size_t cap, size_t *got, dbx_err *err) {
  if (r->kind == IN_GZ) return read_gz(r, buf, cap, got, err);
  if (r->kind == IN_ZST) return read_zst(r, buf, cap, got, err);
  int rc = read_fd(r, buf, cap, got, err);
  if (rc) return rc;
  r->raw_off += *got;
  return 0;
}

uint64_t reader_raw_offset(const reader *r) { return r->raw_off; }

void reader_close(reader *r) {
  if (!r) return;
  if (r->own_fd) close(r->fd);
  if (r->zs_init) inflateEnd(&r->zs);
  ZSTD_freeDCtx(r->zd);
  free(r->raw);
  free(r);
}
