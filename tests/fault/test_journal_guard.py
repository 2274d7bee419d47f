"""The journal never loses a finished task, and a resume reuses exactly what it holds:
- a coordinator killed with SIGKILL mid-job, then resumed: every task committed to the
  journal is taken from it (resumed_tasks == its rows), the others run once
  (attempts == tasks - resumed_tasks), and the output is byte-identical to a clean run;
- a job that finished (its journal then reopened as if it had been killed at the very end):
  every task is in the journal, so the resume runs nothing at all."""
import json
import os
import signal
import sqlite3
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import TmpTest, run, slurp, start, wait_for_line  # noqa: E402


def words_file(path, lines):
    with open(path, "w") as f:
        for i in range(lines):
            f.write("w%d alpha w%d beta %d\n" % (i % 113, i % 7, i))
    return path


def journal_rows(jd):
    con = sqlite3.connect(os.path.join(jd, "journal.db"))
    try:
        return sorted(r[0] for r in con.execute("SELECT idx FROM tasks WHERE stage = 0"))
    finally:
        con.close()


class JournalKeepsFinishedTasks(TmpTest):
    def test_kill9_mid_job_then_resume(self):
        data = words_file(self.path("in.txt"), 4000)
        want = run("wordcount", "--workers", "0", data).stdout
        jd, out, s = self.path("job"), self.path("out.tsv"), self.path("s.json")
        env = dict(os.environ, DBATCH_FAULT="delay_ms=60")  # 80 tasks: at least 2.4 s on 2 workers
        coord = start("wordcount", "--workers", "2", "--batch-records", "50", "--job-dir", jd, "--out", out,
                      "--summary-json", s, "-v", data, env=env)
        try:
            wait_for_line(coord.stderr, "worker 2 joined")
            time.sleep(1.0)
        finally:
            os.kill(coord.pid, signal.SIGKILL)
            coord.communicate()
        self.assertFalse(os.path.exists(out))
        held = journal_rows(jd)
        self.assertGreater(len(held), 0, "nothing was journaled before the kill")
        self.assertLess(len(held), 80, "the job finished before the kill")
        run("resume", jd, env=dict(os.environ, DBATCH_FAULT="delay_ms=5"))
        self.assertEqual(slurp(out), want)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["tasks"], 80 + 8)  # 80 batches, then 8 partitions reduced on the workers
        self.assertEqual(j["resumed_tasks"], len(held))
        self.assertEqual(j["attempts"], j["tasks"] - j["resumed_tasks"])
        self.assertEqual(j["records"], 4000)
        self.assertEqual(journal_rows(jd), [])  # finished: the partial results are dropped

    def test_every_finished_task_is_journaled(self):
        data = words_file(self.path("in.txt"), 3000)
        want = run("wordcount", "--workers", "0", data).stdout
        for workers in ("0", "2"):
            with self.subTest(workers=workers):
                jd, out, s = self.path("job" + workers), self.path("out%s.tsv" % workers), self.path("s.json")
                # Killed between the output's commit and the journal's "done": every task is there.
                r = run("wordcount", "--workers", workers, "--batch-records", "25", "--job-dir", jd, "--out", out,
                        "--summary-json", s, data, check=False, env=dict(os.environ, DBATCH_FAULT="crash_after_commit"))
                self.assertEqual(r.returncode, -signal.SIGKILL, r.stderr)
                self.assertEqual(slurp(out), want)
                self.assertEqual(journal_rows(jd), list(range(120)))
                os.unlink(out)
                run("resume", jd)
                self.assertEqual(slurp(out), want)
                j = json.loads(slurp(s, True))
                n = 120 + (8 if workers != "0" else 0)  # with workers, 8 partitions reduced on them
                self.assertEqual((j["tasks"], j["resumed_tasks"], j["attempts"]), (n, n, 0))
                self.assertEqual(j["records"], 3000)
                # Finished: a finished job is not resumed, so its journal keeps no partial results.
                self.assertEqual(journal_rows(jd), [])
                self.assertLess(os.path.getsize(os.path.join(jd, "journal.db")), 256 * 1024)
                self.assertIn("nothing to resume", run("resume", jd, check=False).stderr.decode())


if __name__ == "__main__":
    unittest.main()
