"""The pandas side of bench/groupby: read_csv + groupby().agg() + to_csv, as a pandas user
writes it. Usage: pandas_groupby.py IN.csv KEY QTY PRICE OUT.csv"""
import sys

import pandas as pd


def main():
    src, key, qty, price, out = sys.argv[1:6]
    df = pd.read_csv(src)
    g = df.groupby(key, sort=True).agg(count=(key, "size"), sum_qty=(qty, "sum"), mean_price=(price, "mean"))
    g.to_csv(out)


if __name__ == "__main__":
    main()
