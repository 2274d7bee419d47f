"""Class labels that differ only in case get distinct column names in every sink (SQLite
compares names ignoring case), and labels with terminal controls are escaped in the report."""
import csv
import io
import json
import sqlite3
import unittest

from dbx import TmpTest, run, slurp

LABELS = sorted(["Spam", "spam", "SPAM", "ham"])  # ['SPAM', 'Spam', 'ham', 'spam']
WORDS = ["apple banana", "cherry date", "elder fig", "grape honeydew"]
WANT_COLS = ["path", "predicted", "p_SPAM", "p_Spam_1", "p_ham", "p_spam_3"]


class LabelsCaseAndControls(TmpTest):
    def corpus(self, labels):
        lines = ["%s\t%s %s common\n" % (l, w, "x%d" % rep) for rep in range(3) for l, w in zip(labels, WORDS)]
        train = self.write("train.tsv", "".join(lines))
        test = self.write("test.tsv", "".join("%s\t%s\n" % (l, w) for l, w in zip(labels, WORDS)))
        return train, test

    def test_case_colliding_labels_in_sqlite_csv_jsonl(self):
        train, test = self.corpus(LABELS)
        db = self.path("c.db")
        run("nb", "run", "--train", train, "--test", test, "--proba", "--predictions", "sqlite:" + db, "--workers", "0")
        con = sqlite3.connect(db)
        cur = con.execute("SELECT * FROM predictions")
        self.assertEqual([d[0] for d in cur.description], WANT_COLS)
        rows = cur.fetchall()
        con.close()
        self.assertEqual([r[1] for r in rows], LABELS)
        out = self.path("pred.csv")
        run("nb", "run", "--train", train, "--test", test, "--proba", "--predictions", out, "--workers", "0")
        table = list(csv.reader(io.StringIO(slurp(out, True), newline="")))
        self.assertEqual(table[0], WANT_COLS)
        self.assertEqual([r[1] for r in table[1:]], LABELS)
        js = self.path("pred.jsonl")
        run("nb", "run", "--train", train, "--test", test, "--proba", "--predictions", js, "--workers", "0")
        recs = [json.loads(l) for l in slurp(js, True).splitlines()]
        self.assertEqual([list(r.keys()) for r in recs], [WANT_COLS] * len(LABELS))

    def test_report_escapes_terminal_controls(self):
        evil = "\x1b[2J\x1b]0;pwn\x07x"
        labels = sorted([evil, "plain", "other", "third"])
        train, test = self.corpus(labels)
        out = run("nb", "run", "--train", train, "--test", test, "--workers", "0").stdout
        self.assertNotIn(b"\x1b", out)
        self.assertNotIn(b"\x07", out)
        shown = "\\e[2J\\e]0;pwn\\x07x"
        # The layout of classification_report, with the escaped label's width.
        width = len(shown)
        lines = out.decode().splitlines()
        self.assertEqual(lines[1], " " * width + "  precision    recall  f1-score   support")
        self.assertIn(shown.rjust(width) + "       1.00      1.00      1.00         1", lines)
        self.assertIn("plain".rjust(width) + "       1.00      1.00      1.00         1", lines)


if __name__ == "__main__":
    unittest.main()
