/* keygen.c -- `dbatch keygen FILE`: a CURVE key pair for a coordinator or a worker. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "net/transport.h"

static const char help[] =
    "Usage: dbatch keygen FILE [--comment TEXT] [--force]\n"
    "Make a key pair: the secret one in FILE (mode 0600), the public one in FILE.pub.\n"
    "A coordinator takes --key FILE and lists its workers' FILE.pub lines in its\n"
    "--authorized-keys file (one per line, '#' comments, like ssh's authorized_keys); a\n"
    "worker takes --key FILE and --coordinator-key with the coordinator's FILE.pub.\n"
    "\n"
    "      --comment TEXT      the name written after the public key (default: user@host)\n"
    "      --force             replace FILE and FILE.pub when they exist\n"
    "Exit status: 0 done, 1 error (nothing was written), 2 usage error.\n";

int cmd_keygen(int argc, char **argv) {
  static const struct option longopts[] = {
      {"comment", required_argument, NULL, 1},
      {"force", no_argument, NULL, 2},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *comment = NULL;
  int force = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 1: comment = optarg; break;
    case 2: force = 1; break;
    case 'h': fputs(help, stdout); return EXIT_OK;
    default: return cli_bad_option("keygen", longopts, "h", argv);
    }
  }
  if (optind + 1 != argc) return cli_usage_error("keygen", optind == argc ? "give the FILE to write" : "one FILE only");
  char who[128];
  if (!comment) {
    char host[64] = "host";
    const char *user = getenv("USER");
    gethostname(host, sizeof host);
    host[sizeof host - 1] = 0;
    snprintf(who, sizeof who, "%s@%s", user && *user ? user : "dbatch", host);
    comment = who;
  }
  tr_keypair kp;
  dbx_err err = {0, ""};
  int rc = tr_keypair_new(&kp, &err);
  if (!rc) rc = tr_keypair_save(&kp, argv[optind], comment, force, &err);
  if (rc) return cli_fail("keygen", &err);
  printf("%s %s\n", kp.pub, comment);
  return EXIT_OK;
}
