/* status.c -- `dbatch status JOB_DIR|URL`: a job's live or final state in the terminal. */
#include <errno.h>
#include <msgpack.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/cli.h"

static const char help[] =
    "Usage: dbatch status JOB_DIR|URL\n"
    "Print the state of a job: live from its dashboard (http://HOST:PORT/, as printed by\n"
    "--dashboard) or from its job directory (status.txt next to status.json, written every\n"
    "second while it runs"
    " and at the end).\n";

/* GET url's /status.txt body into out. Plain HTTP/1.0 is all the dashboard needs. */
static int http_get(const char *url, dbx_buf *out, dbx_err *err) {
  char host[256], port[16] = "80";
  const char *p = url + 7, *slash = strchr(p, '/'), *colon = strchr(p, ':');
  size_t hl = slash ? (size_t)(slash - p) : strlen(p);
  if (colon && (!slash || colon < slash)) {
    snprintf(port, sizeof port, "%.*s", (int)((slash ? slash : p + strlen(p)) - colon - 1), colon + 1);
    hl = (size_t)(colon - p);
  }
  snprintf(host, sizeof host, "%.*s", (int)hl, p);
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  int g = getaddrinfo(host, port, &hints, &ai);
  if (g) return dbx_seterr(err, DBX_EIO, "%s: %s", url, gai_strerror(g));
  int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
  if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return dbx_seterr(err, DBX_EIO, "%s: cannot connect: %s (has the job ended?)", url, strerror(e));
  }
  freeaddrinfo(ai);
  char req[512];
  int n = snprintf(req, sizeof req, "GET /status.txt HTTP/1.0\r\nHost: %s\r\n\r\n", host);
  if (write(fd, req, (size_t)n) != n) { close(fd); return dbx_seterr(err, DBX_EIO, "%s: write failed", url); }
  char buf[65536];
  ssize_t k;
  dbx_buf raw = {0};
  while ((k = read(fd, buf, sizeof buf)) > 0) dbx_buf_append(&raw, buf, (size_t)k);
  close(fd);
  const char *body = raw.data ? strstr(raw.data, "\r\n\r\n") : NULL;
  int rc = 0;
  if (!body || strncmp(raw.data, "HTTP/1.", 7) || strncmp(raw.data + 9, "200", 3))
    rc = dbx_seterr(err, DBX_EIO, "%s: not a dbatch dashboard answer", url);
  else
    dbx_buf_append(out, body + 4, raw.len - (size_t)(body + 4 - raw.data));
  dbx_buf_free(&raw);
  return rc;
}

static int read_all(const char *path, dbx_buf *out, dbx_err *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return dbx_seterr(err, DBX_ENOENT, "%s: %s (is this a job directory?)", path, strerror(errno));
  char buf[65536];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, f)) > 0) dbx_buf_append(out, buf, k);
  fclose(f);
  return 0;
}

int cmd_status(int argc, char **argv) {
  if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(help, argc == 2 ? stdout : stderr);
    return argc == 2 ? EXIT_OK : EXIT_USAGE;
  }
  dbx_err err = {0, ""};
  dbx_buf js = {0};
  int rc;
  if (!strncmp(argv[1], "http://", 7)) {
    rc = http_get(argv[1], &js, &err);
  } else {
    char path[4200];
    snprintf(path, sizeof path, "%s/status.txt", argv[1]);
    rc = read_all(path, &js, &err);
  }
  if (rc) {
    dbx_buf_free(&js);
    return cli_fail("status", &err);
  }
  /* The coordinator renders the text (status.txt, /status.txt) from the same state as the
   * JSON (status.json, /api/status), so both always agree. */
  fwrite(js.data, 1, js.len, stdout);
  dbx_buf_free(&js);
  return EXIT_OK;
}
