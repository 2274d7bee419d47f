"""The partitioned reduce of keyed stages (--partitions R, --spill-dir DIR; issue 12): groupby,
run --reduce and cooccur's pairs stage give the same bytes for any R, worker count and policy,
against the Python references (tests/integration/keyed_ref.py; floating sums against a
reference of the documented fold: left to right inside a batch, then the fixed binary tree
over batch indices); kill -9 of a worker during the reduce stage; a full spill directory (a
small tmpfs); resume of a coordinator killed during the reduce stage; the spill files'
lifetime; usage errors; damaged and lost map outputs; two jobs sharing one --spill-dir.

Tests marked expectedFailure are known bugs (named in the comment above each): they pass
the day the bug is fixed (and unittest then reports an unexpected success)."""
import glob
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, TmpTest, TmpfsTest, children, in_spill, spill_files, fault_env, free_port, kill_job, reference_wordcount, run, slurp, start, stop, wait_until  # noqa: E402
import gen_keyed  # noqa: E402
import keyed_ref  # noqa: E402

gen_keyed.CHUNK = 500  # files of about the size asked for (its default writes 100,000 records at least)

RS = ("0", "1", "2", "7", "64")
GB_SPECS = "count,sum:qty,mean:price,min:price,max:qty,first:region,last:region,distinct:region,top:2:qty"
RUN_AGGS = "count,sum,min,max,mean,first,last,distinct,top:3"


def matrix():
    """(R, workers, policy args) to compare: every R with every worker count, and the other
    policies where there is a choice (2 workers)."""
    for r in RS:
        for w in ("0", "1", "2"):
            yield r, w, ()
        yield r, "2", ("--policy", "round-robin")
        yield r, "2", ("--policy", "random", "--seed", "7")


def real_sums_by_tree(records, batch_records, header_lines):
    """Per key: (sum, count) of real values, summed left to right inside each batch of
    batch_records input lines (the first batch also holds header_lines) and across batches by
    tree_sum. records: (key, value text) in input order."""
    first = batch_records - header_lines
    batches = [records[:first]] + [records[i:i + batch_records] for i in range(first, len(records), batch_records)]
    out = {}
    for k in {k for k, _ in records}:
        leaves = []
        for b in batches:
            s = None
            for kk, v in b:
                if kk == k:
                    s = float(v) if s is None else s + float(v)
            leaves.append(s)
        out[k] = (keyed_ref.tree_sum(leaves), sum(1 for kk, _ in records if kk == k))
    return out


NONDYADIC = ["0.1", "0.2", "0.3", "0.7", "1.1", "2.35", "0.01", "3.3", "-0.45"]


class SameBytesForAnyR(TmpTest):
    """1. The output never depends on R, the workers or the policy."""

    def all_equal(self, args, want, what):
        seen = set()
        for r, w, pol in matrix():
            got = run(*args, "--partitions", r, "--workers", w, *pol, "--no-job-dir", "-q", timeout=180).stdout
            self.assertEqual(got, want, "%s: --partitions %s --workers %s %s" % (what, r, w, " ".join(pol)))
            seen.add(got)
        self.assertEqual(len(seen), 1)

    def test_wordcount_by_count_order(self):
        """Word count merged in partitions: its reduce tasks write their partition by count and
        the coordinator merges those in word count's own order (count descending, then word),
        byte for byte the rows of the in-memory merge and of the Python reference, --top too."""
        rnd = random.Random(17)
        pool = ["w%d" % i for i in range(3000)] + ["ünï", "日本", "a", "b", "zz"]
        words = [rnd.choice(pool[: rnd.choice((10, 300, 3005))]) for _ in range(60000)]
        p = self.write("words.txt", "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)) + "\n")
        want = reference_wordcount([p])
        s = self.path("s.json")
        for r in ("0", "1", "2", "7", "64"):
            got = run("wordcount", p, "--partitions", r, "--workers", "2", "--batch-bytes", "8K", "--summary-json", s,
                      "--no-job-dir", "-q").stdout
            self.assertEqual(got, want, "--partitions " + r)
            with open(s) as f:
                spilled = json.load(f)["spilled_bytes"]
            self.assertEqual(spilled > 0, r != "0", "--partitions %s spilled %d bytes" % (r, spilled))
            top = run("wordcount", p, "--partitions", r, "--top", "5", "--workers", "2", "--batch-bytes", "8K",
                      "--no-job-dir", "-q").stdout
            self.assertEqual(top, b"".join(want.splitlines(True)[:5]), "--top 5 --partitions " + r)

    def test_groupby_csv_quoted_newlines(self):
        p = self.path("sales.csv")
        gen_keyed.csv_sales(p, 50000, 60, seed=11, quoted=0.2)
        self.assertIn(b'"Two\nLines"', slurp(p))
        for keys in ("region", "product,region"):
            _, rows, bad = keyed_ref.groupby_ref([p], None, keys, GB_SPECS)
            self.assertEqual(bad, 0)
            self.assertGreater(len(rows), 10)
            self.all_equal(("groupby", p, "--key", keys, "--agg", GB_SPECS, "--batch-bytes", "3K"),
                           keyed_ref.write_tsv(rows), keys)
        # CSV output (quoted fields holding newlines) through the ordered stream too
        header, rows, _ = keyed_ref.groupby_ref([p], None, "region", "count,first:region,sum:qty")
        for r in ("0", "7"):
            out = self.path("o%s.csv" % r)
            run("groupby", p, "--key", "region", "--agg", "count,first:region,sum:qty", "--partitions", r,
                "--workers", "2", "--batch-bytes", "3K", "-o", out, "--no-job-dir", "-q")
            self.assertEqual(slurp(out), keyed_ref.write_csv(header, rows), r)

    def test_groupby_non_dyadic_float_sums(self):
        rnd = random.Random(4)
        recs = [("k%d" % rnd.randrange(6), rnd.choice(NONDYADIC)) for _ in range(6000)]
        p = self.write("fl.csv", "k,v\n" + "".join("%s,%s\n" % x for x in recs))
        for br in (100, 37):
            ref = real_sums_by_tree(recs, br, 1)
            want = "".join("%s\t%d\t%s\t%s\n" % (k, n, keyed_ref.fmt_num(s), keyed_ref.fmt_num(s / n))
                           for k, (s, n) in sorted(ref.items())).encode()
            # Python's left-to-right sum is another answer here: the test is not vacuous
            _, l2r, _ = keyed_ref.groupby_ref([p], None, "k", "count,sum:v,mean:v")
            self.assertNotEqual(keyed_ref.write_tsv(l2r), want)
            self.all_equal(("groupby", p, "--key", "k", "--agg", "count,sum:v,mean:v", "--batch-records", str(br)),
                           want, "--batch-records %d" % br)

    def test_run_reduce_every_aggregate(self):
        rnd = random.Random(5)
        keys = ["k%d" % i for i in range(300)] + ["", "ключ", "back\\slash", "cr\rkey", "z", "日本"]
        vals = ["1", "-3", "12", "0", "+5", "0.25", "-1.5", "2.75", "1e1", "7", "-0", "abc", "0.5"]
        data = "".join("%s\t%s\n" % (rnd.choice(keys), rnd.choice(vals)) for _ in range(12000)).encode()
        p = self.write("in.tsv", data)
        for aggs in (RUN_AGGS, "count,first,last,distinct,top:1,top:5"):
            rows, bad = keyed_ref.reduce_ref(data, aggs)
            self.assertEqual(bad > 0, aggs == RUN_AGGS)  # 'abc' is a bad record for numeric aggregates
            self.all_equal(("run", "--map", "cat", "--reduce", aggs, "--batch-records", "700", p),
                           keyed_ref.write_tsv(rows), aggs)

    def test_run_reduce_non_dyadic_float_sums(self):
        rnd = random.Random(6)
        recs = [("k%d" % rnd.randrange(4), rnd.choice(NONDYADIC)) for _ in range(5000)]
        p = self.write("fl.tsv", "".join("%s\t%s\n" % x for x in recs))
        ref = real_sums_by_tree(recs, 64, 0)
        want = "".join("%s\t%s\t%s\n" % (k, keyed_ref.fmt_num(s), keyed_ref.fmt_num(s / n))
                       for k, (s, n) in sorted(ref.items())).encode()
        l2r, _ = keyed_ref.reduce_ref(slurp(p), "sum,mean")
        self.assertNotEqual(keyed_ref.write_tsv(l2r), want)
        self.all_equal(("run", "--map", "cat", "--reduce", "sum,mean", "--batch-records", "64", p), want, "sum,mean")

    def test_cooccur(self):
        p = self.path("orders.csv")
        gen_keyed.orders(p, 5000, 500, 70, heavy_users=2, heavy_orders=120)
        rows, left, _ = keyed_ref.cooccur_ref([p], None, "user", "item", 4, 60)
        self.assertGreater(left, 0)  # --max-basket leaves a heavy user out
        self.assertGreater(len(rows), 100)
        self.all_equal(("cooccur", p, "--user", "user", "--item", "item", "--top", "4", "--max-basket", "60",
                        "--batch-bytes", "4K"), keyed_ref.write_tsv(rows), "cooccur")


class ReduceStageFaults(TmpTest):
    """2, 4, 6. Workers and coordinators killed during the reduce stage; damaged map outputs."""

    R = 16

    def setUp(self):
        super().setUp()
        self.procs = []
        self.input = self.path("sales.csv")
        gen_keyed.csv_sales(self.input, 120000, 3000, seed=21, quoted=0.05)
        self.specs = "count,sum:qty,mean:price,first:region,top:2:region"
        _, rows, _ = keyed_ref.groupby_ref([self.input], None, "product", self.specs)
        self.want = keyed_ref.write_tsv(rows)

    def tearDown(self):
        for p in self.procs:
            stop(p)
        super().tearDown()

    def args(self, spill, *more):
        return ["groupby", self.input, "--key", "product", "--agg", self.specs, "--batch-bytes", "16K",
                "--partitions", str(self.R), "--spill-dir", spill, *more]

    def nmap(self, spill):
        return len(in_spill(spill, "s0-m*-p0.kv"))

    def reduced(self, spill):
        return in_spill(spill, "s0-r*.kv")

    def test_kill_9_of_a_worker_during_the_reduce_stage(self):
        spill, s = self.path("spill"), self.path("s.json")
        # Every task, the reduce stage's too, sleeps 300 ms first: 16 reduce tasks on 2 workers
        # take 2.4 s, and the first reduced file says the map outputs are all on disk.
        coord = start(*self.args(spill, "--workers", "2", "--max-attempts", "10", "--summary-json", s, "-q"),
                      env=fault_env("delay_ms=300"))
        self.procs.append(coord)
        wait_until(lambda: self.reduced(spill) or coord.poll() is not None, "the reduce stage", timeout=120)
        self.assertIsNone(coord.poll(), "the job ended before the reduce stage could be hit")
        self.assertLess(len(self.reduced(spill)), self.R)
        kids = children(coord.pid)
        self.assertTrue(kids)
        os.kill(kids[0], signal.SIGKILL)
        out, err = coord.communicate(timeout=180)
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertEqual(out, self.want)
        j = json.loads(slurp(s, True))
        lost = [f for f in j["failures"] if f["stage"] == "reduce"]
        self.assertTrue(lost, j["failures"])  # the kill hit a reduce task, which ran again
        self.assertEqual([f for f in j["failures"] if f["stage"] != "reduce"], [])
        self.assertEqual(spill_files(spill), [])

    def test_resume_of_a_coordinator_killed_during_the_reduce_stage(self):
        jd, out, s = self.path("job"), self.path("out.tsv"), self.path("s.json")
        spill = os.path.join(jd, "spill")
        coord = start("groupby", self.input, "--key", "product", "--agg", self.specs, "--batch-bytes", "16K",
                      "--partitions", str(self.R), "--workers", "2", "--job-dir", jd, "-o", out, "--summary-json", s,
                      "-q", env=fault_env("delay_ms=300"))
        self.procs.append(coord)
        wait_until(lambda: self.reduced(spill) or coord.poll() is not None, "the reduce stage", timeout=120)
        self.assertIsNone(coord.poll(), "the job ended before the reduce stage could be hit")
        nmap = self.nmap(spill)
        self.assertGreater(nmap, 4)
        kill_job(coord)
        self.assertFalse(os.path.exists(out))
        with sqlite3.connect(os.path.join(jd, "journal.db"), timeout=5) as c:
            done = c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        self.assertGreater(done, nmap)  # every map task and some reduce tasks were journaled
        r = run("resume", jd, timeout=180)
        self.assertEqual(slurp(out), self.want, r.stderr.decode(errors="replace"))
        j = json.loads(slurp(s, True))
        self.assertGreaterEqual(j["resumed_tasks"], done)
        self.assertEqual(spill_files(spill), [])

    def damage_a_map_output_of_a_later_reduce_task(self, how, *more):
        """Run with 2 workers and every task slowed; once the reduce stage runs, damage (how)
        map output 0 of the last partition, which no reduce task has read yet."""
        spill, out = self.path("spill"), self.path("out.tsv")
        coord = start(*self.args(spill, "--workers", "2", "-o", out, "-q", *more), env=fault_env("delay_ms=300"))
        self.procs.append(coord)
        wait_until(lambda: self.reduced(spill) or coord.poll() is not None, "the reduce stage", timeout=120)
        self.assertIsNone(coord.poll(), "the job ended before the reduce stage could be hit")
        victim = in_spill(spill, "s0-m0-p%d.kv" % (self.R - 1))[0]
        self.assertLess(len(self.reduced(spill)), self.R - 2)
        how(victim)
        t0 = time.time()
        o, err = coord.communicate(timeout=300)
        return coord.returncode, err.decode(errors="replace"), victim, out, time.time() - t0

    def test_a_truncated_map_output_fails_naming_the_file(self):
        def truncate(p):
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 2)
        rc, err, victim, out, _ = self.damage_a_map_output_of_a_later_reduce_task(truncate)
        self.assertEqual(rc, 1, err)
        self.assertIn(victim, err)
        self.assertEqual(len(err.strip().split("\n")), 1, err)
        self.assertFalse(os.path.exists(out))

    # Was a bug (the error of a damaged map output lost its reason): sh_map (engine/shuffle.c) does
    # dbx_seterr(err, DBX_ECORRUPT, "map output %s: %s", path, err->msg), formatting err->msg
    # into itself (overlapping snprintf): the message reads "map output P: map output P: " and
    # the decoder's reason is gone. (A local buffer holding err->msg first fixes it.)
    def test_a_truncated_map_output_says_why(self):
        def truncate(p):
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 2)
        rc, err, victim, out, _ = self.damage_a_map_output_of_a_later_reduce_task(truncate)
        self.assertEqual(rc, 1, err)
        self.assertNotIn("map output %s: map output" % victim, err)
        self.assertRegex(err, re.escape("map output %s: " % victim) + r"[^;\s]")

    # Was a bug (lost map outputs were not recomputed): a deleted s0-m0-p15.kv failed reduce task
    # 15 in every attempt ("map output ...: No such file or directory") and then the job.
    def test_a_lost_map_output_is_recomputed(self):
        """Issue 12 item 2 (Spark's fetch-failure path): the reduce task that finds map output 0
        gone fails as "lost" (recorded, no retry), map task 0 runs again in a "recompute" stage,
        the reduce tasks still to do run; the rows are the reference's and the records are
        counted once."""
        s = self.path("s.json")
        rc, err, victim, out, _ = self.damage_a_map_output_of_a_later_reduce_task(os.unlink, "--summary-json", s)
        self.assertEqual(rc, 0, err)
        self.assertEqual(slurp(out), self.want)
        j = json.loads(slurp(s, True))
        lost = [f for f in j["failures"] if "No such file" in f["cause"]]
        self.assertTrue(lost, j["failures"])
        self.assertTrue(all(f["stage"] == "reduce" and os.path.basename(victim) in f["cause"] for f in lost), lost)
        names = [x["name"] for x in j["stages"]]
        self.assertEqual(names[:2], ["groupby", "reduce"])
        self.assertIn("recompute", names)
        rec = [x for x in j["stages"] if x["name"] == "recompute"]
        self.assertEqual([x["batches"] for x in rec], [1], rec)
        self.assertTrue(rec[0]["recompute"])
        self.assertEqual(j["records"], j["stages"][0]["records"])  # the recompute's are not counted again
        self.assertGreater(rec[0]["records"], 0)


class FullSpillDirectory(TmpfsTest):
    """3. A spill directory on a 256 KiB tmpfs."""
    TMPFS_SIZE = "256k"

    def distinct_keys(self, n, name="many.csv"):
        """n rows of n distinct keys: partition files as big as the input."""
        return self.write(name, "k,v\n" + "".join("key%07d,%d\n" % (i, i % 100) for i in range(n)))

    def full(self, path, *more):
        out, s = self.path("out.tsv"), self.path("s.json")
        t0 = time.time()
        r = run("groupby", path, "--key", "k", "--agg", "count,sum:v", "--spill-dir", self.small, "-o", out,
                "--summary-json", s, "--no-job-dir", *more, check=False, timeout=600)
        took = time.time() - t0
        err = r.stderr.decode(errors="replace")
        j = json.loads(slurp(s, True)) if os.path.exists(s) else {}
        sys.stderr.write("\n[full spill dir %s: %.2f s, exit %d, %d failure records, stderr: %s]\n"
                         % (" ".join(more), took, r.returncode, len(j.get("failures", [])), err.strip()[:300]))
        self.assertEqual(r.returncode, 1, err)
        self.assertFalse(os.path.exists(out))
        return err, j

    def test_one_map_task(self):
        err, j = self.full(self.distinct_keys(60000), "--workers", "2", "-q")
        self.assertIn("spill directory %s" % self.small, err)
        self.assertIn("No space left on device", err)
        self.assertEqual(len(err.strip().split("\n")), 1, err)
        for f in j["failures"]:
            self.assertIn("No space left on device", f["cause"])

    def test_workers_0(self):
        err, _ = self.full(self.distinct_keys(60000), "--workers", "0", "--partitions", "4", "--batch-bytes", "64K",
                           "-q")
        self.assertIn("spill directory %s" % self.small, err)
        self.assertIn("No space left on device", err)
        self.assertEqual(len(err.strip().split("\n")), 1, err)

    # Was a bug: with many map tasks every attempt failed with ENOSPC, which counted against the
    # workers, and the job ended with "every worker is excluded": a full spill directory now ends
    # the job at the first such failure (no retry can help), naming it.
    def test_many_map_tasks_one_clear_error(self):
        err, j = self.full(self.distinct_keys(60000), "--workers", "2", "--batch-bytes", "64K", "-q")
        self.assertIn("No space left on device", j["error"])
        self.assertNotIn("excluded", err)
        self.assertIn("spill directory %s" % self.small, err)
        self.assertIn("No space left on device", err)
        self.assertEqual(len(err.strip().split("\n")), 1, err)

    def test_full_during_the_reduce_stage(self):
        # Map outputs (disjoint keys per batch: 20 files of ~6 KB) take ~160 KB of the 256 (pages);
        # the 2 reduced files need ~120 KB more.
        err, j = self.full(self.distinct_keys(3000), "--workers", "2", "--batch-bytes", "4K", "--partitions", "2",
                           "--max-attempts", "2", "-q")
        self.assertIn("No space left on device", j["error"])
        self.assertIn("reduce task", j["error"])
        self.assertIn("No space left on device", err)

    # Was a bug (a failed job left its partition files): after the failure the spill directory still
    # holds the map outputs written before the disk filled (shuffle_remove runs only on success).
    def test_a_failed_job_leaves_no_partition_files(self):
        self.full(self.distinct_keys(60000), "--workers", "0", "--partitions", "4", "--batch-bytes", "64K", "-q")
        self.assertEqual(spill_files(self.small), [])


class SpillLifetime(TmpTest):
    """4. Spill files are gone after the job: JOB_DIR/spill and the private $TMPDIR one."""

    def setUp(self):
        super().setUp()
        self.tmpdir = self.path("tmpdir")
        os.mkdir(self.tmpdir)
        self.env = dict(os.environ, TMPDIR=self.tmpdir)

    def test_job_dir_spill_emptied_after_success(self):
        p = self.path("sales.csv")
        gen_keyed.csv_sales(p, 30000, 200, seed=3)
        _, rows, _ = keyed_ref.groupby_ref([p], None, "product", "count,sum:qty")
        jd = self.path("job")
        r = run("groupby", p, "--key", "product", "--agg", "count,sum:qty", "--workers", "2", "--batch-bytes", "4K",
                "--job-dir", jd, "-q", env=self.env)
        self.assertEqual(r.stdout, keyed_ref.write_tsv(rows))
        self.assertTrue(os.path.isdir(os.path.join(jd, "spill")))  # R defaults to 4 here: it was used
        self.assertEqual(spill_files(os.path.join(jd, "spill")), [])
        self.assertEqual(os.listdir(self.tmpdir), [])

    def test_private_tmpdir_removed_after_success(self):
        p = self.path("orders.csv")
        gen_keyed.orders(p, 2000, 200, 40)
        rows, _, _ = keyed_ref.cooccur_ref([p], None, "user", "item")
        seen = []
        coord = start("cooccur", p, "--user", "user", "--item", "item", "--workers", "2", "--batch-bytes", "4K",
                      "--no-job-dir", "-q", env=fault_env("delay_ms=100", TMPDIR=self.tmpdir))
        try:
            wait_until(lambda: glob.glob(os.path.join(self.tmpdir, "dbatch-spill-*", "s1-m*.kv")) or
                       coord.poll() is not None, "partition files under $TMPDIR")
            seen = glob.glob(os.path.join(self.tmpdir, "dbatch-spill-*"))
            out, err = coord.communicate(timeout=180)
        finally:
            stop(coord)
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, keyed_ref.write_tsv(rows))
        self.assertEqual(len(seen), 1)  # the partitions went to a private directory under $TMPDIR
        self.assertEqual(os.listdir(self.tmpdir), [])

    # Was a bug (a failed job leaked its private spill directory): when the reduce stage fails (here a
    # sum overflowing int64 across batches), $TMPDIR/dbatch-spill-XXXXXX stays with every
    # s0-m*-p*.kv and s0-r*.kv in it: cli_keyed_done only rmdir()s it, and shuffle_remove runs on
    # success only.
    def test_private_tmpdir_removed_after_failure(self):
        p = self.write("big.tsv", b"".join(b"big\t%d\nsmall\t1\n" % (2 ** 62) for _ in range(4)))
        r = run("run", "--map", "cat", "--reduce", "sum", "--workers", "2", "--batch-records", "2", "--no-job-dir",
                "-q", p, check=False, env=self.env)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"overflows", r.stderr)
        self.assertEqual(os.listdir(self.tmpdir), [])


class OrphanedPrivateSpillDirs(TmpTest):
    """A job killed with kill -9 cannot remove its private spill directory. The next job that
    makes one beside it does, once nobody holds the directory's .lock (an flock the live job
    keeps) and the lock is older than a minute. A directory whose job is alive stays."""

    def start_slow(self, p, env, *extra):
        c = start("groupby", p, "--key", "product", "--agg", "count,sum:qty", "--workers", "2", "--batch-bytes", "4K",
                  "--no-job-dir", "-q", *extra, env=env)
        return c

    def test_the_next_job_removes_a_killed_jobs_directory(self):
        p = self.path("sales.csv")
        gen_keyed.csv_sales(p, 30000, 200, seed=3)
        _, rows, _ = keyed_ref.groupby_ref([p], None, "product", "count,sum:qty")
        want = keyed_ref.write_tsv(rows)
        for where in ("tmpdir", "spill-dir"):
            with self.subTest(where=where):
                parent = self.path(where)
                os.mkdir(parent)
                extra = ("--spill-dir", parent) if where == "spill-dir" else ()
                env = fault_env("delay_ms=100", TMPDIR=parent)
                pattern = os.path.join(parent, "dbatch-spill-*" if where == "tmpdir" else "dbatch-??????")
                dead = self.start_slow(p, env, *extra)
                wait_until(lambda: glob.glob(os.path.join(pattern, ".lock")) or dead.poll() is not None, "a spill directory")
                dead.kill()
                dead.communicate()
                time.sleep(0.5)  # its workers die with it
                orphan = glob.glob(pattern)
                self.assertEqual(len(orphan), 1)
                alive = self.start_slow(p, env, *extra)
                wait_until(lambda: len(glob.glob(os.path.join(pattern, ".lock"))) == 2 or alive.poll() is not None,
                           "the live job's spill directory")
                held = [d for d in glob.glob(pattern) if d not in orphan]
                self.assertEqual(len(held), 1)
                old = time.time() - 3600
                for d in orphan + held:
                    os.utime(os.path.join(d, ".lock"), (old, old))
                # The next job removes the killed job's directory and leaves the live one's.
                young = run("groupby", p, "--key", "product", "--agg", "count,sum:qty", "--workers", "2", "--no-job-dir",
                            "-q", *extra, env=dict(os.environ, TMPDIR=parent))
                self.assertEqual(young.stdout, want)
                self.assertFalse(os.path.exists(orphan[0]), "the killed job's directory is still there")
                self.assertTrue(os.path.isdir(held[0]), "the live job's directory was removed")
                out, err = alive.communicate(timeout=300)
                self.assertEqual(alive.returncode, 0, err)
                self.assertEqual(out, want)
                self.assertEqual(os.listdir(parent), [])

    def test_a_young_free_lock_is_left_alone(self):
        parent = self.path("tmpdir")
        os.mkdir(parent)
        d = os.path.join(parent, "dbatch-spill-abcdef")
        os.mkdir(d)
        with open(os.path.join(d, ".lock"), "w"):
            pass
        with open(os.path.join(d, "s0-m0-p0.kv"), "w"):
            pass
        p = self.write("in.csv", "product,qty\na,1\n")
        self.assertEqual(run("groupby", p, "--key", "product", "--agg", "count", "--workers", "2", "--no-job-dir", "-q",
                             env=dict(os.environ, TMPDIR=parent)).stdout, b"a\t1\n")
        self.assertEqual(sorted(os.listdir(d)), [".lock", "s0-m0-p0.kv"])  # a minute old at most: kept
        old = time.time() - 120
        os.utime(os.path.join(d, ".lock"), (old, old))
        run("groupby", p, "--key", "product", "--agg", "count", "--workers", "2", "--no-job-dir", "-q",
            env=dict(os.environ, TMPDIR=parent))
        self.assertEqual(os.listdir(parent), [])

    def test_what_is_not_ours_is_left_alone(self):
        # Was a bug: the sweep opened each dbatch-spill-*/.lock for reading without O_NONBLOCK,
        # so a FIFO by that name (anything but our lock file) hung every later keyed job in
        # that $TMPDIR before it started. Also kept: a directory without a .lock, a symlink to
        # a directory with an old .lock, and files not named like ours.
        parent = self.path("tmpdir")
        os.mkdir(parent)
        old = time.time() - 3600
        fifo = os.path.join(parent, "dbatch-spill-fifo00")
        os.mkdir(fifo)
        os.mkfifo(os.path.join(fifo, ".lock"))
        nolock = os.path.join(parent, "dbatch-spill-nolock")
        os.mkdir(nolock)
        with open(os.path.join(nolock, "s0-m0-p0.kv"), "w"):
            pass
        target = self.path("elsewhere")
        os.mkdir(target)
        for name in (".lock", "s0-m0-p0.kv"):
            with open(os.path.join(target, name), "w"):
                pass
            os.utime(os.path.join(target, name), (old, old))
        os.symlink(target, os.path.join(parent, "dbatch-spill-symlnk"))
        p = self.write("in.csv", "product,qty\na,1\n")
        res = run("groupby", p, "--key", "product", "--agg", "count", "--workers", "2", "--no-job-dir", "-q",
                  env=dict(os.environ, TMPDIR=parent), timeout=60)
        self.assertEqual(res.stdout, b"a\t1\n")
        self.assertEqual(sorted(os.listdir(parent)), ["dbatch-spill-fifo00", "dbatch-spill-nolock", "dbatch-spill-symlnk"])
        self.assertEqual(os.listdir(nolock), ["s0-m0-p0.kv"])
        self.assertEqual(sorted(os.listdir(target)), [".lock", "s0-m0-p0.kv"])

    def test_a_killed_cooccurs_baskets_are_removed(self):
        # Was a bug: cooccur without a job directory writes its baskets (a copy the size of the
        # orders' user-item pairs) to $TMPDIR/dbatch-baskets-PID.tsv; a cooccur killed with
        # kill -9 left it there for good, no later job removing it (only dbatch-spill-* were
        # swept). The baskets are now in a private directory held like a spill directory.
        parent = self.path("tmpdir")
        os.mkdir(parent)
        p = self.path("orders.csv")
        gen_keyed.orders(p, 20000, 3000, 400, seed=2)
        env = fault_env("delay_ms=300", TMPDIR=parent)
        dead = start("cooccur", p, "--user", "user", "--item", "item", "--workers", "2", "--batch-bytes", "16K",
                     "--no-job-dir", "-q", env=env)
        baskets = lambda: glob.glob(os.path.join(parent, "dbatch-baskets-*")) + glob.glob(
            os.path.join(parent, "dbatch-spill-*", "baskets*"))
        wait_until(lambda: baskets() or dead.poll() is not None, "the baskets file")
        dead.kill()
        dead.communicate()
        time.sleep(0.5)  # its workers die with it
        self.assertTrue(baskets(), "the killed cooccur wrote no baskets")
        old = time.time() - 3600
        for f in glob.glob(os.path.join(parent, "*")) + glob.glob(os.path.join(parent, "*", ".lock")):
            os.utime(f, (old, old))
        q = self.write("in.csv", "product,qty\na,1\n")
        self.assertEqual(run("groupby", q, "--key", "product", "--agg", "count", "--workers", "2", "--no-job-dir", "-q",
                             env=dict(os.environ, TMPDIR=parent)).stdout, b"a\t1\n")
        self.assertEqual(os.listdir(parent), [])



def _unshare_mount_works():
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class ParallelOutput(TmpTest):
    """A partitioned word count of at least 100,000 distinct words into a file: output tasks on
    the workers format ranges of the global order (count descending, then word), and the
    coordinator copies their files in order. The bytes are those of the merge on the
    coordinator, in every format; a worker or the coordinator killed in that stage changes
    nothing."""

    def setUp(self):
        super().setUp()
        self.procs = []
        rnd = random.Random(29)
        pool = ["w%06d" % i for i in range(170000)] + ["Ünï", "日本", "ÉTÉ", "été", "a_b"]
        words = [rnd.choice(pool) for _ in range(330000)] + pool[::7]
        rnd.shuffle(words)
        self.input = self.write("words.txt", "\n".join(" ".join(words[i:i + 11]) for i in range(0, len(words), 11)))
        self.want = reference_wordcount([self.input])
        self.assertGreater(self.want.count(b"\n"), 100000)

    def tearDown(self):
        for p in self.procs:
            stop(p)
        super().tearDown()

    def job(self, out, *more, **kw):
        return run("wordcount", self.input, "--batch-bytes", "256K", "-o", out, "-q", *more, **kw)

    def stages(self, summary):
        return [x["name"] for x in json.loads(slurp(summary, True))["stages"]]

    def test_every_format_is_the_merge_here(self):
        for ext in ("tsv", "csv", "jsonl", "tsv.gz", "csv.zst"):
            here, there, s = self.path("here." + ext), self.path("there." + ext), self.path("s.json")
            self.job(here, "--workers", "2", "--partitions", "0", "--no-job-dir")
            self.job(there, "--workers", "2", "--partitions", "5", "--no-job-dir", "--summary-json", s)
            self.assertEqual(self.stages(s), ["wordcount", "reduce", "output"], ext)
            self.assertEqual(json.loads(slurp(s, True))["rows_out"], self.want.count(b"\n"), ext)
            self.assertEqual(slurp(there), slurp(here), ext)
        self.assertEqual(slurp(self.path("there.tsv")), self.want)
        # --append, the header kept: the rows follow it once
        there = self.path("there.csv")
        self.job(there, "--workers", "2", "--no-job-dir", "--append")
        lines = slurp(there).splitlines(True)
        self.assertEqual(lines[0], b"word,count\n")
        self.assertEqual(b"".join(lines[1:]), 2 * b"".join(slurp(self.path("here.csv")).splitlines(True)[1:]))

    def test_standard_output_and_top_and_one_worker(self):
        # --memory 1M --partitions 1: the one reduce task's by-count order is sorted in runs of
        # 65,536 words (what its memory holds) and merged
        for more in (["--workers", "1"], ["--workers", "2", "--partitions", "1"], ["--workers", "3", "--partitions", "64"],
                     ["--workers", "2", "--partitions", "1", "--memory", "1M"]):
            s = self.path("s.json")
            got = run("wordcount", self.input, "--batch-bytes", "256K", *more, "--no-job-dir", "-q", "--summary-json", s).stdout
            self.assertEqual(got, self.want, more)
            self.assertEqual(self.stages(s), ["wordcount", "reduce", "output"], more)
        top = run("wordcount", self.input, "--batch-bytes", "256K", "--workers", "2", "--top", "120000",
                  "--no-job-dir", "-q").stdout
        self.assertGreater(self.want.count(b"\n"), 120000)  # --top trims
        self.assertEqual(top, b"".join(self.want.splitlines(True)[:120000]))

    def rows_files(self, spill):
        return in_spill(spill, "s0-o*.rows")

    def test_kill_9_of_a_worker_during_the_output_stage(self):
        spill, out, s = self.path("spill"), self.path("out.tsv"), self.path("s.json")
        coord = start("wordcount", self.input, "--batch-bytes", "256K", "--workers", "2", "--spill-dir", spill,
                      "--max-attempts", "10", "-o", out, "--summary-json", s, "-q",
                      env=fault_env("delay_ms=400"))
        self.procs.append(coord)
        wait_until(lambda: self.rows_files(spill) or coord.poll() is not None, "the output stage", timeout=180)
        self.assertIsNone(coord.poll(), "the job ended before the output stage could be hit")
        self.assertLess(len(self.rows_files(spill)), 8)  # one output task per partition (8)
        os.kill(children(coord.pid)[0], signal.SIGKILL)
        _, err = coord.communicate(timeout=180)
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertEqual(slurp(out), self.want)
        j = json.loads(slurp(s, True))
        self.assertTrue([f for f in j["failures"] if f["stage"] == "output"], j["failures"])
        self.assertEqual(spill_files(spill), [])

    def kill_in_the_output_stage(self, jd, out, *more):
        """Start a journaled job in jd (every task slowed) and kill -9 it and its workers once
        an output task has written its file."""
        spill = os.path.join(jd, "spill")
        coord = start("wordcount", self.input, "--batch-bytes", "256K", "--job-dir", jd, "-o", out, "-q", *more,
                      env=fault_env("delay_ms=400"))
        self.procs.append(coord)
        wait_until(lambda: self.rows_files(spill) or coord.poll() is not None, "the output stage", timeout=180)
        self.assertIsNone(coord.poll(), "the job ended before the output stage could be hit")
        kill_job(coord)
        self.assertFalse(os.path.exists(out))
        return spill

    def resume_killed_in_the_output_stage(self, lose_rows):
        jd, out = self.path("job"), self.path("out.tsv")
        spill = self.kill_in_the_output_stage(jd, out, "--workers", "2")
        if lose_rows:  # a task journaled as done whose file is gone: the rows are merged here
            for f in self.rows_files(spill):
                os.unlink(f)
        r = run("resume", jd, timeout=180)
        self.assertEqual(slurp(out), self.want, r.stderr.decode(errors="replace"))
        self.assertEqual(spill_files(spill), [])

    def test_resume_of_a_coordinator_killed_during_the_output_stage(self):
        self.resume_killed_in_the_output_stage(False)

    def test_resume_when_the_output_tasks_files_are_gone(self):
        self.resume_killed_in_the_output_stage(True)

    def test_a_rows_file_cut_short_is_merged_here(self):
        # Was a bug: the coordinator copied whatever an output task's file held, so a file cut
        # short (here by hand, while the other tasks ran) lost its rows: exit 0, rows_out the
        # full count, the output short. A file now ends in a trailer (its rows and bytes); one
        # that does not check out is merged on the coordinator like a missing one.
        spill, out, s = self.path("spill"), self.path("out.tsv"), self.path("s.json")
        coord = start("wordcount", self.input, "--batch-bytes", "256K", "--workers", "2", "--spill-dir", spill,
                      "-o", out, "--summary-json", s, "-q", env=fault_env("delay_ms=400"))
        self.procs.append(coord)
        wait_until(lambda: in_spill(spill, "s0-o0.rows") or coord.poll() is not None, "the output stage", timeout=180)
        self.assertIsNone(coord.poll(), "the job ended before the output stage could be hit")
        f = in_spill(spill, "s0-o0.rows")[0]
        os.truncate(f, os.path.getsize(f) // 2)
        _, err = coord.communicate(timeout=180)
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertEqual(slurp(out), self.want)
        self.assertEqual(json.loads(slurp(s, True))["rows_out"], self.want.count(b"\n"))
        self.assertEqual(spill_files(spill), [])

    @unittest.skipUnless(_unshare_mount_works(), "needs unshare -m and mount (root)")
    def test_resume_on_a_machine_with_other_cores(self):
        # Was a bug: the output stage's task count was 2 x workers, recorded in the journal's
        # plan, and the default --workers is the machine's cores: a job resumed where the
        # cores differ (here /sys/devices/system/cpu/online bound over in a mount namespace)
        # was refused ("the journal's plan cannot be reproduced; run the job afresh"), where
        # every other stage resumes anywhere. Output tasks are now one per partition, a number
        # of the plan.
        jd, out = self.path("job"), self.path("out.tsv")
        spill = self.kill_in_the_output_stage(jd, out)
        cores = self.write("online", "0-1\n" if os.cpu_count() == 1 else "0\n")
        r = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$1" /sys/devices/system/cpu/online && '
                            'exec "$2" resume "$3"', "sh", cores, DBATCH, jd], capture_output=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertEqual(slurp(out), self.want)
        self.assertEqual(spill_files(spill), [])


class Usage(TmpTest):
    """5. Options refused, and what --listen does by default."""

    def setUp(self):
        super().setUp()
        self.csv = self.write("a.csv", "k,v\na,1\nb,2\na,3\n")
        self.tsv = self.write("a.tsv", "a\t1\nb\t2\na\t3\n")

    def refused(self, args, *msgs):
        r = run(*args, check=False)
        err = r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 2, (args, err))
        for m in msgs:
            self.assertIn(m, err, args)
        self.assertEqual(r.stdout, b"")

    def test_bad_partition_counts(self):
        for v in ("-1", "x", "5000", "4097", "", "1.5"):
            self.refused(("groupby", self.csv, "--key", "k", "--agg", "count", "--partitions", v, "--no-job-dir"),
                         "--partitions '%s': expected a whole number of partitions from 0 to 4096" % v)
            self.refused(("run", "--map", "cat", "--reduce", "count", "--partitions", v, self.tsv, "--no-job-dir"),
                         "--partitions '%s': expected a whole number of partitions from 0 to 4096" % v)
        # the bound itself is accepted
        r = run("groupby", self.csv, "--key", "k", "--agg", "count,sum:v", "--partitions", "4096", "--workers", "1",
                "--no-job-dir", "-q")
        self.assertEqual(r.stdout, b"a\t2\t4\nb\t1\t2\n")

    # Was a bug (the usage error named the value, not the option): "--partitions -1" says
    # "bad value '-1' for -1" (argv[optind - 1] is the value when it is a separate argument).
    def test_bad_partition_count_names_the_option(self):
        self.refused(("groupby", self.csv, "--key", "k", "--agg", "count", "--partitions", "-1", "--no-job-dir"),
                     "--partitions")

    def test_spill_dir_naming_a_file(self):
        f = self.write("afile", "x")
        out = self.path("o.tsv")
        self.refused(("groupby", self.csv, "--key", "k", "--agg", "count", "--spill-dir", f, "--partitions", "2",
                      "-o", out, "--no-job-dir"), "--spill-dir %s: not a directory" % f)
        self.assertFalse(os.path.exists(out))
        self.assertEqual(slurp(f), b"x")

    def test_partitions_with_reduce_cmd(self):
        for opt in (("--partitions", "2"), ("--spill-dir", self.tmp)):
            self.refused(("run", "--map", "cat", "--reduce-cmd", "cat", *opt, self.tsv, "--no-job-dir"),
                         "--partitions, --spill-dir and --memory apply to --reduce, not --reduce-cmd")
        self.refused(("run", "--map", "cat", "--partitions", "2", self.tsv, "--no-job-dir"),
                     "--partitions, --spill-dir and --memory apply to --reduce only")

    # Was a bug (--partitions 0 was not refused where partitions do not apply): the check is
    # `k.partitions || k.spill_dir`, so "--partitions 0" with --reduce-cmd or a map-only run is
    # silently accepted (cli_keyed.partitions_set is the flag to test).
    def test_partitions_0_with_reduce_cmd(self):
        self.refused(("run", "--map", "cat", "--reduce-cmd", "cat", "--partitions", "0", self.tsv, "--no-job-dir"),
                     "--partitions")

    def test_listen_without_partitions_makes_no_spill_files(self):
        p = self.path("sales.csv")
        gen_keyed.csv_sales(p, 20000, 50, seed=9)
        _, rows, _ = keyed_ref.groupby_ref([p], None, "product", "count,sum:qty")
        jd, tmpdir = self.path("job"), self.path("tmpdir")
        os.mkdir(tmpdir)
        ep = "tcp://127.0.0.1:%d" % free_port()
        r = run("groupby", p, "--key", "product", "--agg", "count,sum:qty", "--workers", "2", "--listen", ep,
                "--batch-bytes", "4K", "--job-dir", jd, "-q", env=dict(os.environ, TMPDIR=tmpdir))
        self.assertEqual(r.stdout, keyed_ref.write_tsv(rows))
        self.assertFalse(os.path.exists(os.path.join(jd, "spill")))
        self.assertEqual(os.listdir(tmpdir), [])
        # ... and with --partitions it does partition (the spill directory is made and emptied)
        jd2 = self.path("job2")
        r = run("groupby", p, "--key", "product", "--agg", "count,sum:qty", "--workers", "2", "--listen", ep,
                "--partitions", "3", "--batch-bytes", "4K", "--job-dir", jd2, "-q")
        self.assertEqual(r.stdout, keyed_ref.write_tsv(rows))
        self.assertEqual(spill_files(os.path.join(jd2, "spill")), [])


class SharedSpillDir(TmpTest):
    # Was a bug (jobs sharing a --spill-dir overwrote each other's partitions): file names are
    # s<stage>-m<i>-p<r>.kv with nothing of the job in them, so two jobs given the same
    # --spill-dir (a shared file system, as the help suggests) read each other's map outputs: one
    # job's answer silently holds the other's keys, and the other fails (its files removed).
    def test_two_jobs_one_spill_dir(self):
        a, b = self.path("a.csv"), self.path("b.csv")
        gen_keyed.csv_sales(a, 40000, 30, seed=1)
        gen_keyed.csv_sales(b, 80000, 3000, seed=2)
        spill = self.path("shared")
        want = {}
        procs = {}
        for name, p, key in (("a", a, "region"), ("b", b, "product")):
            _, rows, _ = keyed_ref.groupby_ref([p], None, key, "count")
            want[name] = keyed_ref.write_tsv(rows)
            procs[name] = start("groupby", p, "--key", key, "--agg", "count", "--workers", "2", "--batch-bytes", "8K",
                                "--spill-dir", spill, "--no-job-dir", "-q", env=fault_env("delay_ms=50"))
        try:
            got = {n: p.communicate(timeout=180) for n, p in procs.items()}
        finally:
            for p in procs.values():
                stop(p)
        for n in ("a", "b"):
            self.assertEqual(procs[n].returncode, 0, got[n][1])
            self.assertEqual(got[n][0], want[n], n)


def stop_all(coord, workers):
    """Stop the coordinator and kill and reap the workers still running."""
    stop(coord)
    for w in workers:
        if w.poll() is None:
            w.kill()
            w.wait()


def with_relayed_worker(port, tmpdir, slots, *coord_args):
    """Run a coordinator (coord_args) with one worker on port that reads nothing by path
    (--no-shared-fs) and has TMPDIR=tmpdir; (coordinator, its stdout, its stderr) once both end."""
    coord = start(*coord_args)
    w = subprocess.Popen([DBATCH, "worker", "--connect", "127.0.0.1:%d" % port, "--no-shared-fs", "-s", slots, "-q"],
                         env=dict(os.environ, TMPDIR=tmpdir), stderr=subprocess.DEVNULL)
    try:
        out, err = coord.communicate(timeout=120)
        w.wait(timeout=60)
    finally:
        stop_all(coord, [w])
    return coord, out, err


def _unshare_pid_works():
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class WorkersWithTheSamePid(TmpTest):
    # Was a bug: a map task's temporary and level files were named after the process and thread
    # ids (.tmp-PID-TID-SEQ, .tmp-lvl-PID-TID-SEQ-pR.L). Workers on other machines or in other
    # containers share the spill directory and have the same ids (each container's worker is
    # pid 1), so two tasks wrote, renamed and merged each other's level files: a wrong count,
    # exit 0, in about one run in three. Here two workers in PID namespaces of their own.
    @unittest.skipUnless(_unshare_pid_works(), "needs unshare --pid (root or user namespaces)")
    def test_two_workers_pid_1_share_the_spill_dir(self):
        p = self.path("in.txt")
        rng = random.Random(5)
        vocab = ["w%d" % i for i in range(60000)]
        with open(p, "w") as f:
            for _ in range(150000):
                f.write(" ".join(rng.choice(vocab) for _ in range(8)) + "\n")
        want = reference_wordcount([p])
        spill = self.path("spill")
        os.mkdir(spill)
        for attempt in range(3):
            port = free_port()
            coord = start("wordcount", "--workers", "0", "--listen", "127.0.0.1:%d" % port, "--wait-workers", "2",
                          "--partitions", "7", "--memory", "1M", "--spill-dir", spill, "--batch-bytes", "1M",
                          "--no-speculation", "--no-job-dir", "-q", p)
            ws = [subprocess.Popen(["unshare", "--pid", "--fork", DBATCH, "worker", "--connect",
                                    "127.0.0.1:%d" % port, "--allow-read", self.tmp, "-s", "1", "-q"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
            try:
                out, err = coord.communicate(timeout=180)
                for w in ws:
                    w.wait(timeout=60)
            finally:
                stop_all(coord, ws)
            with self.subTest(attempt=attempt):
                self.assertEqual(coord.returncode, 0, err)
                self.assertEqual(out, want)
                self.assertEqual(os.listdir(spill), [])


@unittest.skipUnless(_unshare_mount_works(), "needs unshare -m and mount (root)")
class RelayedFiles(TmpTest):
    """2. Workers elsewhere without a shared file system: each remote worker here runs in a
    mount namespace of its own where a fresh tmpfs hides the test's directory (the coordinator's
    job directory, its spill directory and the inputs), as on another machine. Its batches come
    shipped, its map outputs go back in its results, its reduce tasks get their pieces in the
    task. The answer is the same bytes as in one process."""

    def job(self, args, remote=2, local=0, env=None, want_rc=0, on_reduce=None):
        port = free_port()
        s = self.path("s.json")
        coord = start(*args, "--workers", str(local), "--listen", "127.0.0.1:%d" % port, "--wait-workers",
                      str(remote + local), "--job-dir", self.path("job"), "--summary-json", s, "-q", env=env)
        ws = [subprocess.Popen(["unshare", "-m", "sh", "-c",
                                'mount -t tmpfs tmpfs "$1" && TMPDIR="$1" exec "$2" worker --connect "$3" -s 1 -q',
                                "sh", self.tmp, DBATCH, "127.0.0.1:%d" % port],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(remote)]
        try:
            if on_reduce:
                on_reduce(coord, ws)
            out, err = coord.communicate(timeout=300)
            for w in ws:
                if w.poll() is None:
                    w.wait(timeout=60)
        finally:
            stop_all(coord, ws)
        self.assertEqual(coord.returncode, want_rc, err.decode(errors="replace"))
        with open(s) as f:
            summary = json.load(f)
        shutil.rmtree(self.path("job"))
        return out, summary

    def test_wordcount_groupby_reduce_cooccur(self):
        rnd = random.Random(8)
        pool = ["w%d" % i for i in range(20000)] + ["ünï", "日本"]
        words = self.write("words.txt", "".join(" ".join(rnd.choice(pool) for _ in range(9)) + "\n"
                                                for _ in range(20000)))
        want = reference_wordcount([words])
        for r in ("1", "7"):
            # --memory 1M: a map task's table fills and is written out in levels, in its private directory
            out, sm = self.job(("wordcount", words, "--partitions", r, "--memory", "1M", "--batch-bytes", "64K"))
            self.assertEqual(out, want, "wordcount --partitions " + r)
            self.assertEqual(sm["failures"], [])
            self.assertGreater(sm["spilled_bytes"], 0)
            self.assertEqual([w["local"] for w in sm["worker_stats"]], [False, False])
        sales = self.path("sales.csv")
        gen_keyed.csv_sales(sales, 30000, 400, seed=3, quoted=0.1)
        _, rows, _ = keyed_ref.groupby_ref([sales], None, "product", GB_SPECS)
        out, sm = self.job(("groupby", sales, "--key", "product", "--agg", GB_SPECS, "--batch-bytes", "32K",
                            "--partitions", "5"))
        self.assertEqual(out, keyed_ref.write_tsv(rows))
        self.assertEqual([x["name"] for x in sm["stages"]], ["groupby", "reduce"])
        data = "".join("k%d\t%d\n" % (rnd.randrange(500), rnd.randrange(-9, 99)) for _ in range(20000)).encode()
        tsv = self.write("in.tsv", data)
        rows, _ = keyed_ref.reduce_ref(data, RUN_AGGS)
        out, _ = self.job(("run", "--map", "cat", "--reduce", RUN_AGGS, "--batch-records", "3000", "--partitions", "3",
                           tsv))
        self.assertEqual(out, keyed_ref.write_tsv(rows))
        orders = self.path("orders.csv")
        gen_keyed.orders(orders, 3000, 300, 50, heavy_users=1, heavy_orders=80)
        rows, _, _ = keyed_ref.cooccur_ref([orders], None, "user", "item", 4, 60)
        out, _ = self.job(("cooccur", orders, "--user", "user", "--item", "item", "--top", "4", "--max-basket", "60",
                           "--batch-bytes", "4K", "--partitions", "4"))
        self.assertEqual(out, keyed_ref.write_tsv(rows))

    def test_local_and_remote_workers_together(self):
        sales = self.path("sales.csv")
        gen_keyed.csv_sales(sales, 30000, 2000, seed=9)
        _, rows, _ = keyed_ref.groupby_ref([sales], None, "product", GB_SPECS)
        out, sm = self.job(("groupby", sales, "--key", "product", "--agg", GB_SPECS, "--batch-bytes", "16K",
                            "--partitions", "6", "--policy", "round-robin"), remote=1, local=1)
        self.assertEqual(out, keyed_ref.write_tsv(rows))
        self.assertEqual(sorted(w["local"] for w in sm["worker_stats"]), [False, True])
        self.assertTrue(all(w["tasks"] > 0 for w in sm["worker_stats"]), sm["worker_stats"])

    def test_kill_9_of_a_remote_worker_during_the_reduce_stage(self):
        """Its map outputs are with the coordinator already: nothing is recomputed, only the
        reduce task it was running goes again."""
        sales = self.path("sales.csv")
        gen_keyed.csv_sales(sales, 40000, 3000, seed=12)
        specs = "count,sum:qty,first:region"
        _, rows, _ = keyed_ref.groupby_ref([sales], None, "product", specs)
        spill = self.path("job", "spill")

        def kill_in_reduce(coord, ws):
            wait_until(lambda: glob.glob(os.path.join(spill, "s0-r*.kv")) or coord.poll() is not None,
                       "the reduce stage", timeout=120)
            self.assertIsNone(coord.poll(), "the job ended before the reduce stage could be hit")
            ws[0].kill()

        out, sm = self.job(("groupby", sales, "--key", "product", "--agg", specs, "--batch-bytes", "16K",
                            "--partitions", "12", "--max-attempts", "10"), env=fault_env("delay_ms=300"),
                           on_reduce=kill_in_reduce)
        self.assertEqual(out, keyed_ref.write_tsv(rows))
        self.assertNotIn("recompute", [x["name"] for x in sm["stages"]])
        self.assertEqual({f["stage"] for f in sm["failures"]}, {"reduce"})

    def test_a_killed_workers_private_directory_is_removed_by_the_next(self):
        """A worker killed in the middle of a relayed task leaves its private directory; the
        next worker started with that TMPDIR removes it (its process is gone)."""
        words = self.write("w.txt", "".join("a%d b c%d\n" % (i % 97, i % 13) for i in range(30000)))
        wtmp = self.path("wtmp")
        os.mkdir(wtmp)
        port = free_port()
        coord = start("wordcount", words, "--workers", "0", "--listen", "127.0.0.1:%d" % port, "--wait-workers", "1",
                      "--partitions", "3", "--batch-bytes", "32K", "--no-job-dir", "-q", "--worker-timeout", "2")
        env = dict(os.environ, TMPDIR=wtmp)
        w1 = subprocess.Popen([DBATCH, "worker", "--connect", "127.0.0.1:%d" % port, "--no-shared-fs", "-s", "1", "-q"],
                              env=fault_env("delay_ms=3000", TMPDIR=wtmp), stderr=subprocess.DEVNULL)
        w2 = None
        try:
            wait_until(lambda: os.listdir(wtmp), "a private directory", timeout=60, proc=coord)
            left = os.listdir(wtmp)
            w1.kill()
            w1.wait()
            self.assertEqual(os.listdir(wtmp), left)
            self.assertRegex(left[0], r"^dbatch-relay-%d-" % w1.pid)
            w2 = subprocess.Popen([DBATCH, "worker", "--connect", "127.0.0.1:%d" % port, "--no-shared-fs", "-s", "1",
                                   "-q"], env=env, stderr=subprocess.DEVNULL)
            out, err = coord.communicate(timeout=120)
            w2.wait(timeout=60)
        finally:
            stop_all(coord, [w1] + ([w2] if w2 else []))
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, reference_wordcount([words]))
        self.assertEqual(os.listdir(wtmp), [])

    def test_private_directories_are_removed(self):
        """A worker that reads nothing by path (--no-shared-fs) on this machine is relayed too;
        its private directories are gone after each task."""
        words = self.write("w.txt", "".join("a%d b c%d\n" % (i % 97, i % 13) for i in range(30000)))
        wtmp = self.path("wtmp")
        os.mkdir(wtmp)
        port = free_port()
        coord, out, err = with_relayed_worker(port, wtmp, "2", "wordcount", words, "--workers", "0", "--listen",
                                              "127.0.0.1:%d" % port, "--wait-workers", "1", "--partitions", "3",
                                              "--batch-bytes", "32K", "--no-job-dir", "-q")
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, reference_wordcount([words]))
        self.assertEqual(os.listdir(wtmp), [])


class RelayedWorkerTmpdir(TmpfsTest):
    """A relayed worker whose $TMPDIR cannot hold its private directories is that worker's
    problem: its tasks fail, naming its $TMPDIR, and go to the other workers; the job's answer
    is exact and nothing is left in that $TMPDIR."""

    def job(self, wtmp, products=300, size=20000):
        sales = self.path("sales.csv")
        gen_keyed.csv_sales(sales, size, products, seed=4)
        _, rows, _ = keyed_ref.groupby_ref([sales], None, "product", "count,sum:qty")
        port = free_port()
        coord, out, err = with_relayed_worker(port, wtmp, "1", "groupby", sales, "--key", "product", "--agg",
                                              "count,sum:qty", "--partitions", "6", "--batch-bytes", "64K", "--workers",
                                              "1", "--listen", "127.0.0.1:%d" % port, "--wait-workers", "2",
                                              "--policy", "round-robin", "--no-job-dir")
        err = err.decode(errors="replace")
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, keyed_ref.write_tsv(rows))
        self.assertEqual(spill_files(wtmp), [])
        return err

    def test_a_tmpdir_too_long_for_partition_file_names(self):
        """Names longer than a spill directory's were cut short: the reduced partition was
        written into $TMPDIR itself, outside the private directory, and left there."""
        d = self.path("t")
        while len(d) < 480:
            d = os.path.join(d, "d" * 40)
        d = os.path.join(d, "e" * (500 - len(d) - 1))
        os.makedirs(d)
        err = self.job(d)
        self.assertIn("too long for a relayed task's directory", err)

    def test_a_full_tmpdir(self):
        """A full $TMPDIR of one worker's failed the whole job as if the coordinator's spill
        directory were full."""
        err = self.job(self.small, products=20000, size=2000000)
        self.assertRegex(err, r"failed on worker \d+ .*dbatch-relay-.*No space left on device")

class SkippedMapTask(TmpTest):
    """--on-task-failure=skip with partitions: a map task given up wrote no partition files; its
    records are missing from the result (and reported), and the reduce stage goes on without them."""

    def test_groupby_without_the_poisoned_batch(self):
        rows = ["k,v\n"] + ["k%d,%d\n" % (i % 13, i) for i in range(1, 400)]
        rows[250] = "POISON,1\n"
        p = self.write("in.csv", "".join(rows))
        s = self.path("s.json")
        for r in ("4", "0"):
            res = run("groupby", p, "--key", "k", "--agg", "count,sum:v", "--workers", "2", "--batch-records", "50",
                      "--partitions", r, "--on-task-failure", "skip", "--max-attempts", "2", "--summary-json", s,
                      "--no-job-dir", "-q", check=False, env=fault_env("crash_on=POISON"))
            self.assertEqual(res.returncode, 3, res.stderr)
            with open(s) as f:
                j = json.load(f)
            self.assertEqual([m["task"] for m in j["missing"]], [5])
            # Batches of 50 lines (the header is line 0 of batch 0): batch 5, lines 250-299,
            # holds the poison and is left out, nothing else.
            kept = rows[:250] + rows[300:]
            rest = self.write("rest.csv", "".join(kept))
            _, want, _ = keyed_ref.groupby_ref([rest], None, "k", "count,sum:v")
            self.assertEqual(res.stdout, keyed_ref.write_tsv(want), "--partitions " + r)


if __name__ == "__main__":
    unittest.main()
