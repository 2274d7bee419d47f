/* agg.c -- deterministic tree merge of partial results. */
#include "engine/agg.h"

#include <stdlib.h>
#include <string.h>

struct agg {
  const dbx_op *op;
  const void *cfg;
  void **p;          /* p[s]: the partial of node (s, lvl[s]), or NULL */
  uint8_t *lvl;
  uint8_t *have;
  size_t cap;
};

agg *agg_new(const dbx_op *op, const void *cfg) {
  agg *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->op = op;
  a->cfg = cfg;
  return a;
}

void agg_free(agg *a) {
  if (!a) return;
  for (size_t i = 0; i < a->cap; i++)
    if (a->p[i]) a->op->partial_free(a->p[i]);
  free(a->p);
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
  uint8_t *nl = realloc(a->lvl, nc);
  if (!nl) return DBX_ENOMEM;
  a->lvl = nl;
  uint8_t *nh = realloc(a->have, nc);
  if (!nh) return DBX_ENOMEM;
  a->have = nh;
  memset(a->p + a->cap, 0, (nc - a->cap) * sizeof *np);
  memset(a->lvl + a->cap, 0, nc - a->cap);
  memset(a->have + a->cap, 0, nc - a->cap);
  a->cap = nc;
  return 0;
}

/* Merge right into left and free right. */
static int join(agg *a, size_t l, size_t r, dbx_err *err) {
  int rc = a->op->merge(a->cfg, a->p[l], a->p[r], err);
  a->op->partial_free(a->p[r]);
  a->p[r] = NULL;
  return rc;
}

int agg_add(agg *a, uint32_t index, void *partial, dbx_err *err) {
  int rc = ensure(a, (size_t)index + 1);
  if (rc) { a->op->partial_free(partial); return rc; }
  if (a->have[index]) {
    a->op->partial_free(partial);
    return dbx_seterr(err, DBX_EINVAL, "internal error: batch %u merged twice", index);
  }
  a->have[index] = 1;
  size_t s = index;
  unsigned L = 0;
  a->p[s] = partial;
  a->lvl[s] = 0;
  for (;;) {
    size_t span = (size_t)1 << L;
    if (((s >> L) & 1) == 0) {
      size_t r = s + span;
      if (r >= a->cap || !a->p[r] || a->lvl[r] != L) break;
      if ((rc = join(a, s, r, err))) return rc;
    } else {
      size_t l = s - span;
      if (!a->p[l] || a->lvl[l] != L) break;
      if ((rc = join(a, l, s, err))) return rc;
      s = l;
    }
    a->lvl[s] = (uint8_t)++L;
  }
  return 0;
}

/* The value of node (s, L) for n batches, taking ownership of held partials. */
static void *eval(agg *a, size_t s, unsigned L, size_t n, int *rc, dbx_err *err) {
  if (s >= n || *rc) return NULL;
  if (a->p[s] && a->lvl[s] == L) {
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
