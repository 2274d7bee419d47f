/* parse.c -- option value parsing. */
#include "util/parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dbatch.h"

int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
  if (!s || !isdigit((unsigned char)*s)) return DBX_EINVAL;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v < min || v > max) return DBX_EINVAL;
  *out = v;
  return 0;
}

int parse_size(const char *s, uint64_t *out) {
  if (!s || !isdigit((unsigned char)*s)) return DBX_EINVAL;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno) return DBX_EINVAL;
  /* A fraction goes with a unit (1.5M): up to 9 digits, the bytes rounded down. */
  uint64_t frac = 0, scale = 1;
  if (*end == '.') {
    end++;
    if (!isdigit((unsigned char)*end)) return DBX_EINVAL;
    for (; isdigit((unsigned char)*end); end++) {
      if (scale >= 1000000000u) return DBX_EINVAL;
      frac = frac * 10 + (uint64_t)(*end - '0');
      scale *= 10;
    }
    if (!strchr("kKmMgGtT", *end) || !*end) return DBX_EINVAL;
  }
  uint64_t mul = 1;
  switch (toupper((unsigned char)*end)) {
  case 0: break;
  case 'B': break;
  case 'K': mul = 1ull << 10; end++; break;
  case 'M': mul = 1ull << 20; end++; break;
  case 'G': mul = 1ull << 30; end++; break;
  case 'T': mul = 1ull << 40; end++; break;
  default: return DBX_EINVAL;
  }
  if (*end && strcasecmp(end, "B") != 0 && strcasecmp(end, "iB") != 0) return DBX_EINVAL;
  if (v > UINT64_MAX / mul) return DBX_EINVAL;
  uint64_t part = (uint64_t)((unsigned __int128)frac * mul / scale);
  if (v * mul > UINT64_MAX - part) return DBX_EINVAL;
  *out = v * mul + part;
  return 0;
}
