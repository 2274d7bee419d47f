"""keyed_ref.py -- the independent Python references of dbatch's keyed jobs: `run --reduce`,
`run --reduce-cmd`, `groupby` and `cooccur`, written straight from docs/keyed-spec (the exact
output semantics), with Python's own csv/json parsers. Stdlib only, so tests and benchmarks
import it anywhere.

Text is handled as str decoded from UTF-8 with errors='surrogateescape' (every byte string
round-trips), and every "bytewise" order sorts by the encoded bytes. Rows are tuples of str,
None where an aggregate saw no value (empty in TSV/CSV, null in JSONL).

By hand:  python3 keyed_ref.py groupby --key a --agg sum:b file.csv
          python3 keyed_ref.py cooccur --user user --item item [--top 10] orders.csv
          python3 keyed_ref.py reduce --reduce count,sum map-output.tsv
          python3 keyed_ref.py reduce-cmd-input map-output.tsv
"""
import argparse
import collections
import csv
import gzip
import io
import itertools
import json
import math
import os
import re
import subprocess
import sys

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT = re.compile(r"[+-]?[0-9]+")
# What C strtod accepts as a finite decimal, whole string, no whitespace/hex/inf/nan.
_REAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
NUMERIC = ("sum", "mean", "min", "max")


class KeyedError(Exception):
    """The job fails: int64 overflow, a bad record under --on-bad-record fail, a usage error."""


# ---------------------------------------------------------------- numbers and text

def _text(s):
    return s.decode("utf-8", "surrogateescape") if isinstance(s, (bytes, bytearray)) else s


def _b(s):
    """The bytes of a text field: the key of every bytewise order."""
    return s.encode("utf-8", "surrogateescape")


def parse_num(s):
    """INTEGER (Python int) when s is [+-]?[0-9]+ and fits int64; else REAL (float) when the
    whole string is a finite strtod decimal; else None (not a number)."""
    s = _text(s)
    if _INT.fullmatch(s):
        v = int(s)
        if INT64_MIN <= v <= INT64_MAX:
            return v
    if _REAL.fullmatch(s):
        v = float(s)
        if math.isfinite(v):
            return v
    return None


def tree_sum(parts):
    """The engine's fold of per-batch partial sums (None: the key is absent in that batch) in
    the fixed binary tree over batch indices (engine/agg.c): node (s, L) covers [s, s + 2^L)
    and is its left half + its right half; an absent half is the identity."""
    n = len(parts)
    top = 0
    while (1 << top) < n:
        top += 1

    def node(s, lvl):
        if s >= n:
            return None
        if lvl == 0:
            return parts[s]
        left, right = node(s, lvl - 1), node(s + (1 << (lvl - 1)), lvl - 1)
        if left is None or right is None:
            return right if left is None else left
        return left + right
    return node(0, top)


def fmt_num(x):
    """An int as decimal; a float as Python's repr (the shortest digits that read back
    exactly: 10.0, 0.1, 1e+20, 1.5e-05), which is what dbatch writes for numbers."""
    if isinstance(x, bool):
        raise TypeError("fmt_num of a bool")
    if isinstance(x, int):
        return str(x)
    return repr(float(x))


def tsv_escape(s):
    """TSV sink escaping of a text field: backslash, TAB, LF, CR."""
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r"))


def csv_field(s):
    """CSV sink quoting: quoted when holding , \" LF CR or starting/ending with a space."""
    if s and (any(c in s for c in ',"\n\r') or s[0] == " " or s[-1] == " "):
        return '"' + s.replace('"', '""') + '"'
    return s


# ---------------------------------------------------------------- aggregates

def parse_specs(specs, keyed_column):
    """Specs as given (a str or a list of str, each possibly comma-separated) -> list of
    (name as written, kind, K or None, column or None). keyed_column: groupby's COL part
    (sum:COL, top:K:COL); without it (run --reduce) the value is the column."""
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for group in specs:
        for name in group.split(","):
            parts = name.split(":")
            kind, k, col = parts[0], None, None
            if kind == "top":
                want = 3 if keyed_column else 2
                if len(parts) != want or not parts[1].isdigit() or int(parts[1]) < 1:
                    raise KeyedError("bad aggregate '%s' (top:K%s)" % (name, ":COL" if keyed_column else ""))
                k = int(parts[1])
                col = parts[2] if keyed_column else None
            elif kind == "count":
                if len(parts) != 1:
                    raise KeyedError("bad aggregate '%s' (count takes no column)" % name)
            elif kind in ("sum", "mean", "min", "max", "first", "last", "distinct"):
                if keyed_column:
                    if len(parts) != 2 or not parts[1]:
                        raise KeyedError("bad aggregate '%s' (%s:COL)" % (name, kind))
                    col = parts[1]
                elif len(parts) != 1:
                    raise KeyedError("bad aggregate '%s'" % name)
            else:
                raise KeyedError("unknown aggregate '%s' (count, sum, mean, min, max, first, last, distinct, top:K)"
                                 % name)
            out.append((name, kind, k, col))
    if not out:
        raise KeyedError("no aggregate")
    return out


class Acc:
    """One aggregate's state for one key. update() gets a present value (str) and, for the
    numeric kinds, its parsed number; count is bumped by the caller through row()."""

    def __init__(self, kind, k):
        self.kind, self.k = kind, k
        self.rows = 0          # count
        self.n = 0             # values seen
        self.isum = 0          # exact integer sum
        self.fsum = 0.0        # the same values as doubles, in input order
        self.real = False
        self.best = None       # min/max
        self.first = self.last = None
        self.counts = collections.Counter()  # distinct, top

    def row(self):
        self.rows += 1

    def update(self, v, num):
        self.n += 1
        kind = self.kind
        if kind in ("sum", "mean"):
            if isinstance(num, float):
                self.real = True
            else:
                self.isum += num
            self.fsum += float(num)
        elif kind == "min":
            if self.best is None or num < self.best:
                self.best = num
        elif kind == "max":
            if self.best is None or num > self.best:
                self.best = num
        elif kind == "first":
            if self.first is None:
                self.first = v
        elif kind == "last":
            self.last = v
        elif kind in ("distinct", "top"):
            self.counts[v] += 1

    def value(self, what):
        """The output text, None when no value was seen. what names the key in errors."""
        kind = self.kind
        if kind == "count":
            return str(self.rows)
        if self.n == 0:
            return None
        if kind in ("sum", "mean"):
            if not self.real and not INT64_MIN <= self.isum <= INT64_MAX:
                raise KeyedError("%s overflows a 64-bit integer for key %s" % (kind, what))
            if kind == "sum":
                return fmt_num(self.fsum) if self.real else str(self.isum)
            return fmt_num((self.fsum if self.real else float(self.isum)) / self.n)
        if kind in ("min", "max"):
            return fmt_num(self.best)
        if kind == "first":
            return self.first
        if kind == "last":
            return self.last
        if kind == "distinct":
            return str(len(self.counts))
        top = sorted(self.counts.items(), key=lambda vc: (-vc[1], _b(vc[0])))[:self.k]
        return ",".join("%s=%d" % vc for vc in top)


# ---------------------------------------------------------------- run --reduce / --reduce-cmd

def _map_lines(lines):
    """Map output (bytes/str blob, or an iterable of lines with or without their LF) -> str
    lines without the LF."""
    if isinstance(lines, (bytes, bytearray, str)):
        data = _text(lines)
        if not data:
            return []
        out = data.split("\n")
        if out[-1] == "":
            out.pop()
        return out
    return [_text(x)[:-1] if _text(x).endswith("\n") else _text(x) for x in lines]


def _kv(line):
    key, tab, value = line.partition("\t")
    return key, value


def reduce_header(specs):
    return ("key",) + tuple(s[0] for s in parse_specs(specs, False))


def reduce_ref(lines, specs, on_bad="skip"):
    """`dbatch run --reduce SPECS` over the map output -> (rows, bad records). Rows are
    (key, agg...) sorted by key bytewise. A value that is not a number drops the whole line
    when a numeric aggregate is asked for (on_bad='fail': KeyedError)."""
    sp = parse_specs(specs, False)
    numeric = any(kind in NUMERIC for _, kind, _, _ in sp)
    groups = {}
    bad = 0
    for no, line in enumerate(_map_lines(lines), 1):
        key, value = _kv(line)
        num = None
        if numeric:
            num = parse_num(value)
            if num is None:
                if on_bad == "fail":
                    raise KeyedError("map output line %d: '%s' is not a number" % (no, value))
                bad += 1
                continue
        accs = groups.get(key)
        if accs is None:
            accs = groups[key] = [Acc(kind, k) for _, kind, k, _ in sp]
        for a in accs:
            a.row()
            a.update(value, num)
    rows = [(key,) + tuple(a.value(repr(key)) for a in groups[key]) for key in sorted(groups, key=_b)]
    return rows, bad


def reduce_cmd_input(lines):
    """The exact bytes `run --reduce-cmd CMD` feeds CMD: every map output line as
    KEY<TAB>VALUE<LF> (a line without a tab gets one: its value is empty), stably sorted by
    KEY bytewise, so the values of one key keep their input order."""
    kv = [_kv(line) for line in _map_lines(lines)]
    kv.sort(key=lambda p: _b(p[0]))
    return b"".join(_b(k) + b"\t" + _b(v) + b"\n" for k, v in kv)


# ---------------------------------------------------------------- reading records

def input_format(path):
    """csv, tsv or jsonl from the file name (before .gz/.zst)."""
    base = path[:-3] if path.endswith(".gz") else path[:-4] if path.endswith(".zst") else path
    ext = os.path.splitext(base)[1].lower()
    fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(ext)
    if fmt is None:
        raise KeyedError("%s: cannot tell the input format from the name (use --input-format)" % path)
    return fmt


def _open_text(path):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")
    if path.endswith(".zst"):
        data = subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, "r", encoding="utf-8", errors="surrogateescape", newline="")


def _open_bytes(path):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        return io.BytesIO(subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout)
    return open(path, "rb")


_WS = " \t\n\r"


def _reject_constant(name):
    raise ValueError("not JSON: %s" % name)


_DEC = json.JSONDecoder(parse_constant=_reject_constant)


def jsonl_object(line):
    """One JSONL line -> {field: text or None}. A string is its decoded text, true/false are
    'true'/'false', null is None (missing), numbers and nested values their JSON text as
    written. ValueError when the line is not one JSON object (a bad record)."""
    s, i, n = line, 0, len(line)

    def ws(i):
        while i < n and s[i] in _WS:
            i += 1
        return i

    i = ws(i)
    if i >= n or s[i] != "{":
        raise ValueError("not a JSON object")
    i = ws(i + 1)
    out = {}
    if i < n and s[i] == "}":
        i += 1
    else:
        while True:
            if i >= n or s[i] != '"':
                raise ValueError("expected a field name")
            name, i = json.decoder.scanstring(s, i + 1, True)
            i = ws(i)
            if i >= n or s[i] != ":":
                raise ValueError("expected ':'")
            i = ws(i + 1)
            val, j = _DEC.raw_decode(s, i)
            if isinstance(val, str):
                out[name] = val
            elif val is True or val is False:
                out[name] = "true" if val else "false"
            elif val is None:
                out[name] = None
            else:
                out[name] = s[i:j]
            i = ws(j)
            if i < n and s[i] == ",":
                i = ws(i + 1)
                continue
            if i < n and s[i] == "}":
                i += 1
                break
            raise ValueError("expected ',' or '}'")
    if ws(i) != n:
        raise ValueError("text after the object")
    return out


def read_records(paths, fmt=None):
    """Yield (path, line, record) for every record of the inputs, record a dict
    {column: text or None (missing)}, or None for a malformed record (a bad record: wrong
    field count, not a JSON object, invalid UTF-8 in JSONL). Blank lines are skipped.
    CSV/TSV inputs must share one header (KeyedError); the header seen is in .header."""
    header = None
    for path in paths:
        f = fmt or input_format(path)
        if f == "jsonl":
            with _open_bytes(path) as fh:
                for no, raw in enumerate(fh.read().split(b"\n"), 1):
                    if not raw.strip(b" \t\r"):
                        continue
                    try:
                        yield path, no, jsonl_object(raw.decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        yield path, no, None
            continue
        with _open_text(path) as fh:
            if f == "csv":
                rd = csv.reader(fh, strict=True)
                rows = _csv_rows(path, rd)
            elif f == "tsv":
                rows = _tsv_rows(fh)
            else:
                raise KeyedError("unknown input format '%s' (csv, tsv, jsonl)" % f)
            first = next(rows, None)
            if first is None:
                continue  # an empty file: no header, no records
            h = tuple(first[1])
            if header is None:
                header = h
                read_records.header = h
            elif h != header:
                raise KeyedError("%s: its header %s differs from the first input's %s" % (path, list(h), list(header)))
            index = {}
            for c, name in enumerate(header):
                index.setdefault(name, c)
            width = len(header)
            for no, fields in rows:
                if not fields:
                    continue
                if len(fields) != width:
                    yield path, no, None
                    continue
                yield path, no, {name: (fields[c] if fields[c] != "" else None) for name, c in index.items()}


read_records.header = None


def _csv_rows(path, rd):
    start = 1
    try:
        for fields in rd:
            yield start, fields
            start = rd.line_num + 1
    except csv.Error as e:
        raise KeyedError("%s:%d: malformed CSV: %s" % (path, start, e))


def _tsv_rows(fh):
    for no, line in enumerate(fh.read().split("\n"), 1):
        if line == "":
            continue
        yield no, line.split("\t")


csv.field_size_limit(1 << 30)


def _check_columns(paths, fmt, want):
    """A column asked for and absent from the (CSV/TSV) header is a usage error."""
    header = read_records.header
    if header is None:
        return
    for c in want:
        if c not in header:
            raise KeyedError("no column '%s' in %s (columns: %s)" % (c, paths[0], ", ".join(header)))


# ---------------------------------------------------------------- groupby

def groupby_ref(paths, fmt, keys, specs, on_bad="skip"):
    """`dbatch groupby PATHS --key KEYS --agg SPECS` -> (header, rows, bad records).
    keys: list of column names or 'a,b'. Rows sorted by the key tuple, each field bytewise."""
    if isinstance(keys, str):
        keys = keys.split(",")
    keys = list(keys)
    sp = parse_specs(specs, True)
    numeric_cols = sorted({col for _, kind, _, col in sp if kind in NUMERIC})
    want = keys + [col for _, _, _, col in sp if col]
    groups = {}
    bad = 0
    read_records.header = None
    checked = False
    for path, no, rec in read_records(paths, fmt):
        if not checked:
            _check_columns(paths, fmt, want)
            checked = True
        why = None
        if rec is None:
            why = "malformed record"
        else:
            key = tuple(rec.get(k) for k in keys)
            if any(k is None for k in key):
                why = "missing key"
            nums = {}
            for col in numeric_cols:
                v = rec.get(col)
                if v is not None:
                    nums[col] = parse_num(v)
                    if nums[col] is None and why is None:
                        why = "'%s' is not a number (column %s)" % (v, col)
        if why:
            if on_bad == "fail":
                raise KeyedError("%s:%d: %s" % (path, no, why))
            bad += 1
            continue
        accs = groups.get(key)
        if accs is None:
            accs = groups[key] = [Acc(kind, k) for _, kind, k, _ in sp]
        for a, (_, kind, _, col) in zip(accs, sp):
            a.row()
            if col is not None:
                v = rec.get(col)
                if v is not None:
                    a.update(v, nums.get(col))
    if not checked:
        _check_columns(paths, fmt, want)
    header = tuple(keys) + tuple(s[0] for s in sp)
    order = sorted(groups, key=lambda t: tuple(_b(f) for f in t))
    rows = [k + tuple(a.value(repr(",".join(k))) for a in groups[k]) for k in order]
    return header, rows, bad


# ---------------------------------------------------------------- cooccur

def cooccur_ref(paths, fmt, user, item, top=10, max_basket=1000, on_bad="skip"):
    """`dbatch cooccur PATHS --user USER --item ITEM --top TOP --max-basket N` -> (rows, users
    left out, bad records). Straightforward on purpose: baskets as sets, every pair of a
    basket counted with itertools.combinations into a Counter."""
    baskets = collections.defaultdict(set)
    bad = 0
    read_records.header = None
    checked = False
    for path, no, rec in read_records(paths, fmt):
        if not checked:
            _check_columns(paths, fmt, [user, item])
            checked = True
        u = rec.get(user) if rec is not None else None
        i = rec.get(item) if rec is not None else None
        if u is None or i is None:
            if on_bad == "fail":
                raise KeyedError("%s:%d: %s" % (path, no, "malformed record" if rec is None else "missing user or item"))
            bad += 1
            continue
        baskets[u].add(i)
    if not checked:
        _check_columns(paths, fmt, [user, item])
    left_out = 0
    pairs = collections.Counter()
    for items in baskets.values():
        if len(items) > max_basket:
            left_out += 1
            continue
        pairs.update(itertools.combinations(sorted(items), 2))
    others = collections.defaultdict(list)
    for (a, b), n in pairs.items():
        others[a].append((b, n))
        others[b].append((a, n))
    rows = []
    for a in sorted(others, key=_b):
        best = sorted(others[a], key=lambda bn: (-bn[1], _b(bn[0])))[:top]
        rows.extend((a, b, str(n)) for b, n in best)
    return rows, left_out, bad


COOCCUR_HEADER = ("item", "other", "users")


# ---------------------------------------------------------------- writing

def _cell(v):
    return "" if v is None else v


def write_tsv(rows):
    """Rows as the TSV sink writes them (no header) -> bytes."""
    return b"".join(_b("\t".join(tsv_escape(_cell(v)) for v in r) + "\n") for r in rows)


def write_csv(header, rows):
    """Header and rows as the CSV sink writes them -> bytes."""
    out = [",".join(csv_field(h) for h in header) + "\n"]
    out.extend(",".join(csv_field(_cell(v)) for v in r) + "\n" for r in rows)
    return _b("".join(out))


def _json_str(s):
    out = ['"']
    for ch in s:
        c = ord(ch)
        if 0xDC80 <= c <= 0xDCFF:
            out.append("\ufffd")  # an invalid UTF-8 byte, as the sink replaces it
        elif ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif c < 0x20 or c == 0x7F:
            out.append("\\u%04x" % c)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def numeric_columns(header, nkeys):
    """Which output columns are numbers in JSONL: count, sum, mean, min, max, distinct (and
    cooccur's users) after the nkeys key columns."""
    return {i for i, h in enumerate(header)
            if i >= nkeys and (h.split(":")[0] in ("count", "sum", "mean", "min", "max", "distinct") or h == "users")}


def write_jsonl(header, rows, nkeys=1):
    """Rows as the JSONL sink writes them: one object a row, keys in column order, numbers
    bare, text as JSON strings, no value as null -> bytes."""
    num = numeric_columns(header, nkeys)
    out = []
    for r in rows:
        cells = []
        for i, (h, v) in enumerate(zip(header, r)):
            cells.append(_json_str(h) + ":" + ("null" if v is None else v if i in num else _json_str(v)))
        out.append("{" + ",".join(cells) + "}\n")
    return "".join(out).encode("utf-8")


def write_rows(out_path, header, rows, nkeys=1):
    """Rows to a file in the format its name says (.csv, .jsonl, else TSV); '-' is stdout TSV."""
    fmt = "tsv" if out_path == "-" else os.path.splitext(out_path)[1].lstrip(".")
    data = (write_csv(header, rows) if fmt == "csv" else write_jsonl(header, rows, nkeys) if fmt == "jsonl"
            else write_tsv(rows))
    if out_path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(out_path, "wb") as f:
            f.write(data)


# ---------------------------------------------------------------- by hand

def main(argv=None):
    ap = argparse.ArgumentParser(prog="keyed_ref.py", description="Python references of dbatch's keyed jobs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("groupby")
    g.add_argument("inputs", nargs="+")
    g.add_argument("--key", required=True)
    g.add_argument("--agg", action="append", required=True)
    c = sub.add_parser("cooccur")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--user", required=True)
    c.add_argument("--item", required=True)
    c.add_argument("--top", type=int, default=10)
    c.add_argument("--max-basket", type=int, default=1000)
    r = sub.add_parser("reduce")
    r.add_argument("inputs", nargs="*", help="map output files (default: standard input)")
    r.add_argument("--reduce", required=True)
    rc = sub.add_parser("reduce-cmd-input")
    rc.add_argument("inputs", nargs="*")
    for p in (g, c):
        p.add_argument("--input-format", choices=("csv", "tsv", "jsonl"))
    for p in (g, c, r):
        p.add_argument("--on-bad-record", choices=("skip", "fail"), default="skip")
        p.add_argument("-o", "--out", default="-")
        p.add_argument("-q", "--quiet", action="store_true", help="no summary line on standard error")
    a = ap.parse_args(argv)
    note = (lambda *x: None) if getattr(a, "quiet", False) else (lambda m: print(m, file=sys.stderr))
    try:
        if a.cmd in ("reduce", "reduce-cmd-input"):
            data = b"".join(open(p, "rb").read() for p in a.inputs) if a.inputs else sys.stdin.buffer.read()
            if a.cmd == "reduce-cmd-input":
                sys.stdout.buffer.write(reduce_cmd_input(data))
                return 0
            rows, bad = reduce_ref(data, a.reduce, a.on_bad_record)
            write_rows(a.out, reduce_header(a.reduce), rows)
            note("%d rows, %d bad records" % (len(rows), bad))
        elif a.cmd == "groupby":
            header, rows, bad = groupby_ref(a.inputs, a.input_format, a.key, a.agg, a.on_bad_record)
            write_rows(a.out, header, rows, len(a.key.split(",")))
            note("%d rows, %d bad records" % (len(rows), bad))
        else:
            rows, left, bad = cooccur_ref(a.inputs, a.input_format, a.user, a.item, a.top, a.max_basket,
                                          a.on_bad_record)
            write_rows(a.out, COOCCUR_HEADER, rows, 1)
            note("%d rows, %d users left out, %d bad records" % (len(rows), left, bad))
    except KeyedError as e:
        print("keyed_ref.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
