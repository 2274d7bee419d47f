"""gen_keyed.py -- deterministic inputs for the keyed jobs' tests and benchmarks: sales as
CSV or JSONL, KEY<TAB>VALUE map output, and a Zipf order log. Seeded (the same file for the
same arguments), stdlib only, written in large chunks (about 1 GB of CSV in well under a
minute of one core). Prices are multiples of 0.25 and quantities small integers, so every
float sum is exact in any order and any engine agrees on it to the bit.

By hand:  python3 gen_keyed.py csv_sales OUT.csv SIZE_BYTES NKEYS [SEED] [QUOTED]
          python3 gen_keyed.py jsonl_sales OUT.jsonl SIZE_BYTES NKEYS [SEED]
          python3 gen_keyed.py kv_lines OUT.tsv SIZE_BYTES NKEYS [SEED]
          python3 gen_keyed.py orders OUT.csv NORDERS NUSERS NITEMS [ZIPF_S] [SEED]
"""
import itertools
import json
import random
import sys

CHUNK = 100_000  # records a chunk

REGIONS = ["North", "South", "East", "West", "Centre", "Île-de-France", "Baden-Württemberg", "Østlandet",
           "Kraków", "São Paulo", "東京", "Ontario", "Québec", "Texas", "Kerala", "Gauteng"]
# Regions that need CSV quoting: a comma, a doubled quote, a newline, CRLF.
ODD_REGIONS = ['"North, East"', '"The ""Big"" One"', '"Two\nLines"', '"Cr\r\nLf"']
ODD_TEXT = ["North, East", 'The "Big" One', "Two\nLines", "Cr\r\nLf"]


def _pools(nkeys):
    keys = ["p%07d" % i for i in range(nkeys)]
    qtys = [str(q) for q in range(1, 21)]
    prices = ["%g" % (i / 4) for i in range(1, 401)]  # 0.25 .. 100 in steps of 0.25
    return keys, qtys, prices


def _write_chunks(path, size_bytes, chunk):
    """Call chunk(n) for chunks of n records until at least size_bytes are written (whole
    chunks: a cut could split a quoted field); returns the bytes written."""
    done = 0
    with open(path, "wb") as out:
        first = chunk.header.encode() if getattr(chunk, "header", None) else b""
        out.write(first)
        done += len(first)
        while done < size_bytes:
            data = chunk(CHUNK).encode()
            out.write(data)
            done += len(data)
    return done


def csv_sales(path, size_bytes, nkeys, seed=1, quoted=0.0):
    """region,product,qty,price rows, product one of nkeys keys 'p0000000'... (uniform); quoted:
    the fraction of rows whose region is a quoted field holding a comma, quotes or a newline."""
    rnd = random.Random(seed)
    keys, qtys, prices = _pools(nkeys)
    regions = REGIONS + (ODD_REGIONS if quoted > 0 else [])
    w = [(1.0 - quoted) / len(REGIONS)] * len(REGIONS) + ([quoted / len(ODD_REGIONS)] * len(ODD_REGIONS)
                                                          if quoted > 0 else [])
    cw = list(itertools.accumulate(w))

    def chunk(n):
        return "".join("%s,%s,%s,%s\n" % t for t in zip(rnd.choices(regions, cum_weights=cw, k=n),
                                                      rnd.choices(keys, k=n), rnd.choices(qtys, k=n),
                                                      rnd.choices(prices, k=n)))
    chunk.header = "region,product,qty,price\n"
    return _write_chunks(path, size_bytes, chunk)


def jsonl_sales(path, size_bytes, nkeys, seed=1, nulls=0.0):
    """The same sales as JSON objects {"region","product","qty","price"}; nulls: the fraction of
    rows whose qty is null (a missing value)."""
    rnd = random.Random(seed)
    keys, qtys, prices = _pools(nkeys)
    regions = [json.dumps(r, ensure_ascii=False) for r in REGIONS + ODD_TEXT]
    qn = qtys + ["null"]
    qw = list(itertools.accumulate([(1.0 - nulls) / len(qtys)] * len(qtys) + [nulls]))

    def chunk(n):
        return "".join('{"region": %s, "product": "%s", "qty": %s, "price": %s}\n' % t
                       for t in zip(rnd.choices(regions, k=n), rnd.choices(keys, k=n),
                                    rnd.choices(qn, cum_weights=qw, k=n), rnd.choices(prices, k=n)))
    return _write_chunks(path, size_bytes, chunk)


def kv_lines(path, size_bytes, nkeys, seed=1):
    """KEY<TAB>VALUE lines: key one of nkeys 'k000000'... (uniform), value an integer 0..999."""
    rnd = random.Random(seed)
    keys = ["k%06d" % i for i in range(nkeys)]
    vals = [str(v) for v in range(1000)]

    def chunk(n):
        return "".join("%s\t%s\n" % t for t in zip(rnd.choices(keys, k=n), rnd.choices(vals, k=n)))
    return _write_chunks(path, size_bytes, chunk)


def orders(path, norders, nusers, nitems, zipf_s=1.1, seed=1, heavy_users=5, heavy_orders=2000):
    """An order log user,item (TSV when path ends in .tsv): norders orders of users drawn
    uniformly from nusers 'u000000'..., items from nitems 'i00000'... by a Zipf law of
    exponent zipf_s (item rank r has weight 1/r^s), so a few items are in most baskets.
    Also heavy_users users 'heavy0'... with heavy_orders orders each of uniform items: baskets
    over the default --max-basket (1000), left out by cooccur. Returns the number of orders."""
    rnd = random.Random(seed)
    sep = "\t" if path.endswith(".tsv") else ","
    users = ["u%06d" % i for i in range(nusers)]
    items = ["i%05d" % i for i in range(nitems)]
    cw = list(itertools.accumulate(1.0 / (r ** zipf_s) for r in range(1, nitems + 1)))
    fmt = "%s" + sep + "%s\n"
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write("user%sitem\n" % sep)
        left = norders
        while left > 0:
            k = min(CHUNK, left)
            out.write("".join(fmt % t for t in zip(rnd.choices(users, k=k), rnd.choices(items, cum_weights=cw, k=k))))
            left -= k
            n += k
        for h in range(heavy_users):
            out.write("".join(fmt % ("heavy%d" % h, it) for it in rnd.choices(items, k=heavy_orders)))
            n += heavy_orders
    return n


def main(argv):
    what, path, *rest = argv
    if what == "csv_sales":
        csv_sales(path, int(rest[0]), int(rest[1]), *(int(rest[2]),) if len(rest) > 2 else (),
                  **({"quoted": float(rest[3])} if len(rest) > 3 else {}))
    elif what == "jsonl_sales":
        jsonl_sales(path, int(rest[0]), int(rest[1]), *(int(x) for x in rest[2:3]))
    elif what == "kv_lines":
        kv_lines(path, int(rest[0]), int(rest[1]), *(int(x) for x in rest[2:3]))
    elif what == "orders":
        orders(path, int(rest[0]), int(rest[1]), int(rest[2]), *(float(x) for x in rest[3:4]),
               *(int(x) for x in rest[4:5]))
    else:
        raise SystemExit("gen_keyed.py: unknown generator '%s' (csv_sales, jsonl_sales, kv_lines, orders)" % what)


if __name__ == "__main__":
    main(sys.argv[1:])
