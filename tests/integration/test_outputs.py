"""A job's outputs commit together or not at all, and every destination is checked before the
job runs; with default options the batch plan (and so every byte of output) is the same for
any number of workers."""
import json
import os
import random
import shutil
import subprocess
import tempfile
import unittest

from dbx import DBATCH, TmpTest, run, slurp

MB = 1 << 20
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def corpus(root, docs_per_label, seed=3):
    rnd = random.Random(seed)
    for lab in ("ant", "bee", "cat"):
        vocab = ["%s%d" % (lab, i) for i in range(50)] + ["common%d" % i for i in range(80)]
        os.makedirs(os.path.join(root, lab), exist_ok=True)
        for d in range(docs_per_label):
            with open(os.path.join(root, lab, "d%03d.txt" % d), "w") as f:
                f.write(" ".join(rnd.choice(vocab) for _ in range(rnd.randint(5, 80))) + "\n")
    return root


def as_nobody_works():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    return subprocess.run(NOBODY + [DBATCH, "version"], capture_output=True).returncode == 0


class OutputsCommitTogether(TmpTest):
    def setUp(self):
        super().setUp()
        self.train = corpus(self.path("train"), 10)
        self.test = corpus(self.path("test"), 4, seed=9)
        self.blocker = self.write("plain-file", "not a directory\n")

    def nb(self, *extra):
        return run("nb", "run", "--train", self.train, "--test", self.test, "--proba", "--workers", "0",
                   "--no-job-dir", *extra, check=False)

    def test_failing_metrics_writes_nothing(self):
        pred, model = self.path("pred.tsv"), self.path("model.bin")
        self.write("pred.tsv", "old predictions\n")
        for metrics in (os.path.join(self.blocker, "m.tsv"), "sqlite:" + os.path.join(self.blocker, "m.db")):
            with self.subTest(metrics=metrics):
                p = self.nb("--predictions", pred, "--model", model, "--metrics", metrics)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertEqual(slurp(pred), b"old predictions\n")
                self.assertFalse(os.path.exists(model))
                self.assertIn(b"--metrics", p.stderr)
                self.assertIn(b"nothing was run", p.stderr)

    def test_predictions_on_a_full_disk_leave_no_metrics_or_model(self):
        # A full file system shows only when the predictions are written out: every output
        # is written out and synced before any is renamed into place.
        full = self.path("full")
        os.mkdir(full)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", full], capture_output=True).returncode:
            self.skipTest("cannot mount a small tmpfs here (needs root)")
        try:
            with open(os.path.join(full, "filler"), "wb") as f:  # the one page there is
                f.write(b"x" * 4096)
            metrics, model = self.path("metrics.tsv"), self.path("model.bin")
            p = self.nb("--predictions", os.path.join(full, "pred.tsv"), "--metrics", metrics, "--model", model,
                        "--batch-docs", "1")
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(b"No space left on device", p.stderr)
            self.assertFalse(os.path.exists(metrics))
            self.assertFalse(os.path.exists(model))
            self.assertEqual(os.listdir(full), ["filler"])
        finally:
            subprocess.run(["umount", full], capture_output=True)

    def test_one_sqlite_file_is_one_transaction(self):
        import sqlite3
        db = self.path("v.db")
        con = sqlite3.connect(db)
        con.executescript("create table predictions(old); insert into predictions values ('kept');"
                          "create table t(a); create view metrics as select * from t;")
        con.close()
        p = self.nb("--predictions", "sqlite:" + db, "--metrics", "sqlite:" + db)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"metrics", p.stderr)
        con = sqlite3.connect(db)
        self.assertEqual(con.execute("select * from predictions").fetchall(), [("kept",)])
        con.close()
        # Both, together, when nothing fails; the model may not share their file.
        ok = self.path("ok.db")
        p = self.nb("--predictions", "sqlite:" + ok, "--metrics", "sqlite:" + ok)
        self.assertEqual(p.returncode, 0, p.stderr)
        con = sqlite3.connect(ok)
        names = sorted(r[0] for r in con.execute("select name from sqlite_master where type='table'"))
        self.assertEqual(names, ["metrics", "predictions"])
        self.assertEqual(con.execute("select count(*) from predictions").fetchone()[0], 12)  # every test document
        con.close()
        p = self.nb("--predictions", "sqlite:" + ok, "--metrics", "sqlite:" + ok, "--model", "sqlite:" + ok)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"store the model in another database file", p.stderr)

    def test_metrics_failing_at_commit_discards_predictions(self):
        # /dev/full takes the open and fails only when written out: at the commit.
        pred = self.path("pred.tsv")
        p = self.nb("--predictions", pred, "--metrics", "/dev/full")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"/dev/full", p.stderr)
        self.assertFalse(os.path.exists(pred))

    def test_predictions_and_metrics_in_one_sqlite_file(self):
        import sqlite3
        db = self.path("r.db")
        p = self.nb("--predictions", "sqlite:" + db, "--metrics", "sqlite:" + db)
        self.assertEqual(p.returncode, 0, p.stderr)
        with sqlite3.connect(db) as c:
            self.assertEqual(c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0], 12)
            self.assertEqual(c.execute("SELECT COUNT(*) FROM metrics").fetchone()[0], 3)

    def test_unwritable_summary_writes_no_output(self):
        data = self.write("in.txt", "alpha beta alpha\n")
        out = self.path("out.tsv")
        for summary in (os.path.join(self.blocker, "s.json"), "/dev/full"):
            with self.subTest(summary=summary):
                p = run("wordcount", data, "--out", out, "--summary-json", summary, "--no-job-dir", check=False)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn(summary.encode(), p.stderr)
                self.assertFalse(os.path.exists(out))
                p = self.nb("--predictions", out, "--summary-json", summary)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertFalse(os.path.exists(out))

    def test_read_only_summary_directory_as_a_user(self):
        # Root writes into a read-only directory: the check must hold for a plain user.
        if not as_nobody_works():
            self.skipTest("needs root and setpriv to run as nobody")
        os.chmod(self.tmp, 0o755)
        data = self.write("in.txt", "alpha beta alpha\n")
        os.chmod(data, 0o644)
        outdir, ro = self.path("out"), self.path("ro")
        os.mkdir(outdir)
        os.mkdir(ro)
        os.chown(outdir, 65534, 65534)
        os.chmod(ro, 0o555)
        out = os.path.join(outdir, "o.tsv")
        p = subprocess.run(NOBODY + [DBATCH, "wordcount", data, "--out", out, "--summary-json",
                                     os.path.join(ro, "s.json"), "--no-job-dir"],
                           capture_output=True, timeout=60, cwd=outdir)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"Permission denied", p.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertEqual(os.listdir(outdir), [])


class DefaultPlanIgnoresWorkers(TmpTest):
    """The old default cut input/(4 x workers) bytes: --workers 0 and 2 gave other batches."""

    def test_wordcount_default_plan(self):
        rnd = random.Random(1)
        vocab = ["w%d" % i for i in range(500)]
        block = "".join(" ".join(rnd.choice(vocab) for _ in range(10)) + "\n" for _ in range(20000)).encode()
        data = self.path("in.txt")
        with open(data, "wb") as f:
            while f.tell() < 40 * MB:
                f.write(block)
        outs, plans = [], []
        for w in ("0", "1", "2"):
            s = self.path("s%s.json" % w)
            outs.append(run("wordcount", "--workers", w, "--summary-json", s, "--no-job-dir", data).stdout)
            j = json.loads(slurp(s, True))
            plans.append((j["stages"][0]["batches"], [st.get("plan") for st in j["stages"]]))
        self.assertEqual(outs[1], outs[0])
        self.assertEqual(outs[2], outs[0])
        # The batches are the same; with workers the counts are merged on them in partitions
        # (a reduce stage after the map stage), which the plan of the map stage records.
        cut = [(n, [{k: v for k, v in st[0].items() if k != "options"}]) for n, st in plans]
        self.assertEqual(cut[1], cut[0])
        self.assertEqual(cut[2], cut[0])
        self.assertEqual(plans[2], plans[1])
        self.assertEqual(plans[0][1][0]["batch_bytes"], 8 * MB)

    def test_nb_proba_default_plan(self):
        train, test = corpus(self.path("train"), 150), corpus(self.path("test"), 30, seed=5)
        preds, plans = [], []
        for w in ("0", "1", "2"):
            pred, s = self.path("p%s.tsv" % w), self.path("s%s.json" % w)
            run("nb", "run", "--train", train, "--test", test, "--proba", "--workers", w, "--predictions", pred,
                "--summary-json", s, "--no-job-dir")
            preds.append(slurp(pred))
            j = json.loads(slurp(s, True))
            plans.append([(st["name"], st["batches"], st.get("plan")) for st in j["stages"]])
        self.assertEqual(preds[1], preds[0])
        self.assertEqual(preds[2], preds[0])
        self.assertEqual(plans[1], plans[0])
        self.assertEqual(plans[2], plans[0])


if __name__ == "__main__":
    unittest.main()
