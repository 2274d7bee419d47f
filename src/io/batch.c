/* batch.c -- the splitter (inputs -> batches) and the loader (batch -> bytes of whole lines). */
#include "io/batch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/reader.h"
#include "io/records.h"
#include "util/err.h"

#define SCAN_CHUNK (1u << 20)

void batchdesc_free(batchdesc *b) {
  if (!b) return;
  free(b->seg);
  if (b->data.cap) dbx_buf_free(&b->data);  /* cap 0: bytes borrowed from a message */
  memset(b, 0, sizeof *b);
}

int batchdesc_copy(batchdesc *dst, const batchdesc *src) {
  memset(dst, 0, sizeof *dst);
  dst->index = src->index;
  dst->nseg = src->nseg;
  dst->shipped = src->shipped;
  dst->whole = src->whole;
  if (src->nseg) {
    dst->seg = malloc(src->nseg * sizeof *dst->seg);
    if (!dst->seg) return DBX_ENOMEM;
    memcpy(dst->seg, src->seg, src->nseg * sizeof *dst->seg);
  }
  if (src->shipped && dbx_buf_append(&dst->data, src->data.data, src->data.len)) {
    batchdesc_free(dst);
    return DBX_ENOMEM;
  }
  return 0;
}

int batchdesc_ship(batchdesc *dst, const batchdesc *src, const dbx_batch *view) {
  int rc = batchdesc_copy(dst, src);
  if (rc) return rc;
  for (uint32_t i = 0; i < dst->nseg; i++) dst->seg[i].dlen = view->seg[i].data_len;
  dst->shipped = 1;
  if (dbx_buf_append(&dst->data, view->data, view->size)) {
    batchdesc_free(dst);
    return DBX_ENOMEM;
  }
  return 0;
}

uint64_t batchdesc_bytes(const batchdesc *b) {
  uint64_t t = 0;
  for (uint32_t i = 0; i < b->nseg; i++) t += b->seg[i].len;
  return t;
}

void batchdesc_describe(const batchdesc *b, const inputs *in, char *out, size_t cap) {
  size_t k = 0;
  out[0] = 0;
  for (uint32_t i = 0; i < b->nseg && k + 1 < cap; i++) {
    const bseg *s = &b->seg[i];
    const char *p = s->input < in->n ? in->v[s->input].path : "?";
    int w;
    if (s->rec_first != DBX_UNKNOWN)
      w = snprintf(out + k, cap - k, "%s%s lines %llu-%llu (bytes %llu-%llu)", i ? ", " : "", p,
                   (unsigned long long)s->rec_first + 1,
                   (unsigned long long)(s->rec_first + s->rec_count),
                   (unsigned long long)s->off, (unsigned long long)(s->off + s->len));
    else
      w = snprintf(out + k, cap - k, "%s%s bytes %llu-%llu", i ? ", " : "", p,
                   (unsigned long long)s->off, (unsigned long long)(s->off + s->len));
    if (w < 0) break;
    k += (size_t)w;
  }
}

/* ---- splitter ---- */

struct splitter {
  const inputs *in;
  split_opts o;
  uint64_t max_line;  /* from split_opts: see batch.h */
  int max_line_fail;
  uint32_t next_index;
  size_t cur;        /* current input */
  uint64_t pos;      /* decompressed bytes of the current input consumed */
  uint64_t rec;      /* records of the current input consumed */
  reader *rd;        /* open while scanning the current input by lines */
  char *chunk;
  size_t clen, cpos;
  int rd_eof;
  int skipping;      /* inside the rest of a streamed line cut at max_line (scan_lines) */
  int csv;           /* splitter_csv_quotes: records end at LFs outside quotes */
  int inq;           /* csv: inside a quoted field at the current position */
  uint64_t qlf;      /* csv: LFs inside quotes passed so far (all inputs) */
  uint64_t stream_bytes;
};

int splitter_new(const inputs *in, const split_opts *o, splitter **out, dbx_err *err) {
  if (o->batch_records == 0 && o->batch_bytes == 0)
    return dbx_seterr(err, DBX_EINVAL, "batch size must be positive");
  splitter *s = calloc(1, sizeof *s);
  if (!s) return dbx_seterr(err, DBX_ENOMEM, "out of memory planning the batches");
  s->in = in;
  s->o = *o;
  s->max_line = o->max_line;
  s->max_line_fail = o->max_line_fail;
  *out = s;
  return 0;
}

void splitter_free(splitter *s) {
  if (!s) return;
  reader_close(s->rd);
  free(s->chunk);
  free(s);
}

void splitter_csv_quotes(splitter *s, int on) { s->csv = on != 0; }

uint64_t splitter_stream_bytes(const splitter *s) { return s->stream_bytes; }

static void next_input(splitter *s) {
  reader_close(s->rd);
  s->rd = NULL;
  s->clen = s->cpos = 0;
  s->rd_eof = 0;
  s->skipping = 0;
  s->inq = 0;
  s->cur++;
  s->pos = s->rec = 0;
}

static int add_seg(batchdesc *b, size_t *cap, bseg seg) {
  if (b->nseg == *cap) {
    size_t nc = *cap ? *cap * 2 : 4;
    bseg *ns = realloc(b->seg, nc * sizeof *ns);
    if (!ns) return DBX_ENOMEM;
    b->seg = ns;
    *cap = nc;
  }
  b->seg[b->nseg++] = seg;
  return 0;
}

uint64_t split_line_cap(const split_opts *o) {
  uint64_t lo = 64u << 20, hi = 1u << 30;
  uint64_t c = o->batch_bytes > hi / 16 ? hi : o->batch_bytes * 16;
  return c < lo ? lo : c;
}

/* A streamed line over its bound (see split_opts). line: 0-based number in the input. */
static int line_too_long(const splitter *s, uint64_t line, int over_max, dbx_err *err) {
  const char *path = s->in->v[s->cur].path;
  if (over_max)
    return dbx_seterr(err, DBX_EBADREC, "bad record at %s line %llu: a line of more than %llu bytes, longer than "
                      "--max-record %llu (with --on-bad-record skip it is counted and skipped)", path,
                      (unsigned long long)line + 1, (unsigned long long)s->max_line,
                      (unsigned long long)s->max_line);
  uint64_t cap = split_line_cap(&s->o);
  return dbx_seterr(err, DBX_EBADREC, "%s line %llu: a line of more than %llu bytes (%llu MiB), the longest a "
                    "streamed input may have (16 times --batch-bytes, at least 64 MiB, at most 1 GiB); no result was "
                    "written: give --max-record SIZE to skip such lines, or split them", path,
                    (unsigned long long)line + 1, (unsigned long long)cap, (unsigned long long)(cap >> 20));
}

/* The end of the line (of the record, with csv) in p[0..n): its LF, or NULL. With
 * csv the quote state and quoted-LF count move past what was scanned. */
static const char *find_eol(splitter *s, const char *p, size_t n) {
  if (!s->csv) return memchr(p, '\n', n);
  size_t k = rec_csv_eol(p, n, &s->inq, &s->qlf);
  return k < n ? p + k : NULL;
}

/* Consume whole lines of the current input until want_recs records (when > 0) or until at
 * least want_bytes bytes. Appends the bytes to copy (when not NULL), adding a final newline
 * to an unterminated last line. OUT: bytes and records consumed, *eof at the end of input.
 * With copy, lines are bounded (split_opts): a line cut at max_line + 1 bytes is a record
 * ended at once, its rest is skipped (s->skipping) and may span calls: a call that skips
 * returns after about want_bytes, so a caller is never held by an endless line. */
static int scan_lines(splitter *s, uint64_t want_recs, uint64_t want_bytes, dbx_buf *copy,
                      uint64_t *nbytes, uint64_t *nrecs, int *eof, dbx_err *err) {
  uint64_t bytes = 0, recs = 0;
  int in_line = 0;  /* consumed bytes of a line not yet ended */
  uint64_t line_len = 0;  /* bytes of that line (without newline) */
  uint64_t cap = copy ? split_line_cap(&s->o) : UINT64_MAX;
  uint64_t yield = want_bytes > SCAN_CHUNK ? want_bytes : SCAN_CHUNK;
  uint64_t qlf_start = s->qlf;  /* with csv, line numbers are records + quoted LFs */
  *eof = 0;
  if (!s->rd) {
    int rc = reader_open(&s->in->v[s->cur], &s->rd, err);
    if (rc) return rc;
    if (!s->chunk && !(s->chunk = malloc(SCAN_CHUNK)))
      return dbx_seterr(err, DBX_ENOMEM, "%s: out of memory for the read buffer", s->in->v[s->cur].path);
    s->clen = s->cpos = 0;
  }
  for (;;) {
    if (want_recs ? recs >= want_recs : (bytes >= want_bytes && !in_line)) break;
    if (s->skipping && bytes >= yield) break;
    if (s->cpos == s->clen) {
      size_t got;
      int rc = reader_read(s->rd, s->chunk, SCAN_CHUNK, &got, err);
      if (rc) return rc;
      s->clen = got;
      s->cpos = 0;
      if (got == 0) {
        if (in_line) {
          recs++;
          if (copy && dbx_buf_append(copy, "\n", 1)) goto nomem;
        }
        s->skipping = 0;
        *eof = 1;
        break;
      }
    }
    const char *p = s->chunk + s->cpos;
    size_t avail = s->clen - s->cpos, take;
    int inq0 = s->inq;
    const char *nl = find_eol(s, p, avail);
    if (s->skipping) {  /* the rest of a line already cut and counted */
      take = nl ? (size_t)(nl - p) + 1 : avail;
      if (nl) s->skipping = 0;
      s->cpos += take;
      bytes += take;
      continue;
    }
    size_t body = nl ? (size_t)(nl - p) : avail;  /* this line's bytes here, without newline */
    take = body + (nl != NULL);
    int over_max = copy && s->max_line && line_len + body > s->max_line;
    if (over_max || (copy && line_len + body > cap)) {
      if (!over_max || s->max_line_fail)
        return line_too_long(s, s->rec + recs + (s->qlf - qlf_start), over_max, err);
      /* Keep max_line + 1 bytes of it, end it, skip the rest. */
      uint64_t keep = s->max_line + 1 > line_len ? s->max_line + 1 - line_len : 0;
      if (keep > body) keep = body;
      if (dbx_buf_append(copy, p, (size_t)keep)) goto nomem;
      if (s->csv) {  /* close an open quote: the kept part must end at its LF */
        int odd = inq0;
        for (uint64_t k = 0; k < keep; k++) odd ^= p[k] == '"';
        if (odd && dbx_buf_append(copy, "\"", 1)) goto nomem;
      }
      if (dbx_buf_append(copy, "\n", 1)) goto nomem;
      recs++;
      in_line = 0;
      line_len = 0;
      if (!nl) s->skipping = 1;
      s->cpos += take;
      bytes += take;
      continue;
    }
    if (nl) {
      recs++;
      in_line = 0;
      line_len = 0;
    } else {
      in_line = 1;
      line_len += body;
    }
    /* With many short lines, take several lines at once (each within the line bounds: the
     * first one over them, or one not ended in this chunk, is left for the next round, and
     * the quote state scanned for it is put back). */
    if (nl) {
      const char *q = nl + 1, *end = p + avail;
      uint64_t lim = s->max_line ? s->max_line : cap;
      while (q < end && (want_recs ? recs < want_recs : bytes + (uint64_t)(q - p) < want_bytes)) {
        int inq1 = s->inq;
        uint64_t qlf1 = s->qlf;
        nl = find_eol(s, q, (size_t)(end - q));
        if (!nl || (copy && (uint64_t)(nl - q) > lim)) {
          s->inq = inq1;
          s->qlf = qlf1;
          break;
        }
        recs++;
        q = nl + 1;
      }
      take = (size_t)(q - p);
    }
    if (copy && dbx_buf_append(copy, p, take)) goto nomem;
    s->cpos += take;
    bytes += take;
  }
  *nbytes = bytes;
  *nrecs = recs;
  return 0;
nomem:
  return dbx_seterr(err, DBX_ENOMEM, "%s: out of memory reading line %llu", s->in->v[s->cur].path,
                    (unsigned long long)(s->rec + recs + (s->qlf - qlf_start) + 1));
}

int splitter_next(splitter *s, batchdesc *out, dbx_err *err) {
  memset(out, 0, sizeof *out);
  size_t cap = 0;
  uint64_t left_bytes = s->o.batch_bytes, left_recs = s->o.batch_records;
  int rc = 0;
  if (s->o.whole_files) {
    /* One segment per file, empty files included: an empty document is still a document. */
    out->whole = 1;
    uint64_t bytes = 0;
    while (s->cur < s->in->n) {
      const input *x = &s->in->v[s->cur];
      if (out->nseg && (s->o.batch_records ? out->nseg >= s->o.batch_records : bytes >= s->o.batch_bytes)) break;
      bseg g = {(uint32_t)s->cur, 0, x->size, DBX_UNKNOWN, 1, 0};
      if ((rc = add_seg(out, &cap, g))) goto nomem;
      bytes += x->size;
      s->cur++;
    }
    if (out->nseg == 0) { batchdesc_free(out); return 0; }
    out->index = s->next_index++;
    return 1;
  }
  while (s->cur < s->in->n) {
    const input *x = &s->in->v[s->cur];
    int streamed = x->kind != IN_PLAIN;
    if (out->nseg && out->shipped != streamed) break;  /* never mix shipped and referenced */
    out->shipped = streamed;
    if (!streamed && !s->o.batch_records && !s->csv) {
      if (s->pos >= x->size) { next_input(s); continue; }
      uint64_t take = x->size - s->pos < left_bytes ? x->size - s->pos : left_bytes;
      bseg g = {(uint32_t)s->cur, s->pos, take, DBX_UNKNOWN, DBX_UNKNOWN, 0};
      if ((rc = add_seg(out, &cap, g))) goto nomem;
      s->pos += take;
      left_bytes -= take;
      if (left_bytes == 0) break;
      continue;
    }
    uint64_t nb = 0, nr = 0;
    int eof;
    uint64_t start_len = out->data.len, qlf0 = s->qlf;
    rc = scan_lines(s, s->o.batch_records ? left_recs : 0, left_bytes, streamed ? &out->data : NULL,
                    &nb, &nr, &eof, err);
    if (rc) goto fail;
    uint64_t lines = nr + (s->qlf - qlf0);  /* physical lines (quoted LFs with csv) */
    if (nb) {
      bseg g = {(uint32_t)s->cur, s->pos, nb, s->rec, lines, out->data.len - start_len};
      if ((rc = add_seg(out, &cap, g))) goto nomem;
    }
    s->pos += nb;
    s->rec += lines;
    if (streamed) s->stream_bytes += out->data.len - start_len;
    if (s->o.batch_records) left_recs -= nr;
    else left_bytes = nb >= left_bytes ? 0 : left_bytes - nb;
    if (eof) next_input(s);
    if (s->o.batch_records ? left_recs == 0 : left_bytes == 0) break;
    if (s->skipping) break;  /* an endless cut line: give the caller its turn */
  }
  if (out->nseg == 0) {
    batchdesc_free(out);
    return 0;
  }
  out->index = s->next_index++;
  return 1;
nomem:
  rc = dbx_seterr(err, rc, "out of memory planning the batches of %s",
                  s->cur < s->in->n ? s->in->v[s->cur].path : "the inputs");
fail:
  batchdesc_free(out);
  return rc;
}

/* ---- loader ---- */

struct loader {
  dbx_buf buf;
  dbx_segment *vseg;
  size_t vcap;
  int fd;
  char *fd_path_own;
  uint64_t fd_dev, fd_ino;  /* identity of the file open as fd */
  const inputs *plan;  /* borrowed (loader_expect); NULL: only ranges are checked */
  loader_check_fn check;
  void *check_ctx;
};

void loader_check(loader *l, loader_check_fn fn, void *ctx) {
  l->check = fn;
  l->check_ctx = ctx;
}

void loader_expect(loader *l, const inputs *in) { l->plan = in; }

loader *loader_new(void) {
  loader *l = calloc(1, sizeof *l);
  if (l) l->fd = -1;
  return l;
}

void loader_free(loader *l) {
  if (!l) return;
  if (l->fd >= 0) close(l->fd);
  free(l->fd_path_own);
  dbx_buf_free(&l->buf);
  free(l->vseg);
  free(l);
}

static int changed(const char *path, uint64_t want_end, uint64_t now_end, dbx_err *err) {
  return dbx_seterr(err, DBX_ECHANGED, "%s: input changed while the job ran: it now ends at byte %llu, "
                    "the batch needs bytes up to %llu; no result was committed: run the job again once "
                    "the file is stable", path, (unsigned long long)now_end, (unsigned long long)want_end);
}

/* Open path (or keep the open descriptor of the last segment's file) and check it against
 * the plan: the same regular file (identity, size, mtime when the plan is known), at least
 * as long as the segment [off, end). A stat and an fstat per segment, so a file rewritten
 * or replaced between two batches is noticed even when its descriptor is cached. */
static int open_checked(loader *l, const char *path, uint32_t idx, uint64_t end, dbx_err *err) {
  struct stat st;
  int cached = l->fd >= 0 && l->fd_path_own && strcmp(l->fd_path_own, path) == 0;
  /* The cached descriptor may hold a file since replaced under the same name. */
  if (cached && (stat(path, &st) != 0 || (uint64_t)st.st_dev != l->fd_dev || (uint64_t)st.st_ino != l->fd_ino))
    cached = 0;
  if (!cached) {
    if (l->fd >= 0) close(l->fd);
    free(l->fd_path_own);
    l->fd_path_own = NULL;
    /* O_NONBLOCK: a FIFO in the file's place must not block the open (fstat refuses it). */
    l->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (l->fd < 0) {
      int e = errno;
      return dbx_seterr(err, err_from_errno(e), "%s: cannot open: %s", path, strerror(e));
    }
    if (!(l->fd_path_own = strdup(path))) return DBX_ENOMEM;
  }
  if (fstat(l->fd, &st) != 0) {
    int e = errno;
    return dbx_seterr(err, err_from_errno(e), "%s: cannot stat: %s", path, strerror(e));
  }
  l->fd_dev = (uint64_t)st.st_dev;
  l->fd_ino = (uint64_t)st.st_ino;
  if (!S_ISREG(st.st_mode))
    return dbx_seterr(err, DBX_ECHANGED, "%s: input changed while the job ran: it is no longer a regular file", path);
  if (l->plan && idx < l->plan->n) {
    int rc = input_check(&l->plan->v[idx], &st, err);
    if (rc) return rc;
  }
  if (l->check) {
    int rc = l->check(l->check_ctx, idx, path, l->fd, &st, err);
    if (rc) return rc;
  }
  if ((uint64_t)st.st_size < end) return changed(path, end, (uint64_t)st.st_size, err);
  return 0;
}

/* pread that retries short reads; OUT *got < n only at the end of the file. */
static int pread_full(int fd, char *p, size_t n, uint64_t off, size_t *got, const char *path,
                      dbx_err *err) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = pread(fd, p + done, n - done, (off_t)(off + done));
    if (k < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      return dbx_seterr(err, err_from_errno(e), "%s: read error at byte %llu: %s", path,
                        (unsigned long long)(off + done), strerror(e));
    }
    if (k == 0) break;
    done += (size_t)k;
  }
  *got = done;
  return 0;
}

/* Append the lines starting in [off, off+len) of the open file to l->buf. */
static int load_range(loader *l, const char *path, uint64_t off, uint64_t len, uint64_t *startp, dbx_err *err) {
  char tmp[65536];
  size_t got = 0;
  *startp = off;
  /* Ranges come from a peer: an empty one owns no line; one past 2^64 is malformed. */
  if (len == 0) return 0;
  if (off > UINT64_MAX - len)
    return dbx_seterr(err, DBX_EPROTO, "%s: byte range %llu+%llu is out of bounds", path, (unsigned long long)off,
                      (unsigned long long)len);
  uint64_t start = off, end = off + len;
  int rc;
  if (off > 0) {
    /* Find the first line start at or after off: just after a newline at >= off-1. */
    uint64_t p = off - 1;
    for (;;) {
      if (p >= end) return 0;  /* no line starts inside the range */
      if ((rc = pread_full(l->fd, tmp, sizeof tmp, p, &got, path, err))) return rc;
      if (got == 0) return changed(path, end, p, err);  /* the plan had bytes up to end */
      char *nl = memchr(tmp, '\n', got);
      if (nl) { start = p + (uint64_t)(nl - tmp) + 1; break; }
      p += got;
    }
    if (start >= end) return 0;
  }
  *startp = start;
  size_t n = (size_t)(end - start);
  if ((rc = dbx_buf_reserve(&l->buf, n + 1))) return rc;
  if ((rc = pread_full(l->fd, l->buf.data + l->buf.len, n, start, &got, path, err))) return rc;
  if (got < n) return changed(path, end, start + got, err);
  l->buf.len += got;
  /* Finish the line the range ends in. */
  uint64_t p = end;
  while (l->buf.data[l->buf.len - 1] != '\n') {
    if ((rc = pread_full(l->fd, tmp, sizeof tmp, p, &got, path, err))) return rc;
    if (got == 0) return dbx_buf_append(&l->buf, "\n", 1);
    char *nl = memchr(tmp, '\n', got);
    size_t take = nl ? (size_t)(nl - tmp) + 1 : got;
    if ((rc = dbx_buf_append(&l->buf, tmp, take))) return rc;
    p += take;
  }
  return 0;
}

int loader_load(loader *l, const batchdesc *b, const char *const *paths, dbx_batch *view,
                dbx_err *err) {
  if (l->vcap < b->nseg) {
    dbx_segment *nv = realloc(l->vseg, b->nseg * sizeof *nv);
    if (!nv) return DBX_ENOMEM;
    l->vseg = nv;
    l->vcap = b->nseg;
  }
  l->buf.len = 0;
  size_t shipped_off = 0;
  for (uint32_t i = 0; i < b->nseg; i++) {
    const bseg *s = &b->seg[i];
    dbx_segment *v = &l->vseg[i];
    v->path = paths[s->input];
    v->input = s->input;
    v->start = s->off;
    v->off = s->off;
    v->len = s->len;
    v->rec_first = s->rec_first;
    v->rec_count = s->rec_count;
    if (b->shipped) {
      v->data_off = shipped_off;
      v->data_len = (size_t)s->dlen;
      shipped_off += v->data_len;
      continue;
    }
    if (s->len > UINT64_MAX - s->off)
      return dbx_seterr(err, DBX_EPROTO, "%s: batch %u has an invalid byte range", v->path, b->index);
    int rc = open_checked(l, v->path, s->input, s->off + s->len, err);
    if (rc) return rc;
    v->data_off = l->buf.len;
    if (b->whole) {
      size_t got = 0;
      if ((rc = dbx_buf_reserve(&l->buf, (size_t)s->len + 1))) return rc;
      if ((rc = pread_full(l->fd, l->buf.data + l->buf.len, (size_t)s->len, s->off, &got, v->path, err)))
        return rc;
      if (got < s->len) return changed(v->path, s->off + s->len, s->off + got, err);
      l->buf.len += got;
      v->data_len = got;
      continue;
    }
    rc = load_range(l, v->path, s->off, s->len, &v->start, err);
    if (rc) return rc;
    v->data_len = l->buf.len - v->data_off;
  }
  view->index = b->index;
  view->nseg = b->nseg;
  view->seg = l->vseg;
  view->data = b->shipped ? b->data.data : l->buf.data;
  view->size = b->shipped ? b->data.len : l->buf.len;
  if (!view->data) view->data = "";
  return 0;
}

void dbx_batch_where(const dbx_batch *b, size_t off, char *out, size_t cap) {
  for (uint32_t i = 0; i < b->nseg; i++) {
    const dbx_segment *s = &b->seg[i];
    if (off < s->data_off || off >= s->data_off + s->data_len) continue;
    /* Line numbers: known from the plan, or counted when the segment starts its input. */
    if (s->rec_first != DBX_UNKNOWN || s->start == 0) {
      uint64_t line = (s->rec_first != DBX_UNKNOWN ? s->rec_first : 0) + 1;
      for (const char *p = b->data + s->data_off, *e = b->data + off; p < e && (p = memchr(p, '\n', (size_t)(e - p))); p++)
        line++;
      snprintf(out, cap, "%s line %llu", s->path, (unsigned long long)line);
    } else {
      snprintf(out, cap, "%s byte %llu", s->path, (unsigned long long)(s->start + (off - s->data_off)));
    }
    return;
  }
  snprintf(out, cap, "batch %u", b->index);
}
