"""C plugins: `dbatch run --op LIB.so[:NAME]`. The plugins are built OUTSIDE the tree, from the
dbatch.h of an installed copy of this build (`cmake --install --prefix TMP`, found through
`pkg-config --cflags dbatch`), without -ldbatch, the way a user builds one; their rows are
compared with Python computing the same thing."""
import csv
import glob
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

import msgpack
import zmq

from dbx import DBATCH, TmpTest, free_port, run, slurp, start

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
EXAMPLES = os.path.join(SRC, "examples", "plugins")
BUILD = os.path.dirname(os.path.abspath(DBATCH))
LIBS = None  # module tmp dir with the built plugins
SANITIZED = os.path.basename(BUILD).startswith("build-sanitize")


def setUpModule():
    """Install this build into a temporary prefix and build the plugins against it."""
    global LIBS
    LIBS = tempfile.mkdtemp(prefix="dbx-plugins-")
    prefix = os.path.join(LIBS, "prefix")
    subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], check=True, capture_output=True, timeout=120)
    pcs = glob.glob(os.path.join(prefix, "**", "dbatch.pc"), recursive=True)
    assert len(pcs) == 1, pcs
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]))
    cflags = subprocess.run(["pkg-config", "--cflags", "dbatch"], env=env, check=True, capture_output=True,
                            text=True).stdout.split()
    # The header comes from the installed prefix, never from the source tree.
    assert any(f.startswith("-I") and f[2:].startswith(prefix) for f in cflags), cflags
    srcs = {"keysum": os.path.join(EXAMPLES, "keysum.c"), "linecount": os.path.join(EXAMPLES, "linecount.c")}
    for name, text in PLUGIN_SOURCES.items():
        srcs[name] = os.path.join(LIBS, name + ".c")
        with open(srcs[name], "w") as f:
            f.write(text)
    for name, src in srcs.items():
        out = os.path.join(LIBS, name + ".so")
        local = os.path.join(LIBS, os.path.basename(src))
        if src != local:
            shutil.copy(src, local)  # built outside the tree
        cmd = ["cc", "-O1", "-Wall", "-Werror", "-Wno-unused-parameter", "-shared", "-fPIC", *cflags, "-o", out,
               local]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=LIBS, timeout=120)
        assert p.returncode == 0, "%s\n%s" % (" ".join(cmd), p.stderr)
        # No libdbatch: the dbx_* helpers it calls are left for the running dbatch.
        needed = subprocess.run(["readelf", "-d", out], capture_output=True, text=True).stdout
        assert "libdbatch" not in needed, needed


def tearDownModule():
    shutil.rmtree(LIBS, ignore_errors=True)


def lib(name):
    return os.path.join(LIBS, name + ".so")


# A test-only plugin that crashes its worker (SIGSEGV) on a line "CRASH". With DBX_CRASH_ONCE
# naming a file, only the first attempt that meets the line crashes (it creates the file).
CRASHY = r"""
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dbatch.h>
static void *n_new(const void *cfg) { return calloc(1, sizeof(int64_t)); }
static void n_free(void *p) { free(p); }
static int n_map(const void *cfg, const void *bc, const dbx_batch *b, void *p, dbx_stats *st, dbx_err *err) {
  for (size_t off = 0; off < b->size;) {
    const char *nl = memchr(b->data + off, '\n', b->size - off);
    size_t n = nl ? (size_t)(nl - (b->data + off)) : b->size - off;
    if (n == 5 && !memcmp(b->data + off, "CRASH", 5)) {
      const char *once = getenv("DBX_CRASH_ONCE");
      int fd = once ? open(once, O_CREAT | O_EXCL | O_WRONLY, 0600) : -1;
      if (!once || fd >= 0) raise(SIGSEGV);
    }
    ++*(int64_t *)p;
    off += n + 1;
  }
  return 0;
}
static int n_merge(const void *cfg, void *l, const void *r, dbx_err *err) { *(int64_t *)l += *(const int64_t *)r; return 0; }
static int n_encode(const void *cfg, const void *p, dbx_buf *out, dbx_err *err) { return dbx_buf_append(out, p, 8); }
static int n_decode(const void *cfg, const char *p, size_t n, void **out, dbx_err *err) {
  if (n != 8) return dbx_seterr(err, DBX_ECORRUPT, "crashy: %zu bytes", n);
  if (!(*out = n_new(cfg))) return DBX_ENOMEM;
  memcpy(*out, p, 8);
  return 0;
}
static int n_finish(const void *cfg, const void *bc, void *p, dbx_emit_fn emit, void *ctx, dbx_buf *bo, dbx_err *err) {
  dbx_value row[1];
  memset(row, 0, sizeof row);
  row[0].i = *(int64_t *)p;
  return emit ? emit(ctx, row, err) : 0;
}
static const char *const names[] = {"lines"};
static const dbx_coltype types[] = {DBX_COL_INT};
static const dbx_schema schema = {1, names, types};
static const dbx_op op = {.name = "crashy", .partial_new = n_new, .partial_free = n_free, .map = n_map,
  .merge = n_merge, .encode = n_encode, .decode = n_decode, .finish = n_finish, .schema = &schema};
static const dbx_op *const ops[] = {&op};
const dbx_plugin dbatch_plugin = {ABI, 1, ops};
"""

PLUGIN_SOURCES = {
    "crashy": CRASHY.replace("{ABI,", "{DBX_ABI_VERSION,"),
    "newabi": CRASHY.replace("{ABI,", "{DBX_ABI_VERSION + 98,"),   # built for a future dbatch
    "nosym": "int not_a_plugin(void);\nint not_a_plugin(void) { return 1; }\n",
}


# ---- references ----

INT = re.compile(rb"[+-]?[0-9]+")


def keysum_ref(paths, sep=b"\t"):
    """(key, count, sum, min, max) by key bytes, as examples/plugins/keysum.c defines them."""
    agg = {}
    for p in paths:
        for line in slurp(p).split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                continue
            i = line.find(sep)
            if i < 0 or not INT.fullmatch(line[i + 1:]):
                continue
            v = int(line[i + 1:])
            if not -2**63 <= v < 2**63:
                continue
            k = line[:i]
            c, s, lo, hi = agg.get(k, (0, 0, v, v))
            agg[k] = (c + 1, s + v, min(lo, v), max(hi, v))
    return [(k,) + agg[k] for k in sorted(agg)]


def tsv(rows):
    esc = lambda b: b.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return b"".join(b"\t".join(esc(c) if isinstance(c, bytes) else b"%d" % c for c in r) + b"\n" for r in rows)


class Keysum(TmpTest):
    def data(self):
        """Several files: unicode keys, a backslash, CRLF lines, empty and bad lines, a file
        without a final newline; many batches at --batch-bytes 4K."""
        import random
        rnd = random.Random(11)
        keys = ["alpha", "beta", "clé", "日本", "a\\b", "z", "Ωmega", "k" * 40] + ["key%03d" % i for i in range(60)]
        paths = []
        for f in range(3):
            lines = []
            for i in range(1500):
                r = rnd.random()
                if r < 0.01:
                    lines.append(b"no separator here")
                elif r < 0.02:
                    lines.append(b"key001\t12x")
                elif r < 0.03:
                    lines.append(b"")
                else:
                    k = rnd.choice(keys).encode()
                    v = rnd.randint(-10**12, 10**12)
                    lines.append(k + b"\t%d" % v + (b"\r" if r < 0.1 else b""))
            body = b"\n".join(lines) + (b"\n" if f != 1 else b"")
            paths.append(self.write("in%d.tsv" % f, body))
        return paths

    def test_rows_match_python_with_any_workers_and_sink(self):
        paths = self.data()
        want = keysum_ref(paths)
        self.assertGreater(len(want), 60)
        ks = lib("keysum")
        for w in ("0", "2"):
            got = run("run", "--op", ks, "--workers", w, "--batch-bytes", "4K", "--no-job-dir", "-q", *paths).stdout
            self.assertEqual(got, tsv(want), "--workers %s" % w)
        # Every sink takes the rows through the operator's schema.
        out = self.path("out.csv")
        run("run", "--op", ks + ":keysum", "--workers", "2", "--batch-bytes", "4K", "--no-job-dir", "-q", "-o", out,
            *paths)
        rows = list(csv.reader(io.StringIO(slurp(out, text=True), newline="")))
        self.assertEqual(rows[0], ["key", "count", "sum", "min", "max"])
        self.assertEqual(rows[1:], [[r[0].decode()] + [str(x) for x in r[1:]] for r in want])
        out = self.path("out.jsonl")
        run("run", "--op", ks, "--workers", "2", "--batch-bytes", "4K", "--no-job-dir", "-q", "-o", out, *paths)
        got = [json.loads(l) for l in slurp(out, text=True).splitlines()]
        self.assertEqual(got, [dict(zip(["key", "count", "sum", "min", "max"], [r[0].decode(), *r[1:]])) for r in want])
        db = self.path("out.db")
        run("run", "--op", ks, "--workers", "2", "--batch-bytes", "4K", "--no-job-dir", "-q", "-o", "sqlite:" + db,
            "--table", "sums", *paths)
        with sqlite3.connect(db) as con:
            got = con.execute("SELECT key, count, sum, min, max FROM sums ORDER BY rowid").fetchall()
        self.assertEqual(got, [(r[0].decode(),) + r[1:] for r in want])

    def test_op_arg_is_the_configuration(self):
        p = self.write("in.csv", "a,1\nb,2\na,3\nc\t4\n")
        want = keysum_ref([p], sep=b",")
        for w in ("0", "2"):
            got = run("run", "--op", lib("keysum"), "--op-arg", "sep=,", "--workers", w, "--no-job-dir", "-q",
                      p).stdout
            self.assertEqual(got, tsv(want))
        # The second example: two operators in one library, picked by name.
        got = run("run", "--op", lib("linecount") + ":grep", "--op-arg", "a", "--workers", "2", "--no-job-dir",
                  "-q", p).stdout
        self.assertEqual(got, b"a\t2\t4\n")
        got = run("run", "--op", lib("linecount") + ":lines", "--workers", "2", "--no-job-dir", "-q", p).stdout
        self.assertEqual(got, b"4\t%d\n" % len(slurp(p)))
        # A bad --op-arg is the operator's error: named, the job fails (1).
        r = run("run", "--op", lib("keysum"), "--op-arg", "tab", "--workers", "0", "--no-job-dir", "-q", p,
                check=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(b"--op-arg 'tab'", r.stderr)

    def test_remote_worker_loads_the_library_from_the_coordinator(self):
        paths = self.data()
        want = tsv(keysum_ref(paths))
        coord_dir, worker_dir = self.path("coord"), self.path("elsewhere")
        os.makedirs(coord_dir)
        os.makedirs(worker_dir)
        for ship in ([], ["--ship"]):
            mine = os.path.join(coord_dir, "keysum.so")
            shutil.copy(lib("keysum"), mine)
            ep = "tcp://127.0.0.1:%d" % free_port()
            coord = start("run", "--op", "./keysum.so", "--workers", "0", "--listen", ep, "--wait-workers", "1",
                          "--batch-bytes", "4K", "--no-job-dir", "-q", *ship, *paths, cwd=coord_dir)
            w = None
            try:
                # The coordinator reads the library before it listens: once it accepts
                # connections, the library is deleted, and the worker runs elsewhere.
                port = int(ep.rsplit(":", 1)[1])
                deadline = time.time() + 60
                import socket
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        self.assertIsNone(coord.poll(), coord.stderr.read() if coord.poll() is not None else "")
                        self.assertLess(time.time(), deadline, "the coordinator never listened")
                        time.sleep(0.05)
                os.unlink(mine)
                w = start("worker", "--connect", ep, "--slots", "2", "-q", cwd=worker_dir)
                out, err = coord.communicate(timeout=120)
                self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
                self.assertEqual(out, want)
                self.assertEqual(w.wait(timeout=30), 0)
                self.assertEqual(os.listdir(worker_dir), [])   # nothing left behind
            finally:
                for p in (coord, w):
                    if p and p.poll() is None:
                        p.kill()
                    if p:
                        p.communicate()


class Errors(TmpTest):
    def check_one_line(self, args, needle, path):
        out = self.path("out.tsv")
        r = run("run", *args, "--workers", "2", "--no-job-dir", "-o", out, self.input, check=False)
        err = r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 2, err)
        self.assertEqual(err.count("\n"), 1, "not one line: %r" % err)
        self.assertIn(path, err)
        self.assertIn(needle, err)
        self.assertFalse(os.path.exists(out))

    def test_unusable_plugins_are_usage_errors_naming_the_file(self):
        self.input = self.write("in.tsv", "a\t1\n")
        self.check_one_line(["--op", lib("newabi")], "ABI version %d" % 99, lib("newabi"))
        self.check_one_line(["--op", lib("nosym")], "no 'dbatch_plugin' symbol", lib("nosym"))
        self.check_one_line(["--op", lib("keysum") + ":nosuch"], "no operator 'nosuch' in this library (it has: keysum)",
                            lib("keysum"))
        self.check_one_line(["--op", lib("linecount")], "2 operators (lines, grep)", lib("linecount"))
        text = self.write("notalib.so", "this is not an ELF file\n")
        self.check_one_line(["--op", text], "cannot load it as a library", text)
        self.check_one_line(["--op", self.tmp], "it is a directory", self.tmp)
        missing = self.path("missing.so")
        self.check_one_line(["--op", missing], "No such file", missing)

    def test_option_mistakes(self):
        p = self.write("in.tsv", "a\t1\n")
        for args, needle in ((["--op", lib("keysum"), "--map", "cat"], "exclusive"),
                             (["--map", "cat", "--op-arg", "x"], "--op-arg needs --op"),
                             (["--op", lib("keysum") + ":"], "--op needs LIB.so")):
            r = run("run", *args, "--no-job-dir", p, check=False)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(needle.encode(), r.stderr)


class Crashes(TmpTest):
    def data(self):
        lines = [b"line %d" % i for i in range(100)]
        lines[47] = b"CRASH"
        return self.write("in.txt", b"\n".join(lines) + b"\n")

    def test_crashing_plugin_kills_only_its_worker_and_is_retried(self):
        p = self.data()
        env = dict(os.environ, DBX_CRASH_ONCE=self.path("crashed-once"))
        s = self.path("s.json")
        # No speculation: a copy of the attempt could finish before the crash is seen (under
        # AddressSanitizer the dying worker first writes its report), and then no attempt fails.
        r = run("run", "--op", lib("crashy"), "--workers", "2", "--batch-records", "10", "--no-job-dir",
                "--no-speculation", "--summary-json", s, p, env=env)
        self.assertEqual(r.stdout, b"100\n")
        self.assertTrue(os.path.exists(env["DBX_CRASH_ONCE"]), "the plugin never crashed")
        fails = json.loads(slurp(s, text=True))["failures"]
        self.assertEqual([f["task"] for f in fails], [4], fails)
        self.assertIn("worker", fails[0]["cause"])

    def test_skip_leaves_out_exactly_the_crashing_batch(self):
        p = self.data()
        s = self.path("s.json")
        r = run("run", "--op", lib("crashy"), "--workers", "2", "--batch-records", "10", "--max-attempts", "2",
                "--on-task-failure=skip", "--no-speculation", "--no-job-dir", "--summary-json", s, p, check=False)
        err = r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 3, err)
        self.assertEqual(r.stdout, b"90\n")
        self.assertIn("task 4 skipped", err)
        summary = json.loads(slurp(s, text=True))
        self.assertEqual([m["task"] for m in summary["missing"]], [4], summary["missing"])
        self.assertIn("lines 41-50", summary["missing"][0]["input"])


# ---- the stage message, from a fake coordinator ----

def xxh64(data, seed=0):
    """XXH64, as the coordinator computes it (libxxhash), for a hand-made stage message."""
    M = (1 << 64) - 1
    P1, P2, P3, P4, P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                          9650029242287828579, 2870177450012600261)
    rotl = lambda x, r: ((x << r) | (x >> (64 - r))) & M
    rnd = lambda acc, v: (rotl((acc + v * P2) & M, 31) * P1) & M
    u64 = lambda i: int.from_bytes(data[i:i + 8], "little")
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed & M, (seed - P1) & M]
        while i + 32 <= n:
            v = [rnd(v[k], u64(i + 8 * k)) for k in range(4)]
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
        for x in v:
            h = (((h ^ rnd(0, x)) * P1) + P4) & M
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 8 <= n:
        h = (rotl(h ^ rnd(0, u64(i)), 27) * P1 + P4) & M
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ ((int.from_bytes(data[i:i + 4], "little") * P1) & M), 23) * P2 + P3) & M
        i += 4
    while i < n:
        h = (rotl(h ^ ((data[i] * P5) & M), 11) * P1) & M
        i += 1
    h = ((h ^ (h >> 33)) * P2) & M
    h = ((h ^ (h >> 29)) * P3) & M
    return h ^ (h >> 32)


class StageMessage(TmpTest):
    def test_checksum_mismatch_refuses_the_stage(self):
        self.assertEqual(xxh64(b""), 0xEF46DB3751D8E999)
        body = slurp(lib("linecount"))
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        w = start("worker", "--connect", "tcp://127.0.0.1:%d" % port, "--slots", "1", "-q")
        try:
            self.assertTrue(router.poll(10000))
            ident, _ = router.recv_multipart()
            send = lambda *f: router.send_multipart([ident, msgpack.packb(["DBX", 1, *f])])
            send(2, 1, 1000)                                                     # welcome
            task = lambda st, i: send(5, st, i, 1, [[0, 0, 4, 0, 1, 4]], True, b"abc\n", False)
            # Stage 1: one flipped byte in the library; stage 2: the hash is right.
            bad = bytearray(body)
            bad[len(bad) // 2] ^= 0xFF
            send(4, 1, "lines", b"\0", b"", ["/x"], ["linecount.so", xxh64(body), bytes(bad)])
            task(1, 0)
            send(4, 2, "lines", b"\0", b"", ["/x"], ["linecount.so", xxh64(body), body])
            task(2, 1)
            # Stage 3: a configuration that is not one NUL-terminated string.
            send(4, 3, "lines", b"x", b"", ["/x"], ["linecount.so", xxh64(body), body])
            task(3, 2)
            # Stages whose plugin field is malformed are dropped: their tasks have no stage.
            send(4, 4, "lines", b"\0", b"", ["/x"], [1, 2, 3])
            task(4, 3)
            send(4, 5, "lines", b"\0", b"", ["/x"], ["linecount.so", xxh64(b""), b""])
            task(5, 4)
            got = {}
            deadline = time.time() + 30
            while len(got) < 5 and time.time() < deadline:
                if router.poll(500):
                    m = msgpack.unpackb(router.recv_multipart()[1], raw=False)
                    if m[2] in (6, 7):
                        got[m[4]] = m
            self.assertEqual(got[0][2], 7, got)                                  # failure
            self.assertIn("linecount.so", got[0][7])
            self.assertIn("hash to", got[0][7])
            self.assertEqual(got[1][2], 6, got)                                  # result
            self.assertEqual(got[1][10], b"\x01" + b"\0" * 7 + b"\x04" + b"\0" * 7)  # 1 line, 4 bytes
            self.assertEqual(got[2][2], 7, got)
            self.assertIn("not one NUL-terminated string", got[2][7])
            for i in (3, 4):
                self.assertEqual(got[i][2], 7, got)
                self.assertIn("not given", got[i][7])
            self.assertIsNone(w.poll(), "the worker died")
            send(10)
            self.assertEqual(w.wait(timeout=10), 0)
        finally:
            if w.poll() is None:
                w.kill()
            w.communicate()
            router.close()
            ctx.term()


if __name__ == "__main__":
    unittest.main()
