/* agg.c -- deterministic tree merge of partial results.
 * A partial may arrive encoded (from a worker). It stays encoded until its place in the tree
 * needs it: as the right side of a merge it is folded straight into the left partial
 * (op->merge_encoded, one pass over its entries), as a left side it is decoded once. */
#include "engine/agg.h"

#include <stdlib.h>
#include <string.h>

struct agg {
  const dbx_op *op;
  const void *cfg;
  void **p;          /* p[s]: the partial of node (s, lvl[s]), or NULL */
  char **blob;       /* or its encoding, not yet decoded */
  size_t *blen;
  uint8_t *lvl;
  uint8_t *have;
  size_t cap;
  /* Ordered streaming (agg_new_ordered): partials below next are written and freed. */
  int ordered;
  uint32_t next;
  dbx_emit_fn emit;
  void *emit_ctx;
};

agg *agg_new(const dbx_op *op, const void *cfg) {
  agg *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->op = op;
  a->cfg = cfg;
  return a;
}

agg *agg_new_ordered(const dbx_op *op, const void *cfg, dbx_emit_fn emit, void *emit_ctx) {
  agg *a = agg_new(op, cfg);
  if (!a) return NULL;
  a->ordered = 1;
  a->emit = emit;
  a->emit_ctx = emit_ctx;
  return a;
}

void agg_free(agg *a) {
  if (!a) return;
  for (size_t i = 0; i < a->cap; i++) {
    if (a->p[i]) a->op->partial_free(a->p[i]);
    free(a->blob[i]);
  }
  free(a->p);
  free(a->blob);
  free(a->blen);
  free(a->lvl);
  free(a->have);
  free(a);
}

static int ensure(agg *a, size_t n) {
  if (n <= a->cap) return 0;
  size_t nc = a->cap ? a->cap : 64;
  while (nc < n) nc *= 2;
  void **np = realloc(a->p, nc * sizeof *np);
  if (!np) return DBX_ENOMEM;
  a->p = np;
  char **nb = realloc(a->blob, nc * sizeof *nb);
  if (!nb) return DBX_ENOMEM;
  a->blob = nb;
  size_t *nn = realloc(a->blen, nc * sizeof *nn);
  if (!nn) return DBX_ENOMEM;
  a->blen = nn;
  uint8_t *nl = realloc(a->lvl, nc);
  if (!nl) return DBX_ENOMEM;
  a->lvl = nl;
  uint8_t *nh = realloc(a->have, nc);
  if (!nh) return DBX_ENOMEM;
  a->have = nh;
  memset(a->p + a->cap, 0, (nc - a->cap) * sizeof *np);
  memset(a->blob + a->cap, 0, (nc - a->cap) * sizeof *nb);
  memset(a->blen + a->cap, 0, (nc - a->cap) * sizeof *nn);
  memset(a->lvl + a->cap, 0, nc - a->cap);
  memset(a->have + a->cap, 0, nc - a->cap);
  a->cap = nc;
  return 0;
}

static int present(const agg *a, size_t s) { return a->p[s] || a->blob[s]; }

/* Decode node s if it is still encoded. */
static int materialize(agg *a, size_t s, dbx_err *err) {
  if (a->p[s] || !a->blob[s]) return 0;
  int rc = a->op->decode(a->cfg, a->blob[s], a->blen[s], &a->p[s], err);
  free(a->blob[s]);
  a->blob[s] = NULL;
  return rc;
}

/* Merge right into left and free right. */
static int join(agg *a, size_t l, size_t r, dbx_err *err) {
  int rc = materialize(a, l, err);
  if (rc) return rc;
  if (!a->p[r] && a->blob[r] && a->op->merge_encoded) {
    rc = a->op->merge_encoded(a->cfg, a->p[l], a->blob[r], a->blen[r], err);
    free(a->blob[r]);
    a->blob[r] = NULL;
    return rc;
  }
  if ((rc = materialize(a, r, err))) return rc;
  rc = a->op->merge(a->cfg, a->p[l], a->p[r], err);
  a->op->partial_free(a->p[r]);
  a->p[r] = NULL;
  return rc;
}

/* Place node index (partial or blob already stored) and merge up while siblings are complete. */
static int settle(agg *a, uint32_t index, dbx_err *err) {
  size_t s = index;
  unsigned L = 0;
  a->lvl[s] = 0;
  for (;;) {
    size_t span = (size_t)1 << L;
    int rc;
    if (((s >> L) & 1) == 0) {
      size_t r = s + span;
      if (r >= a->cap || !present(a, r) || a->lvl[r] != L) break;
      if ((rc = join(a, s, r, err))) return rc;
    } else {
      size_t l = s - span;
      if (!present(a, l) || a->lvl[l] != L) break;
      if ((rc = join(a, l, s, err))) return rc;
      s = l;
    }
    a->lvl[s] = (uint8_t)++L;
  }
  return 0;
}

/* Ordered mode: write out every partial that is next in batch order. */
static int drain(agg *a, dbx_err *err) {
  while (a->next < a->cap && a->have[a->next]) {
    size_t s = a->next;
    int rc = materialize(a, s, err);
    if (!rc) rc = a->op->finish(a->cfg, NULL, a->p[s], a->emit, a->emit_ctx, NULL, err);
    a->op->partial_free(a->p[s]);
    a->p[s] = NULL;
    if (rc) return rc;
    a->next++;
  }
  return 0;
}

static int claim(agg *a, uint32_t index, dbx_err *err) {
  int rc = ensure(a, (size_t)index + 1);
  if (rc) return rc;
  if (a->have[index]) return dbx_seterr(err, DBX_EINVAL, "internal error: batch %u merged twice", index);
  a->have[index] = 1;
  return 0;
}

int agg_add(agg *a, uint32_t index, void *partial, dbx_err *err) {
  int rc = claim(a, index, err);
  if (rc) { a->op->partial_free(partial); return rc; }
  a->p[index] = partial;
  return a->ordered ? drain(a, err) : settle(a, index, err);
}

int agg_add_encoded(agg *a, uint32_t index, char *blob, size_t n, dbx_err *err) {
  int rc = claim(a, index, err);
  if (rc) { free(blob); return rc; }
  a->blob[index] = blob;
  a->blen[index] = n;
  return a->ordered ? drain(a, err) : settle(a, index, err);
}

/* The value of node (s, L) for n batches, taking ownership of held partials. */
static void *eval(agg *a, size_t s, unsigned L, size_t n, int *rc, dbx_err *err) {
  if (s >= n || *rc) return NULL;
  if (present(a, s) && a->lvl[s] == L) {
    if ((*rc = materialize(a, s, err))) return NULL;
    void *x = a->p[s];
    a->p[s] = NULL;
    return x;
  }
  if (L == 0) return NULL;
  void *left = eval(a, s, L - 1, n, rc, err);
  void *right = eval(a, s + ((size_t)1 << (L - 1)), L - 1, n, rc, err);
  if (!left || !right || *rc) {
    if (left && right) { a->op->partial_free(right); return left; }
    return left ? left : right;
  }
  *rc = a->op->merge(a->cfg, left, right, err);
  a->op->partial_free(right);
  return left;
}

int agg_finish(agg *a, uint32_t n, void **result, dbx_err *err) {
  int rc = ensure(a, n ? n : 1);
  if (rc) return rc;
  for (uint32_t i = 0; i < n; i++)
    if (!a->have[i]) return dbx_seterr(err, DBX_EINVAL, "internal error: batch %u has no result", i);
  if (a->ordered) {
    /* Everything was written as it came (drain); the result is empty. */
    if (a->next != n) return dbx_seterr(err, DBX_EINVAL, "internal error: batch %u was not written", a->next);
    if (!(*result = a->op->partial_new(a->cfg))) return DBX_ENOMEM;
    return 0;
  }
  unsigned L = 0;
  while (((size_t)1 << L) < n) L++;
  void *x = n ? eval(a, 0, L, n, &rc, err) : NULL;
  if (rc) {
    if (x) a->op->partial_free(x);
    return rc;
  }
  if (!x && !(x = a->op->partial_new(a->cfg))) return DBX_ENOMEM;
  *result = x;
  return 0;
}
