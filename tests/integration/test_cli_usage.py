"""Using the CLI as a person would: a bad value names the option and what it takes, an
unknown option is one message with the closest one, sizes take fractions, job directories
are made with their parents (and not left behind by a usage error), a read-only current
directory sends the job directory to the user's state directory, a busy dashboard port is a
usage error, and a worker count far above the cores is warned about."""
import json
import os
import re
import shutil
import socket
import subprocess
import unittest

from dbx import DBATCH, TmpTest, reference_wordcount, run, slurp

DBATCH = os.path.abspath(DBATCH)  # the tests below run it from other directories


class Usage(TmpTest):
    def setUp(self):
        super().setUp()
        self.inp = self.write("in.txt", "a b a\n")

    def bad(self, *args):
        p = run("wordcount", self.inp, "--no-job-dir", *args, check=False)
        self.assertEqual(p.returncode, 2, args)
        lines = p.stderr.decode().splitlines()
        self.assertEqual(len(lines), 2, lines)  # one message, then "Try 'dbatch wordcount --help'."
        self.assertEqual(lines[1], "Try 'dbatch wordcount --help'.")
        return lines[0]

    def test_bad_values_name_the_option_and_what_it_takes(self):
        self.assertEqual(self.bad("--workers", "two"), "dbatch wordcount: --workers 'two': expected a whole number "
                                                       "of local worker processes from 0 to 1024")
        self.assertIn("--batch-bytes '1.5': expected a size above 0, such as 65536, 512K, 1.5M or 2G",
                      self.bad("--batch-bytes", "1.5"))
        self.assertIn("--policy 'fastest': expected least-loaded, round-robin or random", self.bad("--policy", "fastest"))
        self.assertIn("--max-attempts '0': expected a whole number from 1 to 1000", self.bad("--max-attempts", "0"))
        self.assertIn("--heartbeat 'soon': expected seconds above 0", self.bad("--heartbeat", "soon"))
        self.assertEqual(self.bad("--table", "t", "-o", self.path("x.tsv")),
                         "dbatch wordcount: --table applies to sqlite:PATH and postgresql:// outputs, not to a file")
        self.assertFalse(os.path.exists(self.path("x.tsv")))

    def test_unknown_options_are_one_message_with_the_closest(self):
        self.assertEqual(self.bad("--wrokers", "2"), "dbatch wordcount: unknown option --wrokers (did you mean --workers?)")
        self.assertEqual(self.bad("--zzzzzz"), "dbatch wordcount: unknown option --zzzzzz")
        self.assertEqual(self.bad("--workers"), "dbatch wordcount: --workers needs a value")
        self.assertEqual(self.bad("--quiet=yes"), "dbatch wordcount: --quiet takes no value")
        self.assertRegex(self.bad("--w", "2"), r"^dbatch wordcount: --w is ambiguous: (--[a-z-]+, )*--workers(, |$)")
        self.assertEqual(self.bad("-x"), "dbatch wordcount: unknown option -x")
        self.assertEqual(self.bad("-o"), "dbatch wordcount: -o needs a value")
        # a short option in a cluster after a long one: the message names the short one
        self.assertEqual(self.bad("--quiet", "-qx"), "dbatch wordcount: unknown option -x")
        self.assertIn("a short option (byte 0xc3)", self.bad("--workers=2", "-q\u00e9"))
        p = run("wordcont", self.inp, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown command 'wordcont' (did you mean 'wordcount'?)", p.stderr.decode())
        p = run("nb", "train", "--corpsu", "x", check=False)
        self.assertIn("unknown option --corpsu (did you mean --corpus?)", p.stderr.decode())

    def test_sizes_take_fractions(self):
        big = self.write("big.txt", "".join("w%d x\n" % (i % 50) for i in range(200000)))
        p = run("wordcount", big, "--no-job-dir", "-q", "--batch-bytes", "0.25M", "--summary-json",
                self.path("s.json"))
        self.assertEqual(p.stdout, reference_wordcount([big]))
        s = json.loads(slurp(self.path("s.json")))
        self.assertEqual(s["stages"][0]["batches"], -(-os.path.getsize(big) // (1 << 18)))

    def test_a_busy_dashboard_port_is_a_usage_error(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        try:
            p = run("wordcount", self.inp, "--no-job-dir", "--dashboard", "127.0.0.1:%d" % s.getsockname()[1],
                    check=False)
        finally:
            s.close()
        self.assertEqual(p.returncode, 2)
        lines = p.stderr.decode().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("cannot listen: Address already in use", lines[0])

    @unittest.skipIf((os.cpu_count() or 1) > 16, "a worker count far above the cores would be too many processes here")
    def test_far_more_workers_than_cores_is_warned(self):
        n = 4 * (os.cpu_count() or 1) + 1
        p = run("wordcount", self.inp, "--no-job-dir", "--workers", n)
        self.assertIn("warning: --workers %d on %d cores" % (n, os.cpu_count()), p.stderr.decode())
        p = run("wordcount", self.inp, "--no-job-dir", "--workers", os.cpu_count())
        self.assertNotIn("warning", p.stderr.decode())


class HelpListsWhatApplies(TmpTest):
    def test_nb_and_bench_tasks(self):
        for cmd, gone, kept in ((["nb"], ["--batch-bytes SIZE", "--batch-records N", "--max-record SIZE", "-o, --out"],
                                 ["--batch-docs", "--predictions", "--workers", "--format", "--append", "--header",
                                  "--job-dir", "Exit status"]),
                                (["bench-tasks"], ["--batch-bytes SIZE", "--out DEST", "--format F", "--table NAME",
                                                   "      --append", "      --header", "--on-bad-record skip",
                                                   "--max-record SIZE"],
                                 ["--tasks", "--workers", "--summary-json", "--policy", "Output:", "Exit status"])):
            h = run(*cmd, "--help").stdout.decode()
            for g in gone:
                self.assertNotIn(g, h, (cmd, g))
            for k in kept:
                self.assertIn(k, h, (cmd, k))
        p = run("nb", "train", "--corpus", "x", "--model", "m", "--batch-bytes", "1M", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--batch-bytes does not apply to dbatch nb (documents are batched by --batch-docs)",
                      p.stderr.decode())
        p = run("bench-tasks", "--tasks", "3", "-o", self.path("x.tsv"), check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--out does not apply to dbatch bench-tasks", p.stderr.decode())
        self.assertFalse(os.path.exists(self.path("x.tsv")))


class Interrupt(TmpTest):
    def test_ctrl_c_exits_130_and_the_job_resumes(self):
        import signal
        import time
        inp = self.write("in.txt", "".join("line %d\n" % i for i in range(100)))
        for sig, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            jd, out = self.path("job%d" % sig), self.path("out%d.txt" % sig)
            p = subprocess.Popen([DBATCH, "run", "--map", "sleep 3; cat", inp, "--job-dir", jd, "-o", out],
                                 stderr=subprocess.PIPE)
            for _ in range(100):  # until the job runs its task
                if os.path.exists(os.path.join(jd, "status.json")) and b'"running"' in slurp(os.path.join(jd, "status.json")):
                    break
                time.sleep(0.05)
            p.send_signal(sig)
            _, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, status, err)
            self.assertIn("interrupted (%s); no output was written; 'dbatch resume %s' finishes it"
                          % ("Ctrl-C" if sig == signal.SIGINT else "SIGTERM", jd), err.decode())
            self.assertEqual(json.loads(slurp(os.path.join(jd, "status.json")))["state"], "interrupted")
            self.assertFalse(os.path.exists(out))
            run("resume", jd)
            self.assertEqual(slurp(out), slurp(inp))


class ProgressLine(TmpTest):
    def run_on_a_terminal(self, cols, *args):
        """Run dbatch with its standard error on a pseudo-terminal cols wide; what it drew."""
        import fcntl
        import pty
        import struct
        import termios
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
        p = subprocess.Popen([DBATCH, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        got = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            got += chunk
        p.wait(timeout=120)
        os.close(master)
        self.assertEqual(p.returncode, 0, got)
        return got

    def test_the_progress_line_fits_a_narrow_terminal(self):
        inp = self.write("in.txt", "".join("line %d\n" % i for i in range(40)))
        got = self.run_on_a_terminal(60, "run", "--map", "sleep 0.3; cat", inp, "--batch-records", "4",
                                     "--workers", "2", "--no-job-dir", "-o", self.path("o.txt"))
        drawn = [seg for seg in got.replace(b"\033[K", b"").split(b"\r") if re.match(rb"map +\d+%", seg)]
        self.assertTrue(drawn, got)
        for seg in drawn:
            line = seg.split(b"\n")[0]
            self.assertLess(len(line), 60, line)  # never wraps
            self.assertRegex(line, rb"^map +\d+%  .*MB/s")  # the stage, how far, the rate: kept
        wide = self.run_on_a_terminal(200, "run", "--map", "sleep 0.3; cat", inp, "--batch-records", "4",
                                      "--workers", "2", "--no-job-dir", "-o", self.path("o2.txt"))
        self.assertIn(b"failures 0", wide)  # nothing dropped where there is room


class JobsHistory(TmpTest):
    def test_jobs_lists_newest_first(self):
        import signal
        import time
        inp = self.write("in.txt", "a b a\nc\n")
        work = self.path("work")
        os.makedirs(work)

        def job(*args, **kw):
            return subprocess.run([DBATCH, *args], cwd=work, capture_output=True, timeout=60, **kw)
        self.assertEqual(job("wordcount", inp, "-o", "counts.tsv").returncode, 0)
        time.sleep(1.1)  # starts a second apart: the order is by start
        self.assertEqual(job("run", "--map", "exit 3", inp, "--max-attempts", "1", "-o", "x.txt").returncode, 1)
        time.sleep(1.1)
        p = subprocess.Popen([DBATCH, "run", "--map", "sleep 3; cat", inp, "--job-dir", "jd", "-o", "y.txt"], cwd=work,
                             stderr=subprocess.PIPE)
        for _ in range(100):
            if os.path.exists(os.path.join(work, "jd", "status.json")):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
        out = job("jobs").stdout.decode().splitlines()
        self.assertEqual(out[0].split(), ["STARTED", "DURATION", "STATE", "RECORDS", "JOB", "OUTPUT"])
        rows = [l.split() for l in out[1:]]
        self.assertEqual([r[3] for r in rows], ["failed", "done"])  # newest first; jd is not under ./dbatch-jobs
        self.assertEqual(rows[1][4:], ["2", rows[1][5], "counts.tsv"])  # date, time, duration, state, records, job, output
        self.assertTrue(rows[1][5].startswith("dbatch-jobs/wordcount-"))
        both = job("jobs", "dbatch-jobs", "jd").stdout.decode().splitlines()[1:]
        self.assertEqual([l.split()[3] for l in both], ["interrupted", "failed", "done"])
        self.assertEqual(both[0].split()[-2:], ["jd", "y.txt"])
        # what a job directory holds is shown, never obeyed: escapes, absurd numbers, a FIFO
        os.makedirs(os.path.join(work, "odd", "esc"))
        os.makedirs(os.path.join(work, "odd", "fifo"))
        with open(os.path.join(work, "odd", "esc", "status.json"), "w") as f:
            f.write('{"state":"\\u001b]0;PWNED\\u0007","elapsed_seconds":1e308,"updated_unix":1e300}')
        with open(os.path.join(work, "odd", "esc", "summary.json"), "w") as f:
            f.write('{"records":"\\u001b[31m12","output":"x\\u001b[2Jy","ok":true}')
        os.mkfifo(os.path.join(work, "odd", "fifo", "summary.json"))
        os.makedirs(os.path.join(work, "odd", "cut"))
        with open(os.path.join(work, "odd", "cut", "status.json"), "w") as f:
            f.write('{"state":')  # cut short: listed, as unknown
        p = subprocess.run([DBATCH, "jobs", "odd"], cwd=work, capture_output=True, timeout=20)
        self.assertEqual(p.returncode, 0)
        self.assertNotIn(b"\x1b", p.stdout)
        listed = {l.split()[5]: l.split()[2:5] for l in p.stdout.decode().splitlines()[1:]}
        self.assertEqual(listed["odd/esc"], ["?", "unknown", "-"])
        self.assertEqual(listed["odd/cut"], ["-", "unknown", "-"])
        self.assertNotIn("odd/fifo", listed)
        p = job("jobs", "nowhere")
        self.assertEqual(p.returncode, 1)
        self.assertIn("nowhere: No such file or directory", p.stderr.decode())


class JobDirectories(TmpTest):
    def setUp(self):
        super().setUp()
        self.inp = self.write("in.txt", "a b a\n")
        self.csv = self.write("t.csv", "x,y\n1,2\n")

    def test_only_what_was_made_is_removed(self):
        # through "..": the user's empty directory stays, the directory made on the way goes
        os.makedirs(self.path("emptyuser"))
        notadir = self.write("notadir", "x\n")
        p = run("groupby", self.csv, "--key", "x", "--agg", "count", "--spill-dir", notadir, "--partitions", "2",
                "--job-dir", self.path("new", "..", "emptyuser", "x"), check=False)
        self.assertEqual(p.returncode, 2)
        self.assertTrue(os.path.isdir(self.path("emptyuser")))
        self.assertFalse(os.path.exists(self.path("new")))
        self.assertEqual(os.listdir(self.path("emptyuser")), [])
        # an existing job directory with the user's files in it keeps them
        keep = self.path("keep")
        os.makedirs(keep)
        self.write("keep/notes.txt", "mine\n")
        run("groupby", self.csv, "--key", "x", "--agg", "count", "--spill-dir", notadir, "--partitions", "2",
            "--job-dir", keep, check=False)
        self.assertEqual(slurp(os.path.join(keep, "notes.txt")), b"mine\n")
        p = run("wordcount", self.inp, "--job-dir", "", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--job-dir needs a directory name", p.stderr.decode())

    def test_job_dir_parents_are_made(self):
        jd = self.path("a", "b", "c")
        run("wordcount", self.inp, "--job-dir", jd, "-q", "-o", self.path("o.tsv"))
        self.assertTrue(os.path.isfile(os.path.join(jd, "report.html")))

    def test_a_usage_error_leaves_no_job_directory(self):
        # found once the job has started: a --spill-dir that is a file, a journaled stream
        notadir = self.write("notadir", "x\n")
        jd = self.path("a", "b", "c")
        p = run("groupby", self.csv, "--key", "x", "--agg", "count", "--spill-dir", notadir, "--partitions", "2",
                "--job-dir", jd, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--spill-dir %s: not a directory" % notadir, p.stderr.decode())
        self.assertNotIn("report", p.stderr.decode())
        self.assertFalse(os.path.exists(self.path("a")))  # nor the parents made for it
        p = subprocess.run([DBATCH, "wordcount", "-", "--job-dir", jd], input=b"a b\n", capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn("is a stream", p.stderr.decode())
        self.assertFalse(os.path.exists(self.path("a")))
        # the default job directory (./dbatch-jobs/...) likewise
        p = subprocess.run([DBATCH, "groupby", self.csv, "--key", "x", "--agg", "count", "--spill-dir", notadir,
                            "--partitions", "2"], cwd=self.tmp, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertEqual(os.listdir(os.path.join(self.tmp, "dbatch-jobs")) if os.path.exists(
            os.path.join(self.tmp, "dbatch-jobs")) else [], [])
        # an existing --job-dir stays
        os.makedirs(self.path("kept"))
        run("groupby", self.csv, "--key", "x", "--agg", "count", "--spill-dir", notadir, "--partitions", "2",
            "--job-dir", self.path("kept"), check=False)
        self.assertTrue(os.path.isdir(self.path("kept")))

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"), "needs root to run as another user")
    def test_a_read_only_current_directory_uses_the_state_directory(self):
        home, ro = self.path("home"), self.path("ro")
        os.makedirs(home)
        os.makedirs(ro)
        os.chown(home, 65534, 65534)
        os.chmod(ro, 0o555)
        os.chmod(self.tmp, 0o755)
        os.chmod(self.inp, 0o644)
        out = os.path.join(home, "o.tsv")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", DBATCH, "wordcount",
                            self.inp, "-o", out], cwd=ro, env=env, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        state = os.path.join(home, ".local", "state", "dbatch", "jobs")
        jobs = os.listdir(state)
        self.assertEqual(len(jobs), 1)
        self.assertTrue(os.path.isfile(os.path.join(state, jobs[0], "report.html")))
        self.assertIn("the current directory is not writable", p.stderr.decode())
        env["XDG_STATE_HOME"] = os.path.join(home, "xdg")
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", DBATCH, "wordcount",
                            self.inp, "-o", out, "-q"], cwd=ro, env=env, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(os.listdir(os.path.join(home, "xdg", "dbatch", "jobs"))), 1)


if __name__ == "__main__":
    unittest.main()
