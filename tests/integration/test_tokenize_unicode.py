"""Words and lowercasing against Python over every code point: each one alone, inside a word,
doubled before a capital, and after one. Python's str.lower() is the reference, including its
multi-character mappings (U+0130 -> "i" + U+0307: the only one in Python's tables, checked
here) and the final sigma. Code points that Python's Unicode database does not know (utf8proc
may carry a newer Unicode version) are left out: there the two tables, not the code, differ."""
import collections
import re
import sys
import unicodedata
import unittest

from dbx import TmpTest, run

SEPARATORS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines() would cut there


def code_points():
    for c in range(sys.maxunicode + 1):
        if 0xD800 <= c < 0xE000 or chr(c) in SEPARATORS:
            continue
        if unicodedata.category(chr(c)) == "Cn":
            continue
        yield chr(c)


class EveryCodePoint(TmpTest):
    def same_as_python(self, name, text):
        """dbatch's word counts of text (written to name) equal Python's re \\w on str.lower()."""
        path = self.write(name, text.encode("utf-8"))
        want = collections.Counter(re.findall(r"\w+", text.lower()))
        out = run("wordcount", "--workers", "0", path, timeout=600).stdout.decode("utf-8")
        got = collections.Counter()
        for line in out.splitlines():
            w, n = line.rsplit("\t", 1)
            got[w] = int(n)
        diff = sorted(w for w in set(want) | set(got) if want[w] != got[w])
        self.assertEqual(diff[:20], [], "%d words differ" % len(diff))

    def test_multi_char_lowercase_is_only_dotted_i(self):
        multi = [hex(ord(ch)) for ch in code_points() if len(ch.lower()) > 1]
        self.assertEqual(multi, ["0x130"])  # if Python grows more, the tokenizer needs them too

    def test_words_and_lowercase_match_python(self):
        lines = ["%s a%sb %s%sZ A%s\n" % (ch, ch, ch, ch, ch) for ch in code_points()]
        text = "".join(lines)
        self.same_as_python("all.txt", text)
        # and a few by name
        for s, words in (("İstanbul", ["i", "stanbul"]), ("aİb", ["ai", "b"]), ("ΑΣ ΣΑ", ["ας", "σα"])):
            p = self.write("one.txt", s + "\n")
            out = run("wordcount", "--workers", "0", p).stdout.decode()
            self.assertEqual(sorted(l.split("\t")[0] for l in out.splitlines()), sorted(words))
            self.assertEqual(sorted(words), sorted(re.findall(r"\w+", s.lower())))

    def test_final_sigma_context_matches_python(self):
        """The capital sigma after and before every code point, in the text and not only in
        its word: Python skips case-ignorable characters (' . : combining marks, modifier
        letters) and counts Cased wider than Lu/Ll/Lt (ª, Ⅻ, ⓐ, 🄰)."""
        lines = []
        for ch in code_points():
            lines.append("A%sΣ 1%sΣ ΑΣ%sB ΑΣ%s1\n" % (ch, ch, ch, ch))
        text = "".join(lines)
        self.same_as_python("sigma.txt", text)


if __name__ == "__main__":
    unittest.main()
