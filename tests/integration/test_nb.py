"""The text classifier against scikit-learn: same vocabulary, same predictions, probabilities
within 1e-9, the same report; the same answer on any number of workers and any policy;
model files that are damaged fail clearly."""
import json
import os
import re
import sqlite3
import subprocess
import sys
import unittest

from dbx import DATA, TmpTest, run, slurp

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(DATA, "nbcorpus")
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))


def sklearn_reference(train, test):
    out = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "nb_reference.py"), train, test],
                         capture_output=True, check=True, timeout=600).stdout
    return json.loads(out)


def report_of(stdout):
    """The classification report block of `dbatch nb test|run` output."""
    text = stdout.decode()
    start = text.index("              precision") if "              precision" in text else text.index("precision")
    start = text.rfind("\n", 0, start) + 1
    end = text.index("\n", text.index("weighted avg")) + 1
    return text[start:end]


class MatchesScikitLearn(TmpTest):
    def compare(self, train, test, extra=()):
        ref = sklearn_reference(train, test)
        pred = self.path("pred.tsv")
        p = run("nb", "run", "--train", train, "--test", test, "--predictions", pred, "--proba", *extra)
        m = re.search(rb"vocabulary of (\d+) terms", p.stdout)
        self.assertEqual(int(m.group(1)), ref["vocabulary"])
        rows = [l.split("\t") for l in slurp(pred, True).splitlines()]
        self.assertEqual([r[0] for r in rows], ref["names"])
        self.assertEqual([r[1] for r in rows], ref["pred"])
        worst = max(abs(float(x) - y) for r, pr in zip(rows, ref["proba"]) for x, y in zip(r[2:], pr))
        self.assertLess(worst, 1e-9)
        self.assertEqual(report_of(p.stdout), ref["report"])
        return p

    def test_fixture_corpus(self):
        # Several scripts, underscores, mixed case, invalid UTF-8, an empty document, a class
        # (gamma) absent from the test set and one (delta) absent from training.
        self.compare(os.path.join(FIX, "train"), os.path.join(FIX, "test"))

    def test_spamassassin_split(self):
        try:
            root = subprocess.run([os.path.join(TOP, "scripts", "fetch-spamassassin.sh")], capture_output=True,
                                  timeout=300, check=True).stdout.decode().strip()
        except Exception as e:  # no network or no npm: nothing to compare
            self.skipTest("SpamAssassin corpus unavailable: %s" % e)
        self.compare(os.path.join(root, "train"), os.path.join(root, "test"))

    def test_tsv_corpus(self):
        def tsv(split):
            lines = []
            for label in sorted(os.listdir(os.path.join(FIX, split))):
                for f in sorted(os.listdir(os.path.join(FIX, split, label))):
                    t = slurp(os.path.join(FIX, split, label, f)).replace(b"\n", b" ").replace(b"\t", b" ")
                    lines.append(label.encode() + b"\t" + t + b"\n")
            return self.write(split + ".tsv", b"".join(lines))
        train, test = tsv("train"), tsv("test")
        ref = sklearn_reference(os.path.join(FIX, "train"), os.path.join(FIX, "test"))
        p = run("nb", "run", "--train", train, "--test", test, "--predictions", "-", "--batch-docs", "2")
        rows = [l.split(b"\t") for l in p.stdout.split(b"\n") if l.startswith(test.encode())]
        self.assertEqual([r[1].decode() for r in rows], ref["pred"])
        self.assertEqual(rows[0][0].decode(), test + ":1")
        self.assertEqual(report_of(p.stdout), ref["report"])


    def test_jsonl_corpus(self):
        def jsonl(split):
            lines = []
            for label in sorted(os.listdir(os.path.join(FIX, split))):
                for f in sorted(os.listdir(os.path.join(FIX, split, label))):
                    t = slurp(os.path.join(FIX, split, label, f)).decode("utf-8", errors="replace")
                    lines.append(json.dumps({"id": f, "label": label, "text": t}, ensure_ascii=True))
            lines.insert(1, "{this is not json")  # a bad record: counted and skipped
            return self.write(split + ".jsonl", "\n".join(lines) + "\n")
        train, test = jsonl("train"), jsonl("test")
        ref = sklearn_reference(os.path.join(FIX, "train"), os.path.join(FIX, "test"))
        s = self.path("s.json")
        p = run("nb", "run", "--train", train, "--test", test, "--predictions", "-", "--summary-json", s)
        rows = [l.split(b"\t") for l in p.stdout.split(b"\n") if l.startswith(test.encode())]
        self.assertEqual([r[1].decode() for r in rows], ref["pred"])
        self.assertEqual(report_of(p.stdout), ref["report"])
        self.assertIn(b"vocabulary of %d terms" % ref["vocabulary"], p.stdout)
        self.assertEqual(json.loads(slurp(s, True))["bad_records"], 3)  # two training stages + test


class Distributed(TmpTest):
    def test_same_predictions_any_workers_and_policy(self):
        train, test = os.path.join(FIX, "train"), os.path.join(FIX, "test")
        want = run("nb", "run", "--train", train, "--test", test, "--workers", "0", "--proba",
                   "--predictions", "-", "--batch-docs", "1").stdout
        want = want[:want.index(b"\nvocabulary ")]
        for w in ("1", "2"):
            for pol in ("least-loaded", "round-robin", "random"):
                with self.subTest(workers=w, policy=pol):
                    out = run("nb", "run", "--train", train, "--test", test, "--workers", w, "--policy", pol,
                              "--proba", "--predictions", "-", "--batch-docs", "1").stdout
                    self.assertEqual(out[:out.index(b"\nvocabulary ")], want)


class ModelFiles(TmpTest):
    def test_train_then_test_file_and_sqlite(self):
        train, test = os.path.join(FIX, "train"), os.path.join(FIX, "test")
        both = run("nb", "run", "--train", train, "--test", test, "--predictions", "-").stdout
        for model in (self.path("m.dbnb"), "sqlite:" + self.path("m.db")):
            run("nb", "train", "--corpus", train, "--model", model)
            db = self.path("out.db")  # predictions and metrics share one database, as in the demo
            p = run("nb", "test", "--model", model, "--corpus", test, "--predictions", "sqlite:" + db,
                    "--metrics", "sqlite:" + db)
            n = sqlite3.connect(db).execute("select count(*) from predictions").fetchone()[0]
            self.assertEqual(n, 6)
            self.assertEqual(report_of(p.stdout), report_of(both))
            labels = [r[0] for r in sqlite3.connect(db).execute("select label from metrics order by label")]
            self.assertEqual(labels, ["alpha", "beta", "delta"])

    def test_damaged_models_fail_clearly(self):
        train, test = os.path.join(FIX, "train"), os.path.join(FIX, "test")
        good = self.path("m.dbnb")
        run("nb", "train", "--corpus", train, "--model", good)
        data = slurp(good)
        cases = {
            "truncated": (data[:len(data) // 2], "truncated"),
            "corrupt": (data[:40] + bytes([data[40] ^ 0xff]) + data[41:], "checksum"),
            "foreign": (b"PK\x03\x04 a zip file, not a model" * 3, "not a dbatch model file"),
            "empty": (b"", "not a dbatch model file"),
        }
        for name, (blob, needle) in cases.items():
            with self.subTest(case=name):
                m = self.write(name + ".dbnb", blob)
                p = run("nb", "test", "--model", m, "--corpus", test, check=False)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn(needle, p.stderr.decode())
                self.assertIn(m, p.stderr.decode())
        p = run("nb", "test", "--model", self.tmp, "--corpus", test, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"is a directory", p.stderr)
        p = run("nb", "test", "--model", self.path("missing.dbnb"), "--corpus", test, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("missing.dbnb", p.stderr.decode())

    def test_usage_and_bad_corpus(self):
        self.assertEqual(run("nb", "run", "--train", FIX, check=False).returncode, 2)
        self.assertEqual(run("nb", "frobnicate", check=False).returncode, 2)
        p = run("nb", "run", "--train", self.path("nope"), "--test", FIX, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("nope", p.stderr.decode())
        os.makedirs(self.path("empty"))
        p = run("nb", "train", "--corpus", self.path("empty"), "--model", self.path("m"), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no documents", p.stderr.decode())


if __name__ == "__main__":
    unittest.main()
