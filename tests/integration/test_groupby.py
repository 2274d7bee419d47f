"""dbatch groupby and dbatch cooccur, checked against keyed_ref.py (Python's csv and json
modules, written from the spec) for CSV with quoted newlines and CRLF, TSV, JSONL, unicode
keys, missing values, bad records, every worker count and batch size, every output format."""
import json
import os
import sqlite3
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from dbx import TmpTest, run, slurp  # noqa: E402
import gen_keyed  # noqa: E402
import keyed_ref  # noqa: E402

SPECS = "count,sum:qty,mean:price,min:price,max:qty,first:region,last:region,distinct:region,top:2:qty"
CUTS = [("0", "1K"), ("2", "1K"), ("2", "7K"), ("1", "64K")]


def rows_tsv(rows):
    return keyed_ref.write_tsv(rows)


class GroupBy(TmpTest):
    def check(self, paths, keys, specs, fmt=None, extra=(), cuts=CUTS):
        header, rows, bad = keyed_ref.groupby_ref(paths, fmt, keys, specs)
        want = rows_tsv(rows)
        for workers, batch in cuts:
            args = ["groupby", *paths, "--key", keys, "--agg", specs, "--workers", workers, "--batch-bytes", batch,
                    "--no-job-dir", "-q", *extra]
            if fmt:
                args += ["--input-format", fmt]
            got = run(*args).stdout
            self.assertEqual(got, want, "--workers %s --batch-bytes %s" % (workers, batch))
        return header, rows, bad

    def test_csv_with_quoted_commas_quotes_newlines(self):
        p = os.path.join(self.tmp, "sales.csv")
        gen_keyed.csv_sales(p, 60000, 50, seed=3, quoted=0.2)
        self.assertIn(b'"', slurp(p))
        self.assertIn(b'\n', slurp(p).split(b'"')[1] + b'\n')
        _, rows, _ = self.check([p], "region", SPECS)
        self.assertGreater(len(rows), 5)
        self.check([p], "region,product", "count,sum:qty")

    def test_crlf_unicode_missing_values_and_no_trailing_newline(self):
        p = self.write("in/a.csv", "k,v,w\r\nünï,1,x\r\n\"日本\",2.5,\r\nünï,,y\r\n\"a\r\nb\",4,z\r\n,5,q\r\nünï,3,".encode())
        header, rows, bad = self.check([p], "k", "count,sum:v,mean:v,first:w,last:w,distinct:w")
        self.assertEqual(bad, 1)  # the row without a key
        self.assertEqual(rows[-1][0], "日本")

    def test_tsv_and_jsonl(self):
        t = os.path.join(self.tmp, "s.tsv")
        with open(t, "w") as f:
            f.write("region\tproduct\tqty\tprice\n")
            for i in range(3000):
                f.write("r%d\tp%d\t%d\t%s\n" % (i % 7, i % 13, i % 11, (i % 9) / 4))
        self.check([t], "region,product", "count,sum:qty,mean:price")
        j = os.path.join(self.tmp, "s.jsonl")
        gen_keyed.jsonl_sales(j, 50000, 40, seed=4, nulls=0.1)
        self.check([j], "region", SPECS)
        self.check([j], "product", "count,sum:qty,distinct:region")

    def test_several_inputs_and_gzip(self):
        import gzip
        a = os.path.join(self.tmp, "a.csv")
        gen_keyed.csv_sales(a, 20000, 30, seed=5, quoted=0.1)
        b = os.path.join(self.tmp, "b.csv.gz")
        c = os.path.join(self.tmp, "c.csv")
        gen_keyed.csv_sales(c, 20000, 30, seed=6, quoted=0.1)
        with open(c, "rb") as f, gzip.open(b, "wb") as g:
            g.write(f.read())
        os.unlink(c)
        self.check([a, b], "product", "count,sum:qty,first:region,last:region")

    def test_bad_records_skipped_or_failing_with_file_and_line(self):
        p = self.write("in/b.csv", b"k,v\na,1\nb,notanumber\na,2\nd,3\n")
        header, rows, bad = keyed_ref.groupby_ref([p], None, "k", "sum:v")
        res = run("groupby", p, "--key", "k", "--agg", "sum:v", "--no-job-dir")
        self.assertEqual(res.stdout, rows_tsv(rows))
        self.assertIn(b"b.csv line 3", res.stderr)
        self.assertIn(b"is not a number", res.stderr)
        out = os.path.join(self.tmp, "o.csv")
        res = run("groupby", p, "--key", "k", "--agg", "sum:v", "--on-bad-record", "fail", "-o", out, "--no-job-dir",
                  check=False)
        self.assertEqual(res.returncode, 1)
        self.assertIn(b"b.csv line 3", res.stderr)
        self.assertFalse(os.path.exists(out))
        # Malformed CSV (RFC 4180 has no quote inside an unquoted field; a quote never closed):
        # bad records named by line. A stray quote opens a quoted run to the next quote, so the
        # record ends where the splitter and the reader both end it.
        q = self.write("in/q.csv", b'k,v\na,1\nc,un"q\nb,2\nd,3\ne,"open\n')
        res = run("groupby", q, "--key", "k", "--agg", "count", "--no-job-dir")
        self.assertEqual(res.stdout, b"a\t1\n")
        self.assertIn(b"q.csv line 3: CSV: a quote inside an unquoted field in column 2", res.stderr)

    def test_outputs_csv_jsonl_sqlite(self):
        p = os.path.join(self.tmp, "sales.csv")
        gen_keyed.csv_sales(p, 30000, 20, seed=7, quoted=0.2)
        specs = "count,sum:qty,mean:price,first:region"
        header, rows, _ = keyed_ref.groupby_ref([p], None, "product,region", specs)
        for ext in ("csv", "jsonl"):
            out = os.path.join(self.tmp, "out." + ext)
            run("groupby", p, "--key", "product,region", "--agg", specs, "--workers", "2", "--batch-bytes", "4K",
                "-o", out, "--no-job-dir", "-q")
            want = keyed_ref.write_csv(header, rows) if ext == "csv" else keyed_ref.write_jsonl(header, rows, 2)
            self.assertEqual(slurp(out), want, ext)
        db = os.path.join(self.tmp, "g.db")
        run("groupby", p, "--key", "product,region", "--agg", specs, "-o", "sqlite:" + db, "--table", "g",
            "--no-job-dir", "-q")
        con = sqlite3.connect(db)
        got = con.execute('SELECT product, region, count, "sum:qty", "mean:price", "first:region" FROM g').fetchall()
        con.close()
        self.assertEqual([(a, b, str(c), str(d), float(e), f) for a, b, c, d, e, f in got],
                         [(r[0], r[1], r[2], r[3], float(r[4]), r[5]) for r in rows])

    def test_empty_inputs(self):
        e = self.write("in/e.csv", b"")
        h = self.write("in/h.csv", b"k,v\n")
        self.assertEqual(run("groupby", e, h, "--key", "k", "--agg", "count", "--no-job-dir", "-q").stdout, b"")
        j = self.write("in/e.jsonl", b"")
        out = os.path.join(self.tmp, "o.csv")
        run("groupby", j, "--key", "k", "--agg", "count,sum:v", "-o", out, "--no-job-dir", "-q")
        self.assertEqual(slurp(out), b"k,count,sum:v\n")

    def test_usage_errors_name_what_is_wrong(self):
        p = self.write("in/a.csv", b"region,qty\nx,1\n")
        q = self.write("in/b.csv", b"qty,region\n1,x\n")
        d = self.write("in/d.dat", b"x\n")
        cases = [(["--key", "nope", "--agg", "count", p], b"no column 'nope'; the columns are: region, qty"),
                 (["--key", "region", "--agg", "sum:missing", p], b"no column 'missing'"),
                 (["--key", "region", "--agg", "sum", p], b"needs a column"),
                 (["--key", "region", "--agg", "count:qty", p], b"count takes no column"),
                 (["--key", "region", "--agg", "median:qty", p], b"unknown aggregate"),
                 (["--key", "region", "--agg", "count", p, q], b"different headers"),
                 (["--key", "region", "--agg", "count", d], b"cannot tell its format"),
                 (["--key", "region", "--agg", "count", "--input-format", "xml", p], b"csv, tsv or jsonl"),
                 (["--agg", "count", p], b"--key"),
                 (["--key", "region", p], b"--agg")]
        for args, msg in cases:
            res = run("groupby", *args, "--no-job-dir", check=False)
            self.assertEqual(res.returncode, 2, args)
            self.assertIn(msg, res.stderr, args)
        res = run("groupby", os.path.join(self.tmp, "none.csv"), "--key", "k", "--agg", "count", "--no-job-dir",
                  check=False)
        self.assertNotEqual(res.returncode, 0)
        self.assertIn(b"none.csv", res.stderr)


class Cooccur(TmpTest):
    def check(self, paths, top=10, max_basket=1000, cuts=CUTS):
        rows, left, bad = keyed_ref.cooccur_ref(paths, None, "user", "item", top, max_basket)
        want = rows_tsv(rows)
        for workers, batch in cuts:
            summ = os.path.join(self.tmp, "s.json")
            got = run("cooccur", *paths, "--user", "user", "--item", "item", "--top", str(top), "--max-basket",
                      str(max_basket), "--workers", workers, "--batch-bytes", batch, "--summary-json", summ,
                      "--no-job-dir", "-q").stdout
            self.assertEqual(got, want, "--workers %s --batch-bytes %s" % (workers, batch))
            with open(summ) as f:
                s = json.load(f)
            self.assertEqual(s["left_out"]["count"], left)
        return rows, left

    def test_zipf_orders_equal_the_reference(self):
        p = os.path.join(self.tmp, "orders.csv")
        gen_keyed.orders(p, 6000, 600, 80, heavy_users=3, heavy_orders=150)
        rows, left = self.check([p], top=5, max_basket=50)
        self.assertEqual(left, 3)
        self.assertGreater(len(rows), 100)

    def test_ties_unicode_and_quoted_items(self):
        p = self.write("in/o.csv", 'user,item\nu1,"a,b"\nu1,β\nu1,c\nu2,"a,b"\nu2,β\nu3,c\nu3,β\nu3,β\nu4,"x\ny"\nu4,c\n'
                       .encode())
        rows, _ = self.check([p], top=2, cuts=[("0", "1K"), ("2", "16")])
        self.assertIn(("β", "a,b", "2"), rows)


if __name__ == "__main__":
    unittest.main()
