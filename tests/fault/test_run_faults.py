"""Faults around dbatch run --map CMD: workers and coordinators killed with -9 while commands
run, hanging commands under --task-timeout, commands leaving processes behind. The output must
equal the clean run byte for byte, and no process of a command may survive its task. Also:
the coordinator's memory does not grow with the size of the output (it streams in order)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, children, fault_env, free_port, run, slurp, start, stop, TmpTest, wait_until  # noqa: E402


def pids_of(pattern):
    """Pids whose whole command line matches the regular expression pattern."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True).stdout
    return sorted(int(x) for x in out.split())


def parent_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0


def gone(pid):
    return not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"


class Leftovers(TmpTest):
    """Every test uses its own sleep duration as a marker: 'sleep 977.N' exists only as ours."""

    def setUp(self):
        super().setUp()
        self.input = self.write("in.txt", b"".join(b"line %d\n" % i for i in range(400)))
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            stop(p)
        super().tearDown()

    def job(self, *args, env=None):
        p = start("run", "--no-job-dir", *args, env=env)
        self.procs.append(p)
        return p

    def test_kill_9_of_a_worker_kills_its_command(self):
        mark = "^sleep 977.25$"
        coord = self.job("--map", "cat > /dev/null; sleep 977.25; true", "--workers", "2", "--batch-records", "100",
                         self.input)
        wait_until(lambda: len(pids_of(mark)) == 2, "both workers running the command")
        victim = pids_of(mark)[0]
        # sleep -> sh -> supervisor -> worker -> coordinator
        worker = victim
        while worker and parent_of(worker) != coord.pid:
            worker = parent_of(worker)
        self.assertTrue(worker, "the command is not under a worker of the job")
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: gone(victim), "the killed worker's command to end", timeout=15)
        # And a coordinator killed with -9 takes its workers' commands down too.
        wait_until(lambda: len(pids_of(mark)) >= 1, "a command running again")
        stop(coord)
        wait_until(lambda: not pids_of(mark), "every command to end after the coordinator died", timeout=15)

    def test_kill_9_of_the_coordinator_in_process(self):
        mark = "^sleep 977.5$"
        coord = self.job("--map", "cat > /dev/null; sleep 977.5; true", "--workers", "0", self.input)
        wait_until(lambda: pids_of(mark), "the command to start")
        stop(coord)
        wait_until(lambda: not pids_of(mark), "the command to end with its coordinator", timeout=15)

    def test_task_timeout_kills_the_process_group(self):
        mark = "^sleep 977.75$"
        # A background sleep as well: the whole group goes, not only the shell.
        cmd = "cat > /dev/null; sleep 977.75 & sleep 977.75; true"
        for w in ("0", "1"):
            r = run("run", "--no-job-dir", "--map", cmd, "--workers", w, "--task-timeout", "1", "--max-attempts", "2",
                    self.input, check=False, timeout=60)
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 1, err)
            self.assertIn("timed out", err)
            wait_until(lambda: not pids_of(mark), "no command left after the timeout (--workers %s)" % w, timeout=15)

    def test_task_timeout_on_a_remote_worker(self):
        mark = "^sleep 977.875$"
        ep = "tcp://127.0.0.1:%d" % free_port()
        coord = self.job("--map", "cat > /dev/null; sleep 977.875; true", "--workers", "0", "--listen", ep,
                         "--task-timeout", "1", "--max-attempts", "2", self.input)
        w = start("worker", "--connect", ep, "--slots", "1", "-q")
        self.procs.append(w)
        out, err = coord.communicate(timeout=60)
        self.assertEqual(coord.returncode, 1, err.decode(errors="replace"))
        # The worker stays (it serves the job until it ends), but its command is gone.
        wait_until(lambda: not pids_of(mark), "the remote worker's command to end after the timeout", timeout=15)

    def test_background_processes_end_with_the_command(self):
        mark = "^sleep 977.125$"
        # The leftover keeps the command's standard output open: without the group kill the
        # task would wait for it.
        cmd = "cat; (sleep 977.125 &)"
        for w in ("0", "2"):
            r = run("run", "--no-job-dir", "--map", cmd, "--workers", w, "--batch-records", "100", self.input,
                    timeout=60)
            self.assertEqual(r.stdout, slurp(self.input))
            wait_until(lambda: not pids_of(mark), "no background process left", timeout=15)


class KillAndResume(TmpTest):
    CMD = "awk '{ print NR \": \" toupper($0) }'"

    def setUp(self):
        super().setUp()
        rnd = random.Random(11)
        words = ["w%d" % i for i in range(300)]
        lines = [" ".join(rnd.choice(words) for _ in range(6)) + "\n" for _ in range(20000)]
        self.input = self.write("in.txt", "".join(lines))
        self.want = run("run", "--map", self.CMD, "--workers", "0", "--batch-records", "500", "--no-job-dir", "-q",
                        self.input).stdout
        # NR restarts in every batch: the answer depends on the cut, so it checks the order too.
        self.assertEqual(self.want.count(b"\n"), 20000)

    def test_kill_9_workers_mid_job(self):
        coord = start("run", "--map", self.CMD, "--workers", "2", "--batch-records", "500", "--max-attempts", "10",
                      "--no-job-dir", self.input, env=fault_env("delay_ms=150"))
        killed = 0
        rnd = random.Random(5)
        try:
            deadline = time.time() + 60
            while coord.poll() is None and killed < 4 and time.time() < deadline:
                time.sleep(0.4)
                kids = children(coord.pid)
                if kids:
                    try:
                        os.kill(rnd.choice(kids), signal.SIGKILL)
                        killed += 1
                    except ProcessLookupError:
                        pass
            out, err = coord.communicate(timeout=120)
        finally:
            stop(coord)
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertGreater(killed, 0)
        self.assertEqual(out, self.want)

    def test_resume_after_kill_9_of_the_coordinator(self):
        jd, out, s = self.path("job"), self.path("out.txt"), self.path("s.json")
        coord = start("run", "--map", self.CMD, "--workers", "2", "--batch-records", "500", "--job-dir", jd,
                      "-o", out, "--summary-json", s, self.input, env=fault_env("delay_ms=200"))
        try:
            import sqlite3

            def journaled():
                db = os.path.join(jd, "journal.db")
                if not os.path.exists(db):
                    return 0
                try:
                    with sqlite3.connect(db, timeout=5) as c:
                        return c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
                except sqlite3.OperationalError:
                    return 0
            wait_until(lambda: journaled() >= 3, "finished tasks in the journal", timeout=60)
        finally:
            stop(coord)
        time.sleep(0.3)
        self.assertFalse(os.path.exists(out))
        run("resume", jd)
        self.assertEqual(slurp(out), self.want)
        j = json.loads(slurp(s, True))
        self.assertGreaterEqual(j["resumed_tasks"], 3)
        self.assertEqual(j["records"], 20000)


class Memory(TmpTest):
    """Peak RSS of the job's whole process tree (coordinator and workers, as getrusage reports
    for waited-for descendants) for two output sizes 16x apart."""

    @staticmethod
    def env():
        """Under AddressSanitizer freed memory waits in a quarantine (256 MB) that would count
        as resident: keep it small. No effect on a normal build."""
        env = dict(os.environ)
        extra = "quarantine_size_mb=1:thread_local_quarantine_size_kb=64"
        env["ASAN_OPTIONS"] = (env["ASAN_OPTIONS"] + ":" + extra) if env.get("ASAN_OPTIONS") else extra
        return env

    def peak_kb(self, per_batch):
        cmd = "cat > /dev/null; head -c %d /dev/zero" % per_batch
        probe = ("import resource, subprocess, sys\n"
                 "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
                 "sys.stderr.write(r.stderr.decode(errors='replace'))\n"
                 "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
        p = subprocess.run([sys.executable, "-c", probe, DBATCH, "run", "--map", cmd, "--workers", "2",
                            "--batch-records", "1", "--no-job-dir", "-q", "-o", self.path("out.bin"), self.input],
                           capture_output=True, timeout=300, env=self.env())
        rc, kb = p.stdout.split()
        self.assertEqual(int(rc), 0, p.stderr.decode(errors="replace"))
        self.assertEqual(os.path.getsize(self.path("out.bin")), 40 * per_batch)
        return int(kb)

    def test_output_streams_without_growing_memory(self):
        self.input = self.write("in.txt", b"".join(b"%d\n" % i for i in range(40)))
        small = self.peak_kb(512 << 10)   # 20 MB in all
        big = self.peak_kb(8 << 20)       # 320 MB in all
        # Holding the output would cost 300 MB more; streaming costs a few batches of 8 MB.
        self.assertLess(big - small, 120 << 10, "peak RSS %d KB for 20 MB of output, %d KB for 320 MB" % (small, big))


if __name__ == "__main__":
    unittest.main()
