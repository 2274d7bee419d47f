"""Watching a job: /api/status and /metrics change while it runs and agree with the final
summary; /metrics is valid Prometheus text; the job directory gets report.html, summary.json
and status files; `dbatch status` reads them; a headless Chromium renders the dashboard and
the report (screenshots kept under tests/artifacts/)."""
import json
import os
import re
import shutil
import subprocess
import time
import unittest
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from dbx import fault_env, free_port, lines_file, run, slurp, start, TmpTest, wait_for_line

ARTIFACTS = os.path.join(os.getcwd(), "artifacts")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


class Dashboard(TmpTest):
    def start_job(self, port, tasks=60, delay=60, extra=()):
        data = lines_file(self.path("l.txt"), tasks * 10)
        self.jd = self.path("job")
        p = start("wordcount", "--workers", "2", "--batch-records", "10", "--dashboard", "127.0.0.1:%d" % port,
                  "--job-dir", self.jd, "--summary-json", self.path("s.json"), "--out", "/dev/null", *extra, data,
                  env=fault_env("delay_ms=%d" % delay))
        wait_for_line(p.stderr, "dashboard at")
        return p

    def test_status_and_metrics_change_and_agree(self):
        port = free_port()
        job = self.start_job(port)
        base = "http://127.0.0.1:%d" % port
        seen, metrics = [], []
        try:
            deadline = time.time() + 60
            while job.poll() is None and time.time() < deadline:
                try:
                    seen.append(json.loads(get(base + "/api/status")))
                    metrics.append(get(base + "/metrics"))
                    page = get(base + "/")
                except (OSError, ValueError):
                    break  # the job ended between two requests
                time.sleep(0.3)
            job.communicate(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
        self.assertEqual(job.returncode, 0)
        running = [s for s in seen if s["state"] == "running"]
        self.assertGreaterEqual(len(running), 3)
        done = [s["totals"]["done"] for s in running]
        self.assertEqual(done, sorted(done))
        self.assertLess(done[0], done[-1], "the status did not change while the job ran")
        self.assertTrue(any(w["state"] == "alive" for w in running[-1]["workers"]))
        self.assertTrue(running[-1]["attempts"])
        self.assertIn("<svg", page)
        # Every /metrics answer parses as Prometheus text, and counters only grow.
        values = []
        for text in metrics:
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            for name in ("dbatch_tasks", "dbatch_attempts", "dbatch_failures", "dbatch_bytes", "dbatch_records",
                         "dbatch_worker_load", "dbatch_workers_alive"):
                self.assertIn(name, fams, text)
            values.append(next(s.value for s in fams["dbatch_attempts"].samples))
        self.assertEqual(values, sorted(values))
        # The final state agrees with the summary.
        summary = json.loads(slurp(self.path("s.json"), True))
        final = json.loads(slurp(os.path.join(self.jd, "status.json"), True))
        self.assertEqual(final["state"], "done")
        self.assertEqual(final["totals"]["done"], summary["batches"])
        self.assertEqual(final["totals"]["attempts"], summary["attempts"])
        self.assertEqual(final["totals"]["records"], summary["records"])
        self.assertLessEqual(running[-1]["totals"]["records"], summary["records"])
        self.assertEqual(json.loads(slurp(os.path.join(self.jd, "summary.json"), True))["records"], summary["records"])
        # The report is self-contained: no external scripts, styles or fonts.
        report = slurp(os.path.join(self.jd, "report.html"), True)
        self.assertIn("window.DBX_STATUS", report)
        self.assertIsNone(re.search(r'<script[^>]+src=|<link[^>]+href=|@import|url\(\s*["\']?https?:', report))
        text = run("status", self.jd).stdout.decode()
        self.assertIn("job wordcount: done", text)
        self.assertIn("60/60", text)

    def test_public_address_needs_consent(self):
        p = run("wordcount", "--dashboard", "0.0.0.0:%d" % free_port(), lines_file(self.path("a.txt"), 5), check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"--dashboard-public", p.stderr)
        p = run("wordcount", "--dashboard", "0.0.0.0:0", "--dashboard-public", "--no-job-dir",
                lines_file(self.path("b.txt"), 5))
        self.assertIn(b"dashboard at http://0.0.0.0:", p.stderr)

    def test_status_of_a_live_job(self):
        port = free_port()
        job = self.start_job(port, tasks=40, delay=50)
        try:
            for _ in range(50):  # "starting" until the first task is out
                text = run("status", "http://127.0.0.1:%d/" % port).stdout.decode()
                if "running" in text:
                    break
                time.sleep(0.1)
            self.assertIn("job wordcount: running", text)
            self.assertRegex(text, r"worker\s+state")
            job.communicate(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
        p = run("status", "http://127.0.0.1:%d/" % port, check=False)
        self.assertEqual(p.returncode, 1)

    @unittest.skipUnless(shutil.which("chromium"), "chromium is not installed")
    def test_browser_renders_dashboard_and_report(self):
        os.makedirs(ARTIFACTS, exist_ok=True)
        port = free_port()
        job = self.start_job(port, tasks=100, delay=100)

        def chromium(url, shot):
            args = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--virtual-time-budget=4000", "--user-data-dir=" + self.path("chrome")]
            subprocess.run(args + ["--screenshot=" + shot, url], capture_output=True, timeout=120)
            p = subprocess.run(args + ["--dump-dom", url], capture_output=True, timeout=120)
            return p.stdout.decode(errors="replace")

        try:
            dom = chromium("http://127.0.0.1:%d/" % port, os.path.join(ARTIFACTS, "dashboard.png"))
            job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
        self.check_dom(dom, live=True)
        report = os.path.join(self.jd, "report.html")
        dom = chromium("file://" + report, os.path.join(ARTIFACTS, "report.png"))
        self.check_dom(dom, live=False)
        shutil.copy(report, os.path.join(ARTIFACTS, "report.html"))
        self.assertTrue(os.path.getsize(os.path.join(ARTIFACTS, "dashboard.png")) > 1000)
        self.assertTrue(os.path.getsize(os.path.join(ARTIFACTS, "report.png")) > 1000)

    def check_dom(self, dom, live):
        self.assertRegex(dom, r'<body[^>]*data-rendered="\d+"', "the page never rendered")
        self.assertIsNone(re.search(r"<body[^>]*data-errors=", dom), "a script error was logged")
        workers = re.search(r'<table id="workers">.*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
        self.assertGreaterEqual(workers.count("<tr>"), 2, "worker table is empty")
        self.assertGreater(dom.count('class="attempt '), 5, "timeline has no attempts")
        if not live:
            self.assertIn('class="state done"', dom)


class Progress(TmpTest):
    def test_terminal_progress_line_and_quiet(self):
        data = lines_file(self.path("l.txt"), 400)
        env = fault_env("delay_ms=40")
        cmd = "%s wordcount --workers 2 --batch-records 10 --no-job-dir --out /dev/null %s" % (os.environ.get("DBATCH", "dbatch"), data)
        # `script` gives the job a terminal, as a user at a shell has.
        p = subprocess.run(["script", "-qfec", cmd, "/dev/null"], capture_output=True, env=env, timeout=120)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, out)
        self.assertRegex(out, r"\rwordcount \d+/\d+ batches .* MB/s  ETA \S+  workers 2  failures 0")
        self.assertIn("\033[K", out)
        q = subprocess.run(["script", "-qfec", cmd + " --quiet", "/dev/null"], capture_output=True, env=env, timeout=120)
        self.assertNotIn("batches", q.stdout.decode(errors="replace"))


if __name__ == "__main__":
    unittest.main()
