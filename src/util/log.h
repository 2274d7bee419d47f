/* log.h -- messages to standard error, prefixed "dbatch:" (private). Every line is escaped:
 * control characters (ESC first of all) and invalid UTF-8 from file names, host names or peer
 * messages can never reach the terminal raw. */
#ifndef DBX_UTIL_LOG_H
#define DBX_UTIL_LOG_H
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include "dbatch.h"

typedef enum { LOG_QUIET = 0, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG } log_level;

void log_set_level(log_level lv);
log_level log_get_level(void);
void log_msg(log_level lv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(log_level lv, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Append s[0..n) to b with what a terminal would act on made visible: ESC as \e, \t \n \r,
 * other C0 controls, DEL and bytes that are not valid UTF-8 as \xNN, C1 controls (U+0080..
 * U+009F) as \u00NN. Valid printable UTF-8 is kept as it is; backslashes are not doubled, so
 * escaping twice changes nothing. 0 or DBX_ENOMEM. */
int log_escape_buf(dbx_buf *b, const char *s, size_t n);
/* The same into out (cap bytes, always NUL-terminated; cut at a whole escape). Returns the
 * length written. */
size_t log_escape(char *out, size_t cap, const char *s, size_t n);
/* fputs(s) with s escaped as above, for lines that do not go through log_msg. */
void log_fputs_escaped(const char *s, FILE *f);
#endif
