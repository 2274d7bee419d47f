"""Output that cannot be written says why: a full device names ENOSPC, whichever write meets it."""
import os
import unittest

from dbx import TmpTest, run


@unittest.skipUnless(os.path.exists("/dev/full"), "needs /dev/full")
class FullDevice(TmpTest):
    def check(self, nwords, fmt):
        data = self.write("in.txt", " ".join("w%d" % i for i in range(nwords)) + "\n")
        p = run("wordcount", "--workers", "0", "--out", "/dev/full", "--format", fmt, data, check=False)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, err)
        lines = [l for l in err.splitlines() if "error" in l]
        self.assertEqual(len(lines), 1, err)
        self.assertIn("/dev/full: write failed: No space left on device", lines[0])

    def test_small_output_fails_at_commit(self):
        for fmt in ("tsv", "csv", "jsonl"):
            with self.subTest(fmt=fmt):
                self.check(3, fmt)

    def test_large_output_fails_on_a_row(self):
        # More than any stdio buffer: the failure comes from a row's write, not the final flush.
        for fmt in ("tsv", "csv", "jsonl"):
            with self.subTest(fmt=fmt):
                self.check(50000, fmt)


if __name__ == "__main__":
    unittest.main()
