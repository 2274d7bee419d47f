/* input.h -- turning command-line inputs (files, directories, globs, "-") into a sorted
 * list of readable inputs, each with its kind and size (private). */
#ifndef DBX_IO_INPUT_H
#define DBX_IO_INPUT_H
#include <stdint.h>
#include <stddef.h>
#include <sys/stat.h>
#include "dbatch.h"

typedef enum {
  IN_PLAIN,   /* regular uncompressed file: split by byte ranges, read by reference */
  IN_GZ,      /* gzip: streamed, cut by records */
  IN_ZST,     /* zstandard: streamed, cut by records */
  IN_STREAM   /* standard input or a pipe: streamed, cut by records */
} in_kind;

/* What was planned for an input: size, mtime and identity (device, inode) at expansion.
 * Every later read checks them (input_check), so a file truncated, rewritten or replaced
 * while a job runs fails the job naming the file instead of giving a wrong answer. */
typedef struct input {
  char *path;          /* owned; "-" for standard input */
  in_kind kind;
  uint64_t size;       /* bytes on disk (compressed size for .gz/.zst; 0 for streams) */
  int64_t mtime_ns;    /* for detecting changed inputs (while running, and on resume) */
  uint64_t dev, ino;   /* identity: a file replaced under the same name differs */
} input;

typedef struct inputs {
  input *v;
  size_t n;
} inputs;

/* Expand args into out (owned by the caller; free with inputs_free). Directories are walked
 * recursively in byte order of names, skipping names starting with '.' or '_' (hidden files
 * and markers such as _SUCCESS). A pattern with *, ? or [ that names no existing file is
 * globbed. Inputs are regular files or "-" (standard input): a FIFO, socket or device found
 * in a directory or by a pattern is skipped with a warning naming it; one given explicitly
 * is a usage error (opening it could block forever). A regular file whose size is 0 but
 * which yields bytes when read (procfs, sysfs) is read as a stream (kind IN_STREAM), since
 * byte ranges of it cannot be planned. Errors name the argument: missing,
 * unreadable, not a regular file, a glob matching nothing. */
int inputs_expand(char *const *args, size_t nargs, inputs *out, dbx_err *err);
void inputs_free(inputs *in);

/* Record st (from stat of x->path at planning) as x's plan: size, mtime, device, inode. */
void input_set_stat(input *x, const struct stat *st);
/* 0 when st (a fresh stat/fstat of x) matches the plan; DBX_ECHANGED with a message naming
 * the file and what changed otherwise. Streams (kind IN_STREAM) always match. */
int input_check(const input *x, const struct stat *st, dbx_err *err);
/* Stat every input again: DBX_ECHANGED naming the first one that is gone, replaced,
 * resized or modified since planning. Call it just before committing a result computed
 * from in. Costs one stat per input. */
int inputs_check_unchanged(const inputs *in, dbx_err *err);
/* The kind a path's name implies. */
in_kind input_kind_of(const char *path);
#endif
