"""bench/groupby's check: pandas' CSV (key,count,sum_qty,mean_price, floats as Python repr)
rewritten in dbatch's number format (keyed_ref.fmt_num, bytewise key order) must equal
dbatch's CSV byte for byte. Usage: compare.py PANDAS.csv DBATCH.csv KEY QTY PRICE
Prints 'identical: N rows' or the first difference (exit 1)."""
import csv
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "integration"))
from keyed_ref import fmt_num, parse_num, write_csv  # noqa: E402


def main():
    pandas_csv, dbatch_csv, key, qty, price = sys.argv[1:6]
    with open(pandas_csv, newline="", encoding="utf-8") as f:
        rd = csv.reader(f)
        next(rd)
        rows = [(k, str(int(c)), fmt_num(parse_num(s)), fmt_num(float(m))) for k, c, s, m in rd]
    rows.sort(key=lambda r: r[0].encode())
    want = write_csv((key, "count", "sum:" + qty, "mean:" + price), rows)
    with open(dbatch_csv, "rb") as f:
        got = f.read()
    if got == want:
        print("identical: %d rows" % len(rows))
        return 0
    w, g = want.split(b"\n"), got.split(b"\n")
    for i, (a, b) in enumerate(zip(w, g)):
        if a != b:
            print("DIFFERENT at line %d: pandas %r, dbatch %r" % (i + 1, a, b))
            return 1
    print("DIFFERENT: pandas %d lines, dbatch %d lines" % (len(w), len(g)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
