"""Class labels are data: they become SQLite column names and CSV header fields, and must
come out exactly as they went in -- quoted, never executed, never splitting a field."""
import csv
import io
import os
import sqlite3
import unittest

from dbx import TmpTest, run, slurp

EVIL = 'x" REAL); DROP TABLE IF EXISTS keep; --'
LABELS = sorted([EVIL, 'a"b', "pos,itive", 'neg "bad"', "plain"])
WORDS = ["apple banana", "cherry date", "elder fig", "grape honeydew", "kiwi lemon"]


class LabelsAsIdentifiers(TmpTest):
    def corpus(self):
        lines = []
        for rep in range(3):
            for label, words in zip(LABELS, WORDS):
                lines.append("%s\t%s %s common\n" % (label, words, "x%d" % rep))
        train = self.write("train.tsv", "".join(lines))
        test = self.write("test.tsv", "".join("%s\t%s\n" % (l, w) for l, w in zip(LABELS, WORDS)))
        return train, test

    def test_sqlite_columns_quoted_and_user_table_kept(self):
        train, test = self.corpus()
        db = self.path("out.db")
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE keep (v TEXT)")
        con.execute("INSERT INTO keep VALUES ('precious')")
        con.commit()
        con.close()
        tsv = self.path("pred.tsv")
        run("nb", "run", "--train", train, "--test", test, "--proba", "--predictions", tsv, "--workers", "0")
        run("nb", "run", "--train", train, "--test", test, "--proba", "--predictions", "sqlite:" + db,
            "--workers", "0")
        con = sqlite3.connect(db)
        self.assertEqual(con.execute("SELECT v FROM keep").fetchall(), [("precious",)])
        cur = con.execute("SELECT * FROM predictions")
        cols = [d[0] for d in cur.description]
        self.assertEqual(cols, ["path", "predicted"] + ["p_" + l for l in LABELS])
        rows = cur.fetchall()
        con.close()
        want = [l.split("\t") for l in slurp(tsv, True).splitlines()]
        self.assertEqual([list(map(str, r[:2])) for r in rows], [w[:2] for w in want])
        self.assertEqual([r[1] for r in rows], LABELS)  # each document predicted as its class
        for r, w in zip(rows, want):
            self.assertEqual([repr(x) for x in r[2:]], [repr(float(x)) for x in w[2:]])

    def test_csv_header_aligned_with_rows(self):
        train, test = self.corpus()
        out = self.path("pred.csv")
        run("nb", "run", "--train", train, "--test", test, "--proba", "--predictions", out, "--workers", "0")
        table = list(csv.reader(io.StringIO(slurp(out, True), newline="")))
        header, rows = table[0], table[1:]
        self.assertEqual(header, ["path", "predicted"] + ["p_" + l for l in LABELS])
        self.assertEqual(len(rows), len(LABELS))
        for r in rows:
            self.assertEqual(len(r), len(header), r)
        self.assertEqual([r[1] for r in rows], LABELS)
        try:
            import pandas
        except ImportError:
            return
        df = pandas.read_csv(out)
        self.assertEqual(list(df.columns), header)
        self.assertEqual(list(df["predicted"]), LABELS)


if __name__ == "__main__":
    unittest.main()
