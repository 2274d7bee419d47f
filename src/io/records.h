/* records.h -- the record layer of keyed jobs (groupby, cooccur): CSV (RFC 4180), TSV and
 * JSONL records of a batch's bytes, with only the fields a caller wants pulled out (private).
 *
 * Record boundaries. TSV and JSONL records are lines. A CSV record ends at the first LF at
 * which the number of '"' bytes since the record's start is even (outside quotes): for a
 * well-formed record that is exactly RFC 4180's record end, and a malformed one (a stray
 * quote) ends at the same place for the splitter (batch.c, split_opts.csv_quotes) and for the
 * iterator, so a bad record is skipped as one and never shifts the records after it.
 *
 * Per batch: iterate each segment of a dbx_batch on its own (data + seg.data_off,
 * seg.data_len); a segment whose seg.off is 0 begins its input, so for CSV/TSV it begins with
 * the header: pass skip_header = (seg.off == 0). That holds for batches by reference and for
 * shipped (streamed, .gz, .zst, standard input) batches alike, since seg.off is the offset in
 * the decompressed input. The header is the input's very first record (a blank first line is
 * a header with no names). Blank lines (empty, or a lone CR before the LF) are skipped in
 * every format. */
#ifndef DBX_IO_RECORDS_H
#define DBX_IO_RECORDS_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"

typedef enum { REC_CSV = 1, REC_TSV, REC_JSONL } rec_format;

/* From a path's extension (.csv .tsv .jsonl .ndjson, also before .gz/.zst), 0 if unknown. */
rec_format rec_format_of(const char *path);
/* "csv" | "tsv" | "jsonl" (also "ndjson") -> format, 0 if unknown. */
int rec_format_parse(const char *name);
const char *rec_format_name(rec_format f);

/* The header of a CSV/TSV input: the names of its first record. */
typedef struct rec_names {
  uint32_t n;
  char **name;   /* owned, NUL-terminated; a UTF-8 byte-order mark before the first is dropped */
} rec_names;
void rec_names_free(rec_names *names);
/* Read the first record of the (possibly .gz/.zst) file at path with the input reader.
 * OUT *out (owned by the caller: rec_names_free). Errors name the file: unreadable, a
 * malformed header (DBX_EBADREC, line 1), a header over 16 MiB, a NUL in a name, JSONL
 * (DBX_EINVAL: it has no header), standard input ("-": DBX_EUSAGE, it cannot be read twice;
 * take the header from the first batch with rec_parse_header instead). An empty file has
 * a header with no names. */
int rec_read_header(rec_format f, const char *path, rec_names *out, dbx_err *err);
/* The same from bytes: the first record of data[0..n) (the start of an input).
 * OUT *out (owned by the caller). Errors say what is wrong, without a file name. */
int rec_parse_header(rec_format f, const char *data, size_t n, rec_names *out, dbx_err *err);

/* What a caller wants from each record: for CSV/TSV 0-based column indices (col[0..n)),
 * for JSONL top-level field names (name[0..n)); the format decides which is read. The same
 * column or name may be wanted twice. Borrowed: it must outlive the iterator. */
typedef struct rec_want {
  uint32_t n;
  const uint32_t *col;
  const char *const *name;
} rec_want;

/* One wanted field of a record. p is never NULL; it points into the batch's data or into the
 * iterator's scratch and is valid until the next rec_next/rec_iter_reset/rec_iter_free.
 * missing: an empty CSV/TSV field, a JSONL null or absent field (then p = "", n = 0). */
typedef struct rec_field {
  const char *p;
  size_t n;
  int missing;
} rec_field;

/* An iterator over the records of one segment's bytes. Public so a caller can keep it on the
 * stack; its fields are private. Scratch is reused across records and segments: no malloc
 * per record. */
typedef struct rec_iter {
  rec_format f;
  const char *data;
  size_t n, pos;
  const rec_want *w;
  uint32_t nmap;        /* CSV/TSV: size of colmap (largest wanted column + 1) */
  uint32_t *colmap;     /* CSV/TSV: column -> first slot wanting it, UINT32_MAX: none; owned */
  size_t *namelen;      /* JSONL: strlen of each wanted name; owned */
  uint32_t *dup;        /* slot -> the first slot wanting the same column/name; owned */
  size_t *soff;         /* per slot while parsing: offset in scratch, SIZE_MAX: in data; owned */
  dbx_buf scratch;      /* decoded values (CSV doubled quotes, JSON escapes); owned */
} rec_iter;

/* Set up it for format f over data[0..n) (borrowed), skipping the first record when
 * skip_header (CSV/TSV; ignored for JSONL). 0, DBX_EINVAL (unknown format, a wanted name
 * NULL, a column index over 2^24), DBX_ENOMEM. Free with rec_iter_free even on failure. */
int rec_iter_init(rec_iter *it, rec_format f, const rec_want *w, const char *data, size_t n, int skip_header);
/* Iterate other bytes with the same format and wants (the next segment), keeping scratch. */
void rec_iter_reset(rec_iter *it, const char *data, size_t n, int skip_header);
void rec_iter_free(rec_iter *it);
/* The next record: 1 = a record, fields[0..w->n) filled, *off = the offset of its first
 * byte in data (for dbx_batch_where); 0 = end; DBX_EBADREC = a malformed record, *off its
 * start, err says what is wrong (without file or line: the caller adds dbx_batch_where),
 * the iterator is past it so the caller may go on. A NUL byte in a wanted field, or fewer
 * columns than a wanted index, is malformed too. */
int rec_next(rec_iter *it, rec_field *fields, size_t *off, dbx_err *err);

/* The CSV record-end finder shared with the splitter. Scans p[0..n) starting with quote
 * state *inq (1: inside quotes, i.e. an odd number of '"' since the record's start).
 * Returns the offset of the first LF outside quotes, or n when there is none (then *inq is
 * the state at n). OUT *qlf (added to): LFs passed inside quotes, the physical lines a
 * record spans beyond its own. Cost: two memchr passes over the bytes. */
size_t rec_csv_eol(const char *p, size_t n, int *inq, uint64_t *qlf);
#endif
