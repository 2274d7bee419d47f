/* corpus.h -- labelled document corpora for the text classifier (private).
 * A directory ROOT/<label>/<document> lists documents in the order scikit-learn's
 * load_files(shuffle=False) gives: label folders sorted by name, then each folder's files
 * sorted by name (every regular file, hidden ones too). A .tsv file holds one document a
 * line, "label<TAB>text"; a .jsonl file one object a line, {"label": ..., "text": ...}. */
#ifndef DBX_IO_CORPUS_H
#define DBX_IO_CORPUS_H
#include "dbatch.h"
#include "io/input.h"

typedef enum { CORPUS_DIR = 1, CORPUS_TSV = 2, CORPUS_JSONL = 3 } corpus_format;

typedef struct corpus {
  corpus_format format;
  inputs in;          /* DIR: one input per document; TSV: the file */
  char **label;       /* DIR: label of each input (owned); NULL for TSV */
  size_t nlabel;      /* entries of label (the inputs may be handed to a job apart) */
} corpus;

/* Open the corpus at path: a directory or a .tsv file. Errors name the path. */
int corpus_open(const char *path, corpus *c, dbx_err *err);
void corpus_free(corpus *c);
#endif
