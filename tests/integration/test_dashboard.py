"""Watching a job: /api/status and /metrics change while it runs and agree with the final
summary; /metrics is valid Prometheus text; the job directory gets report.html, summary.json
and status files; `dbatch status` reads them; a headless Chromium renders the dashboard and
the report (screenshots kept under tests/artifacts/)."""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import unittest
import urllib.error
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
            for f in fams.values():
                for smp in f.samples:
                    self.assertEqual(smp.labels.get("job"), "wordcount", smp)
            state = {smp.labels["state"]: smp.value for smp in fams["dbatch_job_state"].samples}
            self.assertEqual(sum(state.values()), 1, state)
            hist = {smp.name: smp for smp in fams["dbatch_task_duration_seconds"].samples if "le" not in smp.labels}
            inf = [smp.value for smp in fams["dbatch_task_duration_seconds"].samples if smp.labels.get("le") == "+Inf"]
            self.assertEqual(inf, [hist["dbatch_task_duration_seconds_count"].value])
            for name in ("dbatch_progress", "dbatch_worker_cpu_seconds", "dbatch_worker_rss_bytes"):
                self.assertIn(name, fams, text)
        self.assertEqual(values, sorted(values))
        # Progress from bytes: never back, and an estimate of the time left while running.
        progress = [s["progress"] for s in running]
        self.assertEqual(progress, sorted(progress))
        self.assertTrue(0 < progress[-1] < 1, progress)
        self.assertTrue(any(s["eta_seconds"] is not None and s["eta_seconds"] > 0 for s in running))
        self.assertEqual(running[-1]["stages"][0]["planned_bytes"], os.path.getsize(self.path("l.txt")))
        # Workers report their CPU time and memory in their heartbeats.
        self.assertTrue(any(w["rss_bytes"] > 0 and w["cpu_seconds"] > 0 for w in running[-1]["workers"]),
                        running[-1]["workers"])
        # A peak is never below the resident bytes beside it (ru_maxrss lags behind statm).
        for s in running:
            for w in s["workers"]:
                self.assertGreaterEqual(w["peak_rss_bytes"], w["rss_bytes"], w)
        # The final state agrees with the summary.
        summary = json.loads(slurp(self.path("s.json"), True))
        final = json.loads(slurp(os.path.join(self.jd, "status.json"), True))
        self.assertEqual(final["state"], "done")
        self.assertEqual((final["progress"], final["eta_seconds"]), (1, 0))
        self.assertIn("wordcount --workers 2 --batch-records 10", final["command"])
        self.assertEqual(final["output"], "/dev/null")
        self.assertEqual(final["task_durations"]["count"], summary["attempts"])
        self.assertGreaterEqual(len(final["series"]), 2)
        for w in summary["worker_stats"]:
            self.assertGreater(w["cpu_seconds"], 0, w)
            self.assertGreater(w["peak_rss_bytes"], 1 << 20, w)
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
        self.assertEqual(dom.count('class="hbar"'), 15, "the task-duration histogram has no bars")
        self.assertRegex(dom, r'<code id="command">dbatch wordcount ')
        if not live:
            self.assertIn('class="state done"', dom)
            self.assertIn('class="series throughput"', dom)
            self.assertIn('class="series utilisation"', dom)
            self.assertRegex(dom, r'id="pcts">p50 [\d.]+ s · p90 [\d.]+ s · p99 [\d.]+ s \(\d+ attempts\)')


class States(TmpTest):
    def test_stages_are_listed_before_they_start(self):
        """nb run lists vocabulary, fit and predict from its first snapshot; the later ones
        are "planned" until they start, and every stage is "done" at the end."""
        port = free_port()
        jd = self.path("job")
        corpus = os.path.join(os.environ.get("DBX_TEST_DATA", "tests/data"), "nbcorpus")
        p = start("nb", "run", "--train", os.path.join(corpus, "train"), "--test", os.path.join(corpus, "test"),
                  "--workers", "2", "--batch-docs", "1", "--dashboard", "127.0.0.1:%d" % port, "--job-dir", jd,
                  "--predictions", self.path("p.tsv"), env=fault_env("delay_ms=150"))
        try:
            wait_for_line(p.stderr, "dashboard at")
            first = None
            for _ in range(100):
                try:
                    s = json.loads(get("http://127.0.0.1:%d/api/status" % port))
                except (OSError, ValueError):
                    s = None
                if s and s["state"] == "running":
                    first = s
                    break
                time.sleep(0.05)
            p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 0)
        self.assertIsNotNone(first)
        self.assertEqual([(x["name"], x["state"]) for x in first["stages"]],
                         [("vocabulary", "running"), ("fit", "planned"), ("predict", "planned")])
        final = json.loads(slurp(os.path.join(jd, "status.json"), True))
        self.assertEqual([(x["name"], x["state"]) for x in final["stages"]],
                         [("vocabulary", "done"), ("fit", "done"), ("predict", "done")])
        # Where each stage's time went, and the classifier's metrics in the report.
        for x in final["stages"]:
            self.assertGreater(x["map_seconds"], 0.1, x)  # every task took at least the 150 ms delay
            for k in ("read_seconds", "merge_seconds", "finish_seconds"):
                self.assertGreaterEqual(x[k], 0, x)
        self.assertRegex(final["results"], r"precision +recall +f1-score +support")
        self.assertIn("accuracy", final["results"])
        self.assertIn('"results":', slurp(os.path.join(jd, "report.html"), True))

    def test_killed_workers_and_skipped_input_in_the_report(self):
        """A worker that dies by a signal is "killed" (red), not "finished", in status.json,
        status.txt and the report; a job that left input out under --on-task-failure=skip
        is "partial" (amber), not "done" (green)."""
        data = self.path("l.txt")
        with open(data, "w") as f:
            for i in range(200):
                f.write("POISON here\n" if i == 57 else "line %d alpha\n" % i)
        jd = self.path("job")
        r = run("wordcount", "--workers", "2", "--batch-records", "10", "--on-task-failure", "skip", "--job-dir", jd,
                "--out", self.path("o.tsv"), "-q", data, check=False, env=fault_env("crash_on=POISON"))
        self.assertEqual(r.returncode, 3, r.stderr)
        final = json.loads(slurp(os.path.join(jd, "status.json"), True))
        self.assertEqual(final["state"], "partial")
        states = [w["state"] for w in final["workers"]]
        self.assertIn("killed", states, final["workers"])
        self.assertNotIn("alive", states)
        self.assertRegex(slurp(os.path.join(jd, "status.txt"), True), r"\n\d+ +killed ")
        report = slurp(os.path.join(jd, "report.html"), True)
        self.assertIn('<span id="state" class="state partial">done with skipped input</span>', report)
        if shutil.which("chromium"):
            p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                "--virtual-time-budget=3000", "--user-data-dir=" + self.path("chrome"), "--dump-dom",
                                "file://" + os.path.join(jd, "report.html")], capture_output=True, timeout=120)
            dom = p.stdout.decode(errors="replace")
            self.assertIn('class="wstate killed"', dom)
            self.assertIn('class="state partial"', dom)
            self.assertNotIn('class="wstate alive"', dom)


class WorkerUsage(TmpTest):
    def test_cpu_time_counts_up_to_the_last_result(self):
        """A worker sends its usage with every result, not only with its heartbeats: with
        heartbeats 60 s apart, the summary still has the CPU time the workers spent on the
        word count: most of what the job's processes used (measured here as the CPU time of
        the children this test waited for: the coordinator and, through it, its workers)."""
        data = self.path("w.txt")
        with open(data, "w") as f:
            for i in range(400000):
                f.write("alpha beta gamma w%d delta epsilon zeta eta theta\n" % (i % 5000))
        s = self.path("s.json")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run("wordcount", "--workers", "2", "--heartbeat", "60", "--worker-timeout", "600", "--batch-bytes", "2M",
            "--out", "/dev/null", "--no-job-dir", "-q", "--summary-json", s, data)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        stats = json.loads(slurp(s, True))["worker_stats"]
        cpu = sum(w["cpu_seconds"] for w in stats)
        self.assertGreater(used, 0.05)
        self.assertGreater(cpu, 0.4 * used, (used, stats))
        self.assertLessEqual(cpu, used + 0.05, (used, stats))


class History(TmpTest):
    def test_dashboard_of_past_jobs(self):
        """`dbatch dashboard DIR` lists the job directories under DIR, newest first, with their
        state, and serves each one's report, summary and status; nothing else (no other
        directory, no other file, no symbolic link), read-only, behind its token when given."""
        root = self.path("jobs")
        data = lines_file(self.path("l.txt"), 50)
        run("wordcount", "--workers", "1", "--job-dir", os.path.join(root, "good <one>"), "-o", self.path("o.tsv"),
            "-q", data)
        bad = run("run", "--map", "exit 3", "--workers", "0", "--job-dir", os.path.join(root, "bad"), "-o",
                  self.path("o2.tsv"), "-q", data, check=False)
        self.assertNotEqual(bad.returncode, 0)
        os.unlink(os.path.join(root, "bad", "status.txt"))
        os.symlink("/etc/passwd", os.path.join(root, "bad", "status.txt"))  # planted: never followed
        # A job directory in the list that is a link to another directory (a job's elsewhere):
        # neither listed nor served, as a file that is a link is not.
        elsewhere = self.path("elsewhere")
        run("wordcount", "--workers", "0", "--job-dir", elsewhere, "-o", self.path("o3.tsv"), "-q", data)
        os.symlink(elsewhere, os.path.join(root, "linked"))
        # The token as for a job's dashboard: 16 characters at least, in a file only its owner reads.
        for text, mode, why in (("s3cret\n", 0o600, "too short"), ("s3cret-history-0123\n", 0o644, "others may read it")):
            with open(self.path("weak"), "w") as f:
                f.write(text)
            os.chmod(self.path("weak"), mode)
            r = run("dashboard", root, "--listen", "0.0.0.0:0", "--dashboard-token", self.path("weak"), check=False)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(why, r.stderr.decode())
        with open(self.path("token"), "w") as f:
            f.write("s3cret-history-0123\n")
        os.chmod(self.path("token"), 0o600)
        port = free_port()
        p = start("dashboard", root, "--listen", "127.0.0.1:%d" % port, "--dashboard-token", self.path("token"))
        try:
            wait_for_line(p.stderr, "dashboard of past jobs at http://127.0.0.1:%d/" % port)
            base = "http://127.0.0.1:%d" % port
            with self.assertRaises(urllib.error.HTTPError) as cm:
                get(base + "/")
            self.assertEqual(cm.exception.code, 401)
            page = get(base + "/?token=s3cret-history-0123")
            self.assertIn("good &lt;one&gt;", page)
            self.assertNotIn("linked", page)
            self.assertRegex(page, r'class="state done">done</span>')
            self.assertRegex(page, r'class="state (failed|unknown)">')
            link = re.search(r'<a class="job" href="([^"]*good[^"]*)"', page).group(1).replace("&amp;", "&")
            self.assertIn("token=s3cret-history-0123", link)
            report = get(base + link)
            self.assertIn("window.DBX_STATUS", report)
            summary = json.loads(get(base + link.replace("report.html", "summary.json")))
            self.assertTrue(summary["ok"])
            for url in ("/job?dir=/etc&file=report.html", "/job?dir=%s&file=report.html" % os.path.join(root, "linked"), "/job?dir=%s&file=../../../etc/passwd" % os.path.join(root, "bad"),
                        "/job?dir=%s/..&file=summary.json" % root, "/job?dir=%s&file=status.txt" % os.path.join(root, "bad"),
                        "/etc/passwd"):
                with self.assertRaises(urllib.error.HTTPError, msg=url) as cm:
                    get(base + url + ("&" if "?" in url else "?") + "token=s3cret-history-0123")
                self.assertEqual(cm.exception.code, 404, url)
            req = urllib.request.Request(base + "/?token=s3cret-history-0123", data=b"x", method="POST")
            with self.assertRaises(urllib.error.HTTPError) as cm:
                urllib.request.urlopen(req, timeout=5)
            self.assertEqual(cm.exception.code, 405)
            # The same port again: one line, exit 2.
            busy = run("dashboard", root, "--listen", "127.0.0.1:%d" % port, check=False)
            self.assertEqual(busy.returncode, 2)
            self.assertEqual(busy.stderr.decode().count("\n"), 1, busy.stderr)
            self.assertIn("cannot listen", busy.stderr.decode())
        finally:
            p.send_signal(signal.SIGINT)
            p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0)
        # A public address needs a token or consent.
        r = run("dashboard", root, "--listen", "0.0.0.0:0", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--dashboard-token", r.stderr.decode())


class Progress(TmpTest):
    def test_terminal_progress_line_and_quiet(self):
        data = lines_file(self.path("l.txt"), 400)
        env = fault_env("delay_ms=40")
        cmd = "%s wordcount --workers 2 --batch-records 10 --no-job-dir --out /dev/null %s" % (os.environ.get("DBATCH", "dbatch"), data)
        # `script` gives the job a terminal, as a user at a shell has.
        p = subprocess.run(["script", "-qfec", cmd, "/dev/null"], capture_output=True, env=env, timeout=120)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, out)
        self.assertRegex(out, r"\rwordcount +\d+%  [\d.]+M records  [\d.]+ MB/s  ETA \S+  workers 2  failures 0")
        # The percentage, from bytes, never goes back.
        pcts = [int(x) for x in re.findall(r"\rwordcount +(\d+)%", out)]
        self.assertGreater(len(pcts), 2, out)
        self.assertEqual(pcts, sorted(pcts), pcts)
        self.assertIn("\033[K", out)
        q = subprocess.run(["script", "-qfec", cmd + " --quiet", "/dev/null"], capture_output=True, env=env, timeout=120)
        self.assertNotIn("MB/s", q.stdout.decode(errors="replace"))


if __name__ == "__main__":
    unittest.main()
