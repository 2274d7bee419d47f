"""Fault injection, each case compared byte for byte with a fault-free run: a poison batch
(skip and fail), a stopped straggler, a cut connection, a killed coordinator resumed from
its journal, a read-only output directory."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, children, fault_env, free_port, run, slurp, start, TmpTest, wait_for_line  # noqa: E402


def words_file(path, lines, seed=5, poison_at=None):
    rnd = random.Random(seed)
    vocab = ["w%d" % i for i in range(2000)]
    with open(path, "w") as f:
        for i in range(lines):
            f.write("POISON here\n" if i == poison_at else " ".join(rnd.choice(vocab) for _ in range(6)) + "\n")
    return path


class PoisonBatch(TmpTest):
    """A batch that kills its worker every time it runs."""

    def setUp(self):
        super().setUp()
        self.data = words_file(self.path("in.txt"), 2000, poison_at=777)

    def test_skip_reports_exactly_what_is_missing(self):
        s = self.path("s.json")
        p = run("wordcount", "--workers", "2", "--batch-records", "100", "--on-task-failure", "skip",
                "--summary-json", s, self.data, check=False, env=fault_env("crash_on=POISON"))
        self.assertEqual(p.returncode, 3, p.stderr)
        j = json.loads(slurp(s, True))
        raw = slurp(self.data).splitlines(True)
        start = sum(len(x) for x in raw[:700])
        end = start + sum(len(x) for x in raw[700:800])
        self.assertEqual([(m["task"], m["input"]) for m in j["missing"]],
                         [(7, "%s lines 701-800 (bytes %d-%d)" % (self.data, start, end))])
        # The output is the clean run over the input without exactly those lines.
        lines = slurp(self.data, True).splitlines(True)
        rest = self.write("rest.txt", "".join(lines[:700] + lines[800:]))
        self.assertEqual(p.stdout, run("wordcount", "--workers", "0", rest).stdout)
        self.assertGreaterEqual(len([f for f in j["failures"] if f["task"] == 7]), 4)
        # Task 7's attempts are the crashes; no other task is blamed for them (a machine under
        # load may time out another task's attempt, which is not a crash: CI saw one once).
        causes = [(f["task"], f["cause"]) for f in j["failures"]]
        self.assertTrue(all("killed by signal 9" in c for t, c in causes if t == 7), causes)
        self.assertFalse(any("killed by signal 9" in c for t, c in causes if t != 7), causes)
        self.assertIn(b"missing from the result", p.stderr)

    def test_fail_stops_with_a_report_and_no_output(self):
        out = self.path("out.tsv")
        p = run("wordcount", "--workers", "2", "--batch-records", "100", "--out", out, self.data, check=False,
                env=fault_env("crash_on=POISON"))
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        self.assertIn("task 7", err)
        self.assertIn("lines 701-800", err)
        self.assertIn("task 7 (%s lines 701-800" % self.data, err)
        self.assertIn("4 attempt(s) failed;", err)
        # The blame goes only to the batch that kills its worker (the worker's evidence page
        # says what it was running): attempts 1-4 of task 7, no other task, none innocent.
        final = err.strip().splitlines()[-1]
        self.assertEqual(re.findall(r"attempt (\d+) on worker \d+ \(\S+ pid \d+\): worker was killed by signal 9",
                                    final), ["1", "2", "3", "4"])
        self.assertNotIn("lost with a worker", final)
        self.assertEqual(sorted(set(re.findall(r"wordcount task (\d+) attempt", err))), ["7"])
        self.assertFalse(any(n.startswith("out.tsv") or ".out.tsv" in n for n in os.listdir(self.tmp)))


class Straggler(TmpTest):
    def test_stopped_worker_is_overtaken_by_a_copy(self):
        data = words_file(self.path("in.txt"), 3000)
        want = run("wordcount", "--workers", "0", data).stdout
        s = self.path("s.json")
        coord = start("wordcount", "--workers", "2", "--batch-records", "100", "--summary-json", s, "-v", data,
                      env=fault_env("delay_ms=60"))
        stopped = None
        try:
            wait_for_line(coord.stderr, "worker 2 joined")
            time.sleep(0.4)
            stopped = children(coord.pid)[0]
            os.kill(stopped, signal.SIGSTOP)
            wait_for_line(coord.stderr, "a copy starts")
            os.kill(stopped, signal.SIGCONT)  # its task ran elsewhere; its late result is dropped
            stopped = None
            out, err = coord.communicate(timeout=120)
        finally:
            if stopped:
                os.kill(stopped, signal.SIGCONT)
            if coord.poll() is None:
                coord.kill()
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, want)
        j = json.loads(slurp(s, True))
        self.assertGreaterEqual(j["speculative_attempts"], 1)
        self.assertEqual(j["records"], 3000)
        self.assertEqual(children(coord.pid), [])


class Proxy:
    """A TCP relay that can be cut: the worker's connection to the coordinator goes through it."""

    def __init__(self, target_port):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.target = target_port
        self.socks = []
        self.cut = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.cut:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            if self.cut:
                a.close()
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self.pump, args=(x, y), daemon=True).start()

    def pump(self, x, y):
        try:
            while True:
                d = x.recv(65536)
                if not d or self.cut:
                    break
                y.sendall(d)
        except OSError:
            pass

    def close(self):
        self.cut = True
        for s in self.socks + [self.srv]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class CutConnection(TmpTest):
    def test_remote_worker_cut_mid_task(self):
        data = words_file(self.path("in.txt"), 3000)
        want = run("wordcount", "--workers", "0", data).stdout
        port = free_port()
        ep = "tcp://127.0.0.1:%d" % port
        s = self.path("s.json")
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "100", "--worker-timeout",
                      "1.5", "--wait-workers", "2", "--no-speculation", "--summary-json", s, "-v", data)
        wait_for_line(coord.stderr, "waiting for workers")  # listening: the relay can connect
        proxy = Proxy(port)
        env = fault_env("delay_ms=80")
        far = start("worker", "--connect", "tcp://127.0.0.1:%d" % proxy.port, "--slots", "1", env=env)
        near = start("worker", "--connect", ep, "--slots", "1", env=env)
        try:
            wait_for_line(coord.stderr, "worker 2 joined")
            time.sleep(0.3)
            proxy.close()  # mid-task: the far worker goes silent
            out, err = coord.communicate(timeout=120)
        finally:
            proxy.close()
            for p in (coord, far, near):
                if p.poll() is None:
                    p.kill()
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, want)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["records"], 3000)
        # Seen as a lost connection (a send fails) or as silence past --worker-timeout.
        self.assertTrue(any("silent" in f["cause"] or "connection" in f["cause"] for f in j["failures"]),
                        j["failures"])


class StoppedRemoteWorker(TmpTest):
    def test_stopped_remote_worker_is_declared_dead_by_worker_timeout(self):
        """A stopped process keeps its TCP connection open: only --worker-timeout can tell."""
        data = words_file(self.path("in.txt"), 3000)
        want = run("wordcount", "--workers", "0", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        s = self.path("s.json")
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "100", "--worker-timeout",
                      "1", "--heartbeat", "0.2", "--wait-workers", "2", "--no-speculation", "--summary-json", s,
                      "-v", data)
        env = fault_env("delay_ms=80")
        stopped = start("worker", "--connect", ep, "--slots", "1", "--heartbeat", "0.2", env=env)
        other = start("worker", "--connect", ep, "--slots", "1", "--heartbeat", "0.2", env=env)
        try:
            wait_for_line(coord.stderr, "worker 2 joined")
            time.sleep(0.3)
            os.kill(stopped.pid, signal.SIGSTOP)
            out, err = coord.communicate(timeout=120)
        finally:
            for p in (coord, stopped, other):
                if p.poll() is None:
                    p.kill()
            stopped.wait()
            other.wait()
        self.assertEqual(coord.returncode, 0, err)
        self.assertEqual(out, want)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["records"], 3000)
        stopped_id = [w["id"] for w in j["worker_stats"] if w["pid"] == stopped.pid][0]
        causes = [f["cause"] for f in j["failures"] if f["worker"] == stopped_id]
        self.assertGreaterEqual(len(causes), 1)
        self.assertTrue(all(re.match(r"worker was silent for \d+\.\d s \(--worker-timeout\)$", c) for c in causes),
                        causes)


class KilledCoordinator(TmpTest):
    def test_resume_finishes_without_redoing_tasks(self):
        data = words_file(self.path("in.txt"), 4000)
        want = run("wordcount", "--workers", "0", data).stdout
        jd, out, s = self.path("job"), self.path("out.tsv"), self.path("s.json")
        coord = start("wordcount", "--workers", "2", "--batch-records", "50", "--job-dir", jd, "--out", out,
                      "--summary-json", s, "-v", data, env=fault_env("delay_ms=60"))
        wait_for_line(coord.stderr, "worker 2 joined")
        time.sleep(0.8)
        kids = children(coord.pid)
        coord.kill()
        coord.wait()
        time.sleep(0.3)
        for k in kids:  # local workers die with their coordinator
            self.assertFalse(os.path.exists("/proc/%d/status" % k) and b"zombie" not in slurp("/proc/%d/status" % k),
                             "worker %d outlived its coordinator" % k)
        self.assertFalse(os.path.exists(out))
        p = run("resume", jd)
        self.assertEqual(slurp(out), want)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["tasks"], 80 + 8)  # 80 batches, then 8 partitions reduced on the workers
        # Every journaled task is reused, and only the others run again.
        reused = int(re.search(rb"resumed: (\d+) finished task", p.stderr).group(1))
        self.assertGreater(reused, 1)
        self.assertEqual(j["attempts"], 80 + 8 - reused, "finished tasks were run again")
        self.assertEqual(j["records"], 4000)
        self.assertEqual([n for n in os.listdir(self.tmp) if ".tmp." in n], [])
        p = run("resume", jd, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"already finished", p.stderr)

    def test_resume_refuses_changed_inputs(self):
        data = words_file(self.path("in.txt"), 2000)
        jd = self.path("job")
        coord = start("wordcount", "--workers", "2", "--batch-records", "50", "--job-dir", jd, "--out",
                      self.path("o.tsv"), "-v", data, env=fault_env("delay_ms=60"))
        wait_for_line(coord.stderr, "worker 2 joined")
        time.sleep(0.5)
        coord.kill()
        coord.wait()
        with open(data, "a") as f:
            f.write("one more line\n")
        p = run("resume", jd, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"inputs changed", p.stderr)
        self.assertIn(data.encode(), p.stderr)
        self.assertFalse(os.path.exists(self.path("o.tsv")))


class BadRecords(TmpTest):
    def test_long_lines_skipped_or_fatal(self):
        lines = ["alpha beta %d\n" % i for i in range(300)]
        lines[123] = "x" * 5000 + " huge\n"
        data = self.write("in.txt", "".join(lines))
        rest = self.write("rest.txt", "".join(lines[:123] + lines[124:]))
        want = run("wordcount", "--workers", "0", rest).stdout
        for workers in ("0", "2"):
            with self.subTest(workers=workers):
                s = self.path("s%s.json" % workers)
                p = run("wordcount", "--workers", workers, "--batch-records", "50", "--max-record", "1K",
                        "--summary-json", s, data)
                self.assertEqual(p.stdout, want)
                self.assertIn(b"bad record skipped: %s line 124" % data.encode(), p.stderr)
                j = json.loads(slurp(s, True))
                self.assertEqual((j["records"], j["bad_records"]), (300, 1))
                out = self.path("o.tsv")
                p = run("wordcount", "--workers", workers, "--batch-records", "50", "--max-record", "1K",
                        "--on-bad-record", "fail", "--out", out, data, check=False)
                self.assertEqual(p.returncode, 1)
                self.assertIn(b"bad record at %s line 124" % data.encode(), p.stderr)
                self.assertFalse(os.path.exists(out))

    def test_unreadable_document_lines(self):
        train = self.write("train.jsonl", '{"label": "a", "text": "red apple"}\n{oops\n{"label": "b", "text": "blue sky"}\n')
        p = run("nb", "run", "--train", train, "--test", train, "--workers", "2")
        self.assertIn(b"bad record skipped: %s line 2" % train.encode(), p.stderr)
        p = run("nb", "run", "--train", train, "--test", train, "--on-bad-record", "fail", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"%s line 2: not a JSON object" % train.encode(), p.stderr)


class Heartbeats(TmpTest):
    def test_long_task_keeps_its_worker_alive(self):
        # Tasks of 2.5 s with a 1 s worker timeout: the worker's I/O thread heartbeats while
        # its task thread is busy, so nothing is declared dead and nothing runs twice.
        s = self.path("s.json")
        p = run("bench-tasks", "--tasks", "2", "--task-ms", "2500", "--workers", "1", "--worker-timeout", "1",
                "--heartbeat", "0.2", "--no-speculation", "--summary-json", s)
        self.assertIn(b"2 tasks in", p.stdout)
        j = json.loads(slurp(s, True))
        self.assertEqual(j["failures"], [])
        self.assertEqual(j["attempts"], 2)

    def test_task_timeout_fails_the_attempt(self):
        s = self.path("s.json")
        p = run("bench-tasks", "--tasks", "1", "--task-ms", "3000", "--workers", "1", "--task-timeout", "0.5",
                "--max-attempts", "2", "--no-speculation", "--summary-json", s, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"timed out after", p.stderr)
        self.assertIn(b"noop task 0 (no input): 2 attempt(s) failed;", p.stderr)


class ReadOnlyOutput(TmpTest):
    def test_read_only_directory(self):
        """Run as an unprivileged user when this is root (CI): root passes every mode check."""
        data = words_file(self.path("in.txt"), 100)
        os.chmod(self.tmp, 0o755)
        os.chmod(data, 0o644)
        ro = self.path("ro")
        os.makedirs(ro)
        os.chmod(ro, 0o555)
        target = os.path.join(ro, "out.tsv")
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        p = subprocess.run(drop + [os.path.abspath(DBATCH), "wordcount", data, "--no-job-dir", "--out", target],
                           capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(target.encode(), p.stderr)
        self.assertIn(b"Permission denied", p.stderr)
        self.assertFalse(os.path.exists(target))
        self.assertEqual(os.listdir(ro), [])


if __name__ == "__main__":
    unittest.main()
