"""Workers: local and remote processes, policies, joining mid-job; the answer never changes."""
import json
import os
import unittest

from dbx import (DATA, TmpTest, free_port, lines_file, reference_wordcount, run, slurp, start,
                 wait_for_line)

MULTI = os.path.join(DATA, "multilingual.txt")


class Workers(TmpTest):
    def test_same_output_any_workers_any_policy(self):
        text = self.write("mix.txt", slurp(MULTI) * 40)
        want = run("wordcount", "--workers", "0", text).stdout
        self.assertEqual(want, reference_wordcount([text]))
        for w in (1, 2, 8):
            for p in ("least-loaded", "round-robin", "random"):
                with self.subTest(workers=w, policy=p):
                    out = run("wordcount", "--workers", w, "--policy", p, "--batch-bytes", "512", text).stdout
                    self.assertEqual(out, want)
        self.assertEqual(run("wordcount", "--workers", 2, "--ship", "--batch-bytes", "1K", text).stdout, want)
        self.assertEqual(run("wordcount", "--workers", 2, "--batch-records", "3", "-",
                             input=slurp(text)).stdout, want)

    def summary(self, name):
        return json.loads(slurp(self.path(name), True))

    def test_remote_workers_over_tcp_one_joining_mid_job(self):
        data = lines_file(self.path("lines.txt"), 6000)
        want = run("wordcount", "--workers", "0", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "1",
                      "--summary-json", self.path("s.json"), "-v", data)
        a = start("worker", "--connect", ep, "--slots", "1")
        try:
            wait_for_line(coord.stderr, "worker 1 joined")
            b = start("worker", "--connect", ep, "--slots", "1")
            out, err = coord.communicate(timeout=120)
            self.assertEqual(coord.returncode, 0, err)
            self.assertEqual(out, want)
            # Remote workers leave when the job ends.
            self.assertEqual(a.wait(timeout=10), 0)
            self.assertEqual(b.wait(timeout=10), 0)
        finally:
            for p in (coord, a):
                if p.poll() is None:
                    p.kill()
        s = self.summary("s.json")
        tasks = [w["tasks"] for w in s["worker_stats"]]
        self.assertEqual(len(tasks), 2)
        self.assertEqual(sum(tasks), 6000)
        self.assertGreater(tasks[1], 0, "the worker that joined mid-job got no task")
        self.assertFalse(any(w["local"] for w in s["worker_stats"]))
        # The line that stays counts the workers that took part, not the local ones (it said 0).
        self.assertIn(b", 2 workers, 0 failures", err.encode() if isinstance(err, str) else err)

    def run_remote(self, policy, slots, n, task_ms):
        """bench-tasks on remote workers with the given slots; tasks per worker by slots*1000+id."""
        ep = "tcp://127.0.0.1:%d" % free_port()
        ws = [start("worker", "--connect", ep, "--slots", s, "-q") for s in slots]
        try:
            run("bench-tasks", "--tasks", n, "--task-ms", task_ms, "--workers", "0", "--listen", ep,
                "--policy", policy, "--prefetch", "0", "--wait-workers", len(slots),
                "--summary-json", self.path("s.json"))
        finally:
            for w in ws:
                try:
                    w.wait(timeout=10)
                except Exception:
                    w.kill()
        return {w["slots"] * 1000 + w["id"]: w["tasks"] for w in self.summary("s.json")["worker_stats"]}

    def test_round_robin_spreads_evenly(self):
        counts = sorted(self.run_remote("round-robin", [1, 1], 400, 2).values())
        self.assertEqual(sum(counts), 400)
        # Equal workers (tasks wait 2 ms), both there from the start, one task each at a
        # time: turns alternate.
        self.assertLessEqual(counts[1] - counts[0], 400 * 0.1, counts)

    def test_least_loaded_follows_slots(self):
        # Tasks that wait 5 ms: a worker with 6 slots runs six at once, one with 1 slot one.
        c = self.run_remote("least-loaded", [1, 6], 300, 5)
        one = sum(v for k, v in c.items() if k // 1000 == 1)
        six = sum(v for k, v in c.items() if k // 1000 == 6)
        self.assertEqual(one + six, 300)
        self.assertLess(2 * one, six, c)

    def test_local_workers_do_not_outlive_the_job(self):
        s = self.path("s.json")
        run("wordcount", "--workers", "3", MULTI, "--summary-json", s, "--out", "/dev/null")
        for w in self.summary("s.json")["worker_stats"]:
            self.assertFalse(os.path.exists("/proc/%d" % w["pid"]), "worker %d still running" % w["pid"])

    def test_bench_tasks(self):
        p = run("bench-tasks", "--tasks", "2000", "--workers", "2")
        self.assertRegex(p.stdout.decode(), r"^2000 tasks in [0-9.]+ s = [0-9]+ tasks/s")
        self.assertIn(b"2000 tasks", run("bench-tasks", "--tasks", "2000", "--workers", "0").stdout)


class PersistentWorker(TmpTest):
    def test_worker_serves_consecutive_jobs(self):
        data = lines_file(self.path("l.txt"), 500)
        want = run("wordcount", "--workers", "0", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        w = start("worker", "--connect", ep, "--slots", "1", "--persist")
        try:
            for _ in range(2):
                out = run("wordcount", "--workers", "0", "--listen", ep, "--wait-workers", "1",
                          "--batch-records", "50", data, timeout=60).stdout
                self.assertEqual(out, want)
                self.assertIsNone(w.poll(), "a --persist worker left after the job")
        finally:
            w.kill()
            w.wait()


if __name__ == "__main__":
    unittest.main()
