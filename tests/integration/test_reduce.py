"""dbatch run --map CMD --reduce AGG,... and --reduce-cmd RCMD: per-key results of the map
command's KEY<TAB>VALUE lines, checked against keyed_ref.py (an independent Python reference
written from the spec) for every worker count, policy and batch size, in every output format."""
import json
import os
import random
import sqlite3
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from dbx import TmpTest, run, slurp  # noqa: E402
import keyed_ref  # noqa: E402

ALL = "count,sum,min,max,mean,first,last,distinct,top:3"


def kv_data(n, seed, bad_every=0):
    """KEY<TAB>VALUE lines: unicode, empty and odd keys, integers, dyadic reals (exact in any
    order), lines without a tab, and, when asked, values that are not numbers."""
    rnd = random.Random(seed)
    keys = ["a", "b", "ünï", "", "key with space", "z" * 40, "k\\back", "日本", "x\r"] + ["k%03d" % i for i in range(60)]
    out = []
    for i in range(n):
        k = rnd.choice(keys)
        r = rnd.random()
        if bad_every and i % bad_every == bad_every - 1:
            v = rnd.choice(["abc", "", "1e", "0x10", "nan", " 1"])
        elif r < 0.5:
            v = str(rnd.randint(-1000, 1000))
        elif r < 0.8:
            v = str(rnd.randint(-4000, 4000) / 4)
        else:
            v = "%de%d" % (rnd.randint(1, 9), rnd.randint(0, 3))
        out.append("%s\t%s\n" % (k, v))
    return "".join(out).encode()


class Reduce(TmpTest):
    def test_builtin_reducers_equal_the_reference_any_workers_policy_batches(self):
        data = kv_data(20000, 1)
        path = self.write("in/kv.tsv", data)
        rows, bad = keyed_ref.reduce_ref(data, ALL)
        self.assertEqual(bad, 0)
        want = keyed_ref.write_tsv(rows)
        self.assertGreater(len(rows), 60)
        for workers, policy, batch in [("0", None, "4K"), ("2", "least-loaded", "4K"), ("2", "round-robin", "64K"),
                                       ("2", "random", "1K"), ("1", None, "100K")]:
            args = ["run", "--map", "cat", "--reduce", ALL, "--workers", workers, "--batch-bytes", batch,
                    "--no-job-dir", "-q"]
            if policy:
                args += ["--policy", policy, "--seed", "5"]
            got = run(*args, path).stdout
            self.assertEqual(got, want, "--workers %s --policy %s --batch-bytes %s" % (workers, policy, batch))

    def test_map_command_output_is_what_is_reduced(self):
        # The command makes the pairs: field 2 as key, field 3 as value, from comma lines.
        lines = ["%d,%s,%d\n" % (i, "grp%d" % (i % 7), i * 3 % 50) for i in range(5000)]
        path = self.write("in/a.csv", "".join(lines).encode())
        mapped = "".join("%s\t%s\n" % (ln.split(",")[1], ln.strip().split(",")[2]) for ln in lines)
        rows, _ = keyed_ref.reduce_ref(mapped, "sum,count,max")
        got = run("run", "--map", "awk -F, '{print $2 \"\\t\" $3}'", "--reduce", "sum,count,max", "--workers", "2",
                  "--batch-records", "300", "--no-job-dir", "-q", path).stdout
        self.assertEqual(got, keyed_ref.write_tsv(rows))

    def test_bad_values_skipped_and_counted_or_fail_the_job(self):
        data = kv_data(3000, 2, bad_every=97)
        path = self.write("in/kv.tsv", data)
        rows, bad = keyed_ref.reduce_ref(data, "count,sum")
        self.assertGreater(bad, 10)
        summ = os.path.join(self.tmp, "s.json")
        res = run("run", "--map", "cat", "--reduce", "count,sum", "--workers", "2", "--batch-bytes", "2K",
                  "--summary-json", summ, "--no-job-dir", path)
        self.assertEqual(res.stdout, keyed_ref.write_tsv(rows))
        with open(summ) as f:
            self.assertEqual(json.load(f)["bad_records"], bad)
        self.assertIn(b"is not a number (for sum)", res.stderr)
        # Non-numeric reducers take any value: nothing is bad.
        rows2, bad2 = keyed_ref.reduce_ref(data, "count,first,distinct")
        self.assertEqual(bad2, 0)
        got = run("run", "--map", "cat", "--reduce", "count,first,distinct", "--no-job-dir", "-q", path).stdout
        self.assertEqual(got, keyed_ref.write_tsv(rows2))
        out = os.path.join(self.tmp, "out.tsv")
        res = run("run", "--map", "cat", "--reduce", "sum", "--on-bad-record", "fail", "-o", out, "--no-job-dir",
                  path, check=False)
        self.assertEqual(res.returncode, 1)
        self.assertIn(b"is not a number", res.stderr)
        self.assertIn(b"map output", res.stderr)
        self.assertFalse(os.path.exists(out))

    def test_integer_sum_overflow_fails_naming_the_key(self):
        path = self.write("in/kv.tsv", b"big\t9223372036854775000\nsmall\t1\nbig\t1000\n")
        res = run("run", "--map", "cat", "--reduce", "sum", "--workers", "0", "--no-job-dir", path, check=False)
        self.assertEqual(res.returncode, 1)
        self.assertIn(b"'big' overflows 64-bit integers", res.stderr)
        # Across batches (the merge on the coordinator) as well.
        res = run("run", "--map", "cat", "--reduce", "sum", "--workers", "2", "--batch-records", "1", "--no-job-dir",
                  path, check=False)
        self.assertEqual(res.returncode, 1)
        self.assertIn(b"overflows 64-bit integers", res.stderr)
        # Exact where a double would not be: 2^53 + 1.
        path = self.write("in/exact.tsv", b"k\t9007199254740992\nk\t1\n")
        got = run("run", "--map", "cat", "--reduce", "sum", "--batch-records", "1", "--no-job-dir", "-q", path).stdout
        self.assertEqual(got, b"k\t9007199254740993\n")

    def test_every_output_format(self):
        data = kv_data(2000, 3)
        path = self.write("in/kv.tsv", data)
        spec = "count,sum,mean,last,top:2"
        rows, _ = keyed_ref.reduce_ref(data, spec)
        header = keyed_ref.reduce_header(spec)
        for ext in ("csv", "jsonl"):
            out = os.path.join(self.tmp, "out." + ext)
            run("run", "--map", "cat", "--reduce", spec, "--workers", "2", "--batch-bytes", "4K", "-o", out,
                "--no-job-dir", "-q", path)
            want = keyed_ref.write_csv(header, rows) if ext == "csv" else keyed_ref.write_jsonl(header, rows)
            self.assertEqual(slurp(out), want, ext)
        db = os.path.join(self.tmp, "out.db")
        run("run", "--map", "cat", "--reduce", spec, "--workers", "2", "--batch-bytes", "4K", "-o", "sqlite:" + db,
            "--table", "r", "--no-job-dir", "-q", path)
        con = sqlite3.connect(db)
        con.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
        got = con.execute('SELECT key, count, sum, mean, last, "top:2" FROM r').fetchall()
        con.close()
        self.assertEqual(len(got), len(rows))
        for g, w in zip(got, rows):
            self.assertEqual(g[0], w[0])
            self.assertEqual(g[1], int(w[1]))
            self.assertEqual(float(g[2]), float(w[2]))  # NUMERIC affinity keeps 2.0 as the integer 2
            self.assertEqual(float(g[3]), float(w[3]))
            self.assertEqual(g[4], w[4])
            self.assertEqual(g[5], w[5])

    def test_empty_input_and_no_output_lines(self):
        empty = self.write("in/empty.txt", b"")
        self.assertEqual(run("run", "--map", "cat", "--reduce", "count", "--no-job-dir", "-q", empty).stdout, b"")
        some = self.write("in/some.txt", b"a\nb\n")
        self.assertEqual(run("run", "--map", "true", "--reduce", "count,sum", "--workers", "2", "--no-job-dir", "-q",
                             some).stdout, b"")
        # A line without a tab is a key with an empty value.
        got = run("run", "--map", "cat", "--reduce", "count,distinct,first", "--no-job-dir", "-q", some).stdout
        self.assertEqual(got, b"a\t1\t1\t\nb\t1\t1\t\n")

    def test_usage_errors(self):
        p = self.write("in/x.txt", b"a\t1\n")
        for args, msg in [(["--reduce", "count"], b"needs --map"),
                          (["--map", "cat", "--reduce", "median"], b"unknown aggregate 'median'"),
                          (["--map", "cat", "--reduce", "top:0"], b"top needs a count"),
                          (["--map", "cat", "--reduce", "sum:x"], b"takes no column"),
                          (["--map", "cat", "--reduce", "count", "--reduce-cmd", "cat"], b"exclusive"),
                          (["--map", "cat", "--reduce", "count,"], b"an empty aggregate"),
                          (["--map", "cat", "--reduce-cmd", "cat", "--format", "csv"], b"does not apply"),
                          (["--map", "cat", "--reduce", "count", "--on-bad-record", "maybe"], b"--on-bad-record 'maybe': expected skip or fail")]:
            res = run("run", *args, "--no-job-dir", p, check=False)
            self.assertEqual(res.returncode, 2, args)
            self.assertIn(msg, res.stderr, args)


class ReduceCmd(TmpTest):
    def test_reducer_gets_lines_sorted_by_key_values_in_input_order(self):
        data = kv_data(8000, 4) + b"no tab line\nlast\tline"
        path = self.write("in/kv.tsv", data)
        want = keyed_ref.reduce_cmd_input(data + b"\n")
        for workers, batch in [("0", "3K"), ("2", "3K"), ("2", "50K")]:
            got = run("run", "--map", "cat", "--reduce-cmd", "cat", "--workers", workers, "--batch-bytes", batch,
                      "--no-job-dir", "-q", path).stdout
            self.assertEqual(got, want, "--workers %s --batch-bytes %s" % (workers, batch))

    def test_a_python_reducer_per_key(self):
        data = kv_data(5000, 5)
        path = self.write("in/kv.tsv", data)
        script = self.write("red.py", b"""import sys
cur, n = None, 0
for line in sys.stdin.buffer:
    k = line.rstrip(b"\\n").split(b"\\t", 1)[0]
    if k != cur and cur is not None:
        sys.stdout.buffer.write(cur + b"\\t" + str(n).encode() + b"\\n"); n = 0
    cur = k; n += 1
if cur is not None:
    sys.stdout.buffer.write(cur + b"\\t" + str(n).encode() + b"\\n")
""")
        rows, _ = keyed_ref.reduce_ref(data, "count")
        got = run("run", "--map", "cat", "--reduce-cmd", "/usr/bin/python3 " + script, "--workers", "2",
                  "--batch-bytes", "8K", "--no-job-dir", "-q", path).stdout
        self.assertEqual(got, b"".join(keyed_ref._b(r[0]) + b"\t" + r[1].encode() + b"\n" for r in rows))

    def test_failing_reducer_fails_the_job_with_its_stderr(self):
        path = self.write("in/kv.tsv", b"a\t1\n")
        out = os.path.join(self.tmp, "out.txt")
        res = run("run", "--map", "cat", "--reduce-cmd", "echo reducer broke >&2; exit 3", "-o", out, "--no-job-dir",
                  path, check=False)
        self.assertEqual(res.returncode, 1)
        self.assertIn(b"the reduce command failed", res.stderr)
        self.assertIn(b"status 3", res.stderr)
        self.assertIn(b"reducer broke", res.stderr)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main()
