"""--follow under attack: restarts with window state to grow, many files, inputs that come and
go. Each test was written against a bug it found; each checks the answer against a batch run
or the byte ranges JOB_DIR/windows.jsonl names, and waits on observable state (the micro-batch
number in JOB_DIR/follow.state), never on time."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, TmpTest, reference_wordcount, run, slurp, wait_until  # noqa: E402
import test_follow  # noqa: E402
from test_follow import Follower, epoch  # noqa: E402


class Adversarial(TmpTest):
    windows, check, rows_tsv = test_follow.Windows.windows, test_follow.Windows.check, test_follow.Windows.rows_tsv

    def append(self, name, data):
        with open(self.path("logs", name), "a") as f:
            f.write(data)

    def committed(self, f, job, write):
        """write(), then wait for the micro-batch that consumes it."""
        e = epoch(job)
        write()
        wait_until(lambda: epoch(job) > e, "a commit", proc=f.running())

    def test_window_ranges_grow_after_a_restart(self):
        # The open window's ranges were read back from the state without their capacity: after
        # a restart, more than the few ranges read back were written past the end of the array.
        logs, job, out = self.path("logs"), self.path("job"), self.path("out.tsv")
        os.mkdir(logs)
        f = Follower(self, ("wordcount", logs, "--follow", "--window", "1h", "--interval", "0.05", "--job-dir", job,
                            "-o", out, "-q"))
        f.start()
        for i in range(3):  # a.log and b.log in turn: one range per micro-batch
            self.committed(f, job, lambda: self.append("a.log", "a%d x\n" % i))
            self.committed(f, job, lambda: self.append("b.log", "b%d y\n" % i))
        f.kill9()
        f.start()
        for i in range(3, 40):
            self.committed(f, job, lambda: self.append("a.log", "a%d x\n" % i))
            self.committed(f, job, lambda: self.append("b.log", "b%d y\n" % i))
        f.p.terminate()  # SIGTERM: the open window stays open (not idle), the state holds it
        rc, _, err = f.finish()
        self.assertEqual(rc, 0, err)
        f.args = f.args + ("--until-idle", "0.5")
        f.start()
        rc, _, err = f.finish()
        self.assertEqual(rc, 0, err)
        self.check(self.rows_tsv(out), job, logs)
        self.assertEqual(len(self.windows(job)), 1)
        self.assertEqual(len(self.windows(job)[0]["inputs"]), 80)

    def test_a_finished_file_is_forgotten_by_the_state(self):
        # A file removed when it had nothing left to read was dropped in memory only: no
        # micro-batch followed (no new bytes), so follow.state kept its identity and offset. The
        # next start warned that its rest was not read, and a new file that got its inode number
        # (ext4 gives it out again at once) would have been read from that offset on.
        logs, job, out = self.path("logs"), self.path("job"), self.path("out.tsv")
        os.mkdir(logs)
        self.append("a.log", "alpha beta\n" * 100)
        args = ("wordcount", logs, "--follow", "--interval", "0.05", "--job-dir", job, "-o", out)
        f = Follower(self, args + ("-q",))
        f.start()
        wait_until(lambda: epoch(job) >= 1, "the first commit", proc=f.p)
        os.unlink(self.path("logs", "a.log"))
        f.p.terminate()  # the last scan sees it gone
        rc, _, err = f.finish()
        self.assertEqual(rc, 0, err)
        self.append("b.log", "gamma delta\n" * 200)
        r = run(*args, "--until-idle", "0.5")
        self.assertNotIn(b"no longer among the inputs", r.stderr)
        got = dict(l.split("\t") for l in slurp(out, text=True).splitlines())
        self.assertEqual(got, {"alpha": "100", "beta": "100", "gamma": "200", "delta": "200"})

    def test_an_unreadable_file_is_an_error_not_a_file_gone(self):
        # A file added to a watched directory that could not be opened was taken for gone:
        # warned about at every scan ('no longer among the inputs') and left out, and the job
        # ended with exit 0 without its lines (a batch run refuses it). Now it fails, naming it.
        # Root reads everything: the job runs as nobody then.
        os.chmod(self.tmp, 0o777)
        logs, job, out = self.path("logs"), self.path("job"), self.path("out.tsv")
        os.mkdir(logs)
        os.chmod(logs, 0o777)
        self.append("a.log", "alpha beta\n")
        nobody = (lambda: (os.setgid(65534), os.setuid(65534))) if os.geteuid() == 0 else None
        # nobody may not reach the build's dbatch (under /root on a CI machine): a copy of it
        exe = DBATCH
        if nobody:
            bindir = tempfile.mkdtemp(prefix="dbx-bin-")
            self.addCleanup(shutil.rmtree, bindir, True)
            os.chmod(bindir, 0o755)
            exe = os.path.join(bindir, "dbatch")
            shutil.copy(DBATCH, exe)
            os.chmod(exe, 0o755)
        p = subprocess.Popen([exe, "wordcount", logs, "--follow", "--interval", "0.05", "--until-idle", "2",
                              "--job-dir", job, "-o", out, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=nobody)
        try:
            wait_until(lambda: epoch(job) >= 1, "the first commit", proc=p)
            with open(self.path("logs", "b.log"), "w") as fh:
                fh.write("gamma\n")
            os.chmod(self.path("logs", "b.log"), 0)
            _, err = p.communicate(timeout=120)
        finally:
            test_follow.stop(p)
        self.assertNotEqual(p.returncode, 0, err)
        self.assertIn(("%s: cannot read: Permission denied" % self.path("logs", "b.log")).encode(), err)
        self.assertNotIn(b"no longer among the inputs", err)

    def test_too_many_files_for_the_open_files_limit_says_so(self):
        # Every followed file is kept open: past the limit of open files the job failed with
        # 'spool file ...: Too many open files', which blames the spool.
        import resource
        logs, job, out = self.path("logs"), self.path("job"), self.path("out.tsv")
        os.mkdir(logs)
        for i in range(100):
            self.append("f%03d.log" % i, "w%d\n" % i)
        lim = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        r = test_follow.subprocess.run([test_follow.DBATCH, "wordcount", logs, "--follow", "--until-idle", "1",
                                        "--workers", "0", "--job-dir", job, "-o", out, "-q"], capture_output=True,
                                       timeout=120, preexec_fn=lim)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"--follow keeps every file it follows open", r.stderr)
        self.assertIn(b"ulimit -n", r.stderr)

    def test_files_renamed_while_a_scan_runs_are_not_read_twice(self):
        # A scan lists a directory, then looks at each name: a file renamed in between (log
        # rotation) was missed by that scan, taken for finished and dropped, and the next scan
        # found it under its new name as a new file, read from byte 0: counted twice, exit 0.
        logs, job, out = self.path("logs"), self.path("job"), self.path("out.tsv")
        os.mkdir(logs)
        for i in range(20):
            self.append("f%06d.log" % i, "x%d y\n" % i * 10)
        args = ("wordcount", logs, "--follow", "--interval", "0.005", "--workers", "0", "--job-dir", job, "-o", out)
        f = Follower(self, args + ("-q",))
        f.start()
        wait_until(lambda: epoch(job) >= 1, "the first commit", proc=f.p)
        e0, k = epoch(job), 1000
        while epoch(job) < e0 + 40:  # renames go on for 40 micro-batches (each after an append)
            self.alive(f.p)
            for n in sorted(os.listdir(logs)):
                os.rename(os.path.join(logs, n), self.path("logs", "f%06d.log" % k))
                k += 1
            with open(self.path("logs", "f%06d.log" % (k - 1)), "a") as fh:
                fh.write("y\n")
        f.p.terminate()
        rc, _, err = f.finish()
        self.assertEqual(rc, 0, err)
        run(*args, "--until-idle", "0.3", "-q")
        want = run("wordcount", logs, "--workers", "0", "--no-job-dir", "-q").stdout
        self.assertEqual(slurp(out), want)

    def alive(self, p):
        self.assertIsNone(p.poll(), "the follower ended")

    def test_sigterm_while_it_starts_again_is_deferred(self):
        # SIGTERM before the loop began (here: while a restart commits the output of its state,
        # waiting for a locked database) failed the first micro-batch as an interrupted batch
        # job: exit 143 and "'dbatch resume JOB' finishes it", which a followed job cannot do.
        import signal
        import sqlite3
        logs, job, db = self.path("logs"), self.path("job"), self.path("out.db")
        os.mkdir(logs)
        self.append("a.log", "alpha beta\n")
        args = ("wordcount", logs, "--follow", "--interval", "0.05", "--job-dir", job, "-o", "sqlite:" + db,
                "--table", "wc", "-q")
        run(*args, "--until-idle", "0.2")
        self.append("a.log", "gamma\n")
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        p = test_follow.start(*args)
        try:
            wait_until(lambda: any(os.path.realpath(os.path.join("/proc/%d/fd" % p.pid, fd)) == db
                                   for fd in os.listdir("/proc/%d/fd" % p.pid)), "the restart to open the output",
                       proc=p)
            p.send_signal(signal.SIGTERM)
            lock.execute("ROLLBACK")
            _, err = p.communicate(timeout=120)
        finally:
            lock.close()
            test_follow.stop(p)
        self.assertEqual(p.returncode, 0, err)
        self.assertNotIn(b"resume", err)
        got = sorted(sqlite3.connect(db).execute("SELECT * FROM wc").fetchall())
        self.assertEqual(got, [("alpha", 1), ("beta", 1), ("gamma", 1)])

    def test_a_csv_file_with_other_columns_is_refused(self):
        # Each file's header was skipped and its rows read with the first file's columns: a
        # file added later with its columns in another order was summed under the wrong key
        # (r1 100 as a product), exit 0. A batch run refuses such inputs; so does this now.
        logs, job, out = self.path("logs"), self.path("job"), self.path("out.tsv")
        os.mkdir(logs)
        self.append("1.csv", "product,region,qty\np1,r1,5\n")
        args = ("groupby", logs, "--key", "product", "--agg", "sum:qty", "--follow", "--interval", "0.05", "--until-idle", "3",
                "--job-dir", job, "-o", out, "-q")
        f = Follower(self, args)
        f.start()
        wait_until(lambda: epoch(job) >= 1, "the first commit", proc=f.p)
        self.committed(f, job, lambda: self.append("2.csv", "product,region,qty\r\np1,r2,7\r\n"))  # the same
        self.append("3.csv", "region,product,qty\nr1,p1,100\n")
        rc, _, err = f.finish()
        self.assertNotEqual(rc, 0, err)
        self.assertIn("%s: its header differs" % self.path("logs", "3.csv"), err)
        self.assertEqual(slurp(out), b"p1\t12\n")


if __name__ == "__main__":
    unittest.main()
