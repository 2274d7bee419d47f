"""Guards that a plausible bug would silently remove, each checked for its exact effect:
the dashboard's actually bound address (loopback only unless --dashboard-public), the
--max-record boundary (exactly N bytes vs N+1), a replaced SQLite table that survives a failed
job intact, and permission errors checked as an unprivileged user (as root, chmod'ed files
stay readable and such tests pass for the wrong reason)."""
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
import unittest

from dbx import DBATCH, fault_env, free_port, lines_file, run, slurp, start, TmpTest, wait_for_line


def listeners(port):
    """Local addresses (hex ip, v4 or v6) with a TCP socket in LISTEN on port, from /proc/net."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = slurp(name, True).splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            ip, p = f[1].split(":")
            if int(p, 16) == port and f[3] == "0A":  # 0A = TCP_LISTEN
                found.append(ip)
    return found


class DashboardAddress(TmpTest):
    def running_job(self, spec, *extra):
        # One in-process task of a minute (killed by the test): --workers 0 leaves no local
        # worker to outlive its coordinator.
        p = start("bench-tasks", "--tasks", "1", "--task-ms", "60000", "--workers", "0", "--dashboard", spec,
                  *extra, "--no-job-dir")
        self.addCleanup(self.stop, p)
        wait_for_line(p.stderr, "dashboard at")
        return p

    @staticmethod
    def stop(p):
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)

    def test_loopback_only(self):
        port = free_port()
        p = self.running_job("127.0.0.1:%d" % port)
        # Little-endian hex of 127.0.0.1, the only listener on the port: not 0.0.0.0, not ::.
        self.assertEqual(listeners(port), ["0100007F"])
        self.assertIsNone(p.poll(), "the job ended before its listener was checked")
        # Also as ss sees it, where iproute2 is installed (scripts/install-deps.sh test installs it).
        ss = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True) \
            if shutil.which("ss") else None
        if ss and ss.returncode == 0:
            self.assertEqual([ln.split()[3] for ln in ss.stdout.splitlines()], ["127.0.0.1:%d" % port])

    def test_localhost_means_loopback(self):
        port = free_port()
        p = self.running_job("localhost:%d" % port)
        self.assertEqual(listeners(port), ["0100007F"])
        self.assertIsNone(p.poll())

    def test_other_address_needs_dashboard_public(self):
        port = free_port()
        data = lines_file(self.path("l.txt"), 10)
        out = self.path("o.tsv")
        p = run("wordcount", "--workers", "0", "--dashboard", "0.0.0.0:%d" % port, "--no-job-dir", "--out", out,
                data, check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"--dashboard 0.0.0.0:%d: not a loopback address" % port, p.stderr)
        self.assertIn(b"--dashboard-public", p.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertEqual(listeners(port), [])
        # Asked for explicitly, it listens on exactly that address.
        p = self.running_job("0.0.0.0:%d" % port, "--dashboard-public")
        self.assertEqual(listeners(port), ["00000000"])
        self.assertIsNone(p.poll())


class MaxRecordBoundary(TmpTest):
    """--max-record N: a line's length is its bytes WITHOUT the newline (src/ops/wordcount.c
    wc_map: (le - p) - (nl != NULL)). So a line of exactly N bytes plus '\\n' is accepted, as is
    an unterminated last line of N bytes; N+1 bytes is a bad record."""

    N = 100

    def lines(self):
        ok = "a" * (self.N - 5) + " okay"                   # N bytes
        long_ = "b" * (self.N - 4) + " long"                # N + 1 bytes
        last = "c" * (self.N - 5) + " last"                 # N bytes, no newline at the end
        assert (len(ok), len(long_), len(last)) == (self.N, self.N + 1, self.N)
        return ["w%d x\n" % i for i in range(20)] + [ok + "\n", long_ + "\n"] + ["z%d y\n" % i for i in range(20)], last

    def test_exactly_n_accepted_n_plus_one_bad(self):
        body, last = self.lines()
        data = self.write("in.txt", "".join(body) + last)
        rest = self.write("rest.txt", "".join(b for b in body if not b.startswith("b")) + last)
        want = run("wordcount", "--workers", "0", rest).stdout
        self.assertIn(b"okay\t1\n", want)
        self.assertIn(b"last\t1\n", want)
        for workers in ("0", "2"):
            with self.subTest(workers=workers):
                s = self.path("s%s.json" % workers)
                p = run("wordcount", "--workers", workers, "--batch-records", "7", "--max-record", str(self.N),
                        "--no-job-dir", "--summary-json", s, data)
                self.assertEqual(p.stdout, want)
                j = json.loads(slurp(s, True))
                self.assertEqual((j["records"], j["bad_records"]), (43, 1))
                self.assertIn(b"bad record skipped: %s line 22: a line of %d bytes" % (data.encode(), self.N + 1),
                              p.stderr)

    def test_n_bytes_pass_under_fail_policy(self):
        body, last = self.lines()
        good = self.write("good.txt", "".join(b for b in body if not b.startswith("b")) + last)
        p = run("wordcount", "--workers", "0", "--max-record", str(self.N), "--on-bad-record", "fail", "--no-job-dir",
                good)
        self.assertEqual(p.stdout, run("wordcount", "--workers", "0", good).stdout)
        bad = self.write("bad.txt", "".join(body))
        out = self.path("o.tsv")
        p = run("wordcount", "--workers", "0", "--batch-records", "7", "--max-record", str(self.N),
                "--on-bad-record", "fail", "--no-job-dir", "--out", out, bad, check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"bad record at %s line 22: a line of %d bytes, longer than --max-record %d"
                      % (bad.encode(), self.N + 1, self.N), p.stderr)
        self.assertFalse(os.path.exists(out))


class ManyBadRecords(TmpTest):
    """Every other line over --max-record in one big batch: the place of only the first bad
    record is looked for (it counted the lines from the batch's start for each one: quadratic,
    minutes for 16 MB), and a partitioned word count under --memory writes a level when its
    table fills, not after every run of good lines once it has filled once (its cleared table
    kept its size, over the budget: a level per good line, 12,000 levels for 8 MB)."""

    def test_linear_time_same_answer(self):
        words = ["w%d" % (i % 50000) for i in range(400000)]
        lines = []
        for i in range(0, len(words), 2):
            lines.append("%s %s\n" % (words[i], words[i + 1]))
            lines.append("x" * 60 + " %s\n" % words[i])
        data = self.write("in.txt", "".join(lines))
        good = self.write("good.txt", "".join(l for l in lines if not l.startswith("x")))
        want = run("wordcount", "--workers", "0", "--no-job-dir", good).stdout
        spill = self.path("spill")
        os.mkdir(spill)
        for opts in (["--workers", "0"],
                     ["--workers", "1", "--partitions", "4", "--memory", "1M", "--spill-dir", spill]):
            with self.subTest(opts=opts):
                s = self.path("s.json")
                p = run("wordcount", *opts, "--batch-bytes", "64M", "--max-record", "40", "--no-job-dir",
                        "--summary-json", s, data, timeout=60)
                self.assertEqual(p.stdout, want)
                self.assertEqual(json.loads(slurp(s, True))["bad_records"], len(lines) // 2)
                self.assertEqual(os.listdir(spill), [])


class SqliteReplaceThenFail(TmpTest):
    def test_old_table_kept_exactly(self):
        db = self.path("out.db")
        old = [("old word", 7), ("another", 1), ("ünïcode", 42)]
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE T (word TEXT, count INTEGER)")
        con.executemany("INSERT INTO T VALUES (?, ?)", old)
        con.execute("CREATE TABLE other (x)")
        con.commit()
        con.close()
        lines = ["alpha beta %d\n" % i for i in range(400)]
        lines[250] = "POISON here\n"
        data = self.write("in.txt", "".join(lines))
        p = run("wordcount", "--workers", "2", "--batch-records", "20", "--max-attempts", "1", "--no-job-dir",
                "--out", "sqlite:" + db, "--table", "T", data, check=False, env=fault_env("crash_on=POISON"))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"1 attempt(s) failed", p.stderr)
        con = sqlite3.connect(db)
        self.assertEqual(con.execute("SELECT word, count FROM T ORDER BY rowid").fetchall(), old)
        self.assertEqual(con.execute("SELECT sql FROM sqlite_master WHERE name = 'T'").fetchone()[0],
                         "CREATE TABLE T (word TEXT, count INTEGER)")
        self.assertEqual(sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master")), ["T", "other"])
        con.close()
        # The same job without the poison replaces the table with exactly its result.
        lines[250] = "alpha beta 250\n"
        self.write("in.txt", "".join(lines))
        run("wordcount", "--workers", "2", "--batch-records", "20", "--no-job-dir", "--out", "sqlite:" + db,
            "--table", "T", data)
        con = sqlite3.connect(db)
        rows = con.execute("SELECT * FROM T").fetchall()
        con.close()
        want = run("wordcount", "--workers", "0", data).stdout.decode()
        self.assertEqual(sorted("%s\t%d\n" % r for r in rows), sorted(want.splitlines(True)))


def as_nobody():
    """argv prefix that runs a command as an unprivileged user (uid/gid 65534, no groups), or
    [] when this process is not root (then it is unprivileged already)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@unittest.skipIf(os.geteuid() == 0 and not shutil.which("setpriv"), "setpriv is needed to drop root")
class PermissionsUnprivileged(unittest.TestCase):
    """Run as a user whom the file modes really stop (root passes every chmod check)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbx-perm-", dir="/tmp")
        os.chmod(self.tmp, 0o777)
        self.dbatch = os.path.abspath(DBATCH)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def dbatch_as_nobody(self, *args):
        return subprocess.run(as_nobody() + [self.dbatch, *map(str, args)], capture_output=True, timeout=120,
                              cwd=self.tmp)

    def test_setup_really_drops_privileges(self):
        p = subprocess.run(as_nobody() + ["id", "-u"], capture_output=True, text=True)
        self.assertNotEqual(p.stdout.strip(), "0")

    def test_unreadable_input_is_named(self):
        good = lines_file(os.path.join(self.tmp, "good.txt"), 50)
        locked = lines_file(os.path.join(self.tmp, "locked.txt"), 50)
        os.chmod(good, 0o644)
        os.chmod(locked, 0o000)
        out = os.path.join(self.tmp, "o.tsv")
        for workers in ("0", "2"):
            with self.subTest(workers=workers):
                p = self.dbatch_as_nobody("wordcount", "--workers", workers, "--no-job-dir", "--out", out, good,
                                          locked)
                err = p.stderr.decode()
                self.assertEqual(p.returncode, 1, err)
                self.assertEqual(err, "dbatch wordcount: error: %s: cannot read: Permission denied\n" % locked)
                self.assertFalse(os.path.exists(out))

    def test_unwritable_output_directory(self):
        good = lines_file(os.path.join(self.tmp, "good.txt"), 50)
        os.chmod(good, 0o644)
        ro = os.path.join(self.tmp, "ro")
        os.makedirs(ro)
        os.chmod(ro, 0o755)  # owned by root (or us, then 0555): nobody may create files in it
        if os.geteuid() != 0:
            os.chmod(ro, 0o555)
        out = os.path.join(ro, "o.tsv")
        p = self.dbatch_as_nobody("wordcount", "--workers", "0", "--no-job-dir", "--out", out, good)
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        self.assertEqual(err, "dbatch wordcount: error: %s: cannot create output file: Permission denied\n" % out)
        self.assertEqual(os.listdir(ro), [])


if __name__ == "__main__":
    unittest.main()
