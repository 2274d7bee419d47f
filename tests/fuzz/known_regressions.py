#!/usr/bin/python3
"""known_regressions.py -- writes hand-made regression inputs for the hostile-peer defects
named in the hardening issue, in case the fuzzer has not found them by itself (they are then
replayed by `make fuzz` like any minimised crash). Run from the repository root."""
import struct

import msgpack

R = "tests/fuzz/regressions/"


def frame(m):
    b = msgpack.packb(m, use_bin_type=True)
    return struct.pack("<H", len(b)) + b


CFG = struct.pack("<iii", 2, 0, 0)  # nb_cfg: TSV, no probabilities, skip bad records
ENV = msgpack.packb([[[None, "a.tsv"], [None, "b.tsv"]], b""], use_bin_type=True)
DATA = b"spam\tcheap pills\n"


def stage(op, bcast):
    return ["DBX", 1, 4, 1, op, CFG, bcast, ["a.tsv", "b.tsv"]]


def task(segs, data):
    return ["DBX", 1, 5, 1, 0, 1, segs, True, data, False]


def write(path, b):
    with open(R + path, "wb") as f:
        f.write(b)


# Shipped segment lengths that add up to the data's length only modulo 2^64.
write("wire/shipped-lengths-wrap",
      frame(stage("nb_vocab", ENV)) +
      frame(task([[0, 0, 5, 0, 1, 2**64 - 1], [1, 0, 5, 0, 1, len(DATA) + 1]], DATA)))
# A classifier stage sent with an empty broadcast, then a task of it.
write("wire/nb-vocab-empty-broadcast",
      frame(stage("nb_vocab", b"")) + frame(task([[0, 0, len(DATA), 0, 1, len(DATA)]], DATA)))
# A prediction partial whose confusion key has no NUL ending its truth label.
write("op_nb_predict/confusion-key-without-nul", msgpack.packb([0, b"", [b"abcdefgh", 1]], use_bin_type=True))
