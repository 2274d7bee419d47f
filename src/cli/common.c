/* common.c -- options shared by every job command, and error reporting. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "util/log.h"
#include "util/parse.h"

void cli_job_defaults(cli_job *o, const char *job_name) {
  memset(o, 0, sizeof *o);
  o->workers = 0;
  o->batch_bytes = 8u << 20;
  o->out.dest = "-";
  o->out.table = job_name;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "dbatch %s: %s\nTry 'dbatch %s --help'.\n", cmd, msg, cmd);
  return EXIT_USAGE;
}

int cli_fail(const char *cmd, const dbx_err *err) {
  if (err->code == DBX_EUSAGE) return cli_usage_error(cmd, "%s", err->msg);
  fprintf(stderr, "dbatch %s: error: %s\n", cmd, err->msg[0] ? err->msg : dbx_strerror(err->code));
  return EXIT_FAIL;
}

int cli_job_option(cli_job *o, int c, const char *arg) {
  uint64_t v;
  switch (c) {
  case 1000:
    if (parse_u64(arg, 0, 1024, &v)) return -1;
    o->workers = (int)v;
    return 1;
  case 1001:
    if (parse_size(arg, &v) || v == 0) return -1;
    o->batch_bytes = v;
    o->batch_records = 0;
    return 1;
  case 1002:
    if (parse_u64(arg, 1, UINT64_MAX, &v)) return -1;
    o->batch_records = v;
    return 1;
  case 'o': o->out.dest = arg; return 1;
  case 1003: o->out.format = arg; return 1;
  case 1004: o->out.table = arg; return 1;
  case 1005: o->out.append = 1; return 1;
  case 1006: o->summary_json = arg; return 1;
  case 'q': o->quiet = 1; log_set_level(LOG_ERROR); return 1;
  case 'v': o->verbose = 1; log_set_level(LOG_DEBUG); return 1;
  default: return 0;
  }
}
