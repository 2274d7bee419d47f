"""The Python references of the keyed jobs (keyed_ref.py) checked on small hand-computed
cases, so the C code is compared against something known right. These do not run dbatch."""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from dbx import TmpTest  # noqa: E402
import keyed_ref  # noqa: E402
from keyed_ref import (KeyedError, cooccur_ref, fmt_num, groupby_ref, parse_num, reduce_cmd_input,  # noqa: E402
                       reduce_ref, tsv_escape, write_csv, write_jsonl, write_tsv)

HERE = os.path.dirname(os.path.abspath(__file__))


class Numbers(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_num("42"), 42)
        self.assertIs(type(parse_num("-7")), int)
        self.assertEqual(parse_num("+3"), 3)
        self.assertEqual(parse_num("9223372036854775807"), 2**63 - 1)
        self.assertEqual(parse_num("9223372036854775808"), 9223372036854775808.0)  # past int64: a REAL
        self.assertIs(type(parse_num("9223372036854775808")), float)
        self.assertEqual(parse_num("1.5"), 1.5)
        self.assertEqual(parse_num(".5"), 0.5)
        self.assertEqual(parse_num("1."), 1.0)
        self.assertEqual(parse_num("1e3"), 1000.0)
        self.assertIs(type(parse_num("1e3")), float)
        for bad in ["", " 1", "1 ", "1_0", "0x10", "inf", "nan", "Infinity", "1e400", "abc", "1,5", "\u0661", "--1"]:
            self.assertIsNone(parse_num(bad), bad)
        self.assertEqual(parse_num(b"12"), 12)

    def test_format(self):
        self.assertEqual(fmt_num(6.0), "6.0")
        self.assertEqual(fmt_num(0.1), "0.1")
        self.assertEqual(fmt_num(1e20), "1e+20")
        self.assertEqual(fmt_num(2.5), "2.5")
        self.assertEqual(fmt_num(1 / 3), "0.3333333333333333")
        self.assertEqual(fmt_num(10.0), "10.0")  # Python's repr: fixed from 1e-4 to 1e16
        self.assertEqual(fmt_num(120.0), "120.0")
        self.assertEqual(fmt_num(1.5e-05), "1.5e-05")
        self.assertEqual(fmt_num(1e16), "1e+16")
        self.assertEqual(fmt_num(-12), "-12")
        self.assertEqual(fmt_num(123456789.0), "123456789.0")
        self.assertEqual(write_csv(["k", "v"], [("a ", " b"), ("", 'q"'), ("x", None)]),
                         b'k,v\n"a "," b"\n,"q"""\nx,\n')
        self.assertEqual(tsv_escape("a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e")


class TreeSum(unittest.TestCase):
    def test_the_engines_fold(self):
        a, b, c, d, e = 0.1, 0.2, 0.3, 3.3, 0.01
        self.assertEqual(keyed_ref.tree_sum([a]), a)
        self.assertEqual(keyed_ref.tree_sum([a, b, c]), (a + b) + c)
        self.assertEqual(keyed_ref.tree_sum([a, b, c, d, e]), ((a + b) + (c + d)) + e)
        self.assertNotEqual(((a + b) + (c + d)) + e, (((a + b) + c) + d) + e)  # the order shows
        self.assertEqual(keyed_ref.tree_sum([None, b, None, d, e]), (b + d) + e)
        self.assertIsNone(keyed_ref.tree_sum([None, None]))


class Reduce(unittest.TestCase):
    def test_all_aggregates(self):
        out = b"b\t2\na\t1\nb\t2\nb\t0.25\na\t3\nc\t5\nb\t7\n"
        rows, bad = reduce_ref(out, "count,sum,min,max,mean,first,last,distinct,top:2")
        self.assertEqual(bad, 0)
        self.assertEqual(rows, [
            ("a", "2", "4", "1", "3", "2.0", "1", "3", "2", "1=1,3=1"),
            ("b", "4", "11.25", "0.25", "7", "2.8125", "2", "7", "3", "2=2,0.25=1"),
            ("c", "1", "5", "5", "5", "5.0", "5", "5", "1", "5=1"),
        ])

    def test_bad_records_dropped_whole(self):
        lines = ["k\t1", "k\tx", "k\t", "nokey", "k\t2"]
        self.assertEqual(reduce_ref(lines, "count,sum"), ([("k", "2", "3")], 3))
        # Without a numeric aggregate, nothing is bad: the no-tab line is key 'nokey', value ''.
        rows, bad = reduce_ref(lines, "count,first,last,distinct")
        self.assertEqual((rows, bad), ([("k", "4", "1", "2", "4"), ("nokey", "1", "", "", "1")], 0))
        with self.assertRaises(KeyedError):
            reduce_ref(lines, "sum", on_bad="fail")

    def test_overflow_and_mixed(self):
        with self.assertRaisesRegex(KeyedError, "'big'"):
            reduce_ref(["big\t9223372036854775807", "big\t1"], "sum")
        self.assertEqual(reduce_ref(["k\t-9223372036854775808"], "sum")[0], [("k", "-9223372036854775808")])
        # One REAL makes the sum a double: 6.0 prints as 6.
        self.assertEqual(reduce_ref(["k\t1", "k\t2", "k\t3.0"], "sum")[0], [("k", "6.0")])
        self.assertEqual(reduce_ref(["k\t1", "k\t2.5"], "sum,min,max")[0], [("k", "3.5", "1", "2.5")])

    def test_bytewise_order_and_unicode(self):
        rows, _ = reduce_ref("é\t1\nz\t1\nZ\t1\n\t1\n".encode(), "count")
        self.assertEqual([r[0] for r in rows], ["", "Z", "z", "é"])
        # Invalid UTF-8 stays bytes: 0xFF sorts after a 4-byte character (0xF0...).
        rows, _ = reduce_ref(b"\xff\t1\n\xf0\x9f\x98\x80\t1\n", "top:1")
        self.assertEqual(write_tsv(rows), b"\xf0\x9f\x98\x80\t1=1\n\xff\t1=1\n")
        rows, _ = reduce_ref(b"k\t\xff\nk\t\xf0\x9f\x98\x80\n", "top:1")
        self.assertEqual(write_tsv(rows), b"k\t\xf0\x9f\x98\x80=1\n")

    def test_top_ties(self):
        rows, _ = reduce_ref(["k\tb", "k\ta", "k\tc", "k\tc", "k\tB"], "top:3")
        self.assertEqual(rows, [("k", "c=2,B=1,a=1")])

    def test_empty(self):
        self.assertEqual(reduce_ref(b"", "count,sum"), ([], 0))
        self.assertEqual(reduce_cmd_input(b""), b"")

    def test_reduce_cmd_input(self):
        self.assertEqual(reduce_cmd_input(b"b\t1\na\tx\nb\t0\nc\na\t\ty\n"),
                         b"a\tx\na\t\ty\nb\t1\nb\t0\nc\t\n")


class GroupBy(TmpTest):
    def test_csv_quoted_newlines_crlf_unicode(self):
        p = self.write("s.csv", 'region,product,qty,price\r\n'
                       '"North, East",ü,2,1.25\r\n'
                       'South,"a\r\nb",1,0.5\r\n'
                       '"North, East",ü,3,0.25\r\n'
                       'South,b,x,1\r\n'          # not a number for sum: a bad record
                       ',b,4,1\r\n'                # missing key: a bad record
                       'South,b,,2\r\n'           # missing qty: skipped by sum, counted
                       'South,b,1\r\n')           # wrong field count: bad
        header, rows, bad = groupby_ref([p], None, "region", ["count,sum:qty", "mean:price", "first:product"])
        self.assertEqual(header, ("region", "count", "sum:qty", "mean:price", "first:product"))
        self.assertEqual(rows, [("North, East", "2", "5", "0.75", "ü"), ("South", "2", "1", "1.25", "a\r\nb")])
        self.assertEqual(bad, 3)
        self.assertEqual(write_csv(header, rows),
                         'region,count,sum:qty,mean:price,first:product\n'
                         '"North, East",2,5,0.75,ü\nSouth,2,1,1.25,"a\r\nb"\n'.encode())
        self.assertEqual(write_tsv(rows), 'North, East\t2\t5\t0.75\tü\nSouth\t2\t1\t1.25\ta\\r\\nb\n'.encode())

    def test_two_keys_and_missing_aggregate(self):
        p = self.write("t.tsv", "a\tb\tv\nx\t1\t\nx\t1\t\nx\t0\t3\n")
        header, rows, bad = groupby_ref([p], None, ["a", "b"], "count,sum:v,distinct:v,top:1:v")
        self.assertEqual(rows, [("x", "0", "1", "3", "1", "3=1"), ("x", "1", "2", None, None, None)])
        self.assertEqual(write_tsv(rows), b"x\t0\t1\t3\t1\t3=1\nx\t1\t2\t\t\t\n")
        self.assertEqual(write_jsonl(header, rows, 2).splitlines()[1],
                         b'{"a":"x","b":"1","count":2,"sum:v":null,"distinct:v":null,"top:1:v":null}')

    def test_jsonl_values(self):
        p = self.write("j.jsonl", '{"k": "a", "v": 1.50, "o": {"x": [1, 2]}}\n'
                       '{"k": "a", "v": 2, "o": true}\n\n'
                       '{"k": null, "v": 1}\n'     # missing key: bad
                       '{"k": "b"}\n'
                       'not json\n'                 # bad
                       '{"k": "b", "v": "1e1"}\n'
                       '{"k": "b", "v": NaN}\n')    # not JSON: bad
        header, rows, bad = groupby_ref([p], None, "k", "count,sum:v,first:v,first:o,last:o")
        self.assertEqual(rows, [("a", "2", "3.5", "1.50", '{"x": [1, 2]}', "true"),
                                ("b", "2", "10.0", "1e1", None, None)])
        self.assertEqual(bad, 3)

    def test_headers_columns_and_empty(self):
        e = self.write("e.csv", "")
        self.assertEqual(groupby_ref([e], None, "k", "count"), (("k", "count"), [], 0))
        a = self.write("a.csv", "k,v\n1,2\n")
        b = self.write("b.csv", "k,w\n1,2\n")
        with self.assertRaisesRegex(KeyedError, "header"):
            groupby_ref([a, b], None, "k", "count")
        with self.assertRaisesRegex(KeyedError, "no column 'z'.*k, v"):
            groupby_ref([a], None, "k", "sum:z")

    def test_overflow_names_key(self):
        p = self.write("o.csv", "k,v\nbig,9223372036854775807\nbig,1\nok,1\n")
        with self.assertRaisesRegex(KeyedError, "big"):
            groupby_ref([p], None, "k", "sum:v")

    def test_by_hand(self):
        p = self.write("s.csv", "a,b\nx,1\ny,2\nx,0.5\n")
        out = subprocess.run([sys.executable, os.path.join(HERE, "keyed_ref.py"), "groupby", "--key", "a",
                              "--agg", "sum:b", p], capture_output=True, timeout=60, check=True).stdout
        self.assertEqual(out, b"x\t1.5\ny\t2\n")


class Cooccur(TmpTest):
    def test_pairs_ties_top_and_left_out(self):
        p = self.write("o.csv", "user,item\n"
                       "u1,a\nu1,b\nu1,c\nu1,a\n"
                       "u2,a\nu2,b\n"
                       "u3,b\nu3,c\n"
                       "u4,a\nu4,b\nu4,c\nu4,d\n"   # 4 items: over --max-basket 3
                       "u5,\n")                      # missing item: bad
        rows, left, bad = cooccur_ref([p], None, "user", "item", top=1, max_basket=3)
        self.assertEqual((left, bad), (1, 1))
        self.assertEqual(rows, [("a", "b", "2"), ("b", "a", "2"), ("c", "b", "2")])
        rows, _, _ = cooccur_ref([p], None, "user", "item", top=10, max_basket=3)
        self.assertEqual(rows, [("a", "b", "2"), ("a", "c", "1"), ("b", "a", "2"), ("b", "c", "2"),
                                ("c", "b", "2"), ("c", "a", "1")])
        rows, left, _ = cooccur_ref([p], None, "user", "item", top=10, max_basket=1000)
        self.assertEqual(left, 0)
        self.assertIn(("d", "a", "1"), rows)

    def test_empty(self):
        p = self.write("o.csv", "user,item\n")
        self.assertEqual(cooccur_ref([p], None, "user", "item"), ([], 0, 0))


class Generators(TmpTest):
    """gen_keyed.py: seeded (same bytes for the same arguments), well-formed, exact sums."""

    def test_csv_sales(self):
        import csv
        from gen_keyed import csv_sales
        a, b = self.path("a.csv"), self.path("b.csv")
        csv_sales(a, 200000, 50, seed=3, quoted=0.05)
        csv_sales(b, 200000, 50, seed=3, quoted=0.05)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            self.assertEqual(fa.read(), fb.read())
        with open(a, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, strict=True))
        self.assertEqual(rows[0], ["region", "product", "qty", "price"])
        self.assertTrue(all(len(r) == 4 for r in rows))
        self.assertIn("Cr\r\nLf", {r[0] for r in rows})
        self.assertTrue(all(float(r[3]) * 4 == int(float(r[3]) * 4) for r in rows[1:]))
        header, out, bad = groupby_ref([a], None, "product", "count,sum:price")
        self.assertEqual((len(out), bad), (50, 0))
        self.assertEqual(sum(int(r[1]) for r in out), len(rows) - 1)

    def test_jsonl_kv_orders(self):
        from gen_keyed import jsonl_sales, kv_lines, orders
        j, kv, o = self.path("s.jsonl"), self.path("kv.tsv"), self.path("o.tsv")
        jsonl_sales(j, 100000, 20, seed=1, nulls=0.1)
        _, rows, bad = groupby_ref([j], None, "region", "count,sum:qty")
        self.assertEqual(bad, 0)
        self.assertIn("Two\nLines", [r[0] for r in rows])
        kv_lines(kv, 50000, 7, seed=1)
        with open(kv, "rb") as f:
            rows, bad = reduce_ref(f.read(), "count,sum")
        self.assertEqual((len(rows), bad), (7, 0))
        self.assertEqual(orders(o, 3000, 100, 50, 1.1, 5, heavy_users=2, heavy_orders=1200), 5400)
        rows, left, bad = cooccur_ref([o], None, "user", "item", top=3, max_basket=49)
        self.assertEqual((left, bad), (2, 0))
        self.assertEqual(rows[0][0], "i00000")


if __name__ == "__main__":
    unittest.main()
