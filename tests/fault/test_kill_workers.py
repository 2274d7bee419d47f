"""Fault injection: kill -9 local workers again and again during a job. Their tasks run
elsewhere, dead workers are replaced, and the output equals the clean run byte for byte."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import children, run, slurp, start, TmpTest  # noqa: E402


class KillWorkers(TmpTest):
    def test_kill_9_during_job(self):
        rnd = random.Random(7)
        words = ["w%d" % i for i in range(5000)]
        with open(self.path("big.txt"), "w") as f:
            for _ in range(300000):
                f.write(" ".join(rnd.choice(words) for _ in range(8)) + "\n")
        data = self.path("big.txt")
        want = run("wordcount", "--workers", "0", data).stdout
        s = self.path("s.json")
        coord = start("wordcount", "--workers", "2", "--batch-bytes", "16K", "--summary-json", s,
                      "--max-attempts", "10", data)
        killed = 0
        try:
            deadline = time.time() + 60
            while coord.poll() is None and killed < 6 and time.time() < deadline:
                time.sleep(0.15)
                kids = children(coord.pid)
                if kids:
                    try:
                        os.kill(rnd.choice(kids), signal.SIGKILL)
                        killed += 1
                    except ProcessLookupError:
                        pass  # it ended on its own meanwhile
            out, err = coord.communicate(timeout=120)
        finally:
            if coord.poll() is None:
                coord.kill()
        err = err.decode(errors="replace")
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, want)
        self.assertGreater(killed, 0, "the job ended before any worker could be killed")
        self.assertIn("was killed by signal 9", err)
        summary = json.loads(slurp(s, True))
        self.assertEqual(summary["records"], 300000)   # each record counted once
        self.assertGreaterEqual(summary["attempts"], summary["tasks"])
        self.assertEqual(children(coord.pid), [])
        for w in summary["worker_stats"]:
            self.assertFalse(os.path.exists("/proc/%d" % w["pid"]), "worker %d left behind" % w["pid"])


if __name__ == "__main__":
    unittest.main()
