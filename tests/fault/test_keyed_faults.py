"""Faults around dbatch groupby and dbatch cooccur: local workers killed with -9 mid-job, a remote
worker killed, a coordinator killed (cooccur: in its second stage) and resumed from --job-dir.
Every answer is compared byte for byte with --workers 0 and with keyed_ref.py. Floating sums of
non-dyadic values (0.1) are bit-identical across --workers 0/1/2, policies and retries, and
equal to a Python model of the fixed merge tree over batch indices (docs/keyed.md)."""
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import children, fault_env, free_port, run, slurp, start, stop, wait_until  # noqa: E402
import gen_keyed  # noqa: E402
import keyed_ref  # noqa: E402

SPECS = "count,sum:qty,mean:price,min:price,max:qty,first:region,last:region,distinct:region,top:2:qty"


def journal_count(jd, stage):
    db = os.path.join(jd, "journal.db")
    if not os.path.exists(db):
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM tasks WHERE stage = ?", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


class KeyedFaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dbx-kf-")
        cls.sales = os.path.join(cls.tmp, "sales.csv")
        gen_keyed.csv_sales(cls.sales, 300000, 40, seed=11, quoted=0.1)
        cls.orders = os.path.join(cls.tmp, "orders.csv")
        rnd = random.Random(3)
        with open(cls.orders, "w") as f:
            f.write("user,item\n")
            for u in range(20000):
                for _ in range(rnd.randint(1, 12)):
                    f.write("u%05d,item-long-name-%03d\n" % (u, int(rnd.paretovariate(1.2)) % 300))
        _, rows, _ = keyed_ref.groupby_ref([cls.sales], None, "product", SPECS)
        cls.gb_want = keyed_ref.write_tsv(rows)
        rows, _, _ = keyed_ref.cooccur_ref([cls.orders], None, "user", "item", 5, 1000)
        cls.co_want = keyed_ref.write_tsv(rows)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.procs = []
        self.dir = tempfile.mkdtemp(dir=self.tmp)

    def tearDown(self):
        for p in self.procs:
            stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def gb_args(self, batch="16K"):
        return ["groupby", self.sales, "--key", "product", "--agg", SPECS, "--batch-bytes", batch]

    def co_args(self, batch="64K"):
        return ["cooccur", self.orders, "--user", "user", "--item", "item", "--top", "5", "--batch-bytes", batch]

    def test_workers_0_equal_the_reference(self):
        self.assertGreater(len(self.gb_want), 1000)
        self.assertGreater(len(self.co_want), 1000)
        self.assertEqual(run(*self.gb_args(), "--workers", "0", "--no-job-dir", "-q").stdout, self.gb_want)
        self.assertEqual(run(*self.co_args(), "--workers", "0", "--no-job-dir", "-q").stdout, self.co_want)

    def kill_local_workers(self, args):
        s = self.path("s.json")
        coord = start(*args, "--workers", "2", "--max-attempts", "10", "--no-job-dir", "-q", "--summary-json", s,
                      env=fault_env("delay_ms=120"))
        self.procs.append(coord)
        killed, rnd = 0, random.Random(5)
        deadline = time.time() + 60
        while coord.poll() is None and killed < 3 and time.time() < deadline:
            time.sleep(0.4)
            kids = children(coord.pid)
            if kids:
                try:
                    os.kill(rnd.choice(kids), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        out, err = coord.communicate(timeout=120)
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertGreater(killed, 0)
        j = json.loads(slurp(s, True))
        self.assertGreater(j["attempts"], j["tasks"], "no attempt was lost to a kill")
        return out

    def test_kill_9_of_local_workers(self):
        self.assertEqual(self.kill_local_workers(self.gb_args()), self.gb_want)
        self.assertEqual(self.kill_local_workers(self.co_args("32K")), self.co_want)

    def test_remote_workers_one_killed(self):
        for args, want in ((self.gb_args(), self.gb_want), (self.co_args("32K"), self.co_want)):
            ep = "tcp://127.0.0.1:%d" % free_port()
            s = self.path("s.json")
            coord = start(*args, "--workers", "0", "--listen", ep, "--wait-workers", "2", "--max-attempts", "10",
                          "--no-job-dir", "-q", "--summary-json", s)
            self.procs.append(coord)
            ws = [start("worker", "--connect", ep, "--slots", "1", "-q", env=fault_env("delay_ms=100"))
                  for _ in range(2)]
            self.procs += ws
            time.sleep(1.0)
            self.assertIsNone(coord.poll(), "the job ended before a worker could be killed mid-job")
            ws[0].kill()
            out, err = coord.communicate(timeout=120)
            self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
            self.assertEqual(out, want, args[0])
            j = json.loads(slurp(s, True))
            remote = [w for w in j["worker_stats"] if not w["local"]]
            self.assertEqual(len(remote), 2, j["worker_stats"])
            self.assertEqual(sum(w["tasks"] for w in j["worker_stats"] if w["local"]), 0, j["worker_stats"])

    def resume_after_kill(self, args, stage, at_least, want):
        jd, out, s = self.path("job"), self.path("out.tsv"), self.path("s.json")
        coord = start(*args, "--workers", "2", "--job-dir", jd, "-o", out, "--summary-json", s,
                      env=fault_env("delay_ms=150"))
        self.procs.append(coord)
        wait_until(lambda: journal_count(jd, stage) >= at_least, "%d tasks of stage %d in the journal"
                   % (at_least, stage), timeout=90, proc=coord)
        stop(coord)
        time.sleep(0.3)  # its local workers notice and leave
        self.assertFalse(os.path.exists(out))
        run("resume", jd, timeout=120)
        self.assertEqual(slurp(out), want)
        j = json.loads(slurp(s, True))
        self.assertGreaterEqual(j["resumed_tasks"], at_least)
        return j

    def test_groupby_resumed_after_kill_9_of_the_coordinator(self):
        self.resume_after_kill(self.gb_args("32K"), 0, 3, self.gb_want)

    def test_cooccur_resumed_when_killed_in_its_first_stage(self):
        j = self.resume_after_kill(self.co_args("64K"), 0, 3, self.co_want)
        self.assertEqual([st["name"] for st in j["stages"]], ["baskets", "pairs", "reduce"])

    # Was a bug: `dbatch resume` of a cooccur killed in its second stage rewrote JOBDIR/baskets.tsv (same
    # bytes, new mtime), then refused its own journal ("inputs changed since the job started").
    def test_cooccur_resumed_when_killed_in_its_second_stage(self):
        # Stage 1 (baskets) 1M batches: few; stage 2 (pairs) has several 256K tasks of baskets.
        j = self.resume_after_kill(self.co_args("1M"), 1, 1, self.co_want)
        self.assertEqual([st["name"] for st in j["stages"]], ["baskets", "pairs", "reduce"])
        self.assertGreater(j["stages"][1]["batches"], 1, j["stages"])
        self.assertGreaterEqual(j["resumed_tasks"], j["stages"][0]["batches"] + 1, "stage 1 ran again")

    def test_float_sums_bit_identical_and_the_tree_fold(self):
        # JSONL (no header) so --batch-records N cuts batches at known lines: batch i holds
        # lines [iN, (i+1)N). Values are non-dyadic: the order of additions shows.
        rnd = random.Random(17)
        vals = ["0.1", "0.2", "0.3", "0.7", "1.1", "2.675", "1e-17", "3.3", "1e16", "-0.1"]
        recs = [(rnd.choice("abcdefg"), rnd.choice(vals)) for _ in range(3000)]
        p = self.path("f.jsonl")
        with open(p, "w") as f:
            for k, v in recs:
                f.write('{"k":"%s","v":%s}\n' % (k, v))
        N = 37
        nb = (len(recs) + N - 1) // N
        want = []
        differs = 0
        for key in sorted({k for k, _ in recs}):
            parts = []
            for b in range(nb):
                vs = [float(v) for k, v in recs[b * N:(b + 1) * N] if k == key]
                s = None
                for x in vs:
                    s = x if s is None else s + x
                parts.append(s)
            t = keyed_ref.tree_sum(parts)
            cnt = sum(1 for k, _ in recs if k == key)
            seq = 0.0
            for k, v in recs:
                if k == key:
                    seq += float(v)
            differs += seq != t
            want.append("%s\t%s\t%s\n" % (key, keyed_ref.fmt_num(t), keyed_ref.fmt_num(t / cnt)))
        want = "".join(want).encode()
        self.assertGreater(differs, 0, "the data does not tell a tree from a left-to-right sum")
        args = ["groupby", p, "--key", "k", "--agg", "sum:v,mean:v", "--batch-records", str(N), "--no-job-dir", "-q"]
        for extra in (["--workers", "0"], ["--workers", "1"], ["--workers", "2"],
                      ["--workers", "2", "--policy", "round-robin"],
                      ["--workers", "2", "--policy", "random", "--seed", "3"],
                      ["--workers", "2", "--no-speculation", "--prefetch", "0"]):
            self.assertEqual(run(*args, *extra).stdout, want, extra)
        # with retries: a worker killed mid-job
        coord = start(*args, "--workers", "2", "--max-attempts", "10", env=fault_env("delay_ms=60"))
        self.procs.append(coord)
        killed = 0
        deadline = time.time() + 60
        while coord.poll() is None and killed < 2 and time.time() < deadline:
            time.sleep(0.5)
            kids = children(coord.pid)
            if kids:
                try:
                    os.kill(kids[0], signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        out, err = coord.communicate(timeout=120)
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertEqual(out, want)


if __name__ == "__main__":
    unittest.main()
