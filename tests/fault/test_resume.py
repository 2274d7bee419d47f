"""Resume under adverse conditions: a coordinator killed on one machine and resumed on another
whose default batch size would differ; a journal whose recorded batch size the command line
no longer chooses; old or altered journals; a classifier killed before its last stage; two
processes on one job directory. Every resumed answer is compared byte for byte with a clean
run."""
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, fault_env, run, slurp, spill_files, start, TmpTest, wait_until  # noqa: E402

import msgpack  # noqa: E402  (Debian's python3-msgpack, as the protocol tests use)

MB = 1 << 20


def big_words_file(path, mb, seed=7):
    """About mb MB of lines of words; each MB block differs, so a batch counted twice or
    left out changes the counts."""
    rnd = random.Random(seed)
    vocab = ["w%d" % i for i in range(3000)]
    with open(path, "w") as f:
        for blk in range(mb):
            lines, size = [], 0
            while size < MB:
                line = " ".join(rnd.choice(vocab) for _ in range(8)) + " b%d\n" % blk
                lines.append(line)
                size += len(line)
            f.write("".join(lines))
    return path


def journal_count(jd, stage=None):
    """Tasks recorded in the journal of job dir jd (0 while it does not exist yet)."""
    db = os.path.join(jd, "journal.db")
    if not os.path.exists(db):
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            if stage is None:
                return c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            return c.execute("SELECT COUNT(*) FROM tasks WHERE stage = ?", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def kill_coordinator(p):
    p.kill()
    p.wait(timeout=30)
    time.sleep(0.3)  # its local workers notice and leave


def unshare_works():
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except Exception:
        return False


class ResumeOnAnotherMachine(TmpTest):
    """The batch plan is the journal's, not the resuming machine's."""

    @classmethod
    def setUpClass(cls):
        cls.shared = tempfile.mkdtemp(prefix="dbx-resume-")
        cls.data = big_words_file(os.path.join(cls.shared, "in.txt"), 40)
        cls.want = run("wordcount", "--workers", "0", cls.data).stdout

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.shared, ignore_errors=True)

    def one_cpu(self, *args):
        """dbatch args as seen on a machine with one CPU online (a private mount namespace
        where /sys/devices/system/cpu/online says "0")."""
        fake = self.write("cpu-online", "0\n")
        return ["unshare", "-m", "sh", "-c", 'mount --bind "$1" /sys/devices/system/cpu/online && shift && exec "$@"',
                "sh", fake, DBATCH, *map(str, args)]

    def test_killed_on_one_cpu_resumed_on_two(self):
        if os.geteuid() != 0 or not unshare_works():
            self.skipTest("needs root and unshare -m to fake the CPU count")
        jd, out, s = self.path("job"), self.path("out.tsv"), self.path("s.json")
        # Default options: the worker count and the batch size are this machine's defaults.
        coord = subprocess.Popen(self.one_cpu("wordcount", "--job-dir", jd, "--out", out, "--summary-json", s,
                                              self.data),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=fault_env("delay_ms=1500"))
        wait_until(lambda: journal_count(jd) >= 1, "a finished task in the journal", proc=coord)
        kill_coordinator(coord)
        self.assertFalse(os.path.exists(out))
        done_before = journal_count(jd)
        run("resume", jd)  # on this machine: another CPU count, another default worker count
        self.assertEqual(slurp(out), self.want)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["records"], sum(1 for _ in open(self.data, "rb")))
        self.assertGreaterEqual(j["resumed_tasks"], done_before, "finished tasks were run again")

    def test_recorded_batch_size_wins_over_the_command_line(self):
        jd, out, s = self.path("job"), self.path("out.tsv"), self.path("s.json")
        coord = start("wordcount", "--workers", "2", "--batch-bytes", "4M", "--job-dir", jd, "--out", out,
                      "--summary-json", s, self.data, env=fault_env("delay_ms=1000"))
        wait_until(lambda: journal_count(jd) >= 1, "a finished task in the journal", proc=coord)
        kill_coordinator(coord)
        # The journaled command line loses --batch-bytes 4M: it would now choose the default
        # (as a machine with another default would).
        db = os.path.join(jd, "journal.db")
        with sqlite3.connect(db) as c:
            argv = msgpack.unpackb(c.execute("SELECT value FROM meta WHERE key = 'argv'").fetchone()[0], raw=False)
            k = argv.index("--batch-bytes")
            del argv[k:k + 2]
            c.execute("UPDATE meta SET value = ? WHERE key = 'argv'", (msgpack.packb(argv),))
        run("resume", jd)
        self.assertEqual(slurp(out), self.want)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["stages"][0]["plan"]["batch_bytes"], 4 * MB)
        self.assertEqual(j["stages"][0]["batches"], -(-os.path.getsize(self.data) // (4 * MB)))
        self.assertGreaterEqual(j["resumed_tasks"], 1, "finished tasks were run again")

    def killed_job(self):
        jd = self.path("job")
        coord = start("wordcount", "--workers", "2", "--batch-bytes", "4M", "--job-dir", jd, "--out",
                      self.path("o.tsv"), self.data, env=fault_env("delay_ms=1000"))
        wait_until(lambda: journal_count(jd) >= 1, "a finished task in the journal", proc=coord)
        kill_coordinator(coord)
        return jd

    def test_journal_without_a_plan_is_refused(self):
        jd = self.killed_job()
        with sqlite3.connect(os.path.join(jd, "journal.db")) as c:  # as an older dbatch wrote it
            c.execute("DELETE FROM meta WHERE key IN ('schema', 'version')")
            c.execute("DROP TABLE stages")
        p = run("resume", jd, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"did not record the job's batch plan", p.stderr)
        self.assertIn(jd.encode(), p.stderr)
        self.assertFalse(os.path.exists(self.path("o.tsv")))

    def test_plan_that_cannot_be_reproduced_is_refused(self):
        jd = self.killed_job()
        with sqlite3.connect(os.path.join(jd, "journal.db")) as c:  # planned with other options
            c.execute("UPDATE stages SET opts = replace(opts, 'case_sensitive=0', 'case_sensitive=1')")
        p = run("resume", jd, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"cannot be reproduced", p.stderr)
        self.assertIn(b"case_sensitive=1", p.stderr)
        self.assertFalse(os.path.exists(self.path("o.tsv")))


def corpus(root, docs_per_label, seed=3):
    rnd = random.Random(seed)
    words = {lab: ["%s%d" % (lab, i) for i in range(40)] + ["common%d" % i for i in range(60)]
             for lab in ("ant", "bee", "cat")}
    for lab, vocab in words.items():
        os.makedirs(os.path.join(root, lab), exist_ok=True)
        for d in range(docs_per_label):
            with open(os.path.join(root, lab, "d%03d.txt" % d), "w") as f:
                f.write(" ".join(rnd.choice(vocab) for _ in range(rnd.randint(5, 60))) + "\n")
    return root


class ResumeClassifier(TmpTest):
    def test_nb_run_killed_in_fit_stage(self):
        train, test = corpus(self.path("train"), 20), corpus(self.path("test"), 8, seed=4)
        args = ["--train", train, "--test", test, "--proba", "--batch-docs", "4"]
        want = self.path("want.tsv")
        run("nb", "run", *args, "--workers", "0", "--predictions", want)
        jd, pred = self.path("job"), self.path("pred.tsv")
        coord = start("nb", "run", *args, "--workers", "2", "--job-dir", jd, "--predictions", pred,
                      env=fault_env("delay_ms=300"))
        # Stage 1 (fit) has finished tasks; stage 2 (predict, on other inputs) never started.
        wait_until(lambda: journal_count(jd, 1) >= 1, "a finished fit task in the journal", proc=coord)
        kill_coordinator(coord)
        self.assertLess(journal_count(jd, 1), 15)
        self.assertEqual(journal_count(jd, 2), 0)
        p = run("resume", jd)
        self.assertEqual(slurp(pred), slurp(want))
        self.assertIn(b"classified 24 documents", p.stdout)

    def test_nb_train_killed_in_first_stage(self):
        train = corpus(self.path("train"), 20)
        want, model = self.path("want.bin"), self.path("model.bin")
        run("nb", "train", "--corpus", train, "--batch-docs", "4", "--workers", "0", "--model", want)
        jd = self.path("job")
        coord = start("nb", "train", "--corpus", train, "--batch-docs", "4", "--workers", "2", "--job-dir", jd,
                      "--model", model, env=fault_env("delay_ms=300"))
        wait_until(lambda: journal_count(jd, 0) >= 1, "a finished vocabulary task in the journal", proc=coord)
        kill_coordinator(coord)
        self.assertFalse(os.path.exists(model))
        run("resume", jd)
        self.assertEqual(slurp(model), slurp(want))


class OneJobPerDirectory(TmpTest):
    def test_second_process_on_a_job_dir_is_refused_at_once(self):
        data = self.write("in.txt", "".join("alpha beta w%d\n" % (i % 97) for i in range(4000)))
        want = run("wordcount", "--workers", "0", data).stdout
        jd, out = self.path("job"), self.path("out.tsv")
        args = ["wordcount", "--workers", "2", "--batch-records", "50", "--job-dir", jd, "--out", out, data]
        coord = start(*args, env=fault_env("delay_ms=100"))
        wait_until(lambda: journal_count(jd) >= 1, "a finished task in the journal", proc=coord)
        # While the job runs: a resume, and a new job in the same directory, are refused.
        for cmd in (["resume", jd], args):
            p = run(*cmd, check=False, timeout=30)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(b"in use by another dbatch process (pid %d)" % coord.pid, p.stderr)
        kill_coordinator(coord)
        # Two resumes: the first holds the directory for its whole run, the second is refused.
        first = start("resume", jd, env=fault_env("delay_ms=100"))
        wait_until(lambda: slurp(os.path.join(jd, "lock")).strip() == str(first.pid).encode(),
                   "the first resume to lock the job directory", proc=first)
        p = run("resume", jd, check=False, timeout=30)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"in use by another dbatch process (pid %d)" % first.pid, p.stderr)
        self.assertNotIn(b"database is locked", p.stderr)
        _, err = first.communicate(timeout=120)
        self.assertEqual(first.returncode, 0, err)
        self.assertEqual(slurp(out), want)


class ResumeAfterTheCommit(TmpTest):
    """Killed after its outputs were committed but before the journal marked the job finished
    (DBATCH_FAULT=crash_after_commit): the resume finds appended rows there and does not add
    them again; a replaced output is simply written again."""

    def test_appended_rows_are_not_appended_again(self):
        inp = self.write("in.txt", "".join("w%d x y\n" % (i % 37) for i in range(2000)))
        ref = run("wordcount", inp, "--no-job-dir", "-q").stdout
        for out in (self.write("a.tsv", "old\t1\n"), self.path("b.csv.gz"), self.path("c.jsonl")):
            before = slurp(out) if os.path.exists(out) else b""
            jd = self.path("job-" + os.path.basename(out))
            env = dict(os.environ, DBATCH_FAULT="crash_after_commit")
            p = subprocess.run([DBATCH, "wordcount", inp, "--job-dir", jd, "-q", "-o", out, "--append"], env=env,
                               capture_output=True, timeout=120)
            self.assertEqual(p.returncode, -9, p.stderr)
            once = slurp(out)
            if out.endswith(".tsv"):  # put back by a copy meanwhile (cp -p; mv): another inode, the same file
                shutil.copy2(out, out + ".copy")
                os.replace(out + ".copy", out)
            p = run("resume", jd, check=False)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(slurp(out), once, out)  # not twice
            if out.endswith(".tsv"):
                self.assertEqual(once, before + ref)
        # the same for the classifier's predictions and metrics, appended to files
        root = self.path("train")
        for lab in ("a", "b"):
            os.makedirs(os.path.join(root, lab))
            for d in range(3):
                with open(os.path.join(root, lab, "d%d.txt" % d), "w") as f:
                    f.write("%s w%d\n" % (lab, d))
        pred, met, jd = self.path("p.tsv"), self.path("m.csv"), self.path("job-nb")
        env = dict(os.environ, DBATCH_FAULT="crash_after_commit")
        p = subprocess.run([DBATCH, "nb", "run", "--train", root, "--test", root, "--model", self.path("m.nb"),
                            "--predictions", pred, "--metrics", met, "--append", "--job-dir", jd, "-q"], env=env,
                           capture_output=True, timeout=120)
        self.assertEqual(p.returncode, -9, p.stderr)
        once = (slurp(pred), slurp(met))
        self.assertEqual(len(once[0].splitlines()), 6)
        run("resume", jd)
        self.assertEqual((slurp(pred), slurp(met)), once)


    # Was a bug: a partitioned job (groupby, and word count with workers) removed its reduced
    # partitions as soon as it had streamed them, so a resume after the commit failed ("reduced
    # partition .../s0-r0.kv: No such file or directory", exit 1). They now stay until the commit.
    def test_partitioned_job_killed_after_its_commit_resumes(self):
        inp = self.write("in.csv", "k,v\n" + "".join("k%d,%d\n" % (i % 37, i) for i in range(2000)))
        want = {"k%d" % k: str(sum(1 for i in range(2000) if i % 37 == k)) for k in range(37)}
        for cmd in (["groupby", inp, "--key", "k", "--agg", "count"], ["wordcount", inp, "--workers", "2"]):
            out, jd = self.write("out-%s.tsv" % cmd[0], "old\t1\n"), self.path("job-" + cmd[0])
            env = dict(os.environ, DBATCH_FAULT="crash_after_commit")
            p = subprocess.run([DBATCH] + cmd + ["--partitions", "3", "--job-dir", jd, "-q", "-o", out, "--append"],
                               env=env, capture_output=True, timeout=120)
            self.assertEqual(p.returncode, -9, p.stderr)
            once = slurp(out)
            p = run("resume", jd, check=False)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(slurp(out), once)  # not twice
            self.assertEqual(os.listdir(os.path.join(jd, "spill")), [])
            rows = [ln.split("\t") for ln in once.decode().splitlines()]
            self.assertEqual(rows[0], ["old", "1"])
            if cmd[0] == "groupby":
                self.assertEqual({r[0]: r[1] for r in rows[1:]}, want)  # appended without a header
            else:
                self.assertEqual(sum(int(r[1]) for r in rows[1:]), 2000 * 2 + 2)

    # Was a bug: a job whose reduce tasks were all in the journal streamed its reduced partitions
    # without looking whether they were still there. Lost with their spill directory (a
    # --spill-dir on a tmpfs cleared by a reboot, a resume on another machine), the resume
    # failed every time ("by-count partition .../s0-c0.kv: No such file or directory", exit 1)
    # where a lost map output is computed again.
    def test_partitioned_job_resumes_after_its_reduced_partitions_were_lost(self):
        inp = self.write("in.csv", "k,v\n" + "".join("k%d,%d\n" % (i % 37, i) for i in range(2000)))
        for cmd in (["groupby", inp, "--key", "k", "--agg", "count"], ["wordcount", inp, "--workers", "2"]):
            ref = self.write("ref-%s.tsv" % cmd[0], "old\t1\n")  # merged on the coordinator, no journal
            run(*(cmd + ["--partitions", "0", "--no-job-dir", "-q", "-o", ref, "--append"]))
            out, jd = self.write("out-%s.tsv" % cmd[0], "old\t1\n"), self.path("job-" + cmd[0])
            spill = self.path("spill-" + cmd[0])
            p = subprocess.run([DBATCH] + cmd + ["--partitions", "3", "--spill-dir", spill, "--job-dir", jd, "-q",
                                                 "-o", out, "--append"],
                               env=dict(os.environ, DBATCH_FAULT="crash_after_commit"), capture_output=True,
                               timeout=120)
            self.assertEqual(p.returncode, -9, p.stderr)
            self.assertEqual(slurp(out), slurp(ref))
            self.assertNotEqual(spill_files(spill), [])
            shutil.rmtree(spill)  # the reduced partitions and the map outputs, all gone
            p = run("resume", jd, check=False)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(slurp(out), slurp(ref))  # the same rows, not twice
            self.assertEqual(spill_files(spill), [])


    # Was a bug: word count used to merge on the coordinator unless --partitions was given; a
    # job journaled then (stage 0 planned without partitions=) could not be resumed once word
    # count partitioned by default ("the journal's plan cannot be reproduced; run the job
    # afresh", exit 1), and running it afresh after its commit appended its rows twice.
    def test_word_count_journaled_before_partitions_were_the_default_resumes(self):
        inp = self.write("in.txt", "".join("w%d x y\n" % (i % 37) for i in range(2000)))
        ref = run("wordcount", inp, "--no-job-dir", "-q", "--workers", "0").stdout
        out, jd = self.write("out.tsv", "old\t1\n"), self.path("job")
        p = subprocess.run([DBATCH, "wordcount", inp, "--workers", "2", "--partitions", "0", "--job-dir", jd, "-q",
                            "-o", out, "--append"], env=dict(os.environ, DBATCH_FAULT="crash_after_commit"),
                           capture_output=True, timeout=120)
        self.assertEqual(p.returncode, -9, p.stderr)
        self.assertEqual(slurp(out), b"old\t1\n" + ref)
        with sqlite3.connect(os.path.join(jd, "journal.db"), timeout=5) as c:  # the command as it was typed then
            argv = msgpack.unpackb(c.execute("SELECT value FROM meta WHERE key = 'argv'").fetchone()[0])
            i = argv.index("--partitions")
            c.execute("UPDATE meta SET value = ? WHERE key = 'argv'", (msgpack.packb(argv[:i] + argv[i + 2:]),))
            self.assertNotIn("partitions=", c.execute("SELECT opts FROM stages WHERE stage = 0").fetchone()[0])
        p = run("resume", jd, check=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(slurp(out), b"old\t1\n" + ref)  # not twice


class DamagedJournal(TmpTest):
    def test_a_partial_that_does_not_decompress_is_run_again(self):
        data = big_words_file(self.path("in.txt"), 6)
        want = run("wordcount", "--workers", "0", data).stdout
        jd, out, s = self.path("job"), self.path("out.tsv"), self.path("s.json")
        coord = subprocess.Popen([DBATCH, "wordcount", "--job-dir", jd, "--out", out, "--summary-json", s,
                                  "--batch-bytes", "1M", "--workers", "1", data], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=fault_env("delay_ms=700"))
        wait_until(lambda: journal_count(jd) >= 2, "two finished tasks in the journal", proc=coord)
        kill_coordinator(coord)
        with sqlite3.connect(os.path.join(jd, "journal.db"), timeout=5) as c:
            rows = c.execute("SELECT stage, idx, length(partial) FROM tasks ORDER BY idx").fetchall()
            self.assertGreaterEqual(len(rows), 2)
            # the first partial cut short, the second not zstd at all
            c.execute("UPDATE tasks SET partial = substr(partial, 1, length(partial) / 2) WHERE idx = ?", (rows[0][1],))
            c.execute("UPDATE tasks SET partial = x'00112233' WHERE idx = ?", (rows[1][1],))
        run("resume", jd)
        self.assertEqual(slurp(out), want)
        self.assertEqual(json.loads(slurp(s, True))["resumed_tasks"], len(rows) - 2)


if __name__ == "__main__":
    unittest.main()
