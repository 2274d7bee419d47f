"""Output files that other tools load without surprises: the format comes from a known
extension (an unknown one is a usage error naming the formats), .gz and .zst are written
compressed, --append adds to a file atomically (or is refused, never ignored), TSV takes
--header. References: the plain output of the same job, and gzip/zstd's own tools."""
import csv
import gzip
import io
import json
import os
import stat
import subprocess
import threading
import time
import unittest

from dbx import TmpTest, run, reference_wordcount, slurp


def text(n, seed=1):
    """Lines of words whose counts differ, so that the output order is fixed."""
    out = []
    for i in range(n):
        out.append(" ".join("w%d" % ((i * 7 + k * seed) % 97) for k in range(1 + i % 9)))
    return "\n".join(out) + "\n"


def unzip(path):
    if path.endswith(".gz"):
        return subprocess.run(["gzip", "-dc", path], capture_output=True, check=True).stdout
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq", path], capture_output=True, check=True).stdout
    return slurp(path)


class Escapes(TmpTest):
    """TSV escapes tab, newline, carriage return and backslash as \\t \\n \\r \\\\ (what
    PostgreSQL's COPY text format reads back), and passes every other byte as it is; CSV quotes
    what needs it. Keys from a CSV input hold each of them, in rows of many keys (the file
    sink gathers rows before it writes)."""

    def test_tsv_escapes_and_csv_quotes(self):
        keys = ["back\\slash", "tab\there", "new\nline", "cr\rhere", "all\t\n\r\\", "plain", "quo\"te", "com,ma",
                "\u00e9t\u00e9"] + ["k%05d" % i for i in range(3000)]
        p = self.path("in.csv")
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["key"])
            for k in keys:
                w.writerow([k])
        esc = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}
        want = "".join("".join(esc.get(c, c) for c in k) + "\t1\n" for k in sorted(keys, key=lambda k: k.encode()))
        got = run("groupby", p, "--key", "key", "--agg", "count", "--workers", "0", "--no-job-dir", "-q").stdout
        self.assertEqual(got.decode("utf-8"), want)
        out = self.path("out.csv")
        run("groupby", p, "--key", "key", "--agg", "count", "--workers", "0", "-o", out, "--no-job-dir", "-q")
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows, [["key", "count"]] + [[k, "1"] for k in sorted(keys, key=lambda k: k.encode())])


class Extensions(TmpTest):
    def setUp(self):
        super().setUp()
        self.inp = self.write("in.txt", text(200))

    def wc(self, *args, check=True):
        return run("wordcount", self.inp, "--no-job-dir", "-q", *args, check=check)

    def test_unknown_extensions_are_usage_errors_naming_the_formats(self):
        for name in ("x.json", "x.parquet", "X.CSV", "x.Tsv", "x.out", "x.csv.bz2", "x.JSONL.gz"):
            p = self.wc("-o", self.path(name), check=False)
            self.assertEqual(p.returncode, 2, name)
            err = p.stderr.decode()
            self.assertIn("unknown extension", err)
            for fmt in (".tsv", ".csv", ".jsonl", ".gz", ".zst", "sqlite:", "postgresql://", "--format"):
                self.assertIn(fmt, err, (name, err))
            self.assertEqual(err.count("\n"), 2, err)  # one line, and the usual 'Try ... --help'
            self.assertFalse(os.path.exists(self.path(name)), name)
        self.assertIn(".jsonl is one JSON object per line", self.wc("-o", self.path("x.json"), check=False).stderr.decode())
        self.assertIn("lower case", self.wc("-o", self.path("X.CSV"), check=False).stderr.decode())

    def test_format_overrides_the_name(self):
        self.wc("-o", self.path("x.json"), "--format", "jsonl")
        rows = [json.loads(l) for l in slurp(self.path("x.json")).decode().splitlines()]
        ref = [l.split("\t") for l in reference_wordcount([self.inp]).decode().splitlines()]
        self.assertEqual([(r["word"], r["count"]) for r in rows], [(w, int(c)) for w, c in ref])
        self.wc("-o", self.path("X.CSV"), "--format", "csv")
        self.assertEqual(slurp(self.path("X.CSV")).decode().splitlines()[0], "word,count")

    def test_names_without_extension_and_known_aliases(self):
        ref = reference_wordcount([self.inp])
        for name in ("counts", ".hidden", "counts.txt", "dir.v2/counts"):
            os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
            self.wc("-o", self.path(name))
            self.assertEqual(slurp(self.path(name)), ref, name)
        self.wc("-o", self.path("x.ndjson"))
        self.assertEqual(json.loads(slurp(self.path("x.ndjson")).decode().splitlines()[0]).keys(), {"word", "count"})


class Compressed(TmpTest):
    def setUp(self):
        super().setUp()
        self.inp = self.write("in.txt", text(3000))

    def test_every_format_compressed_equals_the_plain_output(self):
        for fmt in ("tsv", "csv", "jsonl"):
            plain = self.path("plain." + fmt)
            run("wordcount", self.inp, "--no-job-dir", "-q", "-o", plain)
            for z in (".gz", ".zst"):
                out = self.path("counts." + fmt + z)
                run("wordcount", self.inp, "--no-job-dir", "-q", "-o", out)
                raw = slurp(out)
                self.assertEqual(raw[:2] if z == ".gz" else raw[:4],
                                 b"\x1f\x8b" if z == ".gz" else b"\x28\xb5\x2f\xfd", out)
                self.assertLess(len(raw), len(slurp(plain)), out)
                self.assertEqual(unzip(out), slurp(plain), out)
        # Python's own readers take them as they are
        with gzip.open(self.path("counts.csv.gz"), "rt", newline="") as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows[0], ["word", "count"])

    def test_map_output_and_predictions_compressed(self):
        run("run", "--map", "tr a-z A-Z", self.inp, "--no-job-dir", "-q", "-o", self.path("up.txt.zst"))
        self.assertEqual(unzip(self.path("up.txt.zst")), slurp(self.inp).upper())

    def test_a_failed_job_leaves_no_compressed_file(self):
        p = run("run", "--map", "exit 3", self.inp, "--no-job-dir", "-q", "--max-attempts", "1",
                "-o", self.path("x.gz"), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(os.listdir(self.tmp), ["in.txt"])


class Append(TmpTest):
    def setUp(self):
        super().setUp()
        self.a = self.write("a.txt", text(300, seed=1))
        self.b = self.write("b.txt", text(200, seed=3))

    def wc(self, inp, out, *args, check=True):
        return run("wordcount", inp, "--no-job-dir", "-q", "-o", out, *args, check=check)

    def test_tsv_append_is_the_two_outputs_in_turn(self):
        out = self.path("all.tsv")
        self.wc(self.a, out, "--append")  # a file that is not there is made
        self.wc(self.b, out, "--append")
        self.assertEqual(slurp(out), reference_wordcount([self.a]) + reference_wordcount([self.b]))

    def test_csv_append_keeps_one_header_and_refuses_other_columns(self):
        out = self.path("all.csv")
        self.wc(self.a, out)
        self.wc(self.b, out, "--append")
        rows = list(csv.reader(io.StringIO(slurp(out).decode())))
        self.assertEqual(rows.count(["word", "count"]), 1)
        ref = [l.split("\t") for l in (reference_wordcount([self.a]) + reference_wordcount([self.b])).decode().splitlines()]
        self.assertEqual(rows[1:], ref)
        other = self.write("other.csv", "path,predicted\nx,y\n")
        p = self.wc(self.a, other, "--append", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("other.csv: its first line is not the header this job writes (word,count)", p.stderr.decode())
        self.assertEqual(slurp(other), b"path,predicted\nx,y\n")

    def test_tsv_header_appended_once(self):
        out = self.path("h.tsv")
        self.wc(self.a, out, "--header")
        self.wc(self.b, out, "--header", "--append")
        lines = slurp(out).decode().splitlines()
        self.assertEqual(lines[0], "word\tcount")
        self.assertEqual(lines.count("word\tcount"), 1)
        self.assertEqual("\n".join(lines[1:]) + "\n",
                         (reference_wordcount([self.a]) + reference_wordcount([self.b])).decode())

    def test_compressed_append_reads_as_one_stream(self):
        for z in (".gz", ".zst"):
            out = self.path("all.csv" + z)
            self.wc(self.a, out)
            self.wc(self.b, out, "--append")
            rows = unzip(out).decode().splitlines()
            self.assertEqual(rows.count("word,count"), 1, z)
            self.assertEqual(len(rows), 1 + len(reference_wordcount([self.a]).splitlines())
                             + len(reference_wordcount([self.b]).splitlines()), z)

    def test_refused_appends_change_nothing(self):
        torn = self.write("torn.tsv", "w1\t3\nw2\t")  # a last line without its newline
        p = self.wc(self.a, torn, "--append", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("torn.tsv: does not end with a newline", p.stderr.decode())
        self.assertEqual(slurp(torn), b"w1\t3\nw2\t")
        p = run("wordcount", self.a, "--no-job-dir", "-q", "--append", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--append needs a file or a database", p.stderr.decode())

    def test_a_failed_job_leaves_the_file_as_it_was(self):
        out = self.write("keep.txt", "first run\n")
        os.chmod(out, 0o640)
        p = run("run", "--map", "cat; exit 4", self.a, "--no-job-dir", "-q", "--max-attempts", "1",
                "--append", "-o", out, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(slurp(out), b"first run\n")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["a.txt", "b.txt", "keep.txt"])
        run("run", "--map", "cat", self.a, "--no-job-dir", "-q", "--append", "-o", out)
        self.assertEqual(slurp(out), b"first run\n" + slurp(self.a))
        self.assertEqual(stat.S_IMODE(os.stat(out).st_mode), 0o640)  # the file's own mode is kept

    def test_concurrent_appends_lose_nothing(self):
        out = self.path("both.tsv")
        big = [self.write("big%d.txt" % i, text(4000, seed=i + 1)) for i in range(4)]
        errs = []

        def go(inp):
            p = self.wc(inp, out, "--append", "--workers", "1", check=False)
            if p.returncode:
                errs.append(p.stderr.decode())
        ts = [threading.Thread(target=go, args=(b,)) for b in big]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errs, [])
        want = sorted(b"".join(reference_wordcount([b]) for b in big).splitlines())
        self.assertEqual(sorted(slurp(out).splitlines()), want)


class Links(TmpTest):
    """Symbolic links are followed, never replaced; this process's own streams are written
    straight."""

    def setUp(self):
        super().setUp()
        self.inp = self.write("in.txt", text(50))

    def test_a_symlink_stays_and_its_file_is_written(self):
        real = self.write("real.tsv", "w999\t1\n")
        os.chmod(real, 0o640)
        os.symlink("real.tsv", self.path("link.tsv"))
        run("wordcount", self.inp, "--no-job-dir", "-q", "-o", self.path("link.tsv"), "--append")
        self.assertTrue(os.path.islink(self.path("link.tsv")))
        self.assertEqual(slurp(real), b"w999\t1\n" + reference_wordcount([self.inp]))
        run("wordcount", self.inp, "--no-job-dir", "-q", "-o", self.path("link.tsv"))
        self.assertTrue(os.path.islink(self.path("link.tsv")))
        self.assertEqual(slurp(real), reference_wordcount([self.inp]))
        self.assertEqual(stat.S_IMODE(os.stat(real).st_mode), 0o640)  # a replaced file keeps its mode
        os.symlink("nowhere.tsv", self.path("dangling.tsv"))
        p = run("wordcount", self.inp, "--no-job-dir", "-q", "-o", self.path("dangling.tsv"), "--append", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("a symbolic link that leads nowhere", p.stderr.decode())

    def test_dev_stdout_redirected_to_a_file_is_written_through(self):
        out = self.path("red.tsv")
        with open(out, "wb") as f:
            p = subprocess.run([os.environ.get("DBATCH", "build/dbatch"), "wordcount", self.inp, "--no-job-dir", "-q",
                                "-o", "/dev/stdout"], stdout=f, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(slurp(out), reference_wordcount([self.inp]))
        self.assertTrue(os.path.islink("/dev/stdout"))


class AppendChecks(TmpTest):
    def setUp(self):
        super().setUp()
        self.inp = self.write("in.txt", text(50))

    def refused(self, name, data, why):
        p = self.write(name, data)
        r = run("wordcount", self.inp, "--no-job-dir", "-q", "-o", p, "--append", check=False)
        self.assertEqual(r.returncode, 1, name)
        self.assertIn(why, r.stderr.decode(), name)
        self.assertEqual(slurp(p), data if isinstance(data, bytes) else data.encode(), name)

    def test_compressed_files_are_checked_whole(self):
        good = gzip.compress(b"w1\t1\n")
        self.refused("plain.tsv.gz", "w1\t1\n", "does not read as gzip")
        self.refused("cut.tsv.gz", good[:-6], "does not read as gzip")
        self.refused("corrupt.tsv.gz", good + b"\x1f\x8bgarbage", "does not read as gzip")
        self.refused("torn.tsv.gz", gzip.compress(b"w1\t1\nw2\t"), "does not end with a newline")
        self.refused("plain.tsv.zst", "w1\t1\n", "does not read as zstd")
        z = subprocess.run(["zstd", "-q", "-c"], input=b"w1\t1\n", capture_output=True, check=True).stdout
        self.refused("cut.tsv.zst", z[:-3], "does not read as zstd")

    def test_header_checks(self):
        self.refused("crlf.csv", "word,count\r\nw1,1\r\n", "its lines end in CR LF")
        # a header longer than any line buffer: 80 labels of 70 characters
        root = self.path("train")
        for i in range(80):
            d = os.path.join(root, ("label%02d" % i) + "x" * 63)
            os.makedirs(d)
            with open(os.path.join(d, "a.txt"), "w") as f:
                f.write("tok%d common\n" % i)
        out = self.path("p.csv")
        for _ in range(2):
            run("nb", "run", "--train", root, "--test", root, "--model", self.path("m.nb"), "--predictions", out,
                "--proba", "--append", "--no-job-dir", "-q")
        rows = list(csv.reader(io.StringIO(slurp(out).decode())))
        self.assertEqual(len(rows), 1 + 2 * 80)
        self.assertEqual(len(rows[0]), 82)

    def test_a_replace_waits_for_an_append_in_progress(self):
        out = self.write("o.txt", "old\n")
        slow = subprocess.Popen([os.environ.get("DBATCH", "build/dbatch"), "run", "--map", "sleep 2; cat", self.inp,
                                 "--no-job-dir", "-q", "--append", "-o", out], stderr=subprocess.PIPE)
        time.sleep(0.7)  # the append holds the file now
        run("run", "--map", "echo REPLACED", self.inp, "--no-job-dir", "-q", "-o", out, "--workers", "0")
        slow.communicate(timeout=60)
        self.assertEqual(slow.returncode, 0)
        self.assertEqual(slurp(out), b"REPLACED\n")  # the later replace wins, whole


class Header(TmpTest):
    def test_header_applies_to_tsv_only(self):
        inp = self.write("in.txt", "a b a\n")
        out = self.path("x.tsv")
        run("wordcount", inp, "--no-job-dir", "-q", "--header", "-o", out)
        self.assertEqual(slurp(out), b"word\tcount\na\t2\nb\t1\n")
        for dest in ("x.jsonl", "sqlite:" + self.path("x.db")):
            p = run("wordcount", inp, "--no-job-dir", "-q", "--header", "-o", self.path(dest) if ":" not in dest else dest,
                    check=False)
            self.assertEqual(p.returncode, 2, dest)
            self.assertIn("--header applies to", p.stderr.decode())
        run("wordcount", inp, "--no-job-dir", "-q", "--header", "-o", self.path("x.csv"))  # CSV has one anyway
        self.assertEqual(slurp(self.path("x.csv")), b"word,count\na,2\nb,1\n")

    def test_proba_columns_are_named_and_escaped(self):
        root = self.path("train")
        for lab in ("spam", "ham\tx", "q\"uote"):
            os.makedirs(os.path.join(root, lab))
            for d in range(3):
                with open(os.path.join(root, lab, "d%d.txt" % d), "w") as f:
                    f.write("%s word%d common\n" % (lab.split("\t")[0].replace('"', ""), d))
        out = self.path("p.tsv")
        run("nb", "run", "--train", root, "--test", root, "--model", self.path("m.nb"), "--predictions", out,
            "--proba", "--header", "--no-job-dir", "-q")
        head = slurp(out).decode().splitlines()[0].split("\t")
        self.assertEqual(head[:2], ["path", "predicted"])
        self.assertEqual(sorted(head[2:]), sorted(["p_spam", "p_ham\\tx", "p_q\"uote"]))  # TSV escapes the tab
        run("nb", "test", "--corpus", root, "--model", self.path("m.nb"), "--predictions", self.path("p.csv"),
            "--proba", "--no-job-dir", "-q")
        rows = list(csv.reader(io.StringIO(slurp(self.path("p.csv")).decode())))
        self.assertEqual(sorted(rows[0][2:]), sorted(["p_spam", "p_ham\tx", "p_q\"uote"]))
        self.assertEqual(len(rows), 10)


if __name__ == "__main__":
    unittest.main()
