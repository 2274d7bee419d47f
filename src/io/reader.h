/* reader.h -- sequential reading of one input with transparent .gz/.zst decompression (private).
 * Used for streamed inputs (compressed files, standard input, pipes) and for the record scan
 * of --batch-records; plain files in byte batches are read by range instead (see batch.h). */
#ifndef DBX_IO_READER_H
#define DBX_IO_READER_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"
#include "io/input.h"

typedef struct reader reader;

/* Open in for reading; *out is owned by the caller (reader_close). */
int reader_open(const input *in, reader **out, dbx_err *err);
/* Read up to cap decompressed bytes. OUT *got: bytes read, 0 at the end of input.
 * A corrupt or truncated compressed stream fails with DBX_ECORRUPT naming the file and
 * the compressed byte offset. */
int reader_read(reader *r, char *buf, size_t cap, size_t *got, dbx_err *err);
/* Compressed bytes consumed so far (for error messages and progress). */
uint64_t reader_raw_offset(const reader *r);
void reader_close(reader *r);
#endif
