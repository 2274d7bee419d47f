"""Word count end to end through the CLI, against Python's own \\w and Counter."""
import glob
import gzip
import json
import os
import sqlite3
import subprocess
import unittest

from dbx import DATA, DBATCH, TmpTest, reference_wordcount, run, slurp

MULTI = os.path.join(DATA, "multilingual.txt")


class WordCount(TmpTest):
    def test_multilingual_matches_python(self):
        want = reference_wordcount([MULTI])
        self.assertGreater(len(want.splitlines()), 80)
        self.assertEqual(run("wordcount", MULTI).stdout, want)

    def test_tiny_batches_same_answer(self):
        want = reference_wordcount([MULTI])
        for opt in (["--batch-bytes", "1"], ["--batch-bytes", "7"], ["--batch-bytes", "100"],
                    ["--batch-records", "1"], ["--batch-records", "3"]):
            with self.subTest(opt=opt):
                self.assertEqual(run("wordcount", *opt, MULTI).stdout, want)

    def test_case_sensitive_and_top(self):
        want = reference_wordcount([MULTI], lower=False)
        self.assertEqual(run("wordcount", "--case-sensitive", MULTI).stdout, want)
        top = run("wordcount", "--top", "3", MULTI).stdout
        self.assertEqual(top, b"".join(reference_wordcount([MULTI]).splitlines(True)[:3]))

    def test_stdin_gzip_zstd_directory_glob(self):
        data = slurp(MULTI)
        want = reference_wordcount([MULTI])
        self.assertEqual(run("wordcount", "-", input=data).stdout, want)
        gz = self.write("d/a.txt.gz", gzip.compress(data))
        self.assertEqual(run("wordcount", "--batch-bytes", "64", gz).stdout, want)
        zst = self.path("d/b.txt.zst")
        subprocess.run(["zstd", "-q", "-o", zst, MULTI], check=True)
        self.assertEqual(run("wordcount", "--batch-records", "2", zst).stdout, want)
        # Directory: both files, recursively; hidden files and _SUCCESS markers skipped.
        self.write("d/.hidden", "hidden words")
        self.write("d/_SUCCESS", "")
        both = run("wordcount", self.path("d")).stdout
        self.assertEqual(both, reference_wordcount([MULTI, MULTI]))
        self.assertEqual(run("wordcount", self.path("d", "*.gz")).stdout, want)

    def test_lines_longer_than_batch_and_no_newline(self):
        p = self.write("long.txt", ("word " * 100000) + "\n" + "tail end")
        want = reference_wordcount([p])
        self.assertEqual(run("wordcount", "--batch-bytes", "1K", p).stdout, want)

    def test_empty_and_binary(self):
        e = self.write("empty.txt", b"")
        self.assertEqual(run("wordcount", e).stdout, b"")
        b = self.write("bin.dat", bytes(range(256)) * 50)
        self.assertEqual(run("wordcount", "--batch-bytes", "333", b).stdout, reference_wordcount([b]))

    def test_sinks(self):
        want = reference_wordcount([MULTI])
        out = self.path("o.tsv")
        run("wordcount", MULTI, "--out", out)
        self.assertEqual(slurp(out), want)
        run("wordcount", MULTI, "--out", self.path("o.jsonl"))
        rows = [json.loads(l) for l in slurp(self.path("o.jsonl"), True).splitlines()]
        self.assertEqual(["%s\t%d\n" % (r["word"], r["count"]) for r in rows],
                         want.decode().splitlines(True))
        run("wordcount", MULTI, "--out", self.path("o.csv"))
        self.assertTrue(slurp(self.path("o.csv"), True).startswith("word,count\nthe,"))
        db = self.path("r.db")
        run("wordcount", MULTI, "--out", "sqlite:" + db, "--table", "wc")
        run("wordcount", MULTI, "--out", "sqlite:" + db, "--table", "wc", "--append")
        n, total = sqlite3.connect(db).execute("select count(*), sum(count) from wc").fetchone()
        self.assertEqual(n, 2 * len(want.splitlines()))
        self.assertEqual(total, 2 * sum(int(l.split(b"\t")[1]) for l in want.splitlines()))

    def test_summary_json(self):
        s = self.path("s.json")
        run("wordcount", "--batch-records", "4", MULTI, "--out", "/dev/null", "--summary-json", s)
        j = json.loads(slurp(s))
        lines = slurp(MULTI).count(b"\n") + 1
        self.assertTrue(j["ok"])
        self.assertEqual(j["records"], lines)
        # Merged on the workers in 8 partitions by default: a map stage, then a reduce stage.
        self.assertEqual([st["name"] for st in j["stages"]], ["wordcount", "reduce"])
        self.assertEqual(j["stages"][0]["batches"], (lines + 3) // 4)
        self.assertEqual(j["stages"][1]["tasks"], 8)
        self.assertEqual(j["tasks"], (lines + 3) // 4 + 8)
        self.assertEqual(j["inputs"][0]["size"], os.path.getsize(MULTI))


class InputPaths(TmpTest):
    """Workers read each file by the absolute path the coordinator resolves once per directory
    (abs_path in coord.c): relative names, '.' and '..', symbolic links to files and to
    directories, a link in the last place, all from another working directory."""

    def test_every_spelling_of_a_path_reads_the_same_file(self):
        os.makedirs(self.path("d/sub"))
        os.makedirs(self.path("elsewhere"))
        texts = {"d/a.txt": "alpha beta\n", "d/sub/b.txt": "beta gamma\n", "elsewhere/c.txt": "gamma delta\n"}
        for name, text in texts.items():
            with open(self.path(name), "w") as f:
                f.write(text)
        os.symlink(self.path("elsewhere"), self.path("d/linkdir"))       # a directory by a link
        os.symlink(self.path("elsewhere/c.txt"), self.path("d/sub/c.lnk"))  # a file by a link
        os.symlink("../a.txt", self.path("d/sub/rel.lnk"))                  # a relative link
        args = ["d/sub/../a.txt", "./d/sub/b.txt", "d/linkdir/c.txt", "d/sub/c.lnk", "d/sub/rel.lnk", "d/linkdir/../a.txt"]
        # d/a.txt twice (once by rel.lnk), b.txt, c.txt twice; d/linkdir/.. is the directory above the
        # link's target, as the kernel resolves it (not d): its a.txt is another file.
        with open(self.path("a.txt"), "w") as f:
            f.write("epsilon\n")
        want = b"beta\t3\ngamma\t3\nalpha\t2\ndelta\t2\nepsilon\t1\n"
        outs = []
        for workers in ("0", "2"):
            p = subprocess.run([DBATCH, "wordcount", "--workers", workers, "-q", "--no-job-dir"] + args,
                               cwd=self.path(""), capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            outs.append(p.stdout)
        self.assertEqual(outs, [want, want])


class Errors(TmpTest):
    def assertFails(self, args, status, *needles, input=None):
        p = run(*args, check=False, input=input)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, status, err)
        for n in needles:
            self.assertIn(n, err)
        self.assertEqual(len(err.strip().splitlines()) <= 2, True, err)
        return p

    def test_missing_input(self):
        self.assertFails(["wordcount", self.path("nope.txt")], 1, "nope.txt", "No such file")

    def test_corrupt_gzip_leaves_no_output(self):
        bad = self.write("bad.gz", gzip.compress(b"hello world\n" * 1000)[:-30] + b"garbage!")
        out = self.path("out.tsv")
        self.assertFails(["wordcount", bad, "--out", out], 1, "bad.gz", "gzip")
        self.assertEqual(os.listdir(self.tmp), ["bad.gz"])

    def test_full_disk(self):
        self.assertFails(["wordcount", MULTI, "--out", "/dev/full"], 1, "/dev/full", "No space left")

    def test_directory_as_output(self):
        self.assertFails(["wordcount", MULTI, "--out", self.tmp], 1, "is a directory")

    def test_unreadable_input(self):
        # As an unprivileged user when this is root (CI): root reads everything.
        os.chmod(self.tmp, 0o755)
        p = self.write("secret.txt", "x")
        os.chmod(p, 0)
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        r = subprocess.run(drop + [os.path.abspath(DBATCH), "wordcount", "--no-job-dir", p], capture_output=True,
                           timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(b"secret.txt", r.stderr)
        self.assertIn(b"Permission denied", r.stderr)

    def test_existing_output_kept_on_failure(self):
        out = self.write("out.tsv", "previous\n")
        self.assertFails(["wordcount", self.path("missing"), "--out", out], 1, "missing")
        self.assertEqual(slurp(out, True), "previous\n")

    def test_usage_errors(self):
        self.assertFails(["wordcount"], 2, "no INPUT")
        self.assertFails(["wordcount", "--batch-bytes", "lots", MULTI], 2, "lots")
        self.assertFails(["wordcount", "--format", "xml", MULTI], 2, "xml")
        self.assertFails(["frobnicate"], 2, "unknown command")

    def test_help(self):
        p = run("wordcount", "--help")
        self.assertIn(b"Usage: dbatch wordcount", p.stdout)
        self.assertIn(b"--batch-bytes", p.stdout)
        self.assertIn(b"wordcount", run("--help").stdout)


if __name__ == "__main__":
    unittest.main()
