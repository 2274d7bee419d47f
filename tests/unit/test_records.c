/* test_records.c -- the record layer of keyed jobs (io/records): every CSV/TSV/JSONL rule
 * against literal expected fields (the CSV ones as Python's csv module reads them), headers,
 * and the splitter's CSV mode: a CSV with quoted newlines cut at every batch size, plain and
 * streamed (.gz), gives back exactly the records it was generated from, each named by the
 * physical line it starts on. */
#include "check.h"

#include <zlib.h>

#include "io/batch.h"
#include "io/input.h"
#include "io/records.h"

/* All records of data[0..n) as text: fields joined by '|', records ended by ';', a missing
 * field "~", a malformed record "!". OUT: owned by the caller. */
static char *render(rec_format f, const rec_want *w, const char *data, size_t n, int skip_header) {
  rec_iter it;
  dbx_err err = {0, ""};
  assert_int_equal(rec_iter_init(&it, f, w, data, n, skip_header), 0);
  dbx_buf out = {0};
  rec_field fl[16];
  size_t off, last_off = 0;
  int rc, first = 1;
  while ((rc = rec_next(&it, fl, &off, &err)) != 0) {
    if (!first) assert_true(off > last_off);  /* records move forward */
    assert_true(off < n);
    first = 0;
    last_off = off;
    if (rc < 0) {
      assert_int_equal(rc, DBX_EBADREC);
      assert_true(err.msg[0] != 0);
      dbx_buf_append(&out, "!;", 2);
      continue;
    }
    assert_int_equal(rc, 1);
    for (uint32_t i = 0; i < w->n; i++) {
      if (i) dbx_buf_append(&out, "|", 1);
      assert_non_null(fl[i].p);
      if (fl[i].missing) {
        assert_int_equal(fl[i].n, 0);
        dbx_buf_append(&out, "~", 1);
      } else {
        dbx_buf_append(&out, fl[i].p, fl[i].n);
      }
    }
    dbx_buf_append(&out, ";", 1);
  }
  rec_iter_free(&it);
  dbx_buf_append(&out, "", 1);
  return out.data;
}

static void expect_cols(rec_format f, const char *data, size_t n, int skip, const uint32_t *cols, uint32_t nc,
                        const char *want) {
  rec_want w = {nc, cols, NULL};
  char *got = render(f, &w, data, n, skip);
  if (strcmp(got, want) != 0) fail_msg("input [%.*s]: got [%s], want [%s]", (int)n, data, got, want);
  free(got);
}
#define CSV(data, skip, want, ...)                                                              \
  do {                                                                                          \
    const uint32_t c_[] = {__VA_ARGS__};                                                        \
    expect_cols(REC_CSV, data, sizeof(data) - 1, skip, c_, sizeof c_ / sizeof c_[0], want);     \
  } while (0)
#define TSV(data, skip, want, ...)                                                              \
  do {                                                                                          \
    const uint32_t c_[] = {__VA_ARGS__};                                                        \
    expect_cols(REC_TSV, data, sizeof(data) - 1, skip, c_, sizeof c_ / sizeof c_[0], want);     \
  } while (0)

static void expect_names(const char *data, size_t n, const char *const *names, uint32_t nn, const char *want) {
  rec_want w = {nn, NULL, names};
  char *got = render(REC_JSONL, &w, data, n, 0);
  if (strcmp(got, want) != 0) fail_msg("input [%.*s]: got [%s], want [%s]", (int)n, data, got, want);
  free(got);
}
#define JSONL(data, want, ...)                                                                  \
  do {                                                                                          \
    const char *const n_[] = {__VA_ARGS__};                                                     \
    expect_names(data, sizeof(data) - 1, n_, sizeof n_ / sizeof n_[0], want);                   \
  } while (0)

static void test_formats(void **state) {
  (void)state;
  assert_int_equal(rec_format_of("a/b.csv"), REC_CSV);
  assert_int_equal(rec_format_of("b.tsv.gz"), REC_TSV);
  assert_int_equal(rec_format_of("b.ndjson.zst"), REC_JSONL);
  assert_int_equal(rec_format_of("b.jsonl"), REC_JSONL);
  assert_int_equal(rec_format_of("b.txt"), 0);
  assert_int_equal(rec_format_of("csv"), 0);
  assert_int_equal(rec_format_of("b.gz"), 0);
  assert_int_equal(rec_format_parse("csv"), REC_CSV);
  assert_int_equal(rec_format_parse("tsv"), REC_TSV);
  assert_int_equal(rec_format_parse("jsonl"), REC_JSONL);
  assert_int_equal(rec_format_parse("CSV"), 0);
  assert_int_equal(rec_format_parse(""), 0);
}

/* Expected values of the well-formed cases checked with Python: csv.reader(io.StringIO(data, newline="")),
 * blank rows dropped (Python reads a lone CR as a line end; here it is data). */
static void test_csv_rfc4180(void **state) {
  (void)state;
  CSV("a,b,c\n1,2,3\n", 1, "1|3;", 0, 2);
  CSV("a,b,c\n1,2,3\n", 0, "a|c;1|3;", 0, 2);
  /* Quoted commas, doubled quotes, newlines and CRLF inside quotes. */
  CSV("x,\"a,b\",\"he said \"\"hi\"\"\",\"l1\nl2\",\"c\r\nd\"\n", 0,
      "x|a,b|he said \"hi\"|l1\nl2|c\r\nd;", 0, 1, 2, 3, 4);
  CSV("\"\"\"\"\n", 0, "\";", 0);
  /* CRLF line ends, a last record without newline, a quoted last field before CRLF. */
  CSV("1,2\r\n3,4\r\n", 0, "1|2;3|4;", 0, 1);
  CSV("1,2\n3,4", 0, "1|2;3|4;", 0, 1);
  CSV("\"a\",\"b\"\r\n\"c\",\"d\"", 0, "a|b;c|d;", 0, 1);
  CSV("1,2\r", 0, "1|2;", 0, 1);
  /* A CR not before LF is data. */
  CSV("a\rb,c\n", 0, "a\rb|c;", 0, 1);
  /* Empty fields (quoted or not) are missing. */
  CSV("1,,3\n,\"\",\n", 0, "1|~|3;~|~|~;", 0, 1, 2);
  /* The same column twice, columns in any order. */
  CSV("a,b,c\n", 0, "b|b|a|c;", 1, 1, 0, 2);
  /* Blank lines are skipped (Python yields [] for them). */
  CSV("1,2\n\n\r\n3,4\n", 0, "1|2;3|4;", 0, 1);
  /* Spaces are data. */
  CSV(" a , b \n", 0, " a | b ;", 0, 1);
  /* A header with a quoted newline is one record. */
  CSV("\"h\n1\",h2\n1,2\n", 1, "1|2;", 0, 1);
  /* Empty input, a header only. */
  CSV("", 1, "", 0);
  CSV("a,b\n", 1, "", 0);
  CSV("a,b", 1, "", 0);
  /* No columns wanted: every non-blank record counts. */
  expect_cols(REC_CSV, "1\n\n2\n", 5, 0, NULL, 0, ";;");
}

static void test_csv_malformed(void **state) {
  (void)state;
  /* A stray quote in an unquoted field, text after a closing quote: bad, the next is read. */
  CSV("a\"b\"c,d\n1,2\n", 0, "!;1|2;", 0, 1);
  CSV("\"a\"b,c\n1,2\n", 0, "!;1|2;", 0, 1);
  CSV("\"a\" ,c\n1,2\n", 0, "!;1|2;", 0, 1);
  /* An odd stray quote opens a quoted region to the next quote: one bad record spanning it. */
  CSV("a\"b,c\n1,2\n3,\"x\n4,5\n", 0, "!;4|5;", 0, 1);
  /* A quoted field that never ends. */
  CSV("1,2\n3,\"abc\n4,5\n", 0, "1|2;!;", 0, 1);
  /* Fewer columns than wanted. */
  CSV("1,2\n1,2,3\n", 0, "!;1|3;", 0, 2);
  /* A NUL in a wanted field is bad, in another field it is not. */
  CSV("a\0b,c\nd,e\n", 0, "!;d;", 0);
  CSV("a\0b,c\nd,e\n", 0, "c;e;", 1);
  CSV("\"a\0b\",c\n", 0, "!;", 0);
  /* The error names what is wrong. */
  rec_iter it;
  rec_field fl[2];
  size_t off;
  dbx_err err = {0, ""};
  uint32_t cols[] = {0, 3};
  rec_want w = {2, cols, NULL};
  const char *d = "x,y\n\"a\"b,c\n";
  assert_int_equal(rec_iter_init(&it, REC_CSV, &w, d, strlen(d), 0), 0);
  assert_int_equal(rec_next(&it, fl, &off, &err), DBX_EBADREC);
  assert_int_equal(off, 0);
  assert_string_equal(err.msg, "CSV: 2 columns, column 4 wanted");
  assert_int_equal(rec_next(&it, fl, &off, &err), DBX_EBADREC);
  assert_int_equal(off, 4);
  assert_string_equal(err.msg, "CSV: text after a closing quote in column 1");
  assert_int_equal(rec_next(&it, fl, &off, &err), 0);
  /* The iterator goes on with other bytes (the next segment), skipping that one's header. */
  rec_iter_reset(&it, "h,h,h,h\n1,2,3,4\n", 16, 1);
  assert_int_equal(rec_next(&it, fl, &off, &err), 1);
  assert_int_equal(off, 8);
  assert_int_equal(fl[1].n, 1);
  assert_int_equal(fl[1].p[0], '4');
  rec_iter_free(&it);
  /* Bad wants. */
  uint32_t huge[] = {1u << 24};
  rec_want wh = {1, huge, NULL};
  assert_int_equal(rec_iter_init(&it, REC_CSV, &wh, "", 0, 0), DBX_EINVAL);
  rec_iter_free(&it);
  const char *nonames[] = {NULL};
  rec_want wn = {1, NULL, nonames};
  assert_int_equal(rec_iter_init(&it, REC_JSONL, &wn, "", 0, 0), DBX_EINVAL);
  rec_iter_free(&it);
}

static void test_tsv(void **state) {
  (void)state;
  TSV("a\tb\tc\r\n1\t\t3\n", 1, "1|~|3;", 0, 1, 2);
  TSV("\"x\"\ty,z\n", 0, "\"x\"|y,z;", 0, 1);  /* no quoting */
  TSV("1\t2\n3\n", 0, "1|2;!;", 0, 1);
  TSV("1\t2\n\n\r\n3\t4", 0, "2|1;4|3;", 1, 0);
  TSV("a\0\tb\n", 0, "!;", 0);
  TSV("a\0\tb\n", 0, "b;", 1);
  TSV("a b\t\n", 0, "a b|~;", 0, 1);
  TSV("h\n", 1, "", 0);
}

static void test_jsonl(void **state) {
  (void)state;
  JSONL("{\"a\": \"x\", \"b\": 1.5e3, \"c\": true, \"d\": null, \"e\": {\"k\": [1, 2]}, \"g\": false}\n",
        "x|1.5e3|true|~|{\"k\": [1, 2]}|~|false;", "a", "b", "c", "d", "e", "f", "g");
  /* Escapes, \u with surrogate pairs, to UTF-8 (json.loads). */
  JSONL("{\"a\":\"\\u00e9\\ud83d\\ude00\\n\\\"\\\\\\/\\b\\f\\r\\t\\u20AC\"}",
        "\xc3\xa9\xf0\x9f\x98\x80\n\"\\/\b\f\r\t\xe2\x82\xac;", "a");
  /* JSON text is UTF-8 (RFC 8259): bytes that are not, an overlong form, a surrogate, are
   * malformed; well-formed multibyte text passes. */
  JSONL("{\"a\":\"\xff\xfe\"}\n{\"a\":\"\xc0\xaf\"}\n{\"a\":\"\xed\xa0\x80\"}\n{\"a\":\"\xc3\xa9\xf0\x9f\x98\x80\"}\n",
        "!;!;!;\xc3\xa9\xf0\x9f\x98\x80;", "a");
  /* Numbers are their literal text. */
  JSONL("{\"a\":-0}\n{\"a\":10}\n{\"a\":0.25}\n{\"a\":-1E-7}\n{\"a\":1e+2}\n", "-0;10;0.25;-1E-7;1e+2;", "a");
  JSONL("{\"a\":01}\n{\"a\":1.}\n{\"a\":-}\n{\"a\":.5}\n{\"a\":1e}\n{\"a\":+1}\n{\"a\":NaN}\n", "!;!;!;!;!;!;!;", "a");
  /* Blank lines, whitespace, an empty string (present, not missing), an absent field. */
  JSONL("\n  \r\n\t{ \"a\" : \"\" , \"b\":[ ] }  \r\n{}\n", "|[ ]|~;~|~|~;", "a", "b", "c");
  /* Not an object, trailing text, a control character, an unterminated string. */
  JSONL("[1]\n{\"a\":1} x\n{\"a\":\"\t\"}\n{\"a\":\"x\n{\"a\":2}\n", "!;!;!;!;2;", "a");
  /* Lone surrogates, bad escapes, \u0000 in a wanted field (not in another one). */
  JSONL("{\"a\":\"\\ud800\"}\n{\"a\":\"\\udc00x\"}\n{\"a\":\"\\ud800\\u0041\"}\n{\"a\":\"\\x\"}\n{\"a\":\"\\u12\"}\n",
        "!;!;!;!;!;", "a");
  JSONL("{\"a\":\"x\\u0000y\"}\n{\"b\":\"\\u0000\",\"a\":1}\n", "!;1;", "a");
  /* Duplicate keys: the last one wins (json.loads); escaped keys match; a field wanted twice. */
  JSONL("{\"a\":1,\"a\":2}\n{\"\\u0061\":\"z\"}\n", "2|2;z|z;", "a", "a");
  /* Only top-level keys count. */
  JSONL("{\"x\":{\"a\":1},\"b\":[{\"a\":2}]}\n", "~|[{\"a\":2}];", "a", "b");
  /* Malformed nested values and separators. */
  JSONL("{\"a\":[1,]}\n{\"a\":{1:2}}\n{\"a\" 1}\n{\"a\":1,}\n{\"a\":tru}\n{\"a\":[1}\n{,}\n{\"a\":{\"b\":1]}\n",
        "!;!;!;!;!;!;!;!;", "a");
  /* Nesting is bounded: 127 levels below the object are fine, 128 are not. */
  char deep[600];
  size_t k = 0;
  for (int pass = 0; pass < 2; pass++) {
    int levels = pass ? 128 : 127;
    k = (size_t)snprintf(deep, sizeof deep, "{\"a\":");
    for (int i = 0; i < levels; i++) deep[k++] = '[';
    for (int i = 0; i < levels; i++) deep[k++] = ']';
    deep[k++] = '}';
    expect_names(deep, k, (const char *const[]){"b"}, 1, pass ? "!;" : "~;");
  }
  /* The message says what and where. */
  rec_iter it;
  rec_field fl[1];
  size_t off;
  dbx_err err = {0, ""};
  const char *names[] = {"a"};
  rec_want w = {1, NULL, names};
  const char *d = "{\"a\":1}\n{\"a\":01}\n";
  assert_int_equal(rec_iter_init(&it, REC_JSONL, &w, d, strlen(d), 1), 0);  /* no header in JSONL */
  assert_int_equal(rec_next(&it, fl, &off, &err), 1);
  assert_int_equal(off, 0);
  assert_int_equal(rec_next(&it, fl, &off, &err), DBX_EBADREC);
  assert_int_equal(off, 8);
  assert_string_equal(err.msg, "JSONL: a missing ',' or '}' at byte 7 of the line");
  rec_iter_free(&it);
}

static void expect_header(rec_format f, const char *data, size_t n, const char *want) {
  rec_names h;
  dbx_err err = {0, ""};
  assert_int_equal(rec_parse_header(f, data, n, &h, &err), 0);
  dbx_buf b = {0};
  for (uint32_t i = 0; i < h.n; i++) {
    dbx_buf_append(&b, h.name[i], strlen(h.name[i]));
    dbx_buf_append(&b, "|", 1);
  }
  dbx_buf_append(&b, "", 1);
  assert_string_equal(b.data, want);
  dbx_buf_free(&b);
  rec_names_free(&h);
}

static void test_headers(void **state) {
  (void)state;
  expect_header(REC_CSV, "\"na,me\",b,\"c\"\"d\",\"e\nf\"\r\n1,2,3,4\n", 28, "na,me|b|c\"d|e\nf|");
  expect_header(REC_CSV, "\xEF\xBB\xBFid,v\n", 8, "id|v|");
  expect_header(REC_CSV, "a,,b", 4, "a||b|");
  expect_header(REC_CSV, "", 0, "");
  expect_header(REC_CSV, "\r\na,b\n", 7, "");
  expect_header(REC_TSV, "a\t\"b\"\tc\r\nx\n", 11, "a|\"b\"|c|");
  rec_names h;
  dbx_err err = {0, ""};
  assert_int_equal(rec_parse_header(REC_CSV, "a\"b\n", 4, &h, &err), DBX_EBADREC);
  assert_string_equal(err.msg, "a malformed header: a quote inside an unquoted field in column 1");
  assert_int_equal(rec_parse_header(REC_CSV, "a,\"b\0\"\n", 7, &h, &err), DBX_EBADREC);
  assert_int_equal(rec_parse_header(REC_JSONL, "{}", 2, &h, &err), DBX_EINVAL);

  /* From files, plain and gzip; errors name the file. */
  const char *dir = test_tmpdir();
  char p1[300], p2[300], p3[300];
  snprintf(p1, sizeof p1, "%s/x.csv", dir);
  snprintf(p2, sizeof p2, "%s/x.csv.gz", dir);
  snprintf(p3, sizeof p3, "%s/bad.csv", dir);
  /* A header longer than one read, with a quoted newline. */
  dbx_buf big = {0};
  dbx_buf_append(&big, "\"k\ney\",", 7);
  for (int i = 0; i < 20000; i++) dbx_buf_append(&big, "col,", 4);
  dbx_buf_append(&big, "last\n1,2\n", 9);
  write_file(p1, big.data, big.len);
  gzFile gz = gzopen(p2, "wb");
  assert_non_null(gz);
  assert_int_equal(gzwrite(gz, big.data, (unsigned)big.len), (int)big.len);
  assert_int_equal(gzclose(gz), Z_OK);
  const char *paths[] = {p1, p2};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(rec_read_header(REC_CSV, paths[i], &h, &err), 0);
    assert_int_equal(h.n, 20002);
    assert_string_equal(h.name[0], "k\ney");
    assert_string_equal(h.name[1], "col");
    assert_string_equal(h.name[20001], "last");
    rec_names_free(&h);
  }
  write_file(p3, "a,\"b\n", 5);
  assert_int_equal(rec_read_header(REC_CSV, p3, &h, &err), DBX_EBADREC);
  char want[400];
  snprintf(want, sizeof want, "%s line 1: a malformed header: a quoted field that never ends in column 2", p3);
  assert_string_equal(err.msg, want);
  assert_int_equal(rec_read_header(REC_CSV, "-", &h, &err), DBX_EUSAGE);
  snprintf(p3, sizeof p3, "%s/missing.csv", dir);
  assert_int_equal(rec_read_header(REC_CSV, p3, &h, &err), DBX_ENOENT);
  dbx_buf_free(&big);
  rm_rf(dir);
}

/* rec_csv_eol against the byte-by-byte definition. */
static void test_csv_eol(void **state) {
  (void)state;
  unsigned seed = 7;
  char buf[64];
  for (int round = 0; round < 20000; round++) {
    size_t n = (size_t)rand_r(&seed) % sizeof buf;
    for (size_t i = 0; i < n; i++) {
      int r = rand_r(&seed) % 6;
      buf[i] = r == 0 ? '"' : r == 1 ? '\n' : 'a';
    }
    int q = rand_r(&seed) % 2, q2 = q;
    uint64_t lf = 0, lf2 = 0;
    size_t want = n;
    for (size_t i = 0; i < n; i++) {
      if (buf[i] == '"') q2 ^= 1;
      else if (buf[i] == '\n' && !q2) { want = i; break; }
      else if (buf[i] == '\n') lf2++;
    }
    size_t got = rec_csv_eol(buf, n, &q, &lf);
    assert_int_equal(got, want);
    assert_int_equal(q, q2);
    assert_int_equal(lf, lf2);
  }
}

/* ---- the splitter's CSV mode ---- */

typedef struct gen {
  dbx_buf text;     /* the CSV file */
  dbx_buf expect;   /* records as render() prints them with want {2, 0}, each after "@LINE " */
  uint32_t nrec;
  uint32_t nblank;  /* blank lines: records for the splitter, skipped by the iterator */
} gen;

static void put_field(dbx_buf *t, const char *v, int quote) {
  int must = strpbrk(v, ",\"\r\n") != NULL;
  if (!quote && !must) { dbx_buf_append(t, v, strlen(v)); return; }
  dbx_buf_append(t, "\"", 1);
  for (const char *p = v; *p; p++) {
    if (*p == '"') dbx_buf_append(t, "\"", 1);
    dbx_buf_append(t, p, 1);
  }
  dbx_buf_append(t, "\"", 1);
}

/* A CSV with a header k,v,w and nrec records of fields drawn from awkward values. */
static void generate(gen *g, unsigned seed, uint32_t nrec, int final_newline) {
  static const char *vals[] = {"plain", "", "with,comma", "say \"hi\"", "multi\nline", "cr\r\nlf",
                               "x\n\ny", "\xc3\xa9t\xc3\xa9", "\"", "\n", "a b"};
  const size_t nv = sizeof vals / sizeof vals[0];
  memset(g, 0, sizeof *g);
  dbx_buf_append(&g->text, "k,\"v\nv\",w\r\n", 11);
  uint64_t line = 3;
  char tag[32];
  for (uint32_t r = 0; r < nrec; r++) {
    const char *f[3];
    for (int c = 0; c < 3; c++) {
      f[c] = vals[(size_t)rand_r(&seed) % nv];
      if (c) dbx_buf_append(&g->text, ",", 1);
      put_field(&g->text, f[c], rand_r(&seed) % 3 == 0);
    }
    int ended = r + 1 < nrec || final_newline;
    if (ended) {
      int crlf = rand_r(&seed) % 2;
      dbx_buf_append(&g->text, crlf ? "\r\n" : "\n", crlf ? 2 : 1);
    }
    if (rand_r(&seed) % 8 == 0) {  /* a blank line (or the last record's newline after all) */
      dbx_buf_append(&g->text, "\n", 1);
      g->nblank += ended;
    }
    snprintf(tag, sizeof tag, "@%llu ", (unsigned long long)line);
    dbx_buf_append(&g->expect, tag, strlen(tag));
    const char *show[2] = {f[2], f[0]};
    for (int c = 0; c < 2; c++) {
      if (c) dbx_buf_append(&g->expect, "|", 1);
      if (*show[c]) dbx_buf_append(&g->expect, show[c], strlen(show[c]));
      else dbx_buf_append(&g->expect, "~", 1);
    }
    dbx_buf_append(&g->expect, ";", 1);
    /* The next record's first line. */
    line = 1;
    for (size_t i = 0; i < g->text.len; i++) line += g->text.data[i] == '\n';
  }
  g->nrec = nrec;
  dbx_buf_append(&g->expect, "", 1);
}

/* Split path as CSV with o, load each batch, read each segment's records with want {2, 0}:
 * "@LINE f2|f0;" per record, LINE from dbx_batch_where. OUT *nbatches. Owned by the caller. */
static char *split_read(const char *path, split_opts o, uint32_t *nbatches) {
  char *paths[1] = {(char *)path};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(paths, 1, &in, &err), 0);
  splitter *sp;
  assert_int_equal(splitter_new(&in, &o, &sp, &err), 0);
  splitter_csv_quotes(sp, 1);
  loader *ld = loader_new();
  loader_expect(ld, &in);
  const char *pv[1] = {in.v[0].path};
  uint32_t cols[] = {2, 0};
  rec_want w = {2, cols, NULL};
  rec_iter it;
  assert_int_equal(rec_iter_init(&it, REC_CSV, &w, "", 0, 0), 0);
  dbx_buf out = {0};
  batchdesc b;
  int rc;
  uint32_t n = 0;
  uint64_t next_line = 0;
  while ((rc = splitter_next(sp, &b, &err)) == 1) {
    dbx_batch v;
    assert_int_equal(loader_load(ld, &b, pv, &v, &err), 0);
    for (uint32_t s = 0; s < v.nseg; s++) {
      const dbx_segment *g = &v.seg[s];
      /* Segments follow each other: lines numbered on, bytes contiguous. */
      assert_int_equal(g->rec_first, next_line);
      next_line += g->rec_count;
      uint64_t lf = 0;
      for (size_t i = 0; i < g->data_len; i++) lf += v.data[g->data_off + i] == '\n';
      assert_int_equal(lf, g->rec_count);
      rec_iter_reset(&it, v.data + g->data_off, g->data_len, g->off == 0);
      rec_field fl[2];
      size_t off;
      while ((rc = rec_next(&it, fl, &off, &err)) == 1) {
        char where[400], tag[32];
        dbx_batch_where(&v, g->data_off + off, where, sizeof where);
        const char *ln = strstr(where, " line ");
        assert_non_null(ln);
        snprintf(tag, sizeof tag, "@%s ", ln + 6);
        dbx_buf_append(&out, tag, strlen(tag));
        for (int c = 0; c < 2; c++) {
          if (c) dbx_buf_append(&out, "|", 1);
          if (fl[c].missing) dbx_buf_append(&out, "~", 1);
          else dbx_buf_append(&out, fl[c].p, fl[c].n);
        }
        dbx_buf_append(&out, ";", 1);
      }
      if (rc != 0) fail_msg("batch %u: %s", b.index, err.msg);
    }
    batchdesc_free(&b);
    n++;
  }
  assert_int_equal(rc, 0);
  rec_iter_free(&it);
  splitter_free(sp);
  loader_free(ld);
  inputs_free(&in);
  dbx_buf_append(&out, "", 1);
  *nbatches = n;
  return out.data;
}

static void check_every_cut(int gz, int final_newline, int by_records) {
  gen g;
  generate(&g, 11u + (unsigned)gz * 2u + (unsigned)final_newline, 40, final_newline);
  const char *dir = test_tmpdir();
  char path[300];
  snprintf(path, sizeof path, "%s/in.csv%s", dir, gz ? ".gz" : "");
  if (gz) {
    gzFile f = gzopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(gzwrite(f, g.text.data, (unsigned)g.text.len), (int)g.text.len);
    assert_int_equal(gzclose(f), Z_OK);
  } else {
    write_file(path, g.text.data, g.text.len);
  }
  size_t top = by_records ? g.nrec + 2 : g.text.len + 1;
  for (size_t bs = 1; bs <= top; bs++) {
    split_opts o;
    memset(&o, 0, sizeof o);
    if (by_records) o.batch_records = bs;
    else o.batch_bytes = bs;
    uint32_t nb;
    char *got = split_read(path, o, &nb);
    if (strcmp(got, g.expect.data) != 0)
      fail_msg("%s batch %s %zu: got\n[%s]\nwant\n[%s]", path, by_records ? "records" : "bytes", bs, got,
               g.expect.data);
    assert_true(nb >= 1);
    if (by_records) assert_int_equal(nb, (g.nrec + g.nblank + 1 + bs - 1) / bs);  /* with the header */
    free(got);
  }
  dbx_buf_free(&g.text);
  dbx_buf_free(&g.expect);
  rm_rf(dir);
}

static void test_split_csv_plain(void **state) {
  (void)state;
  check_every_cut(0, 1, 0);
  check_every_cut(0, 0, 0);
}

static void test_split_csv_streamed(void **state) {
  (void)state;
  check_every_cut(1, 1, 0);
  check_every_cut(1, 0, 0);
}

static void test_split_csv_records(void **state) {
  (void)state;
  check_every_cut(0, 1, 1);
  check_every_cut(1, 0, 1);
}

/* A streamed record over --max-record keeps max_line + 1 bytes, its quote closed, and the
 * records after it are intact. */
static void test_split_csv_max_record(void **state) {
  (void)state;
  const char *dir = test_tmpdir();
  char path[300];
  snprintf(path, sizeof path, "%s/in.csv.gz", dir);
  const char *text = "h\n\"0123456789\nabcdef\"\nok\n";
  gzFile f = gzopen(path, "wb");
  assert_int_equal(gzwrite(f, text, (unsigned)strlen(text)), (int)strlen(text));
  assert_int_equal(gzclose(f), Z_OK);
  char *paths[1] = {path};
  inputs in;
  dbx_err err = {0, ""};
  assert_int_equal(inputs_expand(paths, 1, &in, &err), 0);
  split_opts o;
  memset(&o, 0, sizeof o);
  o.batch_bytes = 1 << 20;
  o.max_line = 5;
  splitter *sp;
  assert_int_equal(splitter_new(&in, &o, &sp, &err), 0);
  splitter_csv_quotes(sp, 1);
  batchdesc b;
  assert_int_equal(splitter_next(sp, &b, &err), 1);
  assert_int_equal(b.data.len, 13);
  assert_memory_equal(b.data.data, "h\n\"01234\"\nok\n", 13);
  assert_int_equal(b.seg[0].rec_count, 4);  /* physical lines, the cut record's two included */
  batchdesc_free(&b);
  assert_int_equal(splitter_next(sp, &b, &err), 0);
  splitter_free(sp);
  inputs_free(&in);
  rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_formats),          cmocka_unit_test(test_csv_rfc4180),
      cmocka_unit_test(test_csv_malformed),    cmocka_unit_test(test_tsv),
      cmocka_unit_test(test_jsonl),            cmocka_unit_test(test_headers),
      cmocka_unit_test(test_csv_eol),          cmocka_unit_test(test_split_csv_plain),
      cmocka_unit_test(test_split_csv_streamed), cmocka_unit_test(test_split_csv_records),
      cmocka_unit_test(test_split_csv_max_record),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
