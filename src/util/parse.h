/* parse.h -- parsing option values: sizes with units, counts (private). */
#ifndef DBX_UTIL_PARSE_H
#define DBX_UTIL_PARSE_H
#include <stdint.h>

/* "512", "64K", "8M", "1G", "1GiB", "4MB": binary multiples. 0 or DBX_EINVAL. */
int parse_size(const char *s, uint64_t *out);
/* Decimal unsigned integer in [min, max]. 0 or DBX_EINVAL. */
int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
#endif
