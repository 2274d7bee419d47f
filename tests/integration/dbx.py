"""dbx.py -- helpers for dbatch integration tests: run the real CLI, temp dirs, references."""
import collections
import os
import re
import shutil
import subprocess
import tempfile
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


def slurp(path, text=False):
    """The whole file, as bytes (or str with text=True)."""
    with open(path, "r" if text else "rb", **({"encoding": "utf-8"} if text else {})) as f:
        return f.read()
