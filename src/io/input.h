/* input.h -- turning command-line inputs (files, directories, globs, "-") into a sorted
 * list of readable inputs, each with its kind and size (private). */
#ifndef DBX_IO_INPUT_H
#define DBX_IO_INPUT_H
#include <stdint.h>
#include <stddef.h>
#include "dbatch.h"

typedef enum {
  IN_PLAIN,   /* regular uncompressed file: split by byte ranges, read by reference */
  IN_GZ,      /* gzip: streamed, cut by records */
  IN_ZST,     /* zstandard: streamed, cut by records */
  IN_STREAM   /* standard input or a pipe: streamed, cut by records */
} in_kind;

typedef struct input {
  char *path;          /* owned; "-" for standard input */
  in_kind kind;
  uint64_t size;       /* bytes on disk (compressed size for .gz/.zst; 0 for streams) */
  int64_t mtime_ns;    /* for detecting changed inputs on resume */
} input;

typedef struct inputs {
  input *v;
  size_t n;
} inputs;

/* Expand args into out (owned by the caller; free with inputs_free). Directories are walked
 * recursively in byte order of names, skipping names starting with '.' or '_' (hidden files
 * and markers such as _SUCCESS). A pattern with *, ? or [ that names no existing file is
 * globbed. Errors name the argument: missing, unreadable, a glob matching nothing. */
int inputs_expand(char *const *args, size_t nargs, inputs *out, dbx_err *err);
void inputs_free(inputs *in);
/* The kind a path's name implies. */
in_kind input_kind_of(const char *path);
#endif
