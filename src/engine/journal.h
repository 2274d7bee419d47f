/* journal.h -- the job journal: a SQLite file in the job directory that records the command,
 * the inputs each stage planned from, and every finished task's partial result, so that
 * `dbatch resume JOB_DIR` finishes a job whose coordinator died without redoing finished
 * tasks (private). */
#ifndef DBX_ENGINE_JOURNAL_H
#define DBX_ENGINE_JOURNAL_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"
#include "io/input.h"

typedef struct journal journal;

/* Open DIR/journal.db, creating DIR. resume = 0 starts a new journal for argv (the command
 * line, recorded with the working directory); resume = 1 reopens an unfinished one. */
int journal_open(const char *dir, int resume, int argc, char **argv, journal **out, dbx_err *err);
void journal_close(journal *jr);

/* The command line of the journal in dir (for resume). OUT: *argv (owned: free each string,
 * then the array), *cwd (owned). */
int journal_command(const char *dir, int *argc, char ***argv, char **cwd, dbx_err *err);

/* Stage number `stage` plans from in: record the inputs, or, when resuming, check they are
 * unchanged (size and modification time) and fail with DBX_ECHANGED naming the first that is
 * not. Streams (standard input) cannot be resumed. */
int journal_stage(journal *jr, uint32_t stage, const inputs *in, dbx_err *err);

/* Record a finished task's encoded partial and counters. Written in batches of transactions:
 * a crash loses at most the last moment's tasks, which are then simply run again. */
int journal_task(journal *jr, uint32_t stage, uint32_t index, const char *partial, size_t n,
                 uint64_t records, uint64_t bad, uint64_t bytes, dbx_err *err);

/* A recorded task, or 0 when there is none. OUT: *partial (owned) and its length. */
int journal_lookup(journal *jr, uint32_t stage, uint32_t index, char **partial, size_t *n,
                   uint64_t *records, uint64_t *bad, uint64_t *bytes);

/* Mark the whole job finished (its output committed). */
int journal_done(journal *jr, dbx_err *err);
int journal_resuming(const journal *jr);
#endif
