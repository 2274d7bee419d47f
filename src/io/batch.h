/* batch.h -- batches: what the splitter cuts, what a task carries, and loading the bytes of
 * a batch for an operator (private).
 *
 * A batch of plain files travels by reference: segments (input, byte range). A byte range
 * owns exactly the lines that START inside it: a range beginning mid-line skips to the next
 * line start, and the line in which it ends is read to its end. So every line of a file is
 * in exactly one batch whatever the cut points. Streamed inputs (standard input, pipes,
 * .gz, .zst) are cut at line ends by the splitter and carry their bytes ("shipped"). */
#ifndef DBX_IO_BATCH_H
#define DBX_IO_BATCH_H
#include <stdint.h>
#include "dbatch.h"
#include "io/input.h"

typedef struct bseg {
  uint32_t input;        /* index into the job's inputs */
  uint64_t off, len;     /* byte range in the decompressed input */
  uint64_t rec_first;    /* first record (0-based line number) or DBX_UNKNOWN */
  uint64_t rec_count;    /* records, or DBX_UNKNOWN */
  uint64_t dlen;         /* shipped batches: this segment's bytes in data (lines completed) */
} bseg;

typedef struct batchdesc {
  uint32_t index;
  uint32_t nseg;
  bseg *seg;             /* owned */
  int shipped;           /* data holds the bytes (newline-terminated lines) */
  int whole;             /* each segment is one whole file (a document), read as is */
  dbx_buf data;          /* owned, only when shipped */
} batchdesc;

void batchdesc_free(batchdesc *b);
/* Deep copy (OUT dst, owned by the caller). */
int batchdesc_copy(batchdesc *dst, const batchdesc *src);
/* Make a shipped copy of a loaded batch (OUT dst): the bytes of view travel with it. */
int batchdesc_ship(batchdesc *dst, const batchdesc *src, const dbx_batch *view);
/* Total bytes the batch covers (range lengths). */
uint64_t batchdesc_bytes(const batchdesc *b);

/* "path bytes A-B" or "path lines A-B" for each segment, into out (NUL-terminated). */
void batchdesc_describe(const batchdesc *b, const inputs *in, char *out, size_t cap);

/* How the splitter cuts. */
typedef struct split_opts {
  uint64_t batch_bytes;    /* target bytes per batch when batch_records is 0 */
  uint64_t batch_records;  /* records per batch, or 0 */
  int whole_files;         /* documents: every input is one record, never split; batches
                              hold batch_records files (or about batch_bytes) */
  uint64_t max_line;       /* an operator's --max-record for streamed lines (0: none), see below */
  int max_line_fail;       /* a longer line fails the split instead of being cut */
} split_opts;

/* CSV inputs (splitter_csv_quotes): a record ends at an LF outside quotes (rec_csv_eol), so a quoted
 * field may hold newlines. Every batch then starts at a record start and ends at one: the
 * splitter reads plain files too (one sequential pass, two memchr scans per record) and
 * plans segments whose ranges are exactly whole records, which the loader's line rule reads
 * unchanged (a record start follows an LF, a record end is an LF). A cut meant for offset X
 * falls on the first record start at or after X. rec_first/rec_count stay physical line
 * numbers (a record with quoted newlines spans several), so dbx_batch_where names lines.
 * With max_line, a longer streamed record is kept as its first max_line + 1 bytes, plus a
 * '"' when they hold an odd number of quotes (so it cannot swallow the records after it),
 * then an LF: a caller treats a record longer than max_line as bad. */

/* Streamed inputs are cut at line ends, so the splitter holds a whole line in memory: it
 * never holds more than a bound. With split_opts.max_line (an operator's --max-record), a
 * longer line is a bad record: with max_line_fail the split fails with DBX_EBADREC naming
 * the input and line; otherwise only its first max_line + 1 bytes are kept (so the operator
 * sees a line over the limit, counts and skips it) and the rest is discarded as it is read.
 * Without max_line (0), a line longer than split_line_cap() fails the split with
 * DBX_EBADREC naming the input and line. */
/* The longest line a streamed input may have: 16 times the batch size, at least 64 MiB and
 * at most 1 GiB. */
uint64_t split_line_cap(const split_opts *o);

typedef struct splitter splitter;

/* The splitter reads inputs lazily: memory stays bounded by one batch for streams.
 * in must outlive the splitter. */
int splitter_new(const inputs *in, const split_opts *o, splitter **out, dbx_err *err);
/* Cut the inputs at CSV record ends (see split_opts above) instead of line ends. Call it
 * before the first splitter_next; every input of the splitter is then read as CSV. (A
 * setter, not a split_opts field: split_opts is initialised positionally in many places.) */
void splitter_csv_quotes(splitter *s, int on);
/* Next batch into *out (owned by the caller). 1 = a batch, 0 = no more, < 0 = error. */
int splitter_next(splitter *s, batchdesc *out, dbx_err *err);
/* Bytes consumed so far from streamed inputs (decompressed). */
uint64_t splitter_stream_bytes(const splitter *s);
void splitter_free(splitter *s);

/* Loads the bytes of a batch into a reusable buffer. */
typedef struct loader loader;
loader *loader_new(void);
void loader_free(loader *l);
/* Check every file read against in (borrowed; it must outlive the loader's loads, NULL
 * turns it off): the same regular file as planned (device, inode, size, mtime), else
 * DBX_ECHANGED naming the file. Without it (a worker that knows only paths) a load still
 * fails with DBX_ECHANGED when a file is no longer regular or ends before a segment does. */
void loader_expect(loader *l, const inputs *in);
/* A check of every file the loader opens, made on the open descriptor after its fstat (so
 * it judges the very file read, whatever its name points to later): idx is the input's
 * index. Non-zero (err set) fails the load. fn NULL: none. */
struct stat;
typedef int (*loader_check_fn)(void *ctx, uint32_t idx, const char *path, int fd, const struct stat *st,
                               dbx_err *err);
void loader_check(loader *l, loader_check_fn fn, void *ctx);
/* Fill *view with the batch's lines, newline-terminated. view and its data stay valid until
 * the next loader_load() or loader_free(). paths[i] is the path of input i. */
int loader_load(loader *l, const batchdesc *b, const char *const *paths, dbx_batch *view,
                dbx_err *err);
#endif
