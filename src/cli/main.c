/* main.c -- the dbatch command: dispatch to subcommands. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/journal.h"

#include "cli/cli.h"
#include "util/log.h"

static const char usage[] =
    "Usage: dbatch COMMAND [OPTIONS] ...\n"
    "dbatch cuts a data set into batches, runs them as tasks on workers, and merges the\n"
    "partial results into one answer.\n"
    "\n"
    "Commands:\n"
    "  wordcount INPUT...   count words (Unicode-aware) in text files, directories, globs, -\n"
    "  nb train|test|run    text classification: TF-IDF + naive Bayes (as scikit-learn)\n"
    "  run --map CMD INPUT...  your own command over every batch, outputs in input order;\n"
    "                       with --reduce AGG or --reduce-cmd CMD, per-key results\n"
    "  groupby INPUT... --key COL --agg SPEC   group CSV, TSV or JSONL rows, no code\n"
    "  cooccur ORDERS --user COL --item COL    items bought together (recommendations)\n"
    "  worker --connect HOST:PORT   join a coordinator started with --listen\n"
    "  keygen FILE          a key pair for authenticated, encrypted links (--key)\n"
    "  bench-tasks --tasks N             no-op tasks through the scheduler: its rate\n"
    "  status JOB_DIR|URL   the live or final state of a job\n"
    "  jobs [DIR...]        past jobs, newest first: start, duration, state, records, output\n"
    "  dashboard [DIR...]   the same history as a web page, with each job's report\n"
    "  resume JOB_DIR       finish a journaled job (--job-dir) whose coordinator died\n"
    "  help [COMMAND]       help for a command\n"
    "  version              print the version\n"
    "\n"
    "Run 'dbatch COMMAND --help' for a command's options.\n";

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
} command;

static int cmd_resume(int argc, char **argv);

static const command commands[] = {
    {"wordcount", cmd_wordcount},
    {"run", cmd_run},
    {"groupby", cmd_groupby},
    {"cooccur", cmd_cooccur},
    {"worker", cmd_worker},
    {"bench-tasks", cmd_bench_tasks},
    {"nb", cmd_nb},
    {"resume", cmd_resume},
    {"status", cmd_status},
    {"keygen", cmd_keygen},
    {"jobs", cmd_jobs},
    {"dashboard", cmd_dashboard},
};

static int dispatch(int argc, char **argv);

/* `dbatch resume JOB_DIR`: run the journaled command again, in its directory, reusing every
 * task the journal holds. */
static int cmd_resume(int argc, char **argv) {
  if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs("Usage: dbatch resume JOB_DIR\n"
          "Finish a job started with --job-dir JOB_DIR whose coordinator died: finished tasks are\n"
          "taken from the journal, the rest run again, cut exactly as the journal's plan says\n"
          "(whatever this machine would choose). Refused when the inputs changed since, when\n"
          "the job or another resume of it is still running, and for a journal of another\n"
          "dbatch version.\n",
          argc == 2 ? stdout : stderr);
    return argc == 2 ? EXIT_OK : EXIT_USAGE;
  }
  int jargc = 0;
  char **jargv = NULL, *cwd = NULL;
  dbx_err err = {0, ""};
  int rc = journal_command(argv[1], &jargc, &jargv, &cwd, &err);
  /* At once, before any input is read: refused while the job or another resume runs. The
   * lock is held for the whole job (the journaled command finds it taken by this process). */
  char dir[PATH_MAX];  /* the job directory as named here, before going back to the job's own */
  if (!rc && !realpath(argv[1], dir)) rc = dbx_seterr(&err, DBX_ENOENT, "%s: %s", argv[1], strerror(errno));
  if (!rc && cwd[0] && chdir(cwd) != 0) rc = dbx_seterr(&err, DBX_ENOENT, "cannot return to the job's directory %s", cwd);
  /* A --cluster job resumed by its launcher: the worker ranks serve the new rank 0 (the
   * journal and its lock are rank 0's). */
  if (!rc && jargc > 1) cli_cluster_early(jargc - 1, jargv + 1);
  if (!rc) rc = journal_lock(dir, &err);
  int status;
  if (rc) {
    status = cli_fail("resume", &err);
  } else {
    cli_resume = 1;
    status = dispatch(jargc, jargv);
  }
  for (int i = 0; jargv && i < jargc; i++) free(jargv[i]);
  free(jargv);
  free(cwd);
  return status;
}

int main(int argc, char **argv) { return dispatch(argc, argv); }

static int dispatch(int argc, char **argv) {
  cli_argc = argc;
  cli_argv = argv;
  /* The words as typed, for reports: getopt reorders argv as it parses. */
  static char *typed[4096];
  cli_typed_argc = argc < 4096 ? argc : 4095;
  for (int i = 0; i < cli_typed_argc; i++) typed[i] = argv[i];
  cli_typed_argv = typed;
  opterr = 0;  /* every command reports a bad option itself, in one line (cli_bad_option) */
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_USAGE : EXIT_OK;
  }
  if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
    printf("dbatch %s\n", DBX_VERSION);
    return EXIT_OK;
  }
  const char *name = argv[1];
  int help = 0;
  if (strcmp(name, "help") == 0) {
    if (argc < 3) { fputs(usage, stdout); return EXIT_OK; }
    name = argv[2];
    help = 1;
  }
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    if (strcmp(commands[i].name, name) == 0) {
      if (help) {
        char *hargv[] = {(char *)name, "--help", NULL};
        return commands[i].run(2, hargv);
      }
      cli_cluster_early(argc - 1, argv + 1);  /* --cluster: a worker rank ends here */
      return commands[i].run(argc - 1, argv + 1);
    }
  }
  const char *names[sizeof commands / sizeof *commands];
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) names[i] = commands[i].name;
  const char *near = cli_closest(name, names, sizeof commands / sizeof *commands);
  char safe[256];
  log_escape(safe, sizeof safe, name, strlen(name));
  if (near) fprintf(stderr, "dbatch: unknown command '%s' (did you mean '%s'?)\nRun 'dbatch --help' for the list.\n", safe, near);
  else fprintf(stderr, "dbatch: unknown command '%s'\nRun 'dbatch --help' for the list.\n", safe);
  return EXIT_USAGE;
}
