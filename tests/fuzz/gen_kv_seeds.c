/* gen_kv_seeds.c -- the seed corpus of fuzz_kv from kv.c's own encoder: for each spec of
 * fuzz_kv.c (its first byte), the valid partial, an empty one, one key, and a wider partial
 * with NUL keys, long values and every aggregate's state. Run by `scripts/fuzz.sh seeds`. */
#define _GNU_SOURCE 1  /* fuzz_kv.c uses memfd_create */
#include <stdio.h>

#define LLVMFuzzerTestOneInput fuzz_kv_one_input
#include "fuzz_kv.c"

static void put(const char *dir, size_t si, const char *name, const dbx_buf *b) {
  char path[4096];
  snprintf(path, sizeof path, "%s/kv/seed-%zu-%s", dir, si, name);
  FILE *f = fopen(path, "wb");
  unsigned char c = (unsigned char)si;
  if (!f || fwrite(&c, 1, 1, f) != 1 || (b->len && fwrite(b->data, 1, b->len, f) != b->len) || fclose(f))
    fuzz_fail("cannot write %s", path);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: gen_kv_seeds CORPUS-DIR\n");
    return 2;
  }
  fuzz_kv_setup();
  for (size_t si = 0; si < NSPECS; si++) {
    dbx_err err = {0, ""};
    put(argv[1], si, "valid", &VALID[si]);
    kvpart *p = kv_new(&S[si]);
    dbx_buf b = {0};
    if (kv_encode(p, &b, &err)) fuzz_fail("encode: %s", err.msg);
    put(argv[1], si, "empty", &b);
    add(p, &S[si], "k\0v", "1");
    b.len = 0;
    if (kv_encode(p, &b, &err)) fuzz_fail("encode: %s", err.msg);
    put(argv[1], si, "one", &b);
    static const char *vals[] = {"1", "-2", "0.25", "1e3", "7", "", "text", "9223372036854775807"};
    char key[8];
    for (int i = 0; i < 40; i++) {
      snprintf(key, sizeof key, "%c%c%c", 'a' + i % 5, 0, 'a' + i % 3);
      add(p, &S[si], key, vals[i % 8]);
    }
    b.len = 0;
    if (kv_encode(p, &b, &err)) fuzz_fail("encode: %s", err.msg);
    put(argv[1], si, "wide", &b);
    dbx_buf_free(&b);
    kv_free(p);
  }
  return 0;
}
