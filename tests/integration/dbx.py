"""dbx.py -- helpers for dbatch integration tests: run the real CLI, temp dirs, references."""
import collections
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

DBATCH = os.environ.get("DBATCH", "build/dbatch")
DATA = os.environ.get("DBX_TEST_DATA", os.path.join(os.path.dirname(__file__), "..", "data"))


def run(*args, input=None, check=True, timeout=120, env=None):
    """Run dbatch with args; return the CompletedProcess (bytes stdout/stderr)."""
    p = subprocess.run([DBATCH, *map(str, args)], input=input, capture_output=True,
                       timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError("dbatch %s failed (%d):\n%s" % (" ".join(map(str, args)), p.returncode,
                                                             p.stderr.decode(errors="replace")))
    return p


def log_tail(path, lines=25):
    """The last lines of a log file, or a note that it is missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return "(%s: %s)" % (path, e.strerror)
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def without_summary_line(err):
    """stderr of a job without the one line that stays when it ends ("dbatch: JOB: N records,
    ... MB/s), ... workers, ... failures[ -> OUTPUT]"): what else it printed."""
    import re as _re
    lines = err.split(b"\n")
    keep = [l for l in lines if not _re.match(rb"dbatch: [\w-]+: \d+ records, [\d.]+ MB in [\d.]+ s \([\d.]+ MB/s\), "
                                             rb"\d+ workers?, \d+ failures?( -> .*)?$", l)]
    return b"\n".join(keep)


def reference_wordcount(paths, lower=True):
    """Word counts as Python computes them: re \\w on text decoded with errors='replace'."""
    c = collections.Counter()
    for path in paths:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        c.update(re.findall(r"\w+", text.lower() if lower else text))
    rows = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    return "".join("%s\t%d\n" % kv for kv in rows).encode()


class TmpTest(unittest.TestCase):
    """A test case with a fresh temporary directory in self.tmp."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbx-it-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def write(self, name, data):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        return p


@unittest.skipUnless(os.geteuid() == 0, "mounting a tmpfs needs root")
class TmpfsTest(TmpTest):
    """A TmpTest with a small tmpfs (TMPFS_SIZE) mounted at self.small: a disk that fills."""
    TMPFS_SIZE = "256k"

    def setUp(self):
        super().setUp()
        self.small = self.path("small")
        os.mkdir(self.small)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + self.TMPFS_SIZE, "tmpfs", self.small],
                           capture_output=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs: %s" % r.stderr.decode(errors="replace").strip())

    def tearDown(self):
        subprocess.run(["umount", "-l", self.small], capture_output=True)
        super().tearDown()


def spill_files(d):
    """Everything a job leaves in a spill directory: partition files and temporaries, and the
    directory of its own a job makes inside a --spill-dir."""
    out = []
    for root, dirs, files in os.walk(d) if os.path.isdir(d) else []:
        out += [os.path.relpath(os.path.join(root, f), d) for f in files + dirs]
    return sorted(out)


def in_spill(spill, pattern):
    """Files of a pattern in a spill directory or in the job's own directory inside it."""
    return glob.glob(os.path.join(spill, pattern)) + glob.glob(os.path.join(spill, "*", pattern))


def slurp(path, text=False):
    """The whole file, as bytes (or str with text=True)."""
    with open(path, "r" if text else "rb", **({"encoding": "utf-8"} if text else {})) as f:
        return f.read()


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args, **kw):
    """Start dbatch in the background (stdout, stderr piped)."""
    return subprocess.Popen([DBATCH, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


# Bytes read past the last line returned, per stream object (not per descriptor number: a
# later process's pipe may reuse the number, and must never see an earlier one's lines).
_pending = {}


def wait_for_line(stream, needle, timeout=30):
    """Read lines from stream until one contains needle; returns the lines read. Reads the
    raw descriptor, so no line hides in a Python buffer while select() says nothing is left."""
    import select
    import time
    fd = stream.fileno()
    seen = []
    end = time.time() + timeout
    while True:
        buf = _pending.get(stream, b"")
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            _pending[stream] = buf
            seen.append(line.decode(errors="replace") + "\n")
            if needle in seen[-1]:
                return seen
        if time.time() >= end:
            break
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            _pending[stream] = buf + chunk
    raise AssertionError("never saw %r; got:\n%s" % (needle, "".join(seen)))


def lines_file(path, n):
    """A text file of n short lines with a known word count."""
    with open(path, "w") as f:
        for i in range(n):
            f.write("line %d alpha beta w%d\n" % (i, i % 97))
    return path


# ---- fault tests: processes started, killed and waited for ----

def fault_env(spec, **more):
    """The environment of a run whose workers inject faults (DBATCH_FAULT, docs/faults.md)."""
    env = dict(os.environ)
    env["DBATCH_FAULT"] = spec
    env.update(more)
    return env


def wait_until(pred, what, timeout=60, proc=None):
    """Poll pred until it holds; fail after timeout, or as soon as proc (if given) ends."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError("process ended (%d) before %s:\n%s" % (
                proc.returncode, what, proc.stderr.read().decode(errors="replace")))
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def stop(p):
    """Kill p (if still running) and reap it. Not communicate(): a leftover of a broken build
    may hold its pipes open."""
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)
    for f in (p.stdout, p.stderr):
        if f:
            f.close()


def children(pid):
    """The pids of pid's child processes (its workers)."""
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True).stdout
    except FileNotFoundError:  # no procps
        return []
    return [int(x) for x in out.split()]


def kill_job(coord):
    """kill -9 a coordinator, then its workers (orphaned, they would notice it is gone; the
    test does not wait for that)."""
    kids = children(coord.pid)
    coord.send_signal(signal.SIGKILL)
    coord.wait(timeout=30)
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
