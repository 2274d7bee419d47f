/* journal.h -- the job journal: a SQLite file in the job directory that records the command,
 * each stage's plan (how its inputs are cut, the options its partials depend on) and inputs,
 * and every finished task's partial result, so that `dbatch resume JOB_DIR` finishes a job
 * whose coordinator died without redoing finished tasks (private).
 *
 * The job directory is locked (flock on DIR/lock) for as long as a job or a resume runs in
 * it: a second one is refused at once. */
#ifndef DBX_ENGINE_JOURNAL_H
#define DBX_ENGINE_JOURNAL_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"
#include "io/batch.h"
#include "io/input.h"

typedef struct journal journal;

/* The schema of journal.db; a journal of another schema is refused by resume. */
#define JOURNAL_SCHEMA "4"  /* 3: inputs record device and inode; 4: partials zstd-compressed */

/* Open DIR/journal.db, creating DIR, and take the job directory's lock (journal_lock).
 * resume = 0 starts a new journal for argv (the command line, recorded with the working
 * directory); resume = 1 reopens an unfinished one, refusing a journal of another schema or
 * dbatch version (its plan could not be reproduced). */
int journal_open(const char *dir, int resume, int argc, char **argv, journal **out, dbx_err *err);
void journal_close(journal *jr);

/* Lock the job directory dir for this process (DIR/lock, flock, not inherited by workers):
 * refused at once with a message naming the holder's pid when another process holds it.
 * Taking it again for the same directory is a no-op; it is held until journal_unlock(),
 * journal_close() or the process exits. */
int journal_lock(const char *dir, dbx_err *err);
void journal_unlock(void);

/* The command line of the journal in dir (for resume), checking first that it can be
 * resumed (unfinished, written by this schema and version). OUT: *argv (owned: free each
 * string, then the array), *cwd (owned). */
int journal_command(const char *dir, int *argc, char ***argv, char **cwd, dbx_err *err);

/* The plan of stage number `stage` (call before journal_stage): how its inputs are cut
 * (*split, IN/OUT) and opts, a canonical text of every option its partials depend on (the
 * operator, case folding, record limits, bad-record policy, ...). A new job records both.
 * Resuming, a stage planned before has its recorded cut copied into *split, so its tasks
 * are exactly those of the journal whatever this machine or command line would choose now;
 * its opts must equal the record (else DBX_ECHANGED: the journal cannot be reproduced). A
 * stage the job had not reached is planned afresh and recorded. */
int journal_plan(journal *jr, uint32_t stage, const char *name, const char *opts, split_opts *split,
                 dbx_err *err);
/* Resuming: 1 and the options recorded for stage `stage` (cut to cap) if the job planned it,
 * else 0. For a command whose defaults changed since a job was journaled (OUT: opts). */
int journal_planned(journal *jr, uint32_t stage, char *opts, size_t cap);

/* Stage number `stage` plans from in: record the inputs (a new job, or a stage the resumed
 * job had not reached), or, when resuming a stage planned before, check they are unchanged
 * (size, modification time, device and inode: a file replaced by another of the same size
 * and time is not the same input) and fail with DBX_ECHANGED naming the first that is not.
 * Streams (standard input) cannot be resumed. */
int journal_stage(journal *jr, uint32_t stage, const inputs *in, dbx_err *err);

/* Record a finished task's encoded partial and counters. Written in batches of transactions:
 * a crash loses at most the last moment's tasks, which are then simply run again. */
int journal_task(journal *jr, uint32_t stage, uint32_t index, const char *partial, size_t n,
                 uint64_t records, uint64_t bad, uint64_t bytes, dbx_err *err);

/* A recorded task, or 0 when there is none. OUT: *partial (owned) and its length. */
int journal_lookup(journal *jr, uint32_t stage, uint32_t index, char **partial, size_t *n,
                   uint64_t *records, uint64_t *bad, uint64_t *bytes);

/* The job's identity: 32 hex digits made when the job started, the same after a resume. */
const char *journal_job_id(const journal *jr);
/* A fresh identity (32 hex digits) for a job without a journal. */
void journal_new_id(char *out, size_t cap);

/* A note kept across a resume (written at once, in its own transaction), and reading it
 * back: 1 when there is one. */
int journal_note_put(journal *jr, const char *key, const char *val, dbx_err *err);
int journal_note_get(journal *jr, const char *key, char *out, size_t cap);

/* Commit the tasks journaled so far (they go in groups): before the outputs are committed,
 * so a crash after that commit resumes with every task done. */
int journal_sync(journal *jr, dbx_err *err);
/* Mark the whole job finished (its output committed), then drop the tasks' partial results:
 * a finished job is not resumed. */
int journal_done(journal *jr, dbx_err *err);
int journal_resuming(const journal *jr);
#endif
