"""Post-mortems that tell the truth: how each worker ended (killed, lost, never "finished"
when dead), a job that left input out is "partial" (amber, exit 3), a failed job states its
error, `dbatch status` exits by the job's state and calls a job whose coordinator is gone
"lost". Also: with --dashboard, a local worker killed by a signal is noticed, reaped and
replaced; names holding terminal escape sequences (a worker's host name, a file name)
never reach the terminal raw; libmicrohttpd's own lines obey -q."""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import time
import unittest
import urllib.error
import urllib.request

import msgpack
import zmq

from dbx import fault_env, free_port, lines_file, run, slurp, start, TmpTest, wait_for_line, without_summary_line

ESC = b"\x1b"
# How a worker that is gone ended, as the coordinator names it.
DEAD_STATES = {"killed", "exited", "lost"}


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def report_data(path):
    """The status embedded in report.html (window.DBX_STATUS = {...};)."""
    html = slurp(path, True)
    m = re.search(r"window\.DBX_STATUS = (\{.*?\})\s*;</script>", html, re.S)
    assert m, "report.html has no embedded status"
    return json.loads(m.group(1)), html


def badge(html):
    m = re.search(r'<span id="state" class="([^"]*)">([^<]*)</span>', html)
    assert m, "report.html has no state badge"
    return m.group(1), m.group(2)


def gone(pid):
    """No process pid any more: not running, not a zombie waiting to be reaped."""
    return not os.path.exists("/proc/%d" % pid)


def kill_quietly(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class KilledWorkers(TmpTest):
    def test_kill_9_with_dashboard_is_noticed_and_replaced(self):
        """The dashboard's thread must not swallow SIGCHLD: every kill -9 of a local worker is
        logged as such, the worker is reaped at once (no zombie) and replaced, and the answer
        is exactly that of a clean run."""
        data = lines_file(self.path("l.txt"), 1500)
        want = run("wordcount", "--workers", "0", "--no-job-dir", data).stdout
        port = free_port()
        jd = self.path("job")
        out = self.path("out.tsv")
        p = start("wordcount", "--workers", "2", "--batch-records", "10", "--dashboard", "127.0.0.1:%d" % port,
                  "--job-dir", jd, "--out", out, data, env=fault_env("delay_ms=40"))
        victims = []
        try:
            wait_for_line(p.stderr, "dashboard at")
            base = "http://127.0.0.1:%d/api/status" % port
            # Three kills, one after another: with SIGCHLD lost to the dashboard's thread, at
            # least one of them goes unnoticed (it is a race the coordinator loses often).
            for _ in range(3):
                deadline = time.time() + 60
                pick = None
                while time.time() < deadline and pick is None:
                    s = get_json(base)
                    alive = [w for w in s["workers"] if w["state"] == "alive" and w["pid"] not in victims]
                    if len(alive) == 2 and s["totals"]["done"] >= 2:
                        pick = alive[0]["pid"]
                    else:
                        time.sleep(0.05)
                self.assertIsNotNone(pick, "never saw two live workers")
                os.kill(pick, signal.SIGKILL)
                victims.append(pick)
                wait_for_line(p.stderr, "pid %d) was killed by signal 9" % pick, timeout=30)
                # The message is printed after waitpid(): the worker is no zombie.
                self.assertTrue(gone(pick), "worker %d is a zombie" % pick)
            _, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err.decode(errors="replace"))
        self.assertEqual(slurp(out), want)
        final = json.loads(slurp(os.path.join(jd, "status.json"), True))
        pids = {w["pid"]: w for w in final["workers"]}
        self.assertGreaterEqual(len(pids), 5, "killed workers were not replaced: %r" % final["workers"])
        for pid in pids:
            self.assertTrue(gone(pid), "worker %d left behind" % pid)
        for v in victims:
            self.assertNotEqual(pids[v]["state"], "finished", "killed worker %d shown as finished" % v)
        live = [w for w in final["workers"] if w["pid"] not in victims]
        self.assertEqual({w["state"] for w in live}, {"finished"})
        self.assertEqual({pids[v]["state"] for v in victims}, {"killed"})


class Postmortem(TmpTest):
    def poison_job(self, mode, name="in.txt", extra=()):
        # Slow tasks: the job goes on for a while after the poison batch killed its workers.
        lines = ["line %d alpha beta\n" % i for i in range(400)]
        lines[55] = "POISON here\n"
        data = self.write(name, "".join(lines))
        self.jd = self.path("job")
        p = run("wordcount", "--workers", "2", "--batch-records", "10", "--max-attempts", "2",
                "--on-task-failure", mode, "--job-dir", self.jd, "--out", self.path("out.tsv"),
                "--dashboard", "127.0.0.1:%d" % free_port(), *extra, data,
                env=fault_env("crash_on=POISON,delay_ms=150"), check=False)
        return p

    def status(self, target, *extra):
        return run("status", *extra, target, check=False)

    def test_skipped_input_is_partial_not_done(self):
        # The file's name holds escape sequences too: they are shown escaped everywhere.
        p = self.poison_job("skip", name="evil\x1b[31m\x1b]0;title\x07.txt")
        err = p.stderr
        self.assertEqual(p.returncode, 3, err.decode(errors="replace"))
        self.assertNotIn(ESC, err)
        self.assertNotIn(b"\x07", err)
        self.assertIn(b"evil\\e[31m\\e]0;title\\x07.txt lines 51-60", err)
        final = json.loads(slurp(os.path.join(self.jd, "status.json"), True))
        self.assertEqual(final["state"], "partial")
        self.assertEqual(final["warning"], "done with skipped input: 1 task(s) failed and were left out "
                         "(--on-task-failure=skip); their input is missing from the result")
        self.assertEqual(len(final["missing"]), 1)
        self.assertIn("evil\x1b[31m\x1b]0;title\x07.txt lines 51-60", final["missing"][0])
        data, html = report_data(os.path.join(self.jd, "report.html"))
        self.assertEqual(data["state"], "partial")
        self.assertEqual(badge(html), ("state partial", "done with skipped input"))
        self.assertRegex(html, r"header \.state\.partial \{ background: var\(--partial\)")
        self.assertIn("--partial: #e0a100", html)
        # Workers that crashed on the poison batch are not "finished".
        crashed = [w for w in final["workers"] if w["failures"]]
        self.assertEqual(len(crashed), 2, final["workers"])
        for w in crashed:
            self.assertIn(w["state"], DEAD_STATES, w)
        text = slurp(os.path.join(self.jd, "status.txt"))
        self.assertTrue(text.startswith(b"job wordcount: partial after "), text)
        self.assertNotIn(ESC, text)
        st = self.status(self.jd)
        self.assertEqual(st.returncode, 3, st.stderr)
        self.assertEqual(st.stdout, text)
        self.assertRegex(st.stdout, rb"\nmissing from the result: /\S*/evil\\e\[31m\\e\]0;title\\x07.txt lines 51-60 ")

    def test_fast_crashes_are_killed_not_finished(self):
        """A job over before the status is next refreshed still reports how each worker
        ended: the coordinator passes every change of state as it happens."""
        lines = ["line %d alpha beta\n" % i for i in range(200)]
        lines[55] = "POISON here\n"
        data = self.write("in.txt", "".join(lines))
        jd = self.path("job")
        p = run("wordcount", "--workers", "2", "--batch-records", "10", "--max-attempts", "2",
                "--on-task-failure", "skip", "--job-dir", jd, "--out", "/dev/null", data,
                env=fault_env("crash_on=POISON"), check=False)
        self.assertEqual(p.returncode, 3, p.stderr)
        final = json.loads(slurp(os.path.join(jd, "status.json"), True))
        states = sorted(w["state"] for w in final["workers"] if w["failures"])
        self.assertEqual(states, ["killed", "killed"], final["workers"])
        self.assertEqual({w["state"] for w in final["workers"] if not w["failures"]}, {"finished"})
        text = slurp(os.path.join(jd, "status.txt"), True)
        self.assertEqual(len(re.findall(r"\n\d+ +killed +localhost ", text)), 2, text)

    def test_failed_job_states_its_error(self):
        p = self.poison_job("fail")
        self.assertEqual(p.returncode, 1)
        line = [l for l in p.stderr.decode().splitlines() if l.startswith("dbatch wordcount: error: ")]
        self.assertEqual(len(line), 1, p.stderr)
        msg = line[0][len("dbatch wordcount: error: "):]
        self.assertIn("task 5", msg)
        final = json.loads(slurp(os.path.join(self.jd, "status.json"), True))
        self.assertEqual(final["state"], "failed")
        self.assertEqual(final["error"], msg)
        data, html = report_data(os.path.join(self.jd, "report.html"))
        self.assertEqual(data["error"], msg)
        self.assertEqual(badge(html), ("state failed", "failed"))
        self.assertIn('<p id="error" class="banner error">', html)
        text = slurp(os.path.join(self.jd, "status.txt"), True)
        self.assertEqual(text.splitlines()[1], "error: " + msg)
        st = self.status(self.jd)
        self.assertEqual(st.returncode, 1)
        self.assertEqual(st.stdout.decode(), text)

    def test_done_job(self):
        data = lines_file(self.path("l.txt"), 300)
        jd = self.path("job")
        run("wordcount", "--workers", "2", "--batch-records", "10", "--job-dir", jd, "--out", "/dev/null", data)
        final = json.loads(slurp(os.path.join(jd, "status.json"), True))
        self.assertEqual(final["state"], "done")
        self.assertNotIn("error", final)
        self.assertEqual({w["state"] for w in final["workers"]}, {"finished"})
        self.assertEqual(badge(report_data(os.path.join(jd, "report.html"))[1]), ("state done", "done"))
        st = self.status(jd)
        self.assertEqual(st.returncode, 0)
        self.assertTrue(st.stdout.startswith(b"job wordcount: done after "))

    def test_help_documents_exit_status(self):
        h = run("status", "--help").stdout.decode()
        for s in ("0  the job is starting, running, or done", "1  the job failed", "3  the job finished without",
                  "4  the job is lost", "--timeout SECS"):
            self.assertIn(s, h)


class LostCoordinator(TmpTest):
    def test_killed_coordinator_is_lost(self):
        data = lines_file(self.path("l.txt"), 2000)
        jd = self.path("job")
        p = start("wordcount", "--workers", "2", "--batch-records", "10", "--job-dir", jd, "--out", "/dev/null",
                  data, env=fault_env("delay_ms=100"))
        workers = []
        try:
            deadline = time.time() + 60
            final = {}
            while time.time() < deadline:
                try:
                    final = json.loads(slurp(os.path.join(jd, "status.json"), True))
                except (OSError, ValueError):
                    final = {}
                if final.get("state") == "running" and final["totals"]["done"] >= 1:
                    break
                time.sleep(0.1)
            self.assertEqual(final.get("state"), "running")
            self.assertEqual(final["coordinator"], "%d@%s" % (p.pid, socket.gethostname()))
            workers = [w["pid"] for w in final["workers"]]
            st = run("status", jd, check=False)
            self.assertEqual(st.returncode, 0)
            self.assertTrue(st.stdout.startswith(b"job wordcount: running after "), st.stdout)
            p.kill()
            p.wait(timeout=30)
            st = run("status", jd, check=False)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            kill_quietly(workers)
            for sock in glob.glob("/tmp/dbatch-%d-*.sock" % p.pid):
                os.unlink(sock)
        self.assertEqual(st.returncode, 4, st.stdout)
        first = st.stdout.decode().splitlines()[0]
        self.assertRegex(first, r"^job lost: its coordinator \(pid %d on %s\) is gone; last update \d+ s ago$"
                         % (p.pid, re.escape(socket.gethostname())))
        self.assertIn("last known state: job wordcount: running after", st.stdout.decode())
        self.assertIn("resume it with: dbatch resume " + jd, st.stdout.decode())

    def fake_status(self, coordinator, age):
        jd = self.path("fake")
        os.makedirs(jd, exist_ok=True)
        self.write("fake/status.txt", "job wordcount: running after 3.0 s (policy least-loaded)\nfailures: 0\n")
        path = self.write("fake/status.json", json.dumps({"job": "wordcount", "state": "running",
                                                           "coordinator": coordinator}))
        t = time.time() - age
        os.utime(path, (t, t))
        return jd

    def test_stale_status_of_another_host_is_lost(self):
        st = run("status", self.fake_status("4242@no-such-host.invalid", 60), check=False)
        self.assertEqual(st.returncode, 4)
        self.assertRegex(st.stdout.decode().splitlines()[0],
                         r"^job lost: not refreshed for 6\d s \(coordinator 4242@no-such-host.invalid\)")
        # Fresh: running.
        st = run("status", self.fake_status("4242@no-such-host.invalid", 0), check=False)
        self.assertEqual(st.returncode, 0)
        self.assertTrue(st.stdout.startswith(b"job wordcount: running after"))
        # This host, a process that exists (this test): running while fresh, not responding once stale.
        me = "%d@%s" % (os.getpid(), socket.gethostname())
        st = run("status", self.fake_status(me, 10), check=False)
        self.assertEqual(st.returncode, 0, st.stdout)
        st = run("status", self.fake_status(me, 60), check=False)
        self.assertEqual(st.returncode, 4, st.stdout)
        self.assertIn(b"not responding", st.stdout)


class HostileNames(TmpTest):
    def test_worker_host_name_with_escapes(self):
        """A worker whose host name (and failure message) hold escape sequences: the
        coordinator's log, `dbatch status` (live and from the job directory) show them
        escaped; the JSON keeps the exact bytes; the answer is still exact."""
        data = lines_file(self.path("l.txt"), 400)
        want = run("wordcount", "--workers", "0", "--no-job-dir", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        port = free_port()
        url = "http://127.0.0.1:%d/" % port
        jd = self.path("job")
        host = "\x1b[31mevil\x1b]0;pwned\x07"
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "10", "-v",
                      "--heartbeat", "0.2", "--worker-timeout", "3", "--job-dir", jd, "--dashboard",
                      "127.0.0.1:%d" % port, data)
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        w = None
        try:
            seen = wait_for_line(coord.stderr, "waiting for workers")
            s.connect(ep)
            s.send(msgpack.packb(["DBX", 1, 1, 1, host, 4242, True]))
            task = None
            deadline = time.time() + 30
            while task is None and time.time() < deadline:
                if s.poll(500):
                    m = msgpack.unpackb(s.recv(), raw=False)
                    if m[2] == 5:
                        task = m
            self.assertIsNotNone(task, "the fake worker got no task")
            # Live: the dashboard's text shows the worker, escaped.
            live = b""
            for _ in range(100):
                st = run("status", url, check=False)
                live = st.stdout
                if b"evil" in live:
                    break
                time.sleep(0.1)
            self.assertIn(b"\\e[31mevil\\e]0;pwned\\x07", live)
            self.assertNotIn(ESC, live)
            s.send(msgpack.packb(["DBX", 1, 7, task[3], task[4], task[5], -14, "boom \x1b[2J\x1b[H"]))
            time.sleep(0.2)
            s.close()  # gone without a word: the coordinator finds it lost
            seen += wait_for_line(coord.stderr, "pid 4242) ", timeout=60)
            # Until the coordinator reports each change of state itself, wait for the
            # dashboard to have shown this one (it refreshes a few times a second).
            for _ in range(100):
                ws = get_json(url + "api/status")["workers"]
                if [x["state"] for x in ws if x["pid"] == 4242] != ["alive"]:
                    break
                time.sleep(0.1)
            w = start("worker", "--connect", ep, "--slots", "2")
            out, err = coord.communicate(timeout=120)
            err = "".join(seen).encode() + err
            self.assertEqual(w.wait(timeout=30), 0)
        finally:
            s.close()
            ctx.term()
            for q in (coord, w):
                if q is not None and q.poll() is None:
                    q.kill()
                    q.wait()
        self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
        self.assertEqual(out, want)
        self.assertNotIn(ESC, err)
        self.assertIn(b"worker 1 joined: \\e[31mevil\\e]0;pwned\\x07 pid 4242", err)
        self.assertIn(b"failed on worker 1 (\\e[31mevil\\e]0;pwned\\x07 pid 4242): boom \\e[2J\\e[H", err)
        self.assertRegex(err, rb"worker 1 \(\\e\[31mevil\\e\]0;pwned\\x07 pid 4242\) (lost its connection|was silent)")
        st = run("status", jd, check=False)
        self.assertEqual(st.returncode, 0)
        self.assertNotIn(ESC, st.stdout)
        self.assertRegex(st.stdout.decode(), r"\n1 +\S+ +\\e\[31mevil")
        self.assertIn(b"boom \\e[2J\\e[H", st.stdout)
        final = json.loads(slurp(os.path.join(jd, "status.json"), True))
        fake = [x for x in final["workers"] if x["pid"] == 4242]
        self.assertEqual(len(fake), 1)
        self.assertEqual(fake[0]["host"], host)
        self.assertIn(fake[0]["state"], DEAD_STATES, (final["workers"], err.decode()))

    def test_quiet_dashboard_says_nothing(self):
        """libmicrohttpd's own complaints (a malformed request) go through our log: none
        under -q."""
        data = lines_file(self.path("l.txt"), 300)
        port = free_port()
        p = start("wordcount", "-q", "--workers", "2", "--batch-records", "10", "--dashboard", "127.0.0.1:%d" % port,
                  "--no-job-dir", "--out", "/dev/null", data, env=fault_env("delay_ms=40"))
        try:
            got = b""
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                        c.sendall(b"BROKEN \x1b[31m\r\n\r\n")
                        got = c.recv(100)
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and hang up half-way
                    break
                except ConnectionRefusedError:
                    time.sleep(0.05)
            self.assertTrue(got.startswith(b"HTTP/1.1 400"), got)
            req = urllib.request.Request("http://127.0.0.1:%d/api/status" % port, data=b"x", method="POST")
            try:
                urllib.request.urlopen(req, timeout=5)
                post = None
            except urllib.error.HTTPError as e:
                post = e.code
            except OSError as e:
                post = e
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0)
        self.assertEqual(without_summary_line(err), b"")
        self.assertEqual(post, 405, "a POST is refused as a read-only dashboard should")


if __name__ == "__main__":
    unittest.main()
