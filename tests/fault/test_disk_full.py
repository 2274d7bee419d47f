"""A full disk: the job fails naming the output and the cause ("No space left on device"),
and leaves neither the output nor a temporary file. Output larger than any stdio buffer, so
the failure comes in the middle of writing rows, not only at the final flush."""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from dbx import DBATCH, TmpTest, run  # noqa: E402


def many_words(path, n=30000):
    """n distinct words: the word count output is about 12 bytes a row."""
    with open(path, "w") as f:
        for i in range(n):
            f.write("word%06d x\n" % i)
    return path


class DiskFull(TmpTest):
    def check(self, p, dest):
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, err)
        last = [l for l in err.splitlines() if "error" in l][-1]
        self.assertIn(dest, last)
        self.assertIn("No space left on device", last)

    def test_dev_full(self):
        data = many_words(self.path("in.txt"))
        for workers in ("0", "2"):
            for fmt in ("tsv", "csv", "jsonl"):
                p = run("wordcount", "--workers", workers, "--no-job-dir", "--format", fmt, "-o", "/dev/full",
                        data, check=False, timeout=120)
                self.check(p, "/dev/full")

    def test_small_tmpfs(self):
        mnt = self.path("small")
        os.mkdir(mnt)
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], capture_output=True)
        if m.returncode != 0:
            self.skipTest("cannot mount a 64k tmpfs here (needs root): %s" % m.stderr.decode(errors="replace").strip())
        self.addCleanup(subprocess.run, ["umount", "-l", mnt], capture_output=True)
        data = many_words(self.path("in.txt"))
        dest = os.path.join(mnt, "out.tsv")
        p = run("wordcount", "--workers", "2", "--no-job-dir", "-o", dest, data, check=False, timeout=120)
        self.check(p, dest)
        self.assertEqual(os.listdir(mnt), [])
        # The same job into a roomy directory works: the failure was the disk's.
        ok = self.path("out.tsv")
        run("wordcount", "--workers", "2", "--no-job-dir", "-o", ok, data, timeout=120)
        self.assertGreater(os.path.getsize(ok), 64 * 1024)

    # Needs the file sink to write through afile_write (src/sink/sink_file.c file_row): its
    # own "write failed" check on fwrite to standard output says no cause.
    def test_stdout_full(self):
        data = many_words(self.path("in.txt"))
        with open("/dev/full", "wb") as full:
            p = subprocess.run([DBATCH, "wordcount", "--workers", "0", "--no-job-dir", data], stdout=full,
                               stderr=subprocess.PIPE, timeout=120)
        self.check(p, "standard output")


if __name__ == "__main__":
    unittest.main()
