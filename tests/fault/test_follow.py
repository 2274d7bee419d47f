"""--follow (issue 17): jobs that keep running over data as it arrives, exactly once.

Files are written and appended to while a job follows them: lines cut in the middle, a
rotation (a file renamed inside the watched directory, a new one under its name), an empty
file, files added. The coordinator is killed with SIGKILL mid-stream and started again with
the same command and --job-dir. When it stops (--until-idle), its output must be byte for
byte what a batch run over the final files gives: no record lost, none counted twice. The
same for the SQLite sink, with CSV files each carrying its own header. No timing is asserted:
the test waits for commits (the micro-batch number in JOB_DIR/follow.state) where it needs
them."""
import json
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, TmpTest, children, fault_env, free_port, reference_wordcount, run, slurp, start, stop, wait_until  # noqa: E402
import keyed_ref  # noqa: E402


def epoch(job):
    """The number of the last micro-batch committed in job (0: none)."""
    try:
        with open(os.path.join(job, "follow.state"), "rb") as f:
            head = f.read(26)
    except OSError:
        return 0
    return struct.unpack("<Q", head[18:26])[0] if len(head) == 26 else 0


class Follower:
    """The followed job: started again with the same command whenever it is killed."""

    def __init__(self, test, args):
        self.test, self.args, self.p, self.starts = test, args, None, 0

    def start(self):
        self.p = start(*self.args)
        self.starts += 1

    def kill9(self):
        self.p.kill()
        self.p.wait(timeout=30)
        for f in (self.p.stdout, self.p.stderr):
            f.close()

    def running(self):
        """Started again when it stopped on its own (--until-idle on a slow machine): the
        same command goes on where it left off."""
        if self.p.poll() is not None:
            self.test.assertEqual(self.p.returncode, 0, self.p.stderr.read().decode(errors="replace"))
            self.p.stdout.close()
            self.p.stderr.close()
            self.start()
        return self.p

    def finish(self):
        out, err = self.p.communicate(timeout=300)
        return self.p.returncode, out, err.decode(errors="replace")


class FollowFiles(TmpTest):
    def append(self, name, data):
        with open(self.path("logs", name), "ab") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    def steps(self):
        """(what, write it, a commit follows) in order. Lines are cut inside words too."""
        words = ["w%d" % i for i in range(200)] + ["Ünïcode", "日本語", "MiXeD"]
        blob = lambda k, n: "".join(" ".join(words[(k * 7 + i * 3 + j) % len(words)] for j in range(9)) + "\n"
                                    for i in range(n))
        return [
            ("a: whole lines", lambda: self.append("a.log", blob(1, 50)), True),
            # each cut comes with a whole line elsewhere: the commit that follows says a scan saw the cut
            ("a: a line cut inside a word", lambda: (self.append("a.log", "half wo"), self.append("e.log", "e1\n")), True),
            ("a: its end, more, and a cut after them", lambda: self.append("a.log", "rd done\n" + blob(2, 30) + "third cu"),
             True),
            ("b: a new file, and the cut line's end", lambda: (self.append("b.log", blob(3, 40)), self.append("a.log", "t\n")),
             True),
            ("c: an empty file", lambda: self.append("c.log", ""), False),
            ("a: cut again, no newline yet", lambda: (self.append("a.log", "rotated li"), self.append("e.log", "e2\n")),
             True),
            ("a: rotated (renamed inside the directory)",
             lambda: os.rename(self.path("logs", "a.log"), self.path("logs", "a.log.1")), False),
            ("a.1: its last line ends after the rotation", lambda: self.append("a.log.1", "ne\n"), True),
            ("a: the successor", lambda: self.append("a.log", blob(4, 25) + "crlf line\r\n"), True),
            ("b: more", lambda: self.append("b.log", blob(5, 60)), True),
            ("f: invalid UTF-8, a NUL, binary bytes, a long line",
             lambda: self.append("f.log", b"caf\xc3\xa9 bad\xff\xfebytes nul\x00here \x01\x02\x7f end\n" +
                                 b"long " * 200000 + b"\n"), True),
            ("d: a last file without a final newline", lambda: self.append("d.log", blob(6, 5) + "no newline at the end"),
             True),
        ]

    def test_wordcount_appends_rotation_partial_lines_two_kills(self):
        os.mkdir(self.path("logs"))
        job, out = self.path("job"), self.path("out.tsv")
        f = Follower(self, ("wordcount", self.path("logs"), "--follow", "--interval", "0.1", "--until-idle", "4",
                            "--workers", "2", "--job-dir", job, "-o", out, "-q"))
        f.start()
        wait_until(lambda: epoch(job) >= 1, "the first commit", proc=f.p)
        kills = 0
        for i, (what, write, commits) in enumerate(self.steps()):
            e = epoch(job)
            write()
            if commits:
                wait_until(lambda: epoch(job) > e, "a commit after: " + what, proc=f.running())
            if i in (2, 7):  # killed right after a commit, and once more with data waiting
                f.kill9()
                kills += 1
                if i == 7:
                    self.append("b.log", "written while the job was down\n")
                f.start()
        rc, got, err = f.finish()
        self.assertEqual(rc, 0, err)
        self.assertEqual(kills, 2)
        files = sorted(os.path.join(self.path("logs"), n) for n in os.listdir(self.path("logs")))
        want = reference_wordcount(files)
        self.assertEqual(slurp(out), want)
        self.assertEqual(run("wordcount", self.path("logs"), "--workers", "2", "--no-job-dir", "-q").stdout, want)
        self.assertFalse(os.path.exists(os.path.join(job, "follow-spool.txt")))

    def test_groupby_csv_to_sqlite_one_kill(self):
        os.mkdir(self.path("logs"))
        job, db = self.path("job"), self.path("out.db")
        head = "product,region,qty\n"
        self.append("1.csv", head + "".join("p%d,r%d,%d\n" % (i % 13, i % 3, i) for i in range(300)))
        f = Follower(self, ("groupby", self.path("logs"), "--key", "product", "--agg", "count,sum:qty,distinct:region",
                            "--on-bad-record", "fail", "--follow", "--interval", "0.1", "--until-idle", "4",
                            "--workers", "2", "--job-dir", job, "-o", "sqlite:" + db, "--table", "sales", "-q"))
        f.start()
        wait_until(lambda: epoch(job) >= 1, "the first commit", proc=f.p)
        e = epoch(job)
        self.append("1.csv", "p1,r1,1000\np2,r")
        self.append("2.csv", "product,reg")  # its header is not whole yet
        wait_until(lambda: epoch(job) > e, "a commit", proc=f.running())
        e = epoch(job)
        self.append("2.csv", "ion,qty\n" + "".join("q%d,r%d,%d\n" % (i % 5, i % 2, i) for i in range(100)))
        wait_until(lambda: epoch(job) > e, "a commit", proc=f.running())
        f.kill9()
        self.append("1.csv", "2,7\n")
        self.append("3.csv", head)  # a header alone
        f.start()
        rc, _, err = f.finish()
        self.assertEqual(rc, 0, err)
        ref = self.path("ref.db")
        run("groupby", self.path("logs"), "--key", "product", "--agg", "count,sum:qty,distinct:region", "--workers", "2",
            "--on-bad-record", "fail", "-o", "sqlite:" + ref, "--table", "sales", "--no-job-dir", "-q")
        rows = lambda p: sqlite3.connect(p).execute("SELECT * FROM sales ORDER BY product").fetchall()
        self.assertEqual(rows(db), rows(ref))
        _, ref_rows, _ = keyed_ref.groupby_ref(sorted(os.path.join(self.path("logs"), n)
                                                      for n in os.listdir(self.path("logs"))),
                                               None, "product", "count,sum:qty,distinct:region")
        self.assertEqual(len(rows(db)), len(ref_rows))
        # p2: 23 whole rows at first, and one cut across a kill ("p2,r" then "2,7")
        self.assertIn(("p2", 24, sum(range(2, 300, 13)) + 7, 3), rows(db))
        # the input the table covers, committed with it: every file to its end
        (key, mb, offsets), = sqlite3.connect(db).execute("SELECT job, micro_batch, offsets FROM dbatch_follow")
        self.assertEqual((key, mb), (os.path.realpath(job), epoch(job)))
        got = {os.path.basename(x["path"]): x["offset"] for x in json.loads(offsets)["files"]}
        self.assertEqual(got, {n: os.path.getsize(self.path("logs", n)) for n in ("1.csv", "2.csv", "3.csv")})

    def test_cooccur_and_run_reduce_across_a_kill(self):
        """cooccur's state is the baskets so far (its pairs stage runs over them for each
        output); run --reduce's is its keyed partial. Both equal a batch run at the end."""
        import random
        rnd = random.Random(4)
        os.mkdir(self.path("logs"))
        self.append("a.csv", "user,item\n" + "".join("u%d,i%d\n" % (rnd.randrange(200), rnd.randrange(30))
                                                     for _ in range(2000)))
        self.append("k.tsv", "".join("k%d\t%d\n" % (rnd.randrange(50), rnd.randrange(100)) for _ in range(2000)))
        jobs = {
            "cooccur": ["cooccur", self.path("logs", "a.csv"), self.path("logs", "b.csv"), "--user", "user", "--item",
                        "item", "--top", "3"],
            "reduce": ["run", "--map", "cat", "--reduce", "count,sum,min,max,distinct", self.path("logs", "k.tsv")],
        }
        self.append("b.csv", "user,item\n")
        fs = {}
        for name, args in jobs.items():
            fs[name] = Follower(self, (*args, "--follow", "--interval", "0.1", "--until-idle", "4", "--workers", "2",
                                       "--job-dir", self.path("job-" + name), "-o", self.path(name + ".tsv"), "-q"))
            fs[name].start()
        for name in jobs:
            wait_until(lambda: epoch(self.path("job-" + name)) >= 1, "the first commit of " + name, proc=fs[name].p)
        es = {n: epoch(self.path("job-" + n)) for n in jobs}
        self.append("b.csv", "".join("u%d,i%d\n" % (rnd.randrange(200), rnd.randrange(30)) for _ in range(1000)))
        self.append("k.tsv", "".join("k%d\t%d\n" % (rnd.randrange(60), rnd.randrange(100)) for _ in range(1000)) + "k7\t")
        for name in jobs:
            wait_until(lambda: epoch(self.path("job-" + name)) > es[name], "a commit of " + name,
                       proc=fs[name].running())
            fs[name].kill9()
        self.append("a.csv", "u1,i1\nu1,i2\nu2,i1\n")
        self.append("k.tsv", "5\n")
        for name in jobs:
            fs[name].start()
        for name, args in jobs.items():
            rc, _, err = fs[name].finish()
            self.assertEqual(rc, 0, err)
            want = run(*args, "--workers", "2", "--no-job-dir", "-q").stdout
            self.assertEqual(slurp(self.path(name + ".tsv")), want, name)
            self.assertGreater(len(want), 100)

    def test_killed_between_its_state_and_its_output(self):
        """The state of micro-batch 2 is written, its output is not: the same command commits
        that output first (its data is consumed already, and is not read again)."""
        os.mkdir(self.path("logs"))
        job, out = self.path("job"), self.path("out.tsv")
        self.append("a.log", "a b\n")
        args = ("wordcount", self.path("logs"), "--follow", "--interval", "0.1", "--workers", "1", "--job-dir", job,
                "-o", out, "-q")
        p = start(*args, env=fault_env("follow_crash_before_output=2"))
        try:
            wait_until(lambda: epoch(job) >= 1, "the first commit", proc=p)
            self.append("a.log", "c b\n")
            p.wait(timeout=60)
        finally:
            stop(p)
        self.assertEqual(p.returncode, -signal.SIGKILL)
        self.assertEqual(epoch(job), 2)
        self.assertEqual(slurp(out), b"a\t1\nb\t1\n")  # micro-batch 1's
        r = run(*args, "--until-idle", "0.5")
        self.assertEqual(slurp(out), b"b\t2\na\t1\nc\t1\n", r.stderr)
        self.assertEqual(epoch(job), 2)

    def test_sigterm_finishes_and_commits(self):
        os.mkdir(self.path("logs"))
        job, out = self.path("job"), self.path("out.tsv")
        self.append("a.log", "one two\n")
        summ = self.path("s.json")
        p = start("wordcount", self.path("logs"), "--follow", "--interval", "3600", "--workers", "1", "--job-dir", job,
                  "-o", out, "--summary-json", summ, "-q")
        try:
            # (the state is written before the output: the output is in place once it exists)
            wait_until(lambda: epoch(job) >= 1 and os.path.exists(out), "the first commit", proc=p)
            self.assertEqual(slurp(out), b"one\t1\ntwo\t1\n")
            self.append("a.log", "two three\nthree four")  # the last line is not whole: it waits
            p.send_signal(signal.SIGTERM)
            got, err = p.communicate(timeout=120)
        finally:
            stop(p)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(slurp(out), b"two\t2\none\t1\nthree\t1\n")
        self.assertEqual(epoch(job), 2)
        # what the status file and the summary say: two micro-batches, 10 bytes ("three four")
        # waiting for their newline, one file
        with open(summ) as fh:
            fo = json.load(fh)["follow"]
        with open(os.path.join(job, "status.json")) as fh:
            st = json.load(fh)["follow"]
        for x in (fo, st):
            self.assertEqual((x["micro_batches"], x["lag_bytes"], x["files"]), (2, 10, 1), x)
            self.assertGreater(x["last_commit_unix"], 1.7e9)
            self.assertGreaterEqual(x["micro_batch_seconds_p99"], x["micro_batch_seconds_p50"])
            self.assertGreater(x["micro_batch_seconds_p50"], 0)

    def test_workers_hear_heartbeats_between_micro_batches(self):
        """An interval three times the worker's patience with a silent coordinator (its
        --timeout): the same worker does every micro-batch, none goes silent and leaves."""
        os.mkdir(self.path("logs"))
        job, out, summ = self.path("job"), self.path("out.tsv"), self.path("s.json")
        self.append("a.log", "a b\n")
        port = free_port()
        p = start("wordcount", self.path("logs"), "--follow", "--interval", "3", "--heartbeat", "0.2", "--workers", "0",
                  "--listen", "127.0.0.1:%d" % port, "--wait-workers", "1", "--job-dir", job, "-o", out,
                  "--summary-json", summ, "-q")
        w = subprocess.Popen([DBATCH, "worker", "--connect", "127.0.0.1:%d" % port, "--timeout", "1", "--heartbeat",
                              "0.2", "-s", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: epoch(job) >= 1, "the first commit", proc=p)
            self.append("a.log", "c\n")
            wait_until(lambda: epoch(job) >= 2, "the second commit", proc=p, timeout=120)
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=120)
            _, werr = w.communicate(timeout=60)
        finally:
            stop(p)
            stop(w)
        self.assertEqual(p.returncode, 0, err)
        self.assertNotIn(b"silent", werr)
        self.assertEqual(slurp(out), b"a\t1\nb\t1\nc\t1\n")
        with open(summ) as f:
            sm = json.load(f)
        self.assertEqual([(x["state"], x["tasks"]) for x in sm["worker_stats"]], [("finished", 2)])

    def test_worker_killed_mid_stream(self):
        os.mkdir(self.path("logs"))
        job, out = self.path("job"), self.path("out.tsv")
        f = Follower(self, ("wordcount", self.path("logs"), "--follow", "--interval", "0.1", "--until-idle", "4",
                            "--workers", "2", "--batch-bytes", "64K", "--job-dir", job, "-o", out, "-q"))
        f.start()
        for k in range(6):
            e = epoch(job)
            self.append("x.log", "".join("k%d w%d z\n" % (k, i % 977) for i in range(40000)))
            if k == 3:
                kids = children(f.p.pid)
                self.assertTrue(kids)
                os.kill(kids[0], signal.SIGKILL)
            wait_until(lambda: epoch(job) > e, "a commit", proc=f.running())
        rc, _, err = f.finish()
        self.assertEqual(rc, 0, err)
        self.assertEqual(slurp(out), reference_wordcount([self.path("logs", "x.log")]))


class FollowReport(TmpTest):
    @unittest.skipUnless(shutil.which("chromium"), "chromium is not installed")
    def test_report_shows_what_was_followed(self):
        """The report (the dashboard's page with the final status) says what was followed:
        files, micro-batches, the rate in, the lag, the last commit and micro-batch times."""
        self.write("logs/a.log", "a b c\n" * 100 + "unfinished")
        job = self.path("job")
        run("wordcount", self.path("logs"), "--follow", "--interval", "0.1", "--until-idle", "0.5", "--job-dir", job,
            "-o", self.path("o.tsv"), "-q")
        args = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--virtual-time-budget=4000", "--user-data-dir=" + self.path("chrome"), "--dump-dom",
                "file://" + os.path.join(job, "report.html")]
        dom = subprocess.run(args, capture_output=True, timeout=120).stdout.decode(errors="replace")
        self.assertIsNone(re.search(r"<body[^>]*data-errors=", dom), "a script error was logged")
        self.assertRegex(dom, r'id="follow">following 1 file\(s\) · micro-batch 2 · [\d.]+ MB/s in · lag 0\.00 MB, '
                              r'0\.0 s · last commit 20\d\d-\d\d-\d\d [\d:]+ UTC · micro-batch p50 [\d.]+ s, p99 [\d.]+ s<')


class FollowMetrics(TmpTest):
    def test_metrics_while_following(self):
        """/metrics of a followed job: micro-batches committed, the bytes waiting for their
        newline, the last commit and the micro-batch seconds."""
        import urllib.request
        from dbx import free_port
        self.write("logs/a.log", "a b c\n" * 10 + "waits")
        job, port = self.path("job"), free_port()
        p = start("wordcount", self.path("logs"), "--follow", "--interval", "0.1", "--workers", "1", "--job-dir", job,
                  "--dashboard", "127.0.0.1:%d" % port, "-o", self.path("o.tsv"), "-q")
        try:
            wait_until(lambda: epoch(job) >= 1, "the first commit", proc=p)

            def sample(text, name):
                m = re.search(r"(?m)^%s(\{[^}]*\})? ([0-9.e+-]+)$" % re.escape(name), text)
                return float(m.group(2)) if m else None
            got = {}

            def scraped():
                text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
                got.update((n, sample(text, n)) for n in ("dbatch_follow_micro_batches_total", "dbatch_follow_lag_bytes",
                                                         "dbatch_follow_last_commit_timestamp_seconds",
                                                         "dbatch_follow_micro_batch_seconds"))
                return got["dbatch_follow_micro_batches_total"] and got["dbatch_follow_lag_bytes"] == 5
            wait_until(scraped, "/metrics with the first micro-batch", proc=p)
            self.assertGreater(got["dbatch_follow_last_commit_timestamp_seconds"], 1.7e9)
            self.assertGreater(got["dbatch_follow_micro_batch_seconds"], 0)
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=60)
        finally:
            stop(p)
        self.assertEqual(p.returncode, 0)


class FollowErrors(TmpTest):
    def test_a_file_truncated_in_place_fails_naming_it(self):
        os.mkdir(self.path("logs"))
        p = self.write("logs/a.log", "a b c\n" * 100)
        job = self.path("job")
        f = start("wordcount", self.path("logs"), "--follow", "--interval", "0.1", "--job-dir", job, "-o",
                  self.path("o.tsv"), "-q")
        try:
            wait_until(lambda: epoch(job) >= 1, "the first commit", proc=f)
            with open(p, "wb") as fh:
                fh.write(b"x\n")
            _, err = f.communicate(timeout=60)
        finally:
            stop(f)
        self.assertNotEqual(f.returncode, 0)
        self.assertIn(("%s shrank from 600 to 2 bytes while followed" % p).encode(), err)

    def test_usage(self):
        cases = [
            (("run", "--map", "cat", "--follow", self.write("a", "x\n")), "--follow goes with --map CMD --reduce AGG"),
            (("wordcount", "--follow", "--interval", "0", self.write("b", "x\n")), "--interval"),
            (("wordcount", "--follow", "--until-idle", "soon", self.write("c", "x\n")), "--until-idle"),
            (("wordcount", "--interval", "3", self.write("e", "x\n")), "--interval goes with --follow"),
            (("groupby", "--window", "60", "--key", "a", "--agg", "count", self.write("f.csv", "a\n")),
             "--window goes with --follow"),
            (("wordcount", "--follow", "--window", "1.5", self.write("g", "x\n")), "whole seconds"),
            (("wordcount", "--follow", "-"), "standard input cannot be followed"),
        ]
        for args, needle in cases:
            r = run(*args, check=False)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(needle.encode(), r.stderr)
        gz = self.path("d.log.gz")
        with open(gz, "wb") as fh:
            import gzip
            fh.write(gzip.compress(b"x\n"))
        r = run("wordcount", "--follow", "--until-idle", "1", gz, "--no-job-dir", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"is compressed", r.stderr)

    def test_state_of_another_job_and_a_damaged_state(self):
        a = self.write("logs/a.log", "a b\n")
        job = self.path("job")
        run("wordcount", self.path("logs"), "--follow", "--until-idle", "0.2", "--interval", "0.1", "--job-dir", job,
            "-o", self.path("o.tsv"), "-q")
        self.assertGreaterEqual(epoch(job), 1)
        r = run("wordcount", self.path("logs"), "--case-sensitive", "--follow", "--until-idle", "0.2", "--job-dir", job,
                "-o", self.path("o.tsv"), "-q", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(b"holds the state of another followed job", r.stderr)
        st = os.path.join(job, "follow.state")
        data = bytearray(slurp(st))
        data[30] ^= 1
        with open(st, "wb") as fh:
            fh.write(data)
        r = run("wordcount", self.path("logs"), "--follow", "--until-idle", "0.2", "--job-dir", job, "-o",
                self.path("o.tsv"), "-q", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(("%s is damaged" % st).encode(), r.stderr)
        self.assertEqual(slurp(self.path("o.tsv")), b"a\t1\nb\t1\n")
        del a


def wc_rows(data):
    """Word count rows of bytes, as reference_wordcount gives them (lines)."""
    import collections
    import re
    c = collections.Counter(re.findall(r"\w+", data.decode("utf-8", errors="replace").lower()))
    return ["%s\t%d" % kv for kv in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]


class Windows(TmpTest):
    """--window: the rows of each window are a batch run over that window's data, which
    JOB_DIR/windows.jsonl names as byte ranges; the ranges cover every file exactly once, across
    a kill -9 and at the crash points of a window's append."""

    def windows(self, job):
        try:
            with open(os.path.join(job, "windows.jsonl")) as f:
                return [json.loads(l) for l in f]
        except FileNotFoundError:
            return []

    def check(self, rows_by_window, job, logs):
        wins = self.windows(job)
        self.assertEqual([w["window_start"] for w in wins], sorted(set(w["window_start"] for w in wins)))
        self.assertEqual(sorted(rows_by_window), [w["window_start"] for w in wins])
        covered = {}
        for w in wins:
            data = b""
            for r in w["inputs"]:
                with open(r["path"], "rb") as f:
                    f.seek(r["from"])
                    data += f.read(r["to"] - r["from"])
                covered.setdefault(os.path.realpath(r["path"]), []).append((r["from"], r["to"]))
            self.assertEqual(rows_by_window[w["window_start"]], wc_rows(data), w)
            self.assertEqual(w["rows"], len(rows_by_window[w["window_start"]]))
        for name in os.listdir(logs):  # every byte of every file in exactly one window
            p = os.path.realpath(os.path.join(logs, name))
            spans = sorted(covered.get(p, []))
            self.assertEqual(spans[0][0] if spans else 0, 0, p)
            for (a, b), (c, d) in zip(spans, spans[1:]):
                self.assertEqual(b, c, (p, spans))
            self.assertEqual(spans[-1][1] if spans else 0, os.path.getsize(p), p)

    def rows_tsv(self, path):
        out = {}
        for line in slurp(path).decode().splitlines():
            ws, rest = line.split("\t", 1)
            out.setdefault(ws, []).append(rest)
        return out

    def test_windows_across_a_kill(self):
        logs, job, out = self.path("logs"), self.path("job"), self.path("out.tsv")
        os.mkdir(logs)
        args = ("wordcount", logs, "--follow", "--window", "1", "--interval", "0.1", "--until-idle", "2.5",
                "--workers", "2", "--job-dir", job, "-o", out, "-q")
        f = Follower(self, args)
        f.start()
        for k in range(4):
            n = len(self.windows(job))
            with open(os.path.join(logs, "a.log"), "a") as fh:
                fh.write("".join("k%d w%d x\n" % (k, i % 17) for i in range(200 + k)) + ("cut wo" if k == 1 else "rd\n"))
            wait_until(lambda: len(self.windows(job)) > n, "window %d to close" % k, proc=f.running())
            if k == 1:
                f.kill9()
                f.start()
        rc, _, err = f.finish()
        self.assertEqual(rc, 0, err)
        self.check(self.rows_tsv(out), job, logs)
        self.assertGreaterEqual(len(self.windows(job)), 4)

    def crash_point(self, fault, sqlite):
        logs, job = self.path("logs"), self.path("job")
        os.mkdir(logs)
        out = self.path("out.db") if sqlite else self.path("out.tsv")
        dest = ("-o", "sqlite:" + out, "--table", "wc") if sqlite else ("-o", out)
        args = ("wordcount", logs, "--follow", "--window", "1", "--interval", "0.1", "--workers", "1",
                "--job-dir", job, *dest, "-q")
        self.write("logs/a.log", "one two two\n")
        p = start(*args, env=fault_env(fault + "=0"))
        try:
            p.wait(timeout=60)  # window 0 closes within a second or two, and the fault kills it
        finally:
            stop(p)
        self.assertEqual(p.returncode, -signal.SIGKILL)
        with open(os.path.join(logs, "a.log"), "a") as fh:
            fh.write("three\n")
        run(*args, "--until-idle", "1.5")
        if sqlite:
            db = sqlite3.connect(out)
            got = {}
            for ws, word, n in db.execute("SELECT * FROM wc ORDER BY rowid"):
                got.setdefault(ws, []).append("%s\t%d" % (word, n))
            self.assertEqual(len(db.execute("SELECT * FROM dbatch_commits").fetchall()), len(got))
        else:
            got = self.rows_tsv(out)
        self.check(got, job, logs)
        first = self.windows(job)[0]["window_start"]
        self.assertEqual(got[first], ["two\t2", "one\t1"])

    def test_crash_before_append_file(self):
        self.crash_point("follow_crash_before_append", False)

    def test_crash_after_append_file(self):
        self.crash_point("follow_crash_after_append", False)

    def test_crash_before_append_sqlite(self):
        self.crash_point("follow_crash_before_append", True)

    def test_crash_after_append_sqlite(self):
        self.crash_point("follow_crash_after_append", True)


if __name__ == "__main__":
    unittest.main()
