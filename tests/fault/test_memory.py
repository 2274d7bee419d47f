"""Bounded memory for keyed jobs (--memory SIZE; issue 12, part 3): a job forced to spill (a
map task's table past its budget freezes, the records of other keys spill raw and are
aggregated level by level, partitions merge from disk) gives the same bytes as one that does
not, and as the Python references, for word count, groupby (every aggregate, non-dyadic
floating sums), run --reduce and cooccur; the summary counts the spilled bytes; a full spill
directory during the map-side spill is one clear error and leaves nothing; a worker killed
while it spills is replaced and the answer does not change; usage errors."""
import json
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import TmpTest, TmpfsTest, fault_env, reference_wordcount, run, slurp  # noqa: E402
import gen_keyed  # noqa: E402
import keyed_ref  # noqa: E402

gen_keyed.CHUNK = 500

GB_SPECS = "count,sum:qty,mean:price,min:price,max:qty,first:region,last:region,distinct:region,top:2:qty"
RUN_AGGS = "count,sum,min,max,mean,first,last,distinct,top:3"
NONDYADIC = ["0.1", "0.2", "0.3", "0.7", "1.1", "2.35", "0.01", "3.3", "-0.45"]


def sums_by_tree(batches):
    """Per key: (sum, count), left to right inside each batch, by tree_sum across batches.
    batches: lists of (key, value text) in input order."""
    per = [dict() for _ in batches]
    count = {}
    for i, b in enumerate(batches):
        for k, v in b:
            per[i][k] = float(v) if k not in per[i] else per[i][k] + float(v)
            count[k] = count.get(k, 0) + 1
    return {k: (keyed_ref.tree_sum([p.get(k) for p in per]), n) for k, n in count.items()}


class SpillEqualsNoSpill(TmpTest):
    """A job forced to spill (--memory 1M: 256 KB per map task) equals one that does not."""

    def summary(self, *args):
        s = self.path("s.json")
        out = run(*args, "--summary-json", s, "--no-job-dir", "-q", timeout=300).stdout
        with open(s) as f:
            return out, json.load(f)

    def same(self, args, want, what, rs=("1", "3", "8")):
        """args with and without --memory 1M, for each R: want every time, and more bytes
        spilled with the bound (the raw records of keys past it) than without."""
        for r in rs:
            plain, s0 = self.summary(*args, "--partitions", r, "--workers", "2")
            self.assertEqual(plain, want, "%s --partitions %s" % (what, r))
            got, s1 = self.summary(*args, "--partitions", r, "--workers", "2", "--memory", "1M")
            self.assertEqual(got, want, "%s --partitions %s --memory 1M" % (what, r))
            self.assertGreater(s1["spilled_bytes"], s0["spilled_bytes"] + 100000, "%s: nothing spilled" % what)

    def test_wordcount(self):
        rnd = random.Random(3)
        lines = [" ".join("w%d" % rnd.randrange(120000) for _ in range(9)) for _ in range(40000)]
        lines += ["Ünïcode WORD word ÜNÏCODE", "", "tail without newline"]
        p = self.write("words.txt", "\n".join(lines))
        want = reference_wordcount([p])
        self.same(("wordcount", p, "--batch-bytes", "1M"), want, "wordcount")
        # --memory alone partitions word count (its default is the in-memory merge)
        got, s = self.summary("wordcount", p, "--batch-bytes", "1M", "--workers", "2", "--memory", "1M")
        self.assertEqual(got, want)
        # (and, from 100,000 distinct words into a file, its rows are formatted by output tasks)
        stages = ["wordcount", "reduce"] + (["output"] if want.count(b"\n") >= 100000 else [])
        self.assertEqual([x["name"] for x in s["stages"]], stages)
        top = run("wordcount", p, "--batch-bytes", "1M", "--workers", "2", "--memory", "1M", "--top", "7",
                  "--no-job-dir", "-q").stdout
        self.assertEqual(top, b"".join(want.splitlines(True)[:7]))

    def test_groupby_every_aggregate(self):
        p = self.path("sales.csv")
        gen_keyed.csv_sales(p, 3000000, 40000, seed=12, quoted=0.05)
        _, rows, bad = keyed_ref.groupby_ref([p], None, "product,region", GB_SPECS)
        self.assertEqual(bad, 0)
        self.assertGreater(len(rows), 20000)
        self.same(("groupby", p, "--key", "product,region", "--agg", GB_SPECS, "--batch-bytes", "1M"),
                  keyed_ref.write_tsv(rows), "groupby")

    def test_groupby_non_dyadic_float_sums(self):
        """Keys spilled to later levels keep their input order inside the batch: their sums
        are the left-to-right sums of the batch, not of pieces of it."""
        rnd = random.Random(4)
        keys = ["key%06d" % i for i in range(30000)]
        recs = [(rnd.choice(keys), rnd.choice(NONDYADIC)) for _ in range(200000)]
        p = self.write("fl.csv", "k,v\n" + "".join("%s,%s\n" % x for x in recs))
        br = 50000
        batches = [recs[:br - 1]] + [recs[i:i + br] for i in range(br - 1, len(recs), br)]
        ref = sums_by_tree(batches)
        want = "".join("%s\t%d\t%s\t%s\n" % (k, n, keyed_ref.fmt_num(s), keyed_ref.fmt_num(s / n))
                       for k, (s, n) in sorted(ref.items())).encode()
        self.same(("groupby", p, "--key", "k", "--agg", "count,sum:v,mean:v", "--batch-records", str(br)), want,
                  "float sums", rs=("2",))

    def test_run_reduce_every_aggregate(self):
        rnd = random.Random(5)
        keys = ["k%d" % i for i in range(25000)] + ["", "ключ", "back\\slash", "cr\rkey", "日本"]
        vals = ["1", "-3", "12", "0", "+5", "0.25", "-1.5", "2.75", "1e1", "7", "-0", "abc", "0.5"]
        data = "".join("%s\t%s\n" % (rnd.choice(keys), rnd.choice(vals)) for _ in range(150000)).encode()
        p = self.write("in.tsv", data)
        rows, bad = keyed_ref.reduce_ref(data, RUN_AGGS)
        self.assertGreater(bad, 0)
        self.same(("run", "--map", "cat", "--reduce", RUN_AGGS, "--batch-records", "40000", p),
                  keyed_ref.write_tsv(rows), "run --reduce", rs=("1", "5"))

    def test_cooccur(self):
        p = self.path("orders.csv")
        gen_keyed.orders(p, 60000, 3000, 900, heavy_users=2, heavy_orders=150)
        rows, left, _ = keyed_ref.cooccur_ref([p], None, "user", "item", 4, 100)
        self.assertGreater(left, 0)
        self.same(("cooccur", p, "--user", "user", "--item", "item", "--top", "4", "--max-basket", "100"),
                  keyed_ref.write_tsv(rows), "cooccur", rs=("3",))


class KilledWhileSpilling(TmpTest):
    def test_a_worker_killed_in_a_spilling_map_task(self):
        """The first worker to write spilled records dies right then (SIGKILL; DBATCH_FAULT
        crash_in_spill, once); its task runs again; the rows are the reference's and the
        spill directory is left empty (the spilled records were in an unlinked file)."""
        rnd = random.Random(8)
        lines = [" ".join("w%d" % rnd.randrange(100000) for _ in range(9)) for _ in range(30000)]
        p = self.write("w.txt", "\n".join(lines) + "\n")
        want = reference_wordcount([p])
        spill = self.path("spill")
        s = self.path("s.json")
        once = self.path("crashed")
        env = fault_env("crash_in_spill=" + once)
        r = run("wordcount", p, "--batch-bytes", "512K", "--workers", "2", "--memory", "1M", "--spill-dir", spill,
                "--summary-json", s, "--no-job-dir", "-q", env=env, timeout=300)
        self.assertEqual(r.stdout, want)
        self.assertTrue(os.path.exists(once))  # the fault fired
        j = json.loads(slurp(s, True))
        self.assertEqual(len(j["failures"]), 1, j["failures"])
        self.assertIn("killed by signal 9", j["failures"][0]["cause"])
        left = [os.path.join(r, f) for r, d, fs in os.walk(spill) for f in d + fs]
        self.assertEqual(left, [], "\n".join(left))


class FullSpillDirectoryWhileSpilling(TmpfsTest):
    TMPFS_SIZE = "1m"

    def test_raw_records_fill_the_disk(self):
        """One map task of 3 MB with 150,000 distinct keys and --memory 1M spills raw records
        past the 1 MB tmpfs: exit 1, one line naming the directory, no output, nothing left."""
        p = self.write("many.csv", "k,v\n" + "".join("key%07d,%d\n" % (i, i % 100) for i in range(150000)))
        out = self.path("out.tsv")
        r = run("groupby", p, "--key", "k", "--agg", "count,sum:v", "--spill-dir", self.small, "--memory", "1M",
                "--partitions", "2", "--workers", "1", "-o", out, "--no-job-dir", "-q", check=False, timeout=300)
        err = r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 1, err)
        self.assertIn("spill directory %s" % self.small, err)
        self.assertIn("No space left on device", err)
        self.assertEqual(len(err.strip().split("\n")), 1, err)
        self.assertFalse(os.path.exists(out))
        for root, dirs, files in os.walk(self.small):
            self.assertEqual(files, [], root)


class Usage(TmpTest):
    def test_bad_values_name_the_option(self):
        p = self.write("a.csv", "k,v\na,1\n")
        for bad in ("10", "abc", "0", "-5M"):
            r = run("groupby", p, "--key", "k", "--agg", "count", "--memory", bad, check=False)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn(b"--memory", r.stderr, bad)
        r = run("run", "--map", "cat", "--reduce-cmd", "cat", "--memory", "64M", p, check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"--memory", r.stderr)
        r = run("run", "--map", "cat", "--memory", "64M", p, check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"--memory", r.stderr)
        self.assertIn(b"--memory SIZE", run("groupby", "--help").stdout)

    def test_sizes_take_suffixes(self):
        p = self.write("a.csv", "k,v\na,1\nb,2\na,3\n")
        for ok in ("1M", "64m", "2G", "1048576"):
            out = run("groupby", p, "--key", "k", "--agg", "count,sum:v", "--memory", ok, "--workers", "1",
                      "--no-job-dir", "-q").stdout
            self.assertEqual(out, b"a\t2\t4\nb\t1\t2\n", ok)


if __name__ == "__main__":
    unittest.main()
