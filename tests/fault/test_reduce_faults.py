"""Faults around dbatch run --map CMD --reduce AGG,... and --reduce-cmd CMD: local workers and
remote workers killed with -9 mid-job, a map command failing once, a failing reduce command,
--on-bad-record fail, a coordinator killed and resumed. Every answer is compared byte for byte
with --workers 0, and --workers 0 with a reference computed here in Python from the spec
(/work/notes/keyed-spec.md, docs/keyed.md)."""
import collections
import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import children, fault_env, free_port, run, slurp, start, stop, TmpTest, wait_until  # noqa: E402

AGGS = "count,sum,min,max,mean,first,last,distinct,top:3"


# ---- the reference ----

def number(s):
    """int, float, or None, as the spec reads a value (bytes)."""
    t = s.decode("utf-8", errors="replace")
    if re.fullmatch(r"[+-]?[0-9]+", t) and -2**63 <= int(t) < 2**63:
        return int(t)
    if re.search(r"[\s_]|^[+-]?0[xX]|inf|nan", t, re.I):
        return None
    try:
        x = float(t)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def fmt(x):
    if isinstance(x, int):
        return str(x)
    return repr(float(x))  # Python's repr, as dbatch writes numbers


def esc(b):
    return b.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def reference_reduce(data, aggs):
    """The rows of `run --map cat --reduce aggs` over data (bytes), and the bad records."""
    numeric = any(a in ("sum", "min", "max", "mean") for a in aggs.split(","))
    per = collections.OrderedDict()
    bad = 0
    for line in data.split(b"\n")[:-1]:
        key, _, val = line.partition(b"\t")
        if numeric and number(val) is None:
            bad += 1
            continue
        per.setdefault(key, []).append(val)
    out = []
    for key in sorted(per, key=lambda k: k):
        vals = per[key]
        nums = [number(v) for v in vals] if numeric else []
        row = [esc(key)]
        for a in aggs.split(","):
            if a == "count":
                row.append(str(len(vals)).encode())
            elif a == "sum":
                if all(isinstance(x, int) for x in nums):
                    row.append(fmt(sum(nums)).encode())
                else:
                    row.append(fmt(math.fsum(nums)).encode())
            elif a == "min":
                row.append(fmt(min(nums)).encode())
            elif a == "max":
                row.append(fmt(max(nums)).encode())
            elif a == "mean":
                s = sum(nums) if all(isinstance(x, int) for x in nums) else math.fsum(nums)
                row.append(fmt(s / len(nums) if isinstance(s, int) else s / len(nums)).encode())
            elif a == "first":
                row.append(esc(vals[0]))
            elif a == "last":
                row.append(esc(vals[-1]))
            elif a == "distinct":
                row.append(str(len(set(vals))).encode())
            elif a.startswith("top:"):
                k = int(a[4:])
                c = collections.Counter(vals)
                top = sorted(c.items(), key=lambda vc: (-vc[1], vc[0]))[:k]
                row.append(esc(b",".join(v + b"=" + str(n).encode() for v, n in top)))
        out.append(b"\t".join(row) + b"\n")
    return b"".join(out), bad


def reference_sorted(data):
    """What --reduce-cmd cat gives: the map output lines stably sorted by key."""
    lines = data.split(b"\n")[:-1]
    return b"".join(l + b"\n" for l in sorted(lines, key=lambda l: l.partition(b"\t")[0]))


def make_input(n, nkeys, seed, bad_every=0):
    rnd = random.Random(seed)
    keys = ["k%d" % i for i in range(nkeys)] + ["", "ключ", "back\\slash", "cr\rkey", "z"]
    vals = ["1", "-3", "12", "0", "+5", "0.25", "-1.5", "2.75", "1e1", "7", "-0"]
    lines = []
    for i in range(n):
        v = "abc" if bad_every and i % bad_every == bad_every - 1 else rnd.choice(vals)
        lines.append("%s\t%s\n" % (rnd.choice(keys), v))
    return "".join(lines).encode()


class ReduceFaults(TmpTest):
    BR = "400"

    def setUp(self):
        super().setUp()
        self.data = make_input(16000, 250, 3)
        self.input = self.write("in.tsv", self.data)
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            stop(p)
        super().tearDown()

    def clean(self, *mode):
        r = run("run", "--no-job-dir", "-q", "--map", "cat", *mode, "--workers", "0", "--batch-records", self.BR,
                self.input)
        return r.stdout

    def modes(self):
        want, bad = reference_reduce(self.data, AGGS)
        self.assertEqual(bad, 0)
        yield ("--reduce", AGGS), want
        yield ("--reduce-cmd", "cat"), reference_sorted(self.data)

    def test_workers_0_matches_the_reference(self):
        for mode, want in self.modes():
            got = self.clean(*mode)
            self.assertGreater(len(want), 1000)
            self.assertEqual(got, want, mode)

    def kill_workers_mid_job(self, mode):
        coord = start("run", "--no-job-dir", "-q", "--map", "cat", *mode, "--workers", "2", "--batch-records",
                      self.BR, "--max-attempts", "10", self.input, env=fault_env("delay_ms=150"))
        self.procs.append(coord)
        killed = 0
        rnd = random.Random(5)
        deadline = time.time() + 90
        while coord.poll() is None and killed < 3 and time.time() < deadline:
            time.sleep(0.5)
            kids = children(coord.pid)
            if kids:
                try:
                    os.kill(rnd.choice(kids), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        out, err = coord.communicate(timeout=180)
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertGreater(killed, 0)
        return out

    def test_kill_9_of_local_workers(self):
        for mode, want in self.modes():
            self.assertEqual(self.kill_workers_mid_job(mode), want, mode)

    def test_remote_workers_one_killed(self):
        for mode, want in self.modes():
            ep = "tcp://127.0.0.1:%d" % free_port()
            s = self.path("s.json")
            coord = start("run", "--no-job-dir", "-q", "--map", "cat", *mode, "--workers", "0", "--listen", ep,
                          "--wait-workers", "2", "--batch-records", self.BR, "--max-attempts", "10",
                          "--summary-json", s, self.input)
            self.procs.append(coord)
            ws = [start("worker", "--connect", ep, "--slots", "1", "-q", env=fault_env("delay_ms=100"))
                  for _ in range(2)]
            self.procs += ws
            time.sleep(1.0)
            self.assertIsNone(coord.poll(), "the job ended before a worker could be killed mid-job")
            ws[0].kill()
            out, err = coord.communicate(timeout=180)
            self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
            self.assertEqual(out, want, mode)
            j = json.loads(slurp(s, True))
            remote = [w for w in j["worker_stats"] if not w["local"]]
            self.assertEqual(len(remote), 2, j["worker_stats"])
            # every task ran on the remote workers, the survivor finishing the killed one's
            self.assertEqual(sum(w["tasks"] for w in j["worker_stats"] if w["local"]), 0, j["worker_stats"])
            self.assertGreater(sum(w["tasks"] for w in remote), 0)

    def test_map_failing_once_is_retried(self):
        cmd = ('if [ "$DBATCH_TASK" = 3 ] && [ "$DBATCH_ATTEMPT" = 1 ]; then cat >/dev/null; '
               'echo planned-failure >&2; exit 7; fi; cat')
        for mode, want in self.modes():
            s = self.path("s.json")
            r = run("run", "--no-job-dir", "-q", "--map", cmd, *mode, "--workers", "2", "--batch-records", self.BR,
                    "--summary-json", s, self.input, timeout=180)
            self.assertEqual(r.stdout, want, mode)
            j = json.loads(slurp(s, True))
            self.assertEqual(j["attempts"] - j["speculative_attempts"], j["tasks"] + 1, j)
            self.assertEqual(len(j["failures"]), 1, j["failures"])
            self.assertIn("planned-failure", json.dumps(j["failures"]))

    def test_reduce_command_failing(self):
        out = self.path("out.txt")
        for w in ("0", "2"):
            r = run("run", "--no-job-dir", "-q", "--map", "cat", "--reduce-cmd",
                    "cat >/dev/null; echo first-line >&2; echo reducer-stderr-tail >&2; exit 1", "--workers", w,
                    "--batch-records", self.BR, "-o", out, self.input, check=False, timeout=180)
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 1, err)
            self.assertIn("reduce command", err)
            self.assertIn("status 1", err)
            self.assertIn("reducer-stderr-tail", err)
            self.assertEqual(len(err.strip().split("\n")), 1, err)
            self.assertFalse(os.path.exists(out))
            self.assertEqual(os.listdir(self.tmp), ["in.tsv"])

    def test_bad_record_fail_names_the_line(self):
        data = make_input(3000, 40, 9, bad_every=0)
        lines = data.split(b"\n")
        lines[1234] = b"k1\tnot-a-number"   # file line 1235
        data = b"\n".join(lines)
        path = self.write("bad.tsv", data)
        for w in ("0", "2"):
            r = run("run", "--no-job-dir", "-q", "--map", "cat", "--reduce", "count,sum", "--on-bad-record", "fail",
                    "--workers", w, "--batch-records", "500", "-o", self.path("o.tsv"), path, check=False,
                    timeout=120)
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 1, err)
            # The batch of lines 1001-1500; the bad line is its 235th.
            self.assertIn("line 235 of the map output of the batch from %s line 1001" % path, err)
            self.assertIn("'not-a-number' is not a number (for sum)", err)
            self.assertFalse(os.path.exists(self.path("o.tsv")))
        # skip (the default): the line is dropped from every aggregate, and counted
        s = self.path("s.json")
        r = run("run", "--no-job-dir", "-q", "--map", "cat", "--reduce", AGGS, "--workers", "2", "--batch-records",
                "500", "--summary-json", s, path, timeout=120)
        want, bad = reference_reduce(data, AGGS)
        self.assertEqual(bad, 1)
        self.assertEqual(r.stdout, want)
        self.assertEqual(json.loads(slurp(s, True))["bad_records"], 1)

    def test_sum_overflow_fails_naming_the_key(self):
        # each batch alone fits in int64; their sum does not: the merge must refuse
        data = b"".join(b"big\t%d\nsmall\t1\n" % (2**62) for _ in range(4))
        path = self.write("big.tsv", data)
        for w in ("0", "2"):
            r = run("run", "--no-job-dir", "-q", "--map", "cat", "--reduce", "sum", "--workers", w,
                    "--batch-records", "2", path, check=False, timeout=120)
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 1, err)
            self.assertIn("'big' overflows", err)
        # a real sum past the largest double: the same failure in a batch and across batches
        path = self.write("inf.tsv", b"k\t1e308\nj\t1\nk\t1e308\n")
        for w, br in (("0", "3"), ("2", "3"), ("0", "1"), ("2", "1")):
            r = run("run", "--no-job-dir", "-q", "--map", "cat", "--reduce", "count,mean", "--workers", w,
                    "--batch-records", br, "-o", self.path("inf-out.tsv"), path, check=False, timeout=120)
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 1, err)
            self.assertIn("the mean of key 'k' overflows 64-bit floating point", err)
            self.assertNotIn("bad result", err)
            self.assertFalse(os.path.exists(self.path("inf-out.tsv")))
        # two that add up to exactly INT64_MAX fit
        ok = b"big\t%d\nsmall\t1\nbig\t%d\nsmall\t1\n" % (2**62, 2**62 - 1)
        r = run("run", "--no-job-dir", "-q", "--map", "cat", "--reduce", "sum,mean", "--workers", "2",
                "--batch-records", "2", self.write("ok.tsv", ok), timeout=120)
        self.assertEqual(r.stdout, b"big\t%d\t%s\nsmall\t2\t1.0\n" % (2**63 - 1, fmt((2**63 - 1) / 2).encode()))

    def test_resume_after_kill_9_of_the_coordinator(self):
        for mode, want in self.modes():
            jd, out, s = self.path("job"), self.path("out.txt"), self.path("s.json")
            coord = start("run", "--map", "cat", *mode, "--workers", "2", "--batch-records", self.BR, "--job-dir",
                          jd, "-o", out, "--summary-json", s, self.input, env=fault_env("delay_ms=200"))
            self.procs.append(coord)

            def journaled():
                db = os.path.join(jd, "journal.db")
                if not os.path.exists(db):
                    return 0
                try:
                    with sqlite3.connect(db, timeout=5) as c:
                        return c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
                except sqlite3.OperationalError:
                    return 0
            wait_until(lambda: journaled() >= 3, "finished tasks in the journal", timeout=90)
            stop(coord)
            time.sleep(0.3)
            self.assertFalse(os.path.exists(out))
            run("resume", jd, timeout=180)
            self.assertEqual(slurp(out), want, mode)
            j = json.loads(slurp(s, True))
            self.assertGreaterEqual(j["resumed_tasks"], 3)
            self.assertEqual(j["records"], 16000)
            import shutil
            shutil.rmtree(jd)
            os.remove(out)


if __name__ == "__main__":
    unittest.main()
