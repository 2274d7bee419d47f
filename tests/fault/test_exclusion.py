"""--exclude-after N: a worker that fails attempts of N different tasks gets no more tasks.
A fake worker (Python, speaking docs/protocol.md) answers every task with a failure; a real
worker does the work. The fake must get exactly N tasks, the job's answer must be exact,
and every failure must be one of the fake's."""
import json
import os
import sys
import threading
import time
import unittest

import msgpack
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import TmpTest, free_port, lines_file, run, slurp, start, wait_for_line  # noqa: E402

ETASK = -14


class FailingWorker(threading.Thread):
    """Says hello with one slot, then answers every task with a FAILURE, heartbeating as a
    worker must. Records the (index, attempt) of each task it was given."""

    def __init__(self, ep):
        super().__init__(daemon=True)
        self.ep = ep
        self.tasks = []
        self.worker_id = None
        self.stop = threading.Event()

    def run(self):
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.ep)
        send = lambda *f: s.send(msgpack.packb(["DBX", 1, *f]))
        send(1, 1, "failing-host", os.getpid(), True)  # hello: 1 slot, shared file system
        last_hb = 0
        try:
            while not self.stop.is_set():
                if time.time() - last_hb > 0.2:
                    send(8)
                    last_hb = time.time()
                if not s.poll(50):
                    continue
                m = msgpack.unpackb(s.recv(), raw=False)
                if m[2] == 2:
                    self.worker_id = m[3]
                elif m[2] == 5:  # task: stage, index, attempt, ...
                    self.tasks.append((m[4], m[5]))
                    send(7, m[3], m[4], m[5], ETASK, "deliberate failure of task %d" % m[4])
                elif m[2] == 10:  # bye
                    break
        finally:
            s.close()
            ctx.term()


class ExcludeAfter(TmpTest):
    def run_job(self, exclude_after):
        data = lines_file(self.path("in.txt"), 3000)
        want = run("wordcount", "--workers", "0", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        s = self.path("s.json")
        # --prefetch 0: a worker holds one task per slot, so the fake sees tasks one at a time
        # and cannot have more in flight when it is excluded.
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "100", "--prefetch", "0",
                      "--wait-workers", "2", "--exclude-after", str(exclude_after), "--no-speculation",
                      "--no-job-dir", "--summary-json", s, "-v", data)
        fake = FailingWorker(ep)
        real = None
        try:
            wait_for_line(coord.stderr, "waiting for workers")
            fake.start()
            wait_for_line(coord.stderr, "worker 1 joined")
            env = dict(os.environ, DBATCH_FAULT="delay_ms=40")
            real = start("worker", "--connect", ep, "--slots", "1", env=env)
            out, err = coord.communicate(timeout=120)
        finally:
            fake.stop.set()
            fake.join(10)
            for p in (coord, real):
                if p and p.poll() is None:
                    p.kill()
            if real:
                real.communicate()
        err = err.decode(errors="replace")
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, want)
        return json.loads(slurp(s, True)), err, fake

    def test_worker_failing_n_tasks_gets_no_more(self):
        for n in (3, 1):
            with self.subTest(exclude_after=n):
                j, err, fake = self.run_job(n)
                self.assertEqual(fake.worker_id, 1)
                # Exactly n tasks, all different, then nothing.
                self.assertEqual(len(fake.tasks), n, fake.tasks)
                self.assertEqual(len({t for t, _ in fake.tasks}), n)
                self.assertIn("worker 1 (failing-host pid %d) failed %d different tasks: it gets no more tasks"
                              % (os.getpid(), n), err)
                self.assertEqual(sorted((f["worker"], f["task"]) for f in j["failures"]),
                                 sorted((1, t) for t, _ in fake.tasks))
                self.assertTrue(all("deliberate failure" in f["cause"] for f in j["failures"]))
                self.assertEqual(j["records"], 3000)
                self.assertEqual(j["attempts"], 30 + n)
                states = {w["id"]: w["state"] for w in j["worker_stats"]}
                self.assertEqual(states.get(1), "excluded", j["worker_stats"])


if __name__ == "__main__":
    unittest.main()
