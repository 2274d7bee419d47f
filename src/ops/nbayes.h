/* nbayes.h -- the text classifier: TF-IDF + multinomial naive Bayes with scikit-learn's
 * default semantics, as three operators (private).
 *
 *   nb_vocab    training documents -> document frequencies, class counts
 *               finish: vocabulary (every term, sorted) + idf = ln((1+n)/(1+df)) + 1
 *   nb_fit      training documents + vocabulary -> per-class sums of L2-normalised tf-idf rows
 *               finish: the model (feature_log_prob_, class_log_prior_, alpha = 1)
 *   nb_predict  test documents + model -> predictions (argmax of the joint log-likelihood,
 *               ties to the first class), probabilities, confusion counts
 *
 * Every stage's broadcast is an envelope: [inputs, payload], where inputs lists, per input
 * of the stage, [label or nil, display name] (labels of a directory corpus come from the
 * folder names), and payload is the previous stage's result (empty for nb_vocab). */
#ifndef DBX_OPS_NBAYES_H
#define DBX_OPS_NBAYES_H
#include <stdint.h>
#include "dbatch.h"
#include "io/corpus.h"

typedef struct nb_cfg {
  int format;   /* corpus_format */
  int proba;    /* nb_predict: keep per-class probabilities */
  int bad_fail; /* a line that is not a document fails the task (DBX_EBADREC) */
} nb_cfg;

extern const dbx_op op_nb_vocab, op_nb_fit, op_nb_predict;

/* The most documents one partial result may count, and the largest line number a
 * prediction may name: honest tasks and files are far below both. Partials above them are
 * refused, so that merging up to 2^24 partials cannot overflow a count. */
#define NB_DOCS_MAX (1ull << 40)
#define NB_LINE_MAX (1ull << 48)

/* Check a decoded partial of nb_fit / nb_predict against the stage's loaded broadcast (the
 * vocabulary / the model and input table): DBX_ECORRUPT with a message if the partial could
 * not have come from this stage. See ops_check_partial(). */
int nb_fit_check(const void *cfg, const void *bcast, const void *partial, dbx_err *err);
int nb_predict_check(const void *cfg, const void *bcast, const void *partial, dbx_err *err);

/* Does a decoded partial of op (one of the three) count exactly docs documents? 0, or
 * DBX_ECORRUPT with a message. See ops_check_result(). */
int nb_check_docs(const dbx_op *op, const void *partial, uint64_t docs, dbx_err *err);

/* Build a stage broadcast for corpus c around payload (may be empty). OUT out (appended). */
int nb_envelope(const corpus *c, const char *payload, size_t n, dbx_buf *out);

/* Class names of a model payload, for naming output columns. OUT: *names owned by the caller
 * (free each, then the array). Fails with DBX_EMODEL on a malformed model. */
int nb_model_classes(const char *model, size_t n, char ***names, uint32_t *nclass, uint32_t *nvocab,
                     dbx_err *err);

/* Model files: "DBXNBM01", payload length (u64 LE), payload, XXH64 of the payload (u64 LE);
 * or sqlite:PATH (table nb_model). Loading checks magic, length, checksum and contents,
 * and names the file in every error. */
int nb_model_save(const char *dest, const char *model, size_t n, dbx_err *err);
int nb_model_load(const char *src, dbx_buf *model, dbx_err *err);

/* Summary of a prediction stage, from its broadcast output. */
typedef struct nb_confusion {
  char *truth, *pred;   /* owned */
  uint64_t count;
} nb_confusion;
int nb_read_confusion(const char *p, size_t n, nb_confusion **out, size_t *nout, uint64_t *ndocs,
                      dbx_err *err);
#endif
