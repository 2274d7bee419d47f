/* log.c -- one line per message on standard error. The level is process-wide configuration,
 * set once by the CLI before any work starts. */
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>

static log_level g_level = LOG_WARN;

void log_set_level(log_level lv) { g_level = lv; }
log_level log_get_level(void) { return g_level; }

void log_msg(log_level lv, const char *fmt, ...) {
  if (lv > g_level) return;
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  const char *tag = lv == LOG_ERROR ? "error: " : lv == LOG_WARN ? "warning: " : "";
  fprintf(stderr, "dbatch: %s%s\n", tag, line);
}
