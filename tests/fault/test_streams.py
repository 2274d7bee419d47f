"""Awkward inputs and odd job directories: an endless or huge line on a stream stays within
bounded memory (--max-record cuts and skips it, else a clear error naming input and line) and
SIGTERM still stops the job; a size-0 file with content (procfs) is read, not taken as empty;
an input replaced by another file of the same size and time is refused on resume; `dbatch
status` sees a stopped coordinator and a truncated dashboard reply; a job that cannot start
leaves no job directory behind."""
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, reference_wordcount, run, slurp, start, TmpTest, wait_until  # noqa: E402

MB = 1 << 20


def proc_field(pid, fname, key):
    try:
        with open("/proc/%d/%s" % (pid, fname)) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class LongLines(TmpTest):
    def long_line_input(self, n):
        return b"hello world\n" + b"x" * n + b"\nhello again\n"

    def test_line_over_max_record_is_skipped_from_a_stream(self):
        data = self.long_line_input(3 * MB)
        p = run("wordcount", "--no-job-dir", "--max-record", "1M", "-", input=data)
        self.assertEqual(p.stdout, reference_wordcount([self.write("ok.txt", b"hello world\nhello again\n")]))
        self.assertIn(b"bad record skipped: - line 2", p.stderr)

    def test_line_over_max_record_fails_naming_input_and_line(self):
        data = self.long_line_input(3 * MB)
        p = run("wordcount", "--no-job-dir", "--max-record", "1M", "--on-bad-record", "fail", "-",
                input=data, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, b"")
        err = p.stderr.decode()
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        # The splitter stops at the bound: it never read (nor counted) the whole line.
        self.assertIn("bad record at - line 2: a line of more than 1048576 bytes", err)

    def test_line_over_the_stream_cap_is_an_error_naming_input_and_line(self):
        # --batch-bytes 1M: the cap is 64 MiB (16 x 1M, at least 64 MiB).
        data = self.long_line_input(65 * MB)
        p = run("wordcount", "--no-job-dir", "--batch-bytes", "1M", "-", input=data, check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stdout, b"")
        err = p.stderr.decode()
        self.assertIn("- line 2: a line of more than 67108864 bytes", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_endless_line_stays_bounded_and_sigterm_stops_it(self):
        with open("/dev/zero", "rb") as zero:
            p = subprocess.Popen([DBATCH, "wordcount", "--no-job-dir", "-q", "--max-record", "1M", "-"],
                                 stdin=zero, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Let it read 1 GiB of one endless line (bounded wait), then look at its peak memory.
            wait_until(lambda: proc_field(p.pid, "io", "rchar:") >= 1 << 30, "1 GiB read", timeout=120, proc=p)
            peak_kb = proc_field(p.pid, "status", "VmHWM:")
            self.assertLess(peak_kb, 400 * 1024, "the coordinator held %d kB for one line" % peak_kb)
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 143)  # 128 + SIGTERM, as a shell reports it
        self.assertEqual(out, b"")
        self.assertIn(b"interrupted (SIGTERM); no output was written", err)


class ZeroSizeFiles(TmpTest):
    def test_procfs_file_is_read(self):
        src = "/proc/version"
        if not os.path.exists(src) or os.path.getsize(src) != 0:
            self.skipTest("no size-0 /proc/version here")
        p = run("wordcount", "--no-job-dir", src)
        want = reference_wordcount([src])
        self.assertNotEqual(want, b"")
        self.assertEqual(p.stdout, want)

    def test_empty_file_is_still_empty(self):
        p = run("wordcount", "--no-job-dir", self.write("empty.txt", b""), self.write("a.txt", b"a b a\n"))
        self.assertEqual(p.stdout, b"a\t2\nb\t1\n")


def words_file(path, mb):
    line = b"w1 alpha beta gamma delta w3 w4 w5 w6 w7\n"
    with open(path, "wb") as f:
        f.write(line * (mb * MB // len(line)))
    return path


class ReplacedInputOnResume(TmpTest):
    def test_same_size_and_mtime_but_another_file_is_refused(self):
        data = words_file(self.path("in.txt"), 8)
        jd, out = self.path("job"), self.path("out.tsv")
        env = dict(os.environ, DBATCH_FAULT="delay_ms=1000")
        coord = start("wordcount", "--workers", "2", "--batch-bytes", "1M", "--job-dir", jd, "--out", out, data,
                      env=env)

        def done_tasks():
            try:
                with sqlite3.connect(os.path.join(jd, "journal.db"), timeout=5) as c:
                    return c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            except sqlite3.Error:
                return 0
        wait_until(lambda: done_tasks() >= 1, "a finished task in the journal", proc=coord)
        coord.kill()
        coord.wait(timeout=30)
        time.sleep(0.3)  # its local workers notice and leave
        st = os.stat(data)
        t = self.path("t")
        with open(data, "rb") as f:
            body = f.read().replace(b"w1 ", b"w2 ")
        with open(t, "wb") as f:
            f.write(body)
        os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(t, data)
        self.assertEqual(os.path.getsize(data), st.st_size)
        self.assertEqual(os.stat(data).st_mtime_ns, st.st_mtime_ns)
        p = run("resume", jd, check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"inputs changed since the job started", p.stderr)
        self.assertIn(data.encode() + b" was replaced by another file", p.stderr)
        self.assertFalse(os.path.exists(out))


class StatusOfAStoppedCoordinator(TmpTest):
    def test_live_pid_with_a_stale_status_is_not_responding(self):
        jd = self.path("job")
        os.makedirs(jd)
        sleeper = subprocess.Popen(["sleep", "120"])
        try:
            host = socket.gethostname()
            with open(os.path.join(jd, "status.json"), "w") as f:
                json.dump({"state": "running", "coordinator": "%d@%s" % (sleeper.pid, host)}, f)
            with open(os.path.join(jd, "status.txt"), "w") as f:
                f.write("job wordcount: running\nworkers 2\n")
            old = time.time() - 120
            os.utime(os.path.join(jd, "status.json"), (old, old))
            p = run("status", jd, check=False)
            self.assertEqual(p.returncode, 4, p.stdout)
            first = p.stdout.decode().splitlines()[0]
            self.assertTrue(first.startswith("job lost: its coordinator (pid %d" % sleeper.pid), first)
            self.assertIn("not responding", first)
            # Fresh: the same live pid is running.
            now = time.time()
            os.utime(os.path.join(jd, "status.json"), (now, now))
            p = run("status", jd)
            self.assertEqual(p.stdout, b"job wordcount: running\nworkers 2\n")
        finally:
            sleeper.kill()
            sleeper.wait()
        h = run("status", "--help").stdout
        self.assertIn(b"30 s", h)


class TruncatedDashboardReply(TmpTest):
    def serve_once(self, reply):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        s.settimeout(30)

        def one():
            try:
                c, _ = s.accept()
                c.settimeout(10)
                c.recv(4096)
                c.sendall(reply)
                c.close()
            except OSError:
                pass
        th = threading.Thread(target=one, daemon=True)
        th.start()
        return s, th

    def test_body_shorter_than_content_length_is_an_error(self):
        s, th = self.serve_once(b"HTTP/1.0 200 OK\r\nX-Dbatch-State: running\r\nContent-Length: 1000\r\n\r\n"
                                b"job x: running\nhalf")
        try:
            p = run("status", "--timeout", "10", "http://127.0.0.1:%d/" % s.getsockname()[1], check=False)
        finally:
            th.join(30)
            s.close()
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, b"")
        self.assertIn(b"truncated answer", p.stderr)

    def test_exact_content_length_is_accepted(self):
        body = b"job x: running\nworkers 1\n"
        s, th = self.serve_once(b"HTTP/1.0 200 OK\r\nX-Dbatch-State: running\r\nContent-Length: %d\r\n\r\n" % len(body)
                                + body)
        try:
            p = run("status", "--timeout", "10", "http://127.0.0.1:%d/" % s.getsockname()[1])
        finally:
            th.join(30)
            s.close()
        self.assertEqual(p.stdout, body)


class JobDirOnAFullDisk(TmpTest):
    def test_job_that_cannot_start_leaves_no_job_dir(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to mount a small tmpfs")
        mnt = self.path("mnt")
        os.makedirs(mnt)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], capture_output=True).returncode:
            self.skipTest("cannot mount a tmpfs here")
        try:
            fd = os.open(os.path.join(mnt, "fill"), os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096) > 0:
                    pass
            except OSError:
                pass
            os.close(fd)
            data = self.write("in.txt", b"a b\n")
            jd = os.path.join(mnt, "j")
            p = run("wordcount", "-q", "--job-dir", jd, data, check=False)
            self.assertEqual(p.returncode, 1)
            self.assertIn(b"No space left on device", p.stderr)
            self.assertFalse(os.path.exists(jd), os.listdir(jd) if os.path.isdir(jd) else "")
            # A directory that was there before is the user's: it stays.
            os.makedirs(os.path.join(mnt, "k"))
            p = run("wordcount", "-q", "--job-dir", os.path.join(mnt, "k"), data, check=False)
            self.assertEqual(p.returncode, 1)
            self.assertTrue(os.path.isdir(os.path.join(mnt, "k")))
        finally:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


if __name__ == "__main__":
    unittest.main()
