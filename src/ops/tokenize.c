/* tokenize.c -- Unicode word tokenizer with an ASCII fast path.
 * ASCII bytes are classified and lowercased by table; other code points go through utf8proc
 * (category and case mapping). Text that is mostly ASCII never leaves the fast loop. */
#include "ops/tokenize.h"

#include <pthread.h>
#include <string.h>
#include <utf8proc.h>

/* 1 = ASCII word character, 0 = ASCII separator, 2 = start of a multi-byte sequence. */
static unsigned char cls[256];
static unsigned char lower_ascii[256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

/* Code points below U+0800 (two-byte UTF-8: Latin, Greek, Cyrillic, Hebrew, Arabic, ...)
 * are classified by table too: bit 0 = word character, bit 1 = cased; and their lowercase. */
#define SMALL_CP 0x800
static unsigned char small_cls[SMALL_CP];
static int32_t small_lower[SMALL_CP];

static int is_word_cp(utf8proc_int32_t c) {
  switch (utf8proc_category(c)) {
  case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
  case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
  case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
    return 1;
  default:
    return c == '_';
  }
}

/* Unicode's Cased (Lu, Ll, Lt, Other_Lowercase, Other_Uppercase), as str.lower() tests it
 * for the final sigma. Of Other_*, only what is not also Case_Ignorable counts there: the
 * final sigma skips case-ignorable characters before testing. */
static int is_cased(utf8proc_int32_t c) {
  utf8proc_category_t k = utf8proc_category(c);
  return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT || c == 0xaa ||
         c == 0xba || (c >= 0x2160 && c <= 0x217f) || (c >= 0x24b6 && c <= 0x24e9) ||
         (c >= 0x1f130 && c <= 0x1f149) || (c >= 0x1f150 && c <= 0x1f169) || (c >= 0x1f170 && c <= 0x1f189);
}

/* Unicode's Case_Ignorable: Mn, Me, Cf, Lm, Sk and the word-break MidLetter, MidNumLet and
 * Single_Quote characters (' . : and their kin). */
static int is_case_ignorable(utf8proc_int32_t c) {
  switch (utf8proc_category(c)) {
  case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_CF:
  case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_SK:
    return 1;
  default:
    break;
  }
  switch (c) {
  case 0x27: case 0x2e: case 0x3a: case 0xb7: case 0x387: case 0x55f: case 0x5f4: case 0x2018: case 0x2019:
  case 0x2024: case 0x2027: case 0xfe13: case 0xfe52: case 0xfe55: case 0xff07: case 0xff0e: case 0xff1a:
    return 1;
  default:
    return 0;
  }
}

static void init_tables(void) {
  for (int c = 0; c < 256; c++) {
    cls[c] = c >= 0x80 ? 2 : 0;
    lower_ascii[c] = (unsigned char)c;
  }
  for (int c = '0'; c <= '9'; c++) cls[c] = 1;
  for (int c = 'a'; c <= 'z'; c++) cls[c] = 1;
  for (int c = 'A'; c <= 'Z'; c++) {
    cls[c] = 1;
    lower_ascii[c] = (unsigned char)(c + 32);
  }
  cls['_'] = 1;
  for (int32_t c = 0; c < SMALL_CP; c++) {
    small_cls[c] = (unsigned char)(is_word_cp(c) | is_cased(c) << 1);
    small_lower[c] = utf8proc_tolower(c);
  }
}

void tok_init(tok *t, const char *data, size_t n, int lowercase, size_t min_cp) {
  pthread_once(&tables_once, init_tables);  /* worker threads tokenize concurrently */
  memset(t, 0, sizeof *t);
  t->lower = lowercase;
  t->min_cp = min_cp ? min_cp : 1;
  tok_reset(t, data, n);
}

void tok_reset(tok *t, const char *data, size_t n) {
  t->base = (const unsigned char *)data;
  t->size = n;
  t->blk = (size_t)0 - 64;  /* the first block is classified by the first call */
  t->s = t->h = t->u = t->edges = 0;
  t->in_word = 0;
  t->rp = t->rend = NULL;
  t->scalar = 0;
}

void tok_free(tok *t) { dbx_buf_free(&t->word); }

/* Decode one code point at p; -1 for an invalid byte (then one byte is consumed). */
static utf8proc_int32_t decode(const unsigned char *p, const unsigned char *end, size_t *len) {
  utf8proc_int32_t c;
  utf8proc_ssize_t k = utf8proc_iterate(p, end - p, &c);
  if (k <= 0) { *len = 1; return -1; }
  *len = (size_t)k;
  return c;
}

static int slow_next(tok *t, const char **w, size_t *n);

/* The code point that ends at q (lo < q, q the start of a code point), as decoding forward
 * sees it: *start is where it begins; -1 for an invalid byte (then *start = q - 1). */
static utf8proc_int32_t decode_back(const unsigned char *lo, const unsigned char *q, const unsigned char **start) {
  const unsigned char *s = q - 1;
  for (int k = 0; k < 3 && s > lo && (*s & 0xc0) == 0x80; k++) s--;
  size_t len;
  utf8proc_int32_t c = decode(s, q, &len);
  if (c >= 0 && s + len == q) {
    *start = s;
    return c;
  }
  *start = q - 1;
  return -1;
}

/* Python's Final_Sigma context of the capital sigma at [at, after) in the whole text: a cased
 * letter before it and none after it, case-ignorable characters skipped either way (which may
 * be outside the word: "A.Σ" and "Α\u0301Σ" end in ς). */
static int final_sigma(const tok *t, const unsigned char *at, const unsigned char *after) {
  const unsigned char *lo = t->base, *hi = t->base + t->size;
  int before = 0;
  for (const unsigned char *q = at; q > lo;) {
    const unsigned char *s;
    utf8proc_int32_t c = decode_back(lo, q, &s);
    if (c >= 0 && is_case_ignorable(c)) {
      q = s;
      continue;
    }
    before = c >= 0 && is_cased(c);
    break;
  }
  if (!before) return 0;
  for (const unsigned char *q = after; q < hi;) {
    size_t len;
    utf8proc_int32_t c = decode(q, hi, &len);
    if (c >= 0 && is_case_ignorable(c)) {
      q += len;
      continue;
    }
    return !(c >= 0 && is_cased(c));
  }
  return 1;
}

/* Classification of 64 bytes at a time: bit i of *s is set when byte i is an ASCII word
 * character or a byte of 0x80 and more (not a separator), of *h when it is 0x80 and more, of
 * *u when it is an ASCII capital. Bytes past n count as separators. */
#if defined(__SSE2__)
#include <emmintrin.h>
static inline void classify16(const unsigned char *p, uint64_t *s, uint64_t *h, uint64_t *u, unsigned at) {
  __m128i x = _mm_loadu_si128((const __m128i *)p);
  /* x - lo < n, unsigned, as a signed compare after moving lo to -128 */
  __m128i up = _mm_cmplt_epi8(_mm_add_epi8(x, _mm_set1_epi8((char)(0x80 - 'A'))), _mm_set1_epi8((char)(-128 + 26)));
  __m128i al = _mm_cmplt_epi8(_mm_add_epi8(_mm_or_si128(x, _mm_set1_epi8(0x20)), _mm_set1_epi8((char)(0x80 - 'a'))),
                              _mm_set1_epi8((char)(-128 + 26)));
  __m128i dg = _mm_cmplt_epi8(_mm_add_epi8(x, _mm_set1_epi8((char)(0x80 - '0'))), _mm_set1_epi8((char)(-128 + 10)));
  __m128i un = _mm_cmpeq_epi8(x, _mm_set1_epi8('_'));
  uint64_t hi = (uint32_t)_mm_movemask_epi8(x);
  *s |= ((uint64_t)(uint32_t)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(al, dg), un)) | hi) << at;
  *h |= hi << at;
  *u |= (uint64_t)(uint32_t)_mm_movemask_epi8(up) << at;
}
static void classify(const unsigned char *p, uint64_t *s, uint64_t *h, uint64_t *u) {
  *s = *h = *u = 0;
  for (unsigned i = 0; i < 64; i += 16) classify16(p + i, s, h, u, i);
}
#else
static void classify(const unsigned char *p, uint64_t *s, uint64_t *h, uint64_t *u) {
  *s = *h = *u = 0;
  for (unsigned i = 0; i < 64; i++) {
    uint64_t bit = (uint64_t)1 << i;
    if (cls[p[i]]) *s |= bit;
    if (p[i] >= 0x80) *h |= bit;
    if ((unsigned)(p[i] - 'A') < 26u) *u |= bit;
  }
}
#endif

static inline uint64_t bits_between(unsigned a, unsigned b) { /* bits a..b-1, a < 64, a <= b <= 64 */
  uint64_t hi = b == 64 ? ~(uint64_t)0 : ((uint64_t)1 << b) - 1;
  return hi & ~(((uint64_t)1 << a) - 1);
}

/* The next run of non-separator bytes [*s, *e) of the text, and whether it holds a byte of
 * 0x80 or more (*h) and an ASCII capital (*u); 0 at the end. */
static int next_run(tok *t, size_t *s, size_t *e, int *h, int *u) {
  for (;;) {
    while (t->edges) {
      unsigned b = (unsigned)__builtin_ctzll(t->edges);
      t->edges &= t->edges - 1;
      if (t->s >> b & 1) {
        t->wstart = t->blk + b;
        t->sb = b;
        t->acc_h = t->acc_u = 0;
        t->in_word = 1;
        continue;
      }
      uint64_t r = bits_between(t->sb, b);
      *s = t->wstart;
      *e = t->blk + b;
      *h = t->acc_h | ((t->h & r) != 0);
      *u = t->acc_u | ((t->u & r) != 0);
      t->in_word = 0;
      return 1;
    }
    if (t->in_word) {  /* a run going on into the next block */
      uint64_t r = bits_between(t->sb, 64);
      t->acc_h |= (t->h & r) != 0;
      t->acc_u |= (t->u & r) != 0;
      t->sb = 0;
    }
    t->blk += 64;
    if (t->blk >= t->size) {
      t->blk = t->size;
      t->edges = 0;
      if (!t->in_word) return 0;
      *s = t->wstart;
      *e = t->size;
      *h = t->acc_h;
      *u = t->acc_u;
      t->in_word = 0;
      return 1;
    }
    uint64_t carry = t->in_word;
    if (t->size - t->blk >= 64) {
      classify(t->base + t->blk, &t->s, &t->h, &t->u);
    } else {
      unsigned char tail[64];
      memset(tail, ' ', sizeof tail);
      memcpy(tail, t->base + t->blk, t->size - t->blk);
      classify(tail, &t->s, &t->h, &t->u);
    }
    t->edges = t->s ^ (t->s << 1 | carry);
  }
}

int tok_next(tok *t, const char **w, size_t *n) {
  for (;;) {
    if (t->rp) {
      int rc = slow_next(t, w, n);
      if (rc) return rc;
      t->rp = t->rend = NULL;
    }
    size_t s, e;
    int h, u;
    if (!next_run(t, &s, &e, &h, &u)) return 0;
    if (h) {  /* Unicode inside: the general tokenizer on this run alone */
      t->rp = t->base + s;
      t->rend = t->base + e;
      continue;
    }
    size_t k = e - s;
    if (k < t->min_cp) continue;
    const unsigned char *p = t->base + s;
    *n = k;
    if (!u || !t->lower) { *w = (const char *)p; return 1; }
    if (t->word.cap < k && dbx_buf_reserve(&t->word, k)) return DBX_ENOMEM;
    for (size_t i = 0; i < k; i++) t->word.data[i] = (char)lower_ascii[p[i]];
    t->word.len = k;
    *w = t->word.data;
    return 1;
  }
}

int tok_next_scalar(tok *t, const char **w, size_t *n) {
  if (!t->scalar) {
    t->scalar = 1;
    t->rp = t->base;
    t->rend = t->base + t->size;
  }
  return t->rp ? slow_next(t, w, n) : 0;
}

/* The general tokenizer on [t->rp, t->rend): a run of non-separator bytes that holds a byte
 * of 0x80 or more (the whole text in principle; the block scanner hands it only such runs). */
static int slow_next(tok *t, const char **w, size_t *n) {
  const unsigned char *p = t->rp, *end = t->rend;
  for (;;) {
    /* Skip separators. */
    while (p < end && cls[*p] == 0) p++;
    if (p == end) { t->rp = p; return 0; }
    if (cls[*p] == 1) {
      /* Fast path: an all-ASCII word ending at an ASCII separator or the end is returned
       * in place when it has nothing to lowercase, else lowercased into the scratch. */
      const unsigned char *q = p;
      unsigned upper = 0;
      while (q < end && cls[*q] == 1) { upper |= (unsigned)(*q - 'A') < 26u; q++; }
      if (q == end || cls[*q] == 0) {
        size_t k = (size_t)(q - p);
        if (k < t->min_cp) { p = q; continue; }
        t->rp = q;
        *n = k;
        if (!upper || !t->lower) { *w = (const char *)p; return 1; }
        if (t->word.cap < k && dbx_buf_reserve(&t->word, k)) return DBX_ENOMEM;
        for (size_t i = 0; i < k; i++) t->word.data[i] = (char)lower_ascii[p[i]];
        t->word.len = k;
        *w = t->word.data;
        return 1;
      }
    }
    t->word.len = 0;
    size_t ncp = 0;
    int stop_after = 0;
    while (p < end && !stop_after) {
      unsigned char b = *p;
      if (cls[b] == 1) {
        /* ASCII run: copy (lowercased) until something else. */
        const unsigned char *q = p;
        while (q < end && cls[*q] == 1) q++;
        size_t k = (size_t)(q - p);
        if (t->word.cap - t->word.len < k && dbx_buf_reserve(&t->word, k)) return DBX_ENOMEM;
        unsigned char *o = (unsigned char *)t->word.data + t->word.len;
        if (t->lower) for (size_t i = 0; i < k; i++) o[i] = lower_ascii[p[i]];
        else memcpy(o, p, k);
        t->word.len += k;
        ncp += k;
        p = q;
        continue;
      }
      if (cls[b] == 0) break;
      size_t len;
      utf8proc_int32_t c;
      if ((b & 0xe0) == 0xc0 && b >= 0xc2 && p + 1 < end && (p[1] & 0xc0) == 0x80) {
        c = (utf8proc_int32_t)((b & 0x1f) << 6 | (p[1] & 0x3f));
        len = 2;
        if (c != 0x3a3 && c != 0x130 && small_lower[c] < SMALL_CP) {
          utf8proc_int32_t lc = t->lower ? small_lower[c] : c;
          if (!(small_cls[lc] & 1)) break;
          unsigned char *o;
          if (t->word.cap - t->word.len < 4 && dbx_buf_reserve(&t->word, 4)) return DBX_ENOMEM;
          o = (unsigned char *)t->word.data + t->word.len;
          t->word.len += (size_t)utf8proc_encode_char(lc, o);
          ncp++;
          p += 2;
          continue;
        }
      } else {
        c = decode(p, end, &len);
      }
      if (c < 0) break;
      utf8proc_int32_t lc = c;
      if (t->lower) {
        if (c == 0x130) {
          lc = 'i';
          stop_after = 1;  /* "i" + U+0307, and U+0307 is not a word character */
        } else if (c == 0x3a3) {
          lc = final_sigma(t, p, p + len) ? 0x3c2 : 0x3c3;
        } else {
          lc = utf8proc_tolower(c);
        }
      }
      if (!is_word_cp(lc)) break;
      unsigned char enc[4];
      utf8proc_ssize_t el = utf8proc_encode_char(lc, enc);
      if (dbx_buf_append(&t->word, enc, (size_t)el)) return DBX_ENOMEM;
      ncp++;
      p += len;
    }
    if (t->word.len == 0) {
      /* A non-ASCII separator (or invalid byte): step over it. */
      size_t len;
      decode(p, end, &len);
      p += len;
      continue;
    }
    if (ncp < t->min_cp) continue;
    t->rp = p;
    *w = t->word.data;
    *n = t->word.len;
    return 1;
  }
}
