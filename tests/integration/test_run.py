"""dbatch run --map CMD (map-only): the output is the command's output over each batch in
batch order, so a line-wise command gives exactly what sh gives on the whole input, byte for
byte, for any worker count and policy. The reference is the same command run by sh over the
records (each file's last line ended with a newline, as dbatch reads them)."""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from dbx import TmpTest, free_port, run, slurp, start  # noqa: E402


def records(paths):
    """The input as dbatch hands it to commands: each file, its last line newline-ended."""
    out = []
    for p in paths:
        d = slurp(p)
        if d and not d.endswith(b"\n"):
            d += b"\n"
        out.append(d)
    return b"".join(out)


def sh(cmd, data):
    """The reference: cmd run by /bin/sh over data."""
    return subprocess.run(["/bin/sh", "-c", cmd], input=data, capture_output=True, timeout=60, check=True).stdout


class MapOnly(TmpTest):
    def inputs(self):
        a = self.write("in/a.txt", b"hello world\r\nfoo bar baz\r\nlast line without newline")
        b = self.write("in/b.txt", b"")
        c = self.write("in/c.txt", "ünïcödé line one\nzweite Zeile — ✓\n\nafter an empty line\n".encode())
        lines = []
        for i in range(6000):
            lines.append(("row %d alpha %s beta %d\n" % (i, "é" * (i % 3), i * 7 % 101)).encode())
        d = self.write("in/d.txt", b"".join(lines))
        e = self.write("in/e.txt", b"one line, no newline")
        return [a, b, c, d, e]

    def test_filters_equal_sh_on_whole_input_any_workers_any_policy(self):
        paths = self.inputs()
        data = records(paths)
        cmds = ["grep -a e", "tr a-z A-Z", "awk '{ print NF \":\" $1 }'", "sed -n 's/alpha/A/p'"]
        for cmd in cmds:
            want = sh(cmd, data)
            self.assertTrue(want)
            runs = [("0", None)] + [(w, p) for w in ("1", "2") for p in ("least-loaded", "round-robin", "random")]
            for workers, policy in runs:
                args = ["run", "--map", cmd, "--workers", workers, "--batch-bytes", "4K", "--no-job-dir", "-q"]
                if policy:
                    args += ["--policy", policy, "--seed", "3"]
                got = run(*args, *paths).stdout
                self.assertEqual(got, want, "%r with --workers %s --policy %s" % (cmd, workers, policy))

    def test_out_file_summary_and_batches_by_records(self):
        paths = self.inputs()
        want = sh("tr a-z A-Z", records(paths))
        out, s = self.path("out.txt"), self.path("s.json")
        run("run", "--map", "tr a-z A-Z", "--workers", "2", "--batch-records", "37", "-o", out,
            "--summary-json", s, "--no-job-dir", "-q", *paths)
        self.assertEqual(slurp(out), want)
        j = json.loads(slurp(s, True))
        self.assertTrue(j["ok"])
        self.assertEqual(j["rows_out"], want.count(b"\n") + (0 if want.endswith(b"\n") else 1))
        self.assertEqual(j["records"], records(paths).count(b"\n"))

    def test_standard_input_and_output_larger_than_input(self):
        data = b"".join(b"%d\n" % i for i in range(20000))
        cmd = "awk '{ for (i = 0; i < 20; i++) print $1, i }'"
        got = run("run", "--map", cmd, "--workers", "2", "--batch-bytes", "8K", "--no-job-dir", "-q", "-",
                  input=data).stdout
        self.assertEqual(got, sh(cmd, data))

    def test_output_without_newlines_is_kept_as_is(self):
        paths = self.inputs()
        cmd = "tr -d '\\n'"
        got = run("run", "--map", cmd, "--workers", "2", "--batch-bytes", "4K", "--no-job-dir", "-q", *paths).stdout
        self.assertEqual(got, sh(cmd, records(paths)))

    def test_environment(self):
        lines = b"".join(b"line %d\n" % i for i in range(50))
        p = self.write("x.txt", lines)
        cmd = 'sed "s|^|$DBATCH_TASK:$DBATCH_ATTEMPT:$DBATCH_INPUT:|"'
        got = run("run", "--map", cmd, "--workers", "0", "--batch-records", "10", "--no-job-dir", "-q", p).stdout
        want = b"".join(b"%d:1:%s:line %d\n" % (i // 10, p.encode(), i) for i in range(50))
        self.assertEqual(got, want)
        # On workers the same (paths are made absolute).
        got = run("run", "--map", cmd, "--workers", "2", "--batch-records", "10", "--no-job-dir", "-q", p).stdout
        want = b"".join(b"%d:1:%s:line %d\n" % (i // 10, os.path.realpath(p).encode(), i) for i in range(50))
        self.assertEqual(got, want)

    def test_empty_input(self):
        e = self.write("empty.txt", b"")
        for w in ("0", "2"):
            p = run("run", "--map", "cat", "--workers", w, "--no-job-dir", "-q", e)
            self.assertEqual(p.stdout, b"")

    def test_remote_worker_over_tcp(self):
        paths = self.inputs()
        cmd = "awk '{ print length($0), $2 }'"
        want = sh(cmd, records(paths))
        ep = "tcp://127.0.0.1:%d" % free_port()
        for ship in ([], ["--ship"]):
            coord = start("run", "--map", cmd, "--workers", "0", "--listen", ep, "--wait-workers", "1",
                          "--batch-bytes", "4K", "--no-job-dir", "-q", *ship, *paths)
            w = start("worker", "--connect", ep, "--slots", "2", "-q")
            try:
                out, err = coord.communicate(timeout=120)
                self.assertEqual(coord.returncode, 0, err.decode(errors="replace"))
                self.assertEqual(out, want)
                w.wait(timeout=30)
            finally:
                for p in (coord, w):
                    if p.poll() is None:
                        p.kill()
                    p.communicate()


class Failures(TmpTest):
    FAIL_CMD = ('t=$(mktemp); cat > "$t"; if grep -q BOOM "$t"; then echo "some noise" >&2; '
                'echo "the last complaint" >&2; rm -f "$t"; exit 3; fi; tr a-z A-Z < "$t"; rm -f "$t"')

    def data(self):
        lines = [b"line %d of the input\n" % i for i in range(100)]
        lines[47] = b"line 47 has a BOOM in it\n"
        return self.write("in.txt", b"".join(lines)), lines

    def test_failing_command_is_named_with_status_and_stderr(self):
        p, _ = self.data()
        s = self.path("s.json")
        for w in ("0", "2"):
            out = self.path("out.txt")
            # No speculative copy (a slow machine might start one): exactly the two attempts fail.
            r = run("run", "--map", self.FAIL_CMD, "--workers", w, "--batch-records", "10", "--max-attempts", "2",
                    "--no-speculation", "--summary-json", s, "--no-job-dir", "-o", out, p, check=False)
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 1, err)
            self.assertFalse(os.path.exists(out), "a failed job left its output")
            self.assertIn("task 4 (", err)
            self.assertIn("in.txt lines 41-50", err)
            self.assertIn("exited with status 3", err)
            self.assertIn("the last complaint", err)
            j = json.loads(slurp(s, True))
            self.assertFalse(j["ok"])
            f = j["failures"]
            self.assertEqual(len(f), 1 if w == "0" else 2)
            for x in f:
                self.assertEqual(x["task"], 4)
                self.assertIn("in.txt lines 41-50", x["input"] if "input" in x else json.dumps(x))
                self.assertIn("exited with status 3", x["cause"])
                self.assertIn("some noise | the last complaint", x["cause"])

    def test_skip_leaves_out_the_failed_batch(self):
        p, lines = self.data()
        want = b"".join(lines[:40] + lines[50:]).upper()
        s = self.path("s.json")
        for w in ("0", "1", "2"):
            r = run("run", "--map", self.FAIL_CMD, "--workers", w, "--batch-records", "10", "--max-attempts", "2",
                    "--on-task-failure", "skip", "--summary-json", s, "--no-job-dir", p, check=False)
            self.assertEqual(r.returncode, 3, r.stderr.decode(errors="replace"))
            self.assertEqual(r.stdout, want)
            j = json.loads(slurp(s, True))
            self.assertEqual([m["task"] for m in j["missing"]], [4])

    def test_signal(self):
        p, _ = self.data()
        for w in ("0", "1"):
            r = run("run", "--map", "cat > /dev/null; kill -SEGV $$", "--workers", w, "--max-attempts", "1",
                    "--no-job-dir", p, check=False)
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 1, err)
            self.assertIn("killed by signal 11", err)

    def test_command_that_does_not_read_its_input(self):
        # 1 MB batches: far over a pipe's buffer, so writing the rest fails (EPIPE), quietly.
        big = self.write("big.txt", b"".join(b"%04d" % i + b"y" * 995 + b"\n" for i in range(3000)))
        for w in ("0", "2"):
            got = run("run", "--map", "head -n 1", "--workers", w, "--batch-records", "1000", "--no-job-dir", "-q",
                      big).stdout
            self.assertEqual(got, b"".join(b"%04d" % i + b"y" * 995 + b"\n" for i in (0, 1000, 2000)))
            got = run("run", "--map", "echo hi", "--workers", w, "--batch-records", "1000", "--no-job-dir", "-q",
                      big).stdout
            self.assertEqual(got, b"hi\n" * 3)


class Usage(TmpTest):
    def test_usage_errors(self):
        p = self.write("x.txt", b"a\n")
        cases = [
            (["run", p], "--map CMD is required"),
            (["run", "--map", "cat"], "no INPUT"),
            (["run", "--map", "cat", "--format", "csv", p], "--format does not apply"),
            (["run", "--map", "cat", "--out", "sqlite:" + self.path("x.db"), p], "writes the command's bytes, not rows"),
            (["run", "--map", "cat", "--out", "postgresql:///x", p], "writes the command's bytes, not rows"),
            (["run", "--map", "cat", "--header", "-o", self.path("y.tsv"), p], "--header does not apply"),
            (["run", "--map", "cat", "--append", p], "--append needs a file"),
            (["run", "--map", "x" * 5000, p], "longer than"),
        ]
        for args, msg in cases:
            r = run(*args, check=False)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(msg, r.stderr.decode())

    def test_help_lists_what_applies(self):
        h = run("run", "--help").stdout.decode()
        self.assertIn("--map CMD", h)
        self.assertIn("Example:", h)
        for absent in ("--table", "--append", "--format", "--max-record"):
            self.assertNotIn(absent, h)
        self.assertIn("--reduce AGG", h)
        self.assertIn("--on-bad-record skip|fail  with --reduce", h)
        self.assertIn("run --map", run("--help").stdout.decode())


if __name__ == "__main__":
    unittest.main()
