/* nbayes.c -- TF-IDF + multinomial naive Bayes as three dbatch operators, with the exact
 * default semantics of scikit-learn's CountVectorizer -> TfidfTransformer -> MultinomialNB:
 * lowercase, tokens of two or more word characters, vocabulary of every training term in
 * sorted order, smooth idf, L2-normalised rows, alpha = 1, fitted class priors. */
#include "ops/nbayes.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "ops/ops.h"
#include "ops/tokenize.h"
#include "sink/sink.h"
#include "util/afile.h"
#include "util/json.h"
#include "util/mpk.h"
#include "util/strmap.h"

#define MODEL_TAG "dbatch-nb-model"
#define MODEL_VERSION 1
#define VOCAB_TAG "dbatch-nb-vocab"
#define FILE_MAGIC "DBXNBM01"

/* ---- the broadcast: envelope + payload ---- */

typedef struct nb_bc {
  char *blob;                    /* own copy: parsed objects point into it */
  msgpack_unpacked u;
  uint32_t ninputs;
  const msgpack_object *inputs;  /* [label|nil, name] */
  int has_payload;
  uint64_t ndocs;
  uint32_t C, V;
  const msgpack_object *classes; /* C str */
  uint64_t *class_count;
  strmap *class_ix;              /* label -> class index */
  const msgpack_object *terms;   /* V str, sorted: the vocabulary as received */
  strmap *vocab;                 /* term -> index, built on first use by a map (bc_vocab) */
  int vocab_shared;              /* vocab is vc_map (not this broadcast's own) */
  pthread_mutex_t mu;            /* task threads of a worker share one broadcast */
  msgpack_unpacked pu;           /* the payload, which terms and classes point into */
  double *idf, *flp, *prior;     /* V, C*V, C (flp/prior only in a model) */
} nb_bc;

/* The last vocabulary map made in this process, kept for the next stage: the fit stage's
 * vocabulary is the prediction stage's, and making a map of 150,000 terms cost each worker
 * about 40 ms at the start of each stage. Read-only once made; vc_refs broadcasts use it. */
static pthread_mutex_t vc_mu = PTHREAD_MUTEX_INITIALIZER;
static strmap *vc_map;
static int vc_refs;

static void vocab_release(nb_bc *b) {
  if (b->vocab_shared) {
    pthread_mutex_lock(&vc_mu);
    vc_refs--;
    pthread_mutex_unlock(&vc_mu);
  } else {
    strmap_free(b->vocab);
  }
  b->vocab = NULL;
  b->vocab_shared = 0;
}

static void bc_free(void *p) {
  nb_bc *b = p;
  if (!b) return;
  msgpack_unpacked_destroy(&b->u);
  msgpack_unpacked_destroy(&b->pu);
  pthread_mutex_destroy(&b->mu);
  strmap_free(b->class_ix);
  vocab_release(b);
  free(b->class_count);
  free(b->idf);
  free(b->flp);
  free(b->prior);
  free(b->blob);
  free(b);
}

/* n doubles from a bin of exactly n * 8 bytes; -1 if the size is wrong, -2 if one of them is
 * NaN or infinite (a model with such a weight predicts nonsense, so it is refused). */
static int get_doubles(const msgpack_object *o, size_t n, double **out) {
  if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != n * sizeof(double)) return -1;
  *out = malloc(n ? n * sizeof(double) : 1);
  if (!*out) return -1;
  if (n) memcpy(*out, o->via.bin.ptr, n * sizeof(double));
  for (size_t i = 0; i < n; i++)
    if (!isfinite((*out)[i])) return -2;
  return 0;
}

/* A name (class label, term) from a peer or a file: not empty, and no NUL, since names end
 * up as C strings, column names and keys that end at a NUL. */
static int good_name(const char *p, size_t n) { return n > 0 && !memchr(p, 0, n); }

/* Parse a vocabulary or model payload object into b. Checks every size and that the
 * vocabulary is strictly sorted, so a damaged model cannot pass as a good one. */
static int parse_payload(nb_bc *b, const msgpack_object *o, int want_model, dbx_err *err) {
  const char *what = want_model ? "model" : "vocabulary";
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 1) goto bad;
  const msgpack_object *a = o->via.array.ptr;
  uint32_t n = o->via.array.size;
  size_t k = 0;
  const char *tag = want_model ? MODEL_TAG : VOCAB_TAG;
  if (a[0].type != MSGPACK_OBJECT_STR || a[0].via.str.size != strlen(tag) ||
      memcmp(a[0].via.str.ptr, tag, strlen(tag)))
    return dbx_seterr(err, DBX_EMODEL, "not a dbatch naive Bayes %s", what);
  k = 1;
  if (want_model) {
    if (n != 9 || a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) goto bad;
    if (a[1].via.u64 != MODEL_VERSION)
      return dbx_seterr(err, DBX_EMODEL, "model format version %llu; this dbatch reads version %d",
                        (unsigned long long)a[1].via.u64, MODEL_VERSION);
    k = 2;
  } else if (n != 6) {
    goto bad;
  }
  if (a[k].type != MSGPACK_OBJECT_POSITIVE_INTEGER) goto bad;
  b->ndocs = a[k].via.u64;
  const msgpack_object *cl = &a[k + 1], *cc = &a[k + 2], *vo = &a[k + 3];
  if (cl->type != MSGPACK_OBJECT_ARRAY || cc->type != MSGPACK_OBJECT_ARRAY || vo->type != MSGPACK_OBJECT_ARRAY ||
      cl->via.array.size == 0 || cc->via.array.size != cl->via.array.size)
    goto bad;
  b->C = cl->via.array.size;
  b->V = vo->via.array.size;
  b->classes = cl->via.array.ptr;
  if (!(b->class_count = calloc(b->C, sizeof *b->class_count)) || !(b->class_ix = strmap_new()))
    return DBX_ENOMEM;
  for (uint32_t c = 0; c < b->C; c++) {
    const msgpack_object *s = &b->classes[c];
    if (s->type != MSGPACK_OBJECT_STR || !good_name(s->via.str.ptr, s->via.str.size) ||
        cc->via.array.ptr[c].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      goto bad;
    b->class_count[c] = cc->via.array.ptr[c].via.u64;
    uint32_t id;
    if (strmap_add(b->class_ix, s->via.str.ptr, s->via.str.size, 0, &id)) return DBX_ENOMEM;
    if (id != c) goto bad;  /* duplicate class */
  }
  const msgpack_object *prev = NULL;
  for (uint32_t j = 0; j < b->V; j++) {
    const msgpack_object *t = &vo->via.array.ptr[j];
    if (t->type != MSGPACK_OBJECT_STR || !good_name(t->via.str.ptr, t->via.str.size)) goto bad;
    if (prev) {
      size_t m = prev->via.str.size < t->via.str.size ? prev->via.str.size : t->via.str.size;
      int d = memcmp(prev->via.str.ptr, t->via.str.ptr, m);
      if (d > 0 || (d == 0 && prev->via.str.size >= t->via.str.size)) goto bad;  /* sorted, unique */
    }
    prev = t;
  }
  b->terms = vo->via.array.ptr;
  int g = get_doubles(&a[k + 4], b->V, &b->idf);
  const char *field = "idf_";
  if (!g && want_model) {
    field = "feature_log_prob_";
    g = get_doubles(&a[k + 5], (size_t)b->C * b->V, &b->flp);
    if (!g) {
      field = "class_log_prior_";
      g = get_doubles(&a[k + 6], b->C, &b->prior);
    }
  }
  if (g == -2)
    return dbx_seterr(err, DBX_EMODEL, "naive Bayes %s has a NaN or infinite weight in %s; it is damaged, train it again",
                      what, field);
  if (g) goto bad;
  /* idf = ln((1 + n) / (1 + df)) + 1 with df <= n: never below 1. A smaller one (negative
   * weights) would make sums no honest worker can produce. */
  for (uint32_t j = 0; j < b->V; j++)
    if (!(b->idf[j] >= 1.0))
      return dbx_seterr(err, DBX_EMODEL, "naive Bayes %s has an idf below 1 (term %u); it is damaged, train it again",
                        what, j);
  b->has_payload = 1;
  return 0;
bad:
  return dbx_seterr(err, DBX_EMODEL, "malformed naive Bayes %s", what);
}

static int bc_load(int want_model, const char *p, size_t n, void **out, dbx_err *err) {
  nb_bc *b = calloc(1, sizeof *b);
  if (!b) return DBX_ENOMEM;
  msgpack_unpacked_init(&b->u);
  msgpack_unpacked_init(&b->pu);
  pthread_mutex_init(&b->mu, NULL);
  b->blob = malloc(n ? n : 1);
  if (!b->blob) { bc_free(b); return DBX_ENOMEM; }
  memcpy(b->blob, p, n);
  size_t off = 0;
  int rc = 0;
  if (msgpack_unpack_next(&b->u, b->blob, n, &off) != MSGPACK_UNPACK_SUCCESS || off != n ||
      b->u.data.type != MSGPACK_OBJECT_ARRAY || b->u.data.via.array.size != 2 ||
      b->u.data.via.array.ptr[0].type != MSGPACK_OBJECT_ARRAY ||
      b->u.data.via.array.ptr[1].type != MSGPACK_OBJECT_BIN) {
    rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed stage broadcast");
    goto done;
  }
  const msgpack_object *tab = &b->u.data.via.array.ptr[0];
  b->ninputs = tab->via.array.size;
  b->inputs = tab->via.array.ptr;
  for (uint32_t i = 0; i < b->ninputs; i++) {
    const msgpack_object *e = &b->inputs[i];
    if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
        (e->via.array.ptr[0].type != MSGPACK_OBJECT_STR && e->via.array.ptr[0].type != MSGPACK_OBJECT_NIL) ||
        (e->via.array.ptr[0].type == MSGPACK_OBJECT_STR &&
         !good_name(e->via.array.ptr[0].via.str.ptr, e->via.array.ptr[0].via.str.size)) ||
        e->via.array.ptr[1].type != MSGPACK_OBJECT_STR) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed input table");
      goto done;
    }
  }
  const msgpack_object *pl = &b->u.data.via.array.ptr[1];
  if (want_model >= 0 && pl->via.bin.size) {
    /* The payload is a msgpack document of its own, inside the bin. */
    size_t po = 0;
    if (msgpack_unpack_next(&b->pu, pl->via.bin.ptr, pl->via.bin.size, &po) != MSGPACK_UNPACK_SUCCESS ||
        po != pl->via.bin.size)
      rc = dbx_seterr(err, DBX_EMODEL, "malformed naive Bayes %s", want_model ? "model" : "vocabulary");
    else
      rc = parse_payload(b, &b->pu.data, want_model, err);
  }
done:
  if (rc) bc_free(b);
  else *out = b;
  return rc;
}

static int bc_load_none(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  return bc_load(-1, p, n, out, err);
}
static int bc_load_vocab(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  return bc_load(0, p, n, out, err);
}
static int bc_load_model(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  return bc_load(1, p, n, out, err);
}

/* The term -> index map, built once per broadcast by whichever task needs it first: the
 * coordinator, which only finishes stages, never pays for it. */
/* Does m map exactly b's terms, term j to j? (A whole comparison: no hash decides.) */
static int same_terms(const strmap *m, const nb_bc *b) {
  if (strmap_count(m) != b->V) return 0;
  for (uint32_t j = 0; j < b->V; j++) {
    size_t n;
    const char *k = strmap_key(m, j, &n);
    if (n != b->terms[j].via.str.size || (n && memcmp(k, b->terms[j].via.str.ptr, n))) return 0;
  }
  return 1;
}

static const strmap *bc_vocab(nb_bc *b) {
  pthread_mutex_lock(&b->mu);
  if (!b->vocab) {
    pthread_mutex_lock(&vc_mu);
    if (vc_map && same_terms(vc_map, b)) {
      b->vocab = vc_map;
      b->vocab_shared = 1;
      vc_refs++;
    }
    pthread_mutex_unlock(&vc_mu);
  }
  if (!b->vocab) {
    strmap *m = strmap_new();
    if (m && strmap_reserve(m, b->V)) strmap_free(m), m = NULL;
    /* Hashed and their slots prefetched 16 terms ahead: the cache misses overlap. */
    uint64_t h[16];
    for (uint32_t j0 = 0; m && j0 < b->V; j0 += 16) {
      uint32_t n = b->V - j0 < 16 ? b->V - j0 : 16;
      for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *t = &b->terms[j0 + i];
        h[i] = t->via.str.size ? strmap_hash(t->via.str.ptr, t->via.str.size) : 0;
        strmap_prefetch(m, h[i]);
      }
      for (uint32_t i = 0; m && i < n; i++) {
        const msgpack_object *t = &b->terms[j0 + i];
        if (strmap_add_hashed(m, t->via.str.ptr, t->via.str.size, h[i], 0, NULL)) strmap_free(m), m = NULL;
      }
    }
    b->vocab = m;
    if (m) {  /* kept for the next stage, unless the one kept is still in use */
      pthread_mutex_lock(&vc_mu);
      if (!vc_refs) {
        strmap_free(vc_map);
        vc_map = m;
        vc_refs = 1;
        b->vocab_shared = 1;
      }
      pthread_mutex_unlock(&vc_mu);
    }
  }
  pthread_mutex_unlock(&b->mu);
  return b->vocab;
}

static const char *class_name(const nb_bc *b, uint32_t c, size_t *len) { return strmap_key(b->class_ix, c, len); }

int nb_envelope(const corpus *c, const char *payload, size_t n, dbx_buf *out) {
  if (n > UINT32_MAX || c->in.n > UINT32_MAX) return DBX_EINVAL;
  mpk m;
  msgpack_packer *pk = mpk_open(&m, out);
  msgpack_pack_array(pk, 2);
  msgpack_pack_array(pk, (uint32_t)c->in.n);
  for (size_t i = 0; i < c->in.n; i++) {
    msgpack_pack_array(pk, 2);
    if (c->label) msgpack_pack_str_with_body(pk, c->label[i], strlen(c->label[i]));
    else msgpack_pack_nil(pk);
    msgpack_pack_str_with_body(pk, c->in.v[i].path, strlen(c->in.v[i].path));
  }
  msgpack_pack_bin_with_body(pk, n ? payload : "", n);
  return mpk_close(&m);
}

/* ---- documents of a batch ---- */

typedef struct nb_doc {
  const char *text, *label;
  size_t len, label_len;
  uint32_t input;
  int64_t line;    /* 1-based line of a TSV document, -1 for a file document */
} nb_doc;

typedef struct doc_iter {
  const nb_cfg *cfg;
  const nb_bc *bc;
  const dbx_batch *b;
  uint32_t seg;
  size_t pos;
  uint64_t line;
  dbx_buf json;     /* decoded label and text of a JSONL document */
} doc_iter;

static void doc_iter_free(doc_iter *it) { dbx_buf_free(&it->json); }

/* A line that is not a document: noted and skipped, or DBX_EBADREC under --on-bad-record=fail. */
static int bad_line(doc_iter *it, const char *line, const char *why, dbx_stats *st, dbx_err *err) {
  char where[512];
  if (!it->cfg->bad_fail && st->bad_records) {  /* only the first is noted: no need to find where */
    st->bad_records++;
    return 0;
  }
  dbx_batch_where(it->b, (size_t)(line - it->b->data), where, sizeof where);
  if (it->cfg->bad_fail) return dbx_seterr(err, DBX_EBADREC, "bad record at %s: %s", where, why);
  if (!st->bad_records++) snprintf(st->bad_note, sizeof st->bad_note, "%.200s: %s", where, why);
  return 0;
}

/* 1 = a document, 0 = done, < 0 = error. Lines of a TSV corpus without a tab are bad records:
 * counted and skipped. */
static int doc_next(doc_iter *it, nb_doc *d, dbx_stats *st, dbx_err *err) {
  const dbx_batch *b = it->b;
  if (!it->bc) return dbx_seterr(err, DBX_EPROTO, "naive Bayes: the stage has no broadcast (input table)");
  while (it->seg < b->nseg) {
    const dbx_segment *s = &b->seg[it->seg];
    if (s->input >= it->bc->ninputs)
      return dbx_seterr(err, DBX_EPROTO, "%s: input %u not in the stage's input table", s->path, s->input);
    const msgpack_object *e = it->bc->inputs[s->input].via.array.ptr;
    if (it->cfg->format == CORPUS_DIR) {
      d->text = b->data + s->data_off;
      d->len = s->data_len;
      if (e[0].type != MSGPACK_OBJECT_STR) return dbx_seterr(err, DBX_EPROTO, "%s: no label", s->path);
      d->label = e[0].via.str.ptr;
      d->label_len = e[0].via.str.size;
      d->input = s->input;
      d->line = -1;
      it->seg++;
      st->records++;
      return 1;
    }
    const char *p = b->data + s->data_off, *end = p + s->data_len;
    if (it->pos == 0) it->line = s->rec_first != DBX_UNKNOWN ? s->rec_first : 0;
    while (p + it->pos < end) {
      const char *ls = p + it->pos;
      const char *nl = memchr(ls, '\n', (size_t)(end - ls));
      const char *le = nl ? nl : end;
      it->pos = (size_t)(le - p) + (nl ? 1 : 0);
      it->line++;
      st->records++;
      if (it->cfg->format == CORPUS_JSONL) {
        static const char *const keys[] = {"label", "text"};
        size_t off[2], len[2];
        const char *why;
        if (json_object_strings(ls, (size_t)(le - ls), keys, 2, &it->json, off, len, &why) ||
            len[0] == SIZE_MAX || len[0] == 0 || len[1] == SIZE_MAX || memchr(it->json.data + off[0], 0, len[0])) {
          int rc = bad_line(it, ls, "not a JSON object with string \"label\" and \"text\"", st, err);
          if (rc) return rc;
          continue;
        }
        d->label = it->json.data + off[0];
        d->label_len = len[0];
        d->text = it->json.data + off[1];
        d->len = len[1];
      } else {
        const char *tab = memchr(ls, '\t', (size_t)(le - ls));
        if (!tab || tab == ls || memchr(ls, 0, (size_t)(tab - ls))) {  /* labels are text */
          int rc = bad_line(it, ls, "not label<TAB>text", st, err);
          if (rc) return rc;
          continue;
        }
        d->label = ls;
        d->label_len = (size_t)(tab - ls);
        d->text = tab + 1;
        d->len = (size_t)(le - tab - 1);
      }
      d->input = s->input;
      d->line = (int64_t)it->line;
      return 1;
    }
    it->seg++;
    it->pos = 0;
  }
  return 0;
}

/* ---- stage 1: document frequencies ---- */

typedef struct vpart {
  strmap *terms;    /* term -> df */
  uint32_t *stamp;  /* last document that counted each term */
  size_t scap;
  strmap *labels;   /* label -> documents */
  uint64_t ndocs;
} vpart;

static void *v_new(const void *cfg) {
  vpart *v = calloc(1, sizeof *v);
  if (!v) return NULL;
  v->terms = strmap_new();
  v->labels = strmap_new();
  if (!v->terms || !v->labels) {
    strmap_free(v->terms);
    strmap_free(v->labels);
    free(v);
    return NULL;
  }
  return v;
}

static void v_free(void *p) {
  vpart *v = p;
  if (!v) return;
  strmap_free(v->terms);
  strmap_free(v->labels);
  free(v->stamp);
  free(v);
}

static int v_map(const void *cfg, const void *bc, const dbx_batch *b, void *part, dbx_stats *st, dbx_err *err) {
  vpart *v = part;
  if (!bc) return dbx_seterr(err, DBX_EPROTO, "naive Bayes vocabulary: the stage has no broadcast (input table)");
  doc_iter it = {cfg, bc, b, 0, 0, 0, {0}};
  nb_doc d;
  tok t;
  tok_init(&t, "", 0, 1, 2);
  int rc;
  while ((rc = doc_next(&it, &d, st, err)) == 1) {
    v->ndocs++;
    uint32_t stamp = (uint32_t)v->ndocs;
    if ((rc = strmap_add(v->labels, d.label, d.label_len, 1, NULL))) break;
    tok_reset(&t, d.text, d.len);
    const char *w;
    size_t n;
    while ((rc = tok_next(&t, &w, &n)) == 1) {
      uint32_t id;
      if ((rc = strmap_add(v->terms, w, n, 0, &id))) break;
      if (id >= v->scap) {
        size_t nc = v->scap ? v->scap * 2 : 4096;
        while (nc <= id) nc *= 2;
        uint32_t *ns = realloc(v->stamp, nc * sizeof *ns);
        if (!ns) { rc = DBX_ENOMEM; break; }
        memset(ns + v->scap, 0, (nc - v->scap) * sizeof *ns);
        v->stamp = ns;
        v->scap = nc;
      }
      if (v->stamp[id] != stamp) {  /* df counts documents, not occurrences */
        v->stamp[id] = stamp;
        strmap_setval(v->terms, id, strmap_val(v->terms, id) + 1);
      }
    }
    if (rc < 0) break;
  }
  tok_free(&t);
  doc_iter_free(&it);
  return rc < 0 ? (err && err->code == rc ? rc : dbx_seterr(err, rc, "naive Bayes: %s", dbx_strerror(rc))) : 0;
}

static int add_map(strmap *l, const strmap *r) {
  size_t n = strmap_count(r);
  for (uint32_t i = 0; i < n; i++) {
    size_t len;
    const char *k = strmap_key(r, i, &len);
    if (strmap_add_hashed(l, k, len, strmap_hash_of(r, i), strmap_val(r, i), NULL)) return DBX_ENOMEM;
  }
  return 0;
}

static int v_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  vpart *l = left;
  const vpart *r = right;
  if (l->ndocs + r->ndocs < l->ndocs)
    return dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: document count overflows (a malformed partial result?)");
  l->ndocs += r->ndocs;
  if (add_map(l->terms, r->terms) || add_map(l->labels, r->labels)) return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  return 0;
}

static void pack_map(msgpack_packer *pk, const strmap *m) {
  size_t n = strmap_count(m);
  msgpack_pack_array(pk, (uint32_t)(2 * n));
  for (uint32_t i = 0; i < n; i++) {
    size_t len;
    const char *k = strmap_key(m, i, &len);
    msgpack_pack_str_with_body(pk, k, len);
    msgpack_pack_uint64(pk, strmap_val(m, i));
  }
}

static int v_encode(const void *cfg, const void *part, dbx_buf *out, dbx_err *err) {
  const vpart *v = part;
  mpk m;
  msgpack_packer *pk = mpk_open(&m, out);
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint64(pk, v->ndocs);
  pack_map(pk, v->labels);
  pack_map(pk, v->terms);
  return mpk_close(&m) ? dbx_seterr(err, DBX_ENOMEM, "naive Bayes: out of memory encoding a partial result") : 0;
}

/* Fill the fresh map m from [key, count, ...]: counts 1..max and each key once; keys are names
 * (labels), or terms the tokenizer can emit (terms = 1: ops_word_ok, at least 2 code points).
 * *sum = the sum of the counts (no overflow). One pass: a key met twice is found by the map
 * not growing. -1 if not so, DBX_ENOMEM. */
static int fill_map(const msgpack_object *o, uint64_t max, int terms, strmap *m, uint64_t *sum) {
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size % 2) return -1;
  if (strmap_count(m)) return -1;
  if (strmap_reserve(m, o->via.array.size / 2)) return DBX_ENOMEM;
  uint64_t t = 0;
  for (uint32_t i = 0; i < o->via.array.size; i += 2) {
    const msgpack_object *k = &o->via.array.ptr[i], *v = &o->via.array.ptr[i + 1];
    if (k->type != MSGPACK_OBJECT_STR || !good_name(k->via.str.ptr, k->via.str.size) ||
        (terms && (!ops_word_ok(k->via.str.ptr, k->via.str.size) || k->via.str.size < 2)) ||
        v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 == 0 || v->via.u64 > max || t + v->via.u64 < t)
      return -1;
    size_t before = strmap_count(m);
    if (strmap_add(m, k->via.str.ptr, k->via.str.size, v->via.u64, NULL)) return DBX_ENOMEM;
    if (strmap_count(m) == before) return -1;  /* a key twice: an honest partial counts each once */
    t += v->via.u64;
  }
  if (sum) *sum = t;
  return 0;
}

/* A partial from its encoding, checked whole (DBX_ECORRUPT): every document has one label
 * (the label counts add up to the documents), and a term is in 1..documents documents. */
static int v_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  vpart *v = v_new(cfg);
  if (!v) return DBX_ENOMEM;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int rc = 0;
  uint64_t nd = 0, labelled = 0;
  const msgpack_object *a = NULL;
  if (msgpack_unpack_next(&u, p, n, &off) == MSGPACK_UNPACK_SUCCESS && off == n && u.data.type == MSGPACK_OBJECT_ARRAY &&
      u.data.via.array.size == 3 && u.data.via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    a = u.data.via.array.ptr;
  if (a) nd = a[0].via.u64;
  int c1 = 0, c2 = 0;
  if (a && nd <= NB_DOCS_MAX) c1 = fill_map(&a[1], nd, 0, v->labels, &labelled);
  if (a && nd <= NB_DOCS_MAX && !c1) c2 = fill_map(&a[2], nd, 1, v->terms, NULL);
  if (c1 == DBX_ENOMEM || c2 == DBX_ENOMEM)
    rc = DBX_ENOMEM;
  else if (!a || nd > NB_DOCS_MAX || c1 || labelled != nd || c2)
    rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed partial result (document frequencies)");
  else
    v->ndocs = nd;
  msgpack_unpacked_destroy(&u);
  if (rc) v_free(v);
  else *out = v;
  return rc;
}

/* left += an encoded partial. It is decoded and checked whole before anything is added, so a
 * rejected partial (DBX_ECORRUPT) leaves left unchanged; only DBX_ENOMEM can leave it half
 * merged (and fails the job). */
static int v_merge_encoded(const void *cfg, void *left, const char *p, size_t n, dbx_err *err) {
  void *r = NULL;
  int rc = v_decode(cfg, p, n, &r, err);
  if (!rc) rc = v_merge(cfg, left, r, err);
  v_free(r);
  return rc;
}

typedef struct kref {
  uint64_t pre;  /* the key's first 8 bytes, big-endian, zero-padded: most comparisons end here */
  const char *k;
  size_t n;
  uint64_t v;
} kref;

static int cmp_kref(const void *a, const void *b) {
  const kref *x = a, *y = b;
  if (x->pre != y->pre) return x->pre < y->pre ? -1 : 1;
  int c = memcmp(x->k, y->k, x->n < y->n ? x->n : y->n);
  return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* The keys of m in byte (= code point) order: the order of sorted() on str. */
static kref *sorted_keys(const strmap *m) {
  size_t n = strmap_count(m);
  kref *r = malloc((n ? n : 1) * sizeof *r);
  if (!r) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    r[i].k = strmap_key(m, i, &r[i].n);
    r[i].v = strmap_val(m, i);
    r[i].pre = 0;
    for (size_t b = 0; b < 8; b++) r[i].pre = r[i].pre << 8 | (b < r[i].n ? (unsigned char)r[i].k[b] : 0);
  }
  qsort(r, n, sizeof *r, cmp_kref);
  return r;
}

static int v_finish(const void *cfg, const void *bc, void *part, dbx_emit_fn emit, void *ctx,
                    dbx_buf *bcast, dbx_err *err) {
  vpart *v = part;
  if (v->ndocs == 0) return dbx_seterr(err, DBX_EINVAL, "no training documents");
  size_t C = strmap_count(v->labels), V = strmap_count(v->terms);
  if (C > UINT32_MAX || V > UINT32_MAX) return dbx_seterr(err, DBX_EINVAL, "naive Bayes: too many classes or terms");
  kref *cl = sorted_keys(v->labels), *vo = sorted_keys(v->terms);
  double *idf = malloc((V ? V : 1) * sizeof *idf);
  int rc = 0;
  if (!cl || !vo || !idf) { rc = DBX_ENOMEM; goto done; }
  /* Shapes are checked when partials are decoded; a merged total that still disagrees came
   * from partials that do not belong together. */
  uint64_t labelled = 0;
  for (size_t c = 0; c < C; c++) labelled += cl[c].v;
  for (size_t j = 0; j < V && labelled == v->ndocs; j++)
    if (vo[j].v > v->ndocs) labelled = v->ndocs + 1;
  if (labelled != v->ndocs) {
    rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: inconsistent document frequencies (merged partial results disagree)");
    goto done;
  }
  /* smooth_idf: as if one more document contained every term once. */
  for (size_t j = 0; j < V; j++) idf[j] = log((double)(1 + v->ndocs) / (double)(1 + vo[j].v)) + 1.0;
  if ((uint64_t)V * sizeof *idf > UINT32_MAX) {
    rc = dbx_seterr(err, DBX_EINVAL, "naive Bayes: a vocabulary of %zu terms is too large to broadcast", V);
    goto done;
  }
  dbx_buf payload = {0};
  mpk m;
  msgpack_packer *pk = mpk_open(&m, &payload);
  msgpack_pack_array(pk, 6);
  msgpack_pack_str_with_body(pk, VOCAB_TAG, strlen(VOCAB_TAG));
  msgpack_pack_uint64(pk, v->ndocs);
  msgpack_pack_array(pk, (uint32_t)C);
  for (size_t c = 0; c < C; c++) msgpack_pack_str_with_body(pk, cl[c].k, cl[c].n);
  msgpack_pack_array(pk, (uint32_t)C);
  for (size_t c = 0; c < C; c++) msgpack_pack_uint64(pk, cl[c].v);
  msgpack_pack_array(pk, (uint32_t)V);
  for (size_t j = 0; j < V; j++) msgpack_pack_str_with_body(pk, vo[j].k, vo[j].n);
  msgpack_pack_bin_with_body(pk, V ? (const char *)idf : "", V * sizeof *idf);
  if (mpk_close(&m) || dbx_buf_append(bcast, payload.data, payload.len)) rc = DBX_ENOMEM;
  dbx_buf_free(&payload);
done:
  free(cl);
  free(vo);
  free(idf);
  return rc;
}

/* ---- tf-idf of one document ---- */

typedef struct tfidf {
  uint32_t *cnt;    /* V counts, zero between documents */
  uint32_t *touch;  /* terms of the current document */
  double *w;
  size_t nt, cap;
  tok t;
  dbx_buf pend;     /* words of the pipeline that live in the tokenizer's scratch */
} tfidf;

static int tfidf_init(tfidf *x, uint32_t V) {
  memset(x, 0, sizeof *x);
  x->cnt = calloc(V ? V : 1, sizeof *x->cnt);
  tok_init(&x->t, "", 0, 1, 2);
  return x->cnt ? 0 : DBX_ENOMEM;
}

static void tfidf_free(tfidf *x) {
  free(x->cnt);
  free(x->touch);
  free(x->w);
  tok_free(&x->t);
  dbx_buf_free(&x->pend);
}

/* Count the known terms of d, then weights w[k] for terms touch[k]: count * idf, divided by
 * the row's L2 norm (a document with no known term stays all zero). Unknown terms are
 * ignored, as the vectorizer drops them. */
static int tfidf_term(tfidf *x, int64_t j) {
  if (j < 0 || x->cnt[j]++) return 0;
  if (x->nt == x->cap) {
    size_t nc = x->cap ? x->cap * 2 : 256;
    uint32_t *nt = realloc(x->touch, nc * sizeof *nt);
    double *nw = realloc(x->w, nc * sizeof *nw);
    if (nt) x->touch = nt;
    if (nw) x->w = nw;
    if (!nt || !nw) return DBX_ENOMEM;
    x->cap = nc;
  }
  x->touch[x->nt++] = (uint32_t)j;
  return 0;
}

/* Terms are looked up TF_PIPE behind the tokenizer, their slots prefetched when they are
 * hashed: the vocabulary is larger than the cache. */
#define TF_PIPE 8

static int tfidf_doc(tfidf *x, const nb_bc *b, const strmap *vocab, const nb_doc *d) {
  tok_reset(&x->t, d->text, d->len);
  x->nt = 0;
  const char *w;
  size_t n;
  int rc;
  const char *ptr[TF_PIPE];
  size_t len[TF_PIPE], off[TF_PIPE];
  uint64_t hash[TF_PIPE];
  int q = 0;
  x->pend.len = 0;
  for (;;) {
    rc = tok_next(&x->t, &w, &n);
    int done = rc != 1;
    if (rc == 1) {
      len[q] = n;
      hash[q] = strmap_hash(w, n);
      strmap_prefetch(vocab, hash[q]);
      if (w >= d->text && w < d->text + d->len) {
        ptr[q] = w;
      } else {
        ptr[q] = NULL;
        off[q] = x->pend.len;
        if (dbx_buf_append(&x->pend, w, n)) return DBX_ENOMEM;
      }
      if (++q < TF_PIPE) continue;
    }
    if (rc < 0) return rc;
    for (int i = 0; i < q; i++) {
      int r2 = tfidf_term(x, strmap_find_hashed(vocab, ptr[i] ? ptr[i] : x->pend.data + off[i], len[i], hash[i]));
      if (r2) return r2;
    }
    q = 0;
    x->pend.len = 0;
    if (done) break;
  }
  if (rc < 0) return rc;
  double ss = 0;
  for (size_t k = 0; k < x->nt; k++) {
    uint32_t j = x->touch[k];
    x->w[k] = (double)x->cnt[j] * b->idf[j];
    ss += x->w[k] * x->w[k];
    x->cnt[j] = 0;
  }
  double norm = sqrt(ss);
  if (norm > 0)
    for (size_t k = 0; k < x->nt; k++) x->w[k] /= norm;
  return 0;
}

static int doc_class(const nb_bc *b, const nb_doc *d, uint32_t *c, dbx_err *err) {
  int64_t k = strmap_find(b->class_ix, d->label, d->label_len);
  if (k < 0)
    return dbx_seterr(err, DBX_ECHANGED, "label '%.*s' was not seen by the vocabulary stage (input changed?)",
                      (int)d->label_len, d->label);
  *c = (uint32_t)k;
  return 0;
}

/* ---- stage 2: per-class feature sums ---- */

typedef struct fpart {
  uint32_t C, V;
  double *fc;      /* C*V sums of normalised tf-idf */
  uint64_t *cc;    /* documents per class */
} fpart;

static void *f_new(const void *cfg) { return calloc(1, sizeof(fpart)); }

static void f_free(void *p) {
  fpart *f = p;
  if (!f) return;
  free(f->fc);
  free(f->cc);
  free(f);
}

static int f_alloc(fpart *f, uint32_t C, uint32_t V) {
  f->C = C;
  f->V = V;
  f->fc = calloc((C && V) ? (size_t)C * V : 1, sizeof *f->fc);
  f->cc = calloc(C ? C : 1, sizeof *f->cc);
  return f->fc && f->cc ? 0 : DBX_ENOMEM;
}

static int f_map(const void *cfg, const void *bcv, const dbx_batch *b, void *part, dbx_stats *st, dbx_err *err) {
  const nb_bc *bc = bcv;
  fpart *f = part;
  if (!bc || !bc->has_payload) return dbx_seterr(err, DBX_EPROTO, "naive Bayes fit: no vocabulary");
  if (!f->fc && f_alloc(f, bc->C, bc->V)) return DBX_ENOMEM;
  const strmap *vocab = bc_vocab((nb_bc *)bc);
  if (!vocab) return DBX_ENOMEM;
  tfidf x;
  if (tfidf_init(&x, bc->V)) return DBX_ENOMEM;
  doc_iter it = {cfg, bc, b, 0, 0, 0, {0}};
  nb_doc d;
  int rc;
  while ((rc = doc_next(&it, &d, st, err)) == 1) {
    uint32_t c = 0;
    if ((rc = doc_class(bc, &d, &c, err))) break;
    if ((rc = tfidf_doc(&x, bc, vocab, &d))) break;
    f->cc[c]++;
    double *row = f->fc + (size_t)c * f->V;
    for (size_t k = 0; k < x.nt; k++) row[x.touch[k]] += x.w[k];
  }
  tfidf_free(&x);
  doc_iter_free(&it);
  return rc < 0 ? rc : 0;
}

static int f_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  fpart *l = left;
  const fpart *r = right;
  if (!r->fc) return 0;
  if (!l->fc && f_alloc(l, r->C, r->V)) return DBX_ENOMEM;
  if (l->C != r->C || l->V != r->V) return dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: partials of different shapes");
  for (uint32_t c = 0; c < l->C; c++)
    if (l->cc[c] + r->cc[c] < l->cc[c]) return dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: class counts overflow");
  size_t n = (size_t)l->C * l->V;
  for (size_t i = 0; i < n; i++) l->fc[i] += r->fc[i];
  for (uint32_t c = 0; c < l->C; c++) l->cc[c] += r->cc[c];
  return 0;
}

static int f_encode(const void *cfg, const void *part, dbx_buf *out, dbx_err *err) {
  const fpart *f = part;
  size_t n = f->fc ? (size_t)f->C * f->V * sizeof(double) : 0;
  if (n > UINT32_MAX)
    return dbx_seterr(err, DBX_EINVAL, "naive Bayes: %u classes x %u terms is too large a partial result", f->C, f->V);
  mpk m;
  msgpack_packer *pk = mpk_open(&m, out);
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint32(pk, f->fc ? f->C : 0);
  msgpack_pack_uint32(pk, f->fc ? f->V : 0);
  uint32_t C = f->fc ? f->C : 0;
  msgpack_pack_array(pk, C);
  for (uint32_t c = 0; c < C; c++) msgpack_pack_uint64(pk, f->cc[c]);
  msgpack_pack_bin_with_body(pk, n ? (const char *)f->fc : "", n);
  return mpk_close(&m) ? dbx_seterr(err, DBX_ENOMEM, "naive Bayes: out of memory encoding a partial result") : 0;
}

static int f_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  fpart *f = f_new(cfg);
  int ok = f && msgpack_unpack_next(&u, p, n, &off) == MSGPACK_UNPACK_SUCCESS && off == n &&
           u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size == 4;
  const msgpack_object *a = ok ? u.data.via.array.ptr : NULL;
  /* C x V x 8 is compared without overflow: C, V < 2^32 and the bin is < 2^32 bytes. */
  ok = ok && a[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && a[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
       a[0].via.u64 <= UINT32_MAX && a[1].via.u64 <= UINT32_MAX && a[2].type == MSGPACK_OBJECT_ARRAY &&
       a[2].via.array.size == a[0].via.u64 && a[3].type == MSGPACK_OBJECT_BIN &&
       (a[0].via.u64 == 0 ? a[1].via.u64 == 0 : a[1].via.u64 <= UINT32_MAX / a[0].via.u64) &&
       a[3].via.bin.size == a[0].via.u64 * a[1].via.u64 * sizeof(double);
  if (ok && a[0].via.u64) {
    ok = !f_alloc(f, (uint32_t)a[0].via.u64, (uint32_t)a[1].via.u64);
    for (uint32_t c = 0; ok && c < f->C; c++) {
      ok = a[2].via.array.ptr[c].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
      if (ok) f->cc[c] = a[2].via.array.ptr[c].via.u64;
    }
    if (ok) memcpy(f->fc, a[3].via.bin.ptr, a[3].via.bin.size);
    /* Sums of L2-normalised rows: finite and not negative. */
    size_t nv = (size_t)f->C * f->V;
    for (size_t i = 0; ok && i < nv; i++) ok = isfinite(f->fc[i]) && f->fc[i] >= 0;
  }
  msgpack_unpacked_destroy(&u);
  if (!ok) {
    f_free(f);
    return dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed partial result (class sums)");
  }
  *out = f;
  return 0;
}

/* A fit partial against the stage's vocabulary: the shape the vocabulary gives (classes x
 * terms), or empty; class counts that add up without overflow. */
int nb_fit_check(const void *cfg, const void *bcv, const void *part, dbx_err *err) {
  const nb_bc *bc = bcv;
  const fpart *f = part;
  if (!bc || !bc->has_payload) return dbx_seterr(err, DBX_EPROTO, "naive Bayes fit: no vocabulary");
  if (!f->fc) return 0;
  if (f->C != bc->C || f->V != bc->V)
    return dbx_seterr(err, DBX_ECORRUPT,
                      "naive Bayes: partial result of %u classes x %u terms, but the vocabulary has %u x %u", f->C, f->V,
                      bc->C, bc->V);
  /* A fit partial counts documents the vocabulary stage counted too: no class can have more
   * than the vocabulary gave it (which also keeps every sum of partials far from overflow),
   * and a sum of L2-normalised rows is at most the class's documents in each term. */
  for (uint32_t c = 0; c < f->C; c++) {
    if (f->cc[c] > bc->class_count[c] || f->cc[c] > NB_DOCS_MAX)
      return dbx_seterr(err, DBX_ECORRUPT,
                        "naive Bayes: partial result counts %llu documents of class %u, but the vocabulary has %llu",
                        (unsigned long long)f->cc[c], c, (unsigned long long)bc->class_count[c]);
    const double *row = f->fc + (size_t)c * f->V;
    double lim = (double)f->cc[c] * (1 + 1e-9);
    for (uint32_t j = 0; j < f->V; j++)
      if (row[j] > lim)
        return dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: partial result has a weight sum of %g for class %u, term %u, over its %llu documents",
                          row[j], c, j, (unsigned long long)f->cc[c]);
  }
  return 0;
}

static int f_finish(const void *cfg, const void *bcv, void *part, dbx_emit_fn emit, void *ctx,
                    dbx_buf *bcast, dbx_err *err) {
  const nb_bc *bc = bcv;
  fpart *f = part;
  int rc = nb_fit_check(cfg, bcv, part, err);
  if (rc) return rc;
  if (!f->fc) return dbx_seterr(err, DBX_EINVAL, "no training documents");
  uint32_t C = f->C, V = f->V;
  uint64_t total = 0;
  for (uint32_t c = 0; c < C; c++) total += f->cc[c];  /* each <= its vocabulary count: checked */
  if (total == 0) return dbx_seterr(err, DBX_EINVAL, "no training documents");
  for (uint32_t c = 0; c < C; c++)
    if (f->cc[c] == 0) {
      size_t n;
      const char *k = class_name(bc, c, &n);
      return dbx_seterr(err, DBX_ECHANGED, "class '%.*s' has no training documents left (skipped tasks, or the input changed)",
                        (int)(n > 200 ? 200 : n), k);
    }
  if ((uint64_t)C * V * sizeof(double) > UINT32_MAX)
    return dbx_seterr(err, DBX_EINVAL, "naive Bayes: %u classes x %u terms is too large a model", C, V);
  double *flp = malloc(((C && V) ? (size_t)C * V : 1) * sizeof *flp), *prior = malloc(C * sizeof *prior);
  if (!flp || !prior) { rc = DBX_ENOMEM; goto done; }
  for (uint32_t c = 0; c < C; c++) {
    /* MultinomialNB, alpha = 1: log((fc + 1) / sum_j(fc + 1)); prior = log(cc / n). */
    const double *row = f->fc + (size_t)c * V;
    double sum = 0;
    for (uint32_t j = 0; j < V; j++) sum += row[j] + 1.0;
    double ls = log(sum);
    for (uint32_t j = 0; j < V; j++) flp[(size_t)c * V + j] = log(row[j] + 1.0) - ls;
    prior[c] = log((double)f->cc[c]) - log((double)total);
  }
  dbx_buf payload = {0};
  mpk m;
  msgpack_packer *pk = mpk_open(&m, &payload);
  msgpack_pack_array(pk, 9);
  msgpack_pack_str_with_body(pk, MODEL_TAG, strlen(MODEL_TAG));
  msgpack_pack_uint32(pk, MODEL_VERSION);
  msgpack_pack_uint64(pk, total);
  msgpack_pack_array(pk, C);
  for (uint32_t c = 0; c < C; c++) {
    size_t n;
    const char *k = class_name(bc, c, &n);
    msgpack_pack_str_with_body(pk, k, n);
  }
  msgpack_pack_array(pk, C);
  for (uint32_t c = 0; c < C; c++) msgpack_pack_uint64(pk, f->cc[c]);
  msgpack_pack_array(pk, V);
  for (uint32_t j = 0; j < V; j++) {
    msgpack_pack_str_with_body(pk, bc->terms[j].via.str.ptr, bc->terms[j].via.str.size);
  }
  msgpack_pack_bin_with_body(pk, V ? (const char *)bc->idf : "", (size_t)V * sizeof(double));
  msgpack_pack_bin_with_body(pk, (C && V) ? (const char *)flp : "", (size_t)C * V * sizeof(double));
  msgpack_pack_bin_with_body(pk, (const char *)prior, C * sizeof(double));
  if (mpk_close(&m) || dbx_buf_append(bcast, payload.data, payload.len)) rc = DBX_ENOMEM;
  dbx_buf_free(&payload);
done:
  free(flp);
  free(prior);
  return rc;
}

/* ---- stage 3: predictions ---- */

typedef struct ppart {
  dbx_buf rows;     /* msgpack rows [input, line, class, proba bin|nil], batch order */
  uint64_t nrows;
  strmap *conf;     /* "truth\0" + class index (4 bytes) -> documents */
} ppart;

static void *p_new(const void *cfg) {
  ppart *p = calloc(1, sizeof *p);
  if (p && !(p->conf = strmap_new())) { free(p); p = NULL; }
  return p;
}

static void p_free(void *v) {
  ppart *p = v;
  if (!p) return;
  dbx_buf_free(&p->rows);
  strmap_free(p->conf);
  free(p);
}

static int p_map(const void *cfg, const void *bcv, const dbx_batch *b, void *part, dbx_stats *st, dbx_err *err) {
  const nb_cfg *cf = cfg;
  const nb_bc *bc = bcv;
  ppart *p = part;
  if (!bc || !bc->flp) return dbx_seterr(err, DBX_EPROTO, "naive Bayes predict: no model");
  uint32_t C = bc->C, V = bc->V;
  const strmap *vocab = bc_vocab((nb_bc *)bc);
  if (!vocab) return DBX_ENOMEM;
  tfidf x;
  double *jll = malloc(C * sizeof *jll);
  dbx_buf key = {0};
  if (!jll || tfidf_init(&x, V)) { free(jll); return DBX_ENOMEM; }
  mpk m;
  msgpack_packer *pk = mpk_open(&m, &p->rows);
  doc_iter it = {cfg, bc, b, 0, 0, 0, {0}};
  nb_doc d;
  int rc;
  while ((rc = doc_next(&it, &d, st, err)) == 1) {
    if ((rc = tfidf_doc(&x, bc, vocab, &d))) break;
    /* jll = X . feature_log_prob_^T + class_log_prior_, summed in that order as sklearn does. */
    uint32_t best = 0;
    for (uint32_t c = 0; c < C; c++) {
      const double *row = bc->flp + (size_t)c * V;
      double s = 0;
      for (size_t k = 0; k < x.nt; k++) s += x.w[k] * row[x.touch[k]];
      jll[c] = s + bc->prior[c];
      if (jll[c] > jll[best]) best = c;  /* ties: the first class */
    }
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint32(pk, d.input);
    msgpack_pack_int64(pk, d.line);
    msgpack_pack_uint32(pk, best);
    if (cf->proba) {
      /* predict_proba: exp(jll - logsumexp(jll)), logsumexp as scipy computes it. */
      double amax = jll[best], s = 0;
      for (uint32_t c = 0; c < C; c++) s += exp(jll[c] - amax);
      double lse = log(s) + amax;
      for (uint32_t c = 0; c < C; c++) jll[c] = exp(jll[c] - lse);
      msgpack_pack_bin_with_body(pk, (const char *)jll, C * sizeof *jll);
    } else {
      msgpack_pack_nil(pk);
    }
    p->nrows++;
    key.len = 0;
    if (dbx_buf_append(&key, d.label, d.label_len) || dbx_buf_append(&key, "", 1) ||
        dbx_buf_append(&key, &best, sizeof best) || strmap_add(p->conf, key.data, key.len, 1, NULL)) {
      rc = DBX_ENOMEM;
      break;
    }
  }
  if (mpk_close(&m) && !rc) rc = dbx_seterr(err, DBX_ENOMEM, "naive Bayes: out of memory storing predictions");
  tfidf_free(&x);
  doc_iter_free(&it);
  free(jll);
  dbx_buf_free(&key);
  return rc < 0 ? rc : 0;
}

static int p_merge(const void *cfg, void *left, const void *right, dbx_err *err) {
  ppart *l = left;
  const ppart *r = right;
  if (l->nrows + r->nrows < l->nrows) return dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: prediction count overflows");
  if (dbx_buf_append(&l->rows, r->rows.data, r->rows.len) || add_map(l->conf, r->conf))
    return dbx_seterr(err, DBX_ENOMEM, "out of memory");
  l->nrows += r->nrows;
  return 0;
}

static int p_encode(const void *cfg, const void *part, dbx_buf *out, dbx_err *err) {
  const ppart *p = part;
  size_t n = strmap_count(p->conf);
  if (p->rows.len > UINT32_MAX || n > UINT32_MAX / 2)
    return dbx_seterr(err, DBX_EINVAL, "naive Bayes: predictions of one task too large to encode (%zu bytes)", p->rows.len);
  mpk m;
  msgpack_packer *pk = mpk_open(&m, out);
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint64(pk, p->nrows);
  msgpack_pack_bin_with_body(pk, p->rows.len ? p->rows.data : "", p->rows.len);
  msgpack_pack_array(pk, (uint32_t)(2 * n));
  for (uint32_t i = 0; i < n; i++) {
    size_t len;
    const char *k = strmap_key(p->conf, i, &len);
    msgpack_pack_bin_with_body(pk, k, len);
    msgpack_pack_uint64(pk, strmap_val(p->conf, i));
  }
  return mpk_close(&m) ? dbx_seterr(err, DBX_ENOMEM, "naive Bayes: out of memory encoding a partial result") : 0;
}

/* A prediction row: [input, line, class, probabilities (bin) or nil]. Reads the row at *off
 * of rows (advancing *off) into the OUT fields; -1 if it is not such a row. */
typedef struct prow {
  uint32_t input, cls;
  int64_t line;
  const char *proba;  /* NULL for nil */
  size_t proba_len;
} prow;

static int prow_next(msgpack_unpacked *u, const char *rows, size_t n, size_t *off, prow *r) {
  if (msgpack_unpack_next(u, rows, n, off) != MSGPACK_UNPACK_SUCCESS || u->data.type != MSGPACK_OBJECT_ARRAY ||
      u->data.via.array.size != 4)
    return -1;
  const msgpack_object *a = u->data.via.array.ptr;
  if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[0].via.u64 > UINT32_MAX ||
      a[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[2].via.u64 > UINT32_MAX)
    return -1;
  if (a[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER && a[1].via.u64 <= INT64_MAX) r->line = (int64_t)a[1].via.u64;
  else if (a[1].type == MSGPACK_OBJECT_NEGATIVE_INTEGER && a[1].via.i64 == -1) r->line = -1;
  else return -1;
  if (a[3].type == MSGPACK_OBJECT_BIN) {
    r->proba = a[3].via.bin.ptr;
    r->proba_len = a[3].via.bin.size;
  } else if (a[3].type == MSGPACK_OBJECT_NIL) {
    r->proba = NULL;
    r->proba_len = 0;
  } else {
    return -1;
  }
  r->input = (uint32_t)a[0].via.u64;
  r->cls = (uint32_t)a[2].via.u64;
  return 0;
}

/* A confusion key: "truth" (not empty, no NUL), NUL, class index (4 bytes). */
static int conf_key(const char *k, size_t n, size_t *truth_len, uint32_t *cls) {
  if (n < 6 || k[n - 5] != 0 || memchr(k, 0, n - 5)) return -1;
  *truth_len = n - 5;
  memcpy(cls, k + n - 4, sizeof *cls);
  return 0;
}

/* Probabilities of a row, as p_map makes them: whole doubles, finite, in [0, 1], and the
 * predicted class's the largest (exp is monotonic: the argmax of the joint log-likelihood
 * stays the argmax). 1 if so; the class index is checked against the model elsewhere. */
static int proba_ok(const char *p, size_t n, uint32_t cls) {
  if (n % sizeof(double) || (uint64_t)cls >= n / sizeof(double)) return n % sizeof(double) == 0;
  double top;
  memcpy(&top, p + (size_t)cls * sizeof(double), sizeof top);
  for (size_t c = 0; c < n / sizeof(double); c++) {
    double d;
    memcpy(&d, p + c * sizeof(double), sizeof d);
    if (!isfinite(d) || d < 0 || d > 1 || d > top) return 0;
  }
  return 1;
}

/* Every row against the model and the stage's input table (when bc is not NULL), or only
 * its shape (bc NULL): input and class indices in range, probabilities iff --proba. */
static int p_rows_check(const nb_cfg *cf, const nb_bc *bc, const ppart *p, dbx_err *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int rc = 0;
  uint64_t i = 0;
  /* Each document once: (input, line) never repeats. */
  strmap *seen = p->nrows <= NB_DOCS_MAX ? strmap_new() : NULL;
  if (p->nrows > NB_DOCS_MAX)
    rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: partial result of %llu predictions", (unsigned long long)p->nrows);
  else if (!seen || strmap_reserve(seen, (size_t)p->nrows))
    rc = DBX_ENOMEM;
  for (; i < p->nrows && !rc; i++) {
    prow r;
    uint32_t id = 0;
    char key[12];
    if (prow_next(&u, p->rows.data, p->rows.len, &off, &r)) {
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed partial result (prediction row %llu)", (unsigned long long)i);
      break;
    }
    memcpy(key, &r.input, 4);
    memcpy(key + 4, &r.line, 8);
    if (cf->format == CORPUS_DIR ? r.line != -1 : r.line < 1 || (uint64_t)r.line > NB_LINE_MAX)
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: prediction row %llu names line %lld, impossible in a %s corpus",
                      (unsigned long long)i, (long long)r.line, cf->format == CORPUS_DIR ? "directory" : "line");
    else if (strmap_add(seen, key, sizeof key, 1, &id))
      rc = DBX_ENOMEM;
    else if (strmap_val(seen, id) > 1)
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: prediction row %llu repeats a document (input %u, line %lld)",
                      (unsigned long long)i, r.input, (long long)r.line);
    else if (r.proba && !proba_ok(r.proba, r.proba_len, r.cls))
      rc = dbx_seterr(err, DBX_ECORRUPT,
                      "naive Bayes: prediction row %llu has probabilities that are not finite, not in [0, 1] or not largest for its class",
                      (unsigned long long)i);
    else if (bc && r.input >= bc->ninputs)
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: prediction row %llu names input %u of %u", (unsigned long long)i,
                      r.input, bc->ninputs);
    else if (bc && r.cls >= bc->C)
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: prediction row %llu names class %u of %u", (unsigned long long)i,
                      r.cls, bc->C);
    else if (bc && (cf->proba ? !r.proba || r.proba_len != (size_t)bc->C * sizeof(double) : r.proba != NULL))
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: prediction row %llu has %zu bytes of probabilities, expected %zu",
                      (unsigned long long)i, r.proba_len, cf->proba ? (size_t)bc->C * sizeof(double) : (size_t)0);
  }
  if (!rc && off != p->rows.len)
    rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed partial result (bytes after %llu prediction rows)",
                    (unsigned long long)p->nrows);
  strmap_free(seen);
  msgpack_unpacked_destroy(&u);
  return rc;
}

/* A prediction partial against the stage's model and input table: every row and every
 * confusion entry names an input and a class that exist. The coordinator calls it on a
 * partial from a peer before merging it; finish calls it again. */
int nb_predict_check(const void *cfg, const void *bcv, const void *part, dbx_err *err) {
  const nb_bc *bc = bcv;
  const ppart *p = part;
  if (!bc || !bc->flp) return dbx_seterr(err, DBX_EPROTO, "naive Bayes predict: no model");
  int rc = p_rows_check(cfg, bc, p, err);
  size_t n = strmap_count(p->conf);
  for (uint32_t i = 0; i < n && !rc; i++) {
    size_t len, tl;
    uint32_t cls;
    const char *k = strmap_key(p->conf, i, &len);
    if (conf_key(k, len, &tl, &cls))
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed partial result (confusion entry %u)", i);
    else if (cls >= bc->C)
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: confusion entry %u names class %u of %u", i, cls, bc->C);
  }
  return rc;
}

static int p_decode(const void *cfg, const char *buf, size_t n, void **out, dbx_err *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  ppart *p = p_new(cfg);
  int ok = p && msgpack_unpack_next(&u, buf, n, &off) == MSGPACK_UNPACK_SUCCESS && off == n &&
           u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size == 3;
  const msgpack_object *a = ok ? u.data.via.array.ptr : NULL;
  ok = ok && a[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && a[1].type == MSGPACK_OBJECT_BIN &&
       a[2].type == MSGPACK_OBJECT_ARRAY && a[2].via.array.size % 2 == 0;
  /* Each document is counted once in the confusion entries: they add up to the rows. */
  uint64_t counted = 0;
  for (uint32_t i = 0; ok && i < a[2].via.array.size; i += 2) {
    const msgpack_object *k = &a[2].via.array.ptr[i], *v = &a[2].via.array.ptr[i + 1];
    size_t tl;
    uint32_t cls;
    ok = k->type == MSGPACK_OBJECT_BIN && !conf_key(k->via.bin.ptr, k->via.bin.size, &tl, &cls) &&
         v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 > 0 && counted + v->via.u64 > counted &&
         strmap_find(p->conf, k->via.bin.ptr, k->via.bin.size) < 0 &&
         !strmap_add(p->conf, k->via.bin.ptr, k->via.bin.size, v->via.u64, NULL);
    if (ok) counted += v->via.u64;
  }
  if (ok) {
    p->nrows = a[0].via.u64;
    ok = counted == p->nrows && !dbx_buf_append(&p->rows, a[1].via.bin.ptr, a[1].via.bin.size);
  }
  msgpack_unpacked_destroy(&u);
  dbx_err rerr = {0, ""};
  if (ok && p_rows_check(cfg, NULL, p, &rerr)) ok = 0;
  if (!ok) {
    p_free(p);
    return rerr.code ? dbx_seterr(err, rerr.code, "%s", rerr.msg)
                     : dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed partial result (predictions)");
  }
  *out = p;
  return 0;
}

int nb_check_docs(const dbx_op *op, const void *part, uint64_t docs, dbx_err *err) {
  uint64_t have = 0;
  if (op == &op_nb_vocab) {
    have = ((const vpart *)part)->ndocs;
  } else if (op == &op_nb_fit) {
    const fpart *f = part;
    for (uint32_t c = 0; f->fc && c < f->C; c++) have = have + f->cc[c] < have ? UINT64_MAX : have + f->cc[c];
  } else if (op == &op_nb_predict) {
    have = ((const ppart *)part)->nrows;
  } else {
    return 0;
  }
  if (have != docs)
    return dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: partial result counts %llu documents, but the task read %llu",
                      (unsigned long long)have, (unsigned long long)docs);
  return 0;
}

static int p_finish(const void *cfg, const void *bcv, void *part, dbx_emit_fn emit, void *ctx,
                    dbx_buf *bcast, dbx_err *err) {
  const nb_cfg *cf = cfg;
  const nb_bc *bc = bcv;
  ppart *p = part;
  /* Whatever the engine checked on arrival, nothing below indexes by a value not checked here. */
  int rc = nb_predict_check(cfg, bcv, part, err);
  if (rc) return rc;
  uint32_t C = bc->C;
  dbx_value *row = calloc(2 + C, sizeof *row);
  char *name = NULL;
  size_t name_cap = 0;
  if (!row) return DBX_ENOMEM;
  size_t off = 0;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  for (uint64_t i = 0; emit && i < p->nrows && !rc; i++) {
    prow r;
    if (prow_next(&u, p->rows.data, p->rows.len, &off, &r)) {  /* checked above: cannot happen */
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed prediction row");
      break;
    }
    const msgpack_object *nm = &bc->inputs[r.input].via.array.ptr[1];
    size_t need = nm->via.str.size + 32;
    if (need > name_cap) {
      char *nn = realloc(name, need);
      if (!nn) { rc = DBX_ENOMEM; break; }
      name = nn;
      name_cap = need;
    }
    int k = r.line >= 0 ? snprintf(name, need, "%.*s:%lld", (int)nm->via.str.size, nm->via.str.ptr, (long long)r.line)
                        : snprintf(name, need, "%.*s", (int)nm->via.str.size, nm->via.str.ptr);
    row[0].s = name;
    row[0].n = (size_t)k;
    row[1].s = class_name(bc, r.cls, &row[1].n);
    if (cf->proba)
      for (uint32_t c = 0; c < C; c++) memcpy(&row[2 + c].d, r.proba + c * sizeof(double), sizeof(double));
    rc = emit(ctx, row, err);
  }
  msgpack_unpacked_destroy(&u);
  free(row);
  free(name);
  if (rc) return rc;
  /* The stage's output for the report: [documents, [truth, predicted, count]...]. */
  size_t n = strmap_count(p->conf);
  if (n > UINT32_MAX) return dbx_seterr(err, DBX_EINVAL, "naive Bayes: too many confusion entries");
  mpk m;
  msgpack_packer *pk = mpk_open(&m, bcast);
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint64(pk, p->nrows);
  msgpack_pack_array(pk, (uint32_t)n);
  for (uint32_t i = 0; i < n; i++) {
    size_t len, tl = 0, pl;
    uint32_t cls = 0;
    const char *k = strmap_key(p->conf, i, &len);
    conf_key(k, len, &tl, &cls);  /* checked by nb_predict_check */
    const char *pn = class_name(bc, cls, &pl);
    msgpack_pack_array(pk, 3);
    msgpack_pack_str_with_body(pk, k, tl);
    msgpack_pack_str_with_body(pk, pn, pl);
    msgpack_pack_uint64(pk, strmap_val(p->conf, i));
  }
  return mpk_close(&m) ? dbx_seterr(err, DBX_ENOMEM, "naive Bayes: out of memory") : 0;
}

int nb_read_confusion(const char *p, size_t n, nb_confusion **out, size_t *nout, uint64_t *ndocs, dbx_err *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int rc = 0;
  *out = NULL;
  *nout = 0;
  if (msgpack_unpack_next(&u, p, n, &off) != MSGPACK_UNPACK_SUCCESS || u.data.type != MSGPACK_OBJECT_ARRAY ||
      u.data.via.array.size != 2 || u.data.via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
      u.data.via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY) {
    rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed prediction summary");
    goto done;
  }
  *ndocs = u.data.via.array.ptr[0].via.u64;
  const msgpack_object *l = &u.data.via.array.ptr[1];
  nb_confusion *v = calloc(l->via.array.size + 1, sizeof *v);
  if (!v) { rc = DBX_ENOMEM; goto done; }
  for (uint32_t i = 0; i < l->via.array.size; i++) {
    const msgpack_object *o = &l->via.array.ptr[i];
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3 || o->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
        o->via.array.ptr[1].type != MSGPACK_OBJECT_STR || o->via.array.ptr[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
      for (uint32_t j = 0; j < i; j++) { free(v[j].truth); free(v[j].pred); }
      free(v);
      rc = dbx_seterr(err, DBX_ECORRUPT, "naive Bayes: malformed prediction summary");
      goto done;
    }
    const msgpack_object *e = o->via.array.ptr;
    v[i].truth = strndup(e[0].via.str.ptr, e[0].via.str.size);
    v[i].pred = strndup(e[1].via.str.ptr, e[1].via.str.size);
    v[i].count = e[2].via.u64;
  }
  *out = v;
  *nout = l->via.array.size;
done:
  msgpack_unpacked_destroy(&u);
  return rc;
}

/* ---- model files ---- */

int nb_model_classes(const char *model, size_t n, char ***names, uint32_t *nclass, uint32_t *nvocab, dbx_err *err) {
  nb_bc b;
  memset(&b, 0, sizeof b);
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int rc;
  if (msgpack_unpack_next(&u, model, n, &off) != MSGPACK_UNPACK_SUCCESS || off != n)
    rc = dbx_seterr(err, DBX_EMODEL, "malformed naive Bayes model");
  else
    rc = parse_payload(&b, &u.data, 1, err);
  if (!rc) {
    *names = calloc(b.C, sizeof **names);
    for (uint32_t c = 0; *names && c < b.C; c++) {
      size_t len;
      const char *k = strmap_key(b.class_ix, c, &len);
      (*names)[c] = strndup(k, len);
    }
    *nclass = b.C;
    *nvocab = b.V;
    if (!*names) rc = DBX_ENOMEM;
  }
  msgpack_unpacked_destroy(&u);
  strmap_free(b.class_ix);
  strmap_free(b.vocab);
  free(b.class_count);
  free(b.idf);
  free(b.flp);
  free(b.prior);
  return rc;
}

static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64le(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static int sqlite_model(const char *path, int save, const char *model, size_t n, dbx_buf *out, dbx_err *err) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int rc = 0;
  int flags = save ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY;
  if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
    rc = dbx_seterr(err, save ? DBX_EDB : DBX_ENOENT, "sqlite:%s: %s", path, sqlite3_errmsg(db));
    goto done;
  }
  if (save) {
    const char *ddl = "CREATE TABLE IF NOT EXISTS nb_model (id INTEGER PRIMARY KEY CHECK (id = 1), "
                      "format TEXT, version INTEGER, model BLOB)";
    if (sqlite3_exec(db, ddl, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO nb_model VALUES (1, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK) {
      rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: %s", path, sqlite3_errmsg(db));
      goto done;
    }
    sqlite3_bind_text(st, 1, MODEL_TAG, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, MODEL_VERSION);
    sqlite3_bind_blob64(st, 3, model, n, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = dbx_seterr(err, DBX_EDB, "sqlite:%s: %s", path, sqlite3_errmsg(db));
  } else {
    if (sqlite3_prepare_v2(db, "SELECT model FROM nb_model WHERE id = 1", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
      rc = dbx_seterr(err, DBX_EMODEL, "sqlite:%s: no naive Bayes model stored there (%s)", path, sqlite3_errmsg(db));
      goto done;
    }
    const void *p = sqlite3_column_blob(st, 0);
    int len = sqlite3_column_bytes(st, 0);
    if (dbx_buf_append(out, p, (size_t)len)) rc = DBX_ENOMEM;
  }
done:
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rc;
}

int nb_model_save(const char *dest, const char *model, size_t n, dbx_err *err) {
  if (strncmp(dest, "sqlite:", 7) == 0) return sqlite_model(dest + 7, 1, model, n, NULL, err);
  if (sink_is_postgres(dest)) return sink_pg_model(dest, 1, MODEL_TAG, MODEL_VERSION, model, n, NULL, err);
  afile f;
  int rc = afile_open(&f, dest, err);
  if (rc) return rc;
  unsigned char head[16], tail[8];
  memcpy(head, FILE_MAGIC, 8);
  put_u64(head + 8, n);
  put_u64(tail, XXH64(model, n, 0));
  if (fwrite(head, 1, 16, f.fp) != 16 || fwrite(model, 1, n, f.fp) != n || fwrite(tail, 1, 8, f.fp) != 8) {
    afile_abort(&f);
    return dbx_seterr(err, DBX_EIO, "%s: cannot write the model", dest);
  }
  return afile_commit(&f, err);
}

int nb_model_load(const char *src, dbx_buf *model, dbx_err *err) {
  model->len = 0;
  int rc;
  if (strncmp(src, "sqlite:", 7) == 0) {
    rc = sqlite_model(src + 7, 0, NULL, 0, model, err);
  } else if (sink_is_postgres(src)) {
    rc = sink_pg_model(src, 0, MODEL_TAG, MODEL_VERSION, NULL, 0, model, err);
  } else {
    struct stat st;
    if (stat(src, &st) == 0 && S_ISDIR(st.st_mode))
      return dbx_seterr(err, DBX_EISDIR, "%s: is a directory, not a model file", src);
    FILE *fp = fopen(src, "rb");
    if (!fp) {
      int e = errno;
      return dbx_seterr(err, e == ENOENT ? DBX_ENOENT : DBX_EIO, "%s: cannot open the model: %s", src, strerror(e));
    }
    unsigned char head[16];
    size_t got = fread(head, 1, 16, fp);
    rc = 0;
    if (got < 16 || memcmp(head, FILE_MAGIC, 8) != 0) {
      rc = dbx_seterr(err, DBX_EMODEL, "%s: not a dbatch model file (it must start with %s)", src, FILE_MAGIC);
    } else {
      uint64_t n = get_u64le(head + 8);
      if (n > (1ull << 40) || dbx_buf_reserve(model, (size_t)n + 8)) {
        rc = dbx_seterr(err, DBX_EMODEL, "%s: model length %llu is not plausible; the file is damaged", src, (unsigned long long)n);
      } else {
        got = fread(model->data, 1, (size_t)n + 8, fp);
        int extra = fgetc(fp) != EOF;
        if (got < n + 8) {
          rc = dbx_seterr(err, DBX_EMODEL, "%s: truncated model file (%zu of %llu bytes after the header)", src, got,
                          (unsigned long long)(n + 8));
        } else if (extra) {
          rc = dbx_seterr(err, DBX_EMODEL, "%s: trailing bytes after the model; the file is damaged", src);
        } else if (get_u64le((unsigned char *)model->data + n) != XXH64(model->data, (size_t)n, 0)) {
          rc = dbx_seterr(err, DBX_EMODEL, "%s: model checksum mismatch; the file is corrupt", src);
        } else {
          model->len = (size_t)n;
        }
      }
    }
    fclose(fp);
  }
  if (rc) return rc;
  char **names = NULL;
  uint32_t C = 0, V = 0;
  dbx_err perr = {0, ""};
  if ((rc = nb_model_classes(model->data, model->len, &names, &C, &V, &perr)))
    return dbx_seterr(err, rc, "%s: %s", src, perr.msg);
  for (uint32_t c = 0; c < C; c++) free(names[c]);
  free(names);
  return 0;
}

/* ---- the operators ---- */

static const char *const no_names[] = {"none"};
static const dbx_coltype no_types[] = {DBX_COL_TEXT};
static const dbx_schema no_schema = {0, no_names, no_types};

const dbx_op op_nb_vocab = {"nb_vocab", v_new, v_free, v_map, v_merge, v_encode, v_decode, v_finish,
                            bc_load_none, bc_free, &no_schema, sizeof(nb_cfg), v_merge_encoded};
const dbx_op op_nb_fit = {"nb_fit", f_new, f_free, f_map, f_merge, f_encode, f_decode, f_finish,
                          bc_load_vocab, bc_free, &no_schema, sizeof(nb_cfg), NULL};
const dbx_op op_nb_predict = {"nb_predict", p_new, p_free, p_map, p_merge, p_encode, p_decode, p_finish,
                              bc_load_model, bc_free, &no_schema, sizeof(nb_cfg), NULL};
