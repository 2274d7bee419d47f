"""A remote worker that goes silent (SIGSTOP: its connection stays open, so no send fails)
must be declared dead by --worker-timeout alone: speculation is off and the task timeout is
far away, so only the worker timeout can end its attempts. The job then finishes exactly."""
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import TmpTest, free_port, lines_file, run, slurp, start, wait_for_line  # noqa: E402


class SilentRemoteWorker(TmpTest):
    def test_stopped_worker_declared_dead_by_worker_timeout(self):
        data = lines_file(self.path("in.txt"), 3000)
        want = run("wordcount", "--workers", "0", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        s = self.path("s.json")
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "100", "--worker-timeout",
                      "1", "--heartbeat", "0.2", "--task-timeout", "600", "--no-speculation", "--wait-workers", "2",
                      "--no-job-dir", "--summary-json", s, "-v", data)
        env = dict(os.environ, DBATCH_FAULT="delay_ms=80")
        a = start("worker", "--connect", ep, "--slots", "1", env=env)
        b = None
        stopped = False
        try:
            wait_for_line(coord.stderr, "worker 1 joined")
            b = start("worker", "--connect", ep, "--slots", "1", env=env)
            wait_for_line(coord.stderr, "worker 2 joined")
            time.sleep(0.4)  # both hold tasks now
            os.kill(a.pid, signal.SIGSTOP)
            stopped = True
            # Well under --task-timeout: only the worker timeout can free a's tasks in time.
            out, err = coord.communicate(timeout=60)
        finally:
            if stopped:
                os.kill(a.pid, signal.SIGCONT)
            for p in (coord, a, b):
                if p and p.poll() is None:
                    p.kill()
                if p:
                    p.communicate()
        err = err.decode(errors="replace")
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, want)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["records"], 3000)
        self.assertTrue(j["failures"], "the stopped worker's attempt never failed")
        for f in j["failures"]:
            self.assertEqual(f["pid"], a.pid, f)
            self.assertRegex(f["cause"], r"^worker was silent for \d+\.\d s \(--worker-timeout\)$")
        self.assertIn("pid %d) was silent for" % a.pid, err)


if __name__ == "__main__":
    unittest.main()
