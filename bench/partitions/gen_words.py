#!/usr/bin/env python3
"""Text with a huge number of distinct words, whose word and distinct-word counts are known.

Usage: gen_words.py OUT MEGABYTES DISTINCT_PER_MB SEED
Writes OUT (lines of lowercase [a-z0-9] words separated by one space or a newline) and
OUT.meta ("words N" and "distinct D": what a correct word count must report: D rows whose
counts sum to N). Seeded: the same bytes every time.

Three kinds of tokens, shuffled together:
- new words: a counter rendered as one digit (counter mod 10) then the counter in base 36
  (never two alike: the base-36 part is the counter itself); each new word appears once here,
- repeats of an earlier new word (uniform over those already written), so keys meet across
  batches; they add to the words, not to the distinct words,
- a Zipf pool of 100,000 letter-only words (common words): never equal to a counter word,
  which always holds a digit.
Built in chunks of a few million tokens with numpy, so 1 GB takes well under a minute.
"""
import sys

import numpy as np

ALPHA = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
CHUNK = 2_000_000        # tokens per chunk
POOL = 100_000           # common words
ZIPF_S = 1.05
NEWLINE_EVERY = 12       # a newline instead of a space, one time in this many


def make_pool(rng):
    """POOL distinct letter-only words (2..10 letters) as a padded byte table and lengths."""
    words = set()
    out = []
    while len(out) < POOL:
        n = int(rng.integers(2, 11))
        w = bytes(ALPHA[10 + rng.integers(0, 26, n)])
        if w not in words:
            words.add(w)
            out.append(w)
    width = max(len(w) for w in out)
    table = np.zeros((POOL, width), dtype=np.uint8)
    lens = np.empty(POOL, dtype=np.int64)
    for i, w in enumerate(out):
        table[i, :len(w)] = np.frombuffer(w, dtype=np.uint8)
        lens[i] = len(w)
    return table, lens


def render_counters(vals, width):
    """Counter words (digit vals % 10, then vals in base 36) as rows of a (n, width) table."""
    n = len(vals)
    nd = np.ones(n, dtype=np.int64)
    p = 36
    while True:
        more = vals >= p
        if not more.any():
            break
        nd += more
        p *= 36
    rows = np.zeros((n, width), dtype=np.uint8)
    rows[:, 0] = ALPHA[vals % 10]
    for j in range(int(nd.max()) if n else 0):
        pos = nd - 1 - j                   # the base-36 digit written at column 1 + j
        ok = pos >= 0
        digit = (vals[ok] // (36 ** pos[ok])) % 36
        rows[ok, 1 + j] = ALPHA[digit]
    return rows, nd + 1


def main():
    out_path, mb, per_mb, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    want = mb << 20
    rng = np.random.default_rng(seed)
    table, plens = make_pool(rng)
    cdf = np.cumsum(1.0 / np.arange(1, POOL + 1) ** ZIPF_S)
    cdf /= cdf[-1]
    # About 7 bytes a token: the share of new words that gives per_mb distinct words per MB.
    p_new = min(0.9, per_mb / ((1 << 20) / 7.0))
    p_old = 0.10
    width = max(table.shape[1], 16) + 1
    pool_seen = np.zeros(POOL, dtype=np.int64)
    counter = 0
    words = 0
    done = 0
    with open(out_path, "wb") as out:
        while done < want:
            kind = rng.random(CHUNK)
            is_new = kind < p_new
            is_old = (kind >= p_new) & (kind < p_new + p_old) & (counter > 0)
            is_pool = ~(is_new | is_old)
            vals = np.zeros(CHUNK, dtype=np.int64)
            vals[is_new] = counter + np.arange(int(is_new.sum()), dtype=np.int64)
            if counter > 0:
                vals[is_old] = rng.integers(0, counter, int(is_old.sum()))
            pidx = np.searchsorted(cdf, rng.random(int(is_pool.sum())))
            pidx = np.minimum(pidx, POOL - 1)
            rows = np.zeros((CHUNK, width), dtype=np.uint8)
            lens = np.empty(CHUNK, dtype=np.int64)
            cw = ~is_pool
            crow, clen = render_counters(vals[cw], width)
            rows[cw] = crow
            lens[cw] = clen
            rows[is_pool, :table.shape[1]] = table[pidx]
            lens[is_pool] = plens[pidx]
            sep = np.where(rng.integers(0, NEWLINE_EVERY, CHUNK) == 0, ord("\n"), ord(" "))
            rows[np.arange(CHUNK), lens] = sep
            lens += 1
            keep = CHUNK
            ends = np.cumsum(lens)
            if done + int(ends[-1]) >= want:   # the last chunk: stop at the first token past want
                keep = int(np.searchsorted(ends, want - done)) + 1
                rows[keep - 1, lens[keep - 1] - 1] = ord("\n")
            rows, lens = rows[:keep], lens[:keep]
            data = rows[np.arange(width)[None, :] < lens[:, None]]
            out.write(data.tobytes())
            done += len(data)
            counter += int(is_new[:keep].sum())
            pool_seen += np.bincount(pidx[:int(is_pool[:keep].sum())], minlength=POOL)
            words += keep
    distinct = counter + int((pool_seen > 0).sum())
    with open(out_path + ".meta", "w") as m:
        m.write("words %d\ndistinct %d\nbytes %d\nnew_words %d\npool_words %d\n"
                % (words, distinct, done, counter, int((pool_seen > 0).sum())))


if __name__ == "__main__":
    main()
