"""The test files themselves: ctest runs each as `python3 FILE`, so a test class defined after
the file's `unittest.main()` never runs there (python3 -m unittest would still run it, which
hid it twice: half of test_follow.py and of test_hostile_partials.py were skipped by ctest)."""
import glob
import os
import re
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


class Layout(unittest.TestCase):
    def test_unittest_main_comes_last(self):
        files = sorted(glob.glob(os.path.join(ROOT, "*", "test_*.py")))
        self.assertGreater(len(files), 30)
        for f in files:
            with open(f) as fh:
                text = fh.read()
            m = re.search(r'^if __name__ == "__main__":\n    unittest\.main\(\)\n', text, re.M)
            if m:
                self.assertEqual(text[m.end():].strip(), "", "%s: code after unittest.main()" % f)
            self.assertNotRegex(text[: m.start()] if m else text, r"(?m)^\s+unittest\.main\(", f)


if __name__ == "__main__":
    unittest.main()
