"""`dbatch status URL` against servers that are not (well-behaved) dashboards: a reply of
exactly 256 bytes, a huge one, one that never ends, one that never starts, garbage, an HTTP
error, escape sequences in the text. Every case ends with the exact text or one clear error,
within --timeout."""
import socket
import threading
import time
import unittest

from dbx import run

ESC = b"\x1b"


class Server:
    """A TCP server on 127.0.0.1 answering every connection with handler(conn)."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d/" % self.port
        self.handler = handler
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn):
        try:
            conn.settimeout(60)
            req = b""
            while b"\r\n\r\n" not in req:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                req += chunk
            self.handler(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


def reply(head, body):
    return lambda conn, stop: conn.sendall(head + body)


class StatusHttp(unittest.TestCase):
    def status(self, handler, *extra, timeout=60):
        srv = Server(handler)
        try:
            return run("status", *extra, srv.url, check=False, timeout=timeout)
        finally:
            srv.close()

    def test_exactly_256_bytes(self):
        head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
        body = (b"job wordcount: running after 1.0 s (policy least-loaded)\n" * 5)
        body = body[: 256 - len(head) - 1] + b"\n"
        self.assertEqual(len(head + body), 256)
        p = self.status(reply(head, body))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, body)
        # The same 256 bytes without a blank line ending the header: not HTTP.
        p = self.status(reply(b"HTTP/1.0 200 OK\r\n", b"x" * 239))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"not an HTTP answer (256 bytes)", p.stderr)

    def test_tiny_and_odd_status_lines(self):
        for raw in (b"H", b"HTTP/1.0 2", b"HTTP/1.0 200", b"\r\n\r\n", b""):
            p = self.status(reply(raw, b""))
            self.assertEqual(p.returncode, 1, raw)
            self.assertIn(b"is this a dbatch dashboard?", p.stderr)

    def test_huge_reply(self):
        line = b"worker 12345 alive localhost 42 1 1/1 10 0 0.0s\n"
        body = line * (20 * 1024 * 1024 // len(line))
        p = self.status(reply(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, body)

    def test_reply_that_never_ends(self):
        def endless(conn, stop):
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
            while not stop.is_set():
                conn.sendall(b"x" * 65536)
        p = self.status(endless, "--timeout", "30")
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"answer larger than 64 MB: not a dbatch dashboard", p.stderr)

    def test_reply_that_trickles_forever(self):
        def trickle(conn, stop):
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\njob wordcount: running")
            while not stop.wait(0.3):
                conn.sendall(b".")
        p = self.status(trickle, "--timeout", "2")
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr.decode(), r"^dbatch status: error: http://127\.0\.0\.1:\d+/: no complete answer "
                         r"within 2 s \(got \d+ bytes; --timeout SECS to wait longer\)\n$")

    def test_server_that_never_answers(self):
        # The default timeout (10 s) holds too.
        p = self.status(lambda conn, stop: stop.wait(60))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"no complete answer within 10 s", p.stderr)

    def test_complete_by_content_length_on_a_kept_connection(self):
        body = b"job wordcount: done after 2.0 s (policy least-loaded)\n"

        def keep(conn, stop):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Dbatch-State: done\r\n\r\n" % len(body) + body)
            stop.wait(60)
        p = self.status(keep, "--timeout", "50", timeout=40)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(p.stdout, body)

    def test_garbage_and_errors(self):
        p = self.status(reply(b"\x00\xff\x1b[31mgarbage\r\n\r\n", b"\x1b[2J"))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"not an HTTP answer", p.stderr)
        self.assertNotIn(ESC, p.stderr)
        p = self.status(reply(b"HTTP/1.1 404 Not Found\r\n\r\n", b"nope"))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"answered HTTP 404 to /status.txt", p.stderr)
        self.assertEqual(p.stdout, b"")
        p = self.status(reply(b"HTTP/1.1 2\x1b[ OK\r\n\r\n", b"nope"))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"answered HTTP 2\\e[", p.stderr)

    def test_escapes_in_the_text_are_shown_not_obeyed(self):
        body = b"job wordcount: running\n1 alive \x1b[31mevil\x1b]0;t\x07 \xc2\x9b2J caf\xc3\xa9\n"
        p = self.status(reply(b"HTTP/1.0 200 OK\r\n\r\n", body))
        self.assertEqual(p.returncode, 0)
        self.assertEqual(p.stdout, b"job wordcount: running\n1 alive \\e[31mevil\\e]0;t\\x07 \\u009b2J caf\xc3\xa9\n")

    def test_exit_status_follows_the_job_state(self):
        for state, code in (("running", 0), ("done", 0), ("failed", 1), ("partial", 3)):
            p = self.status(reply(b"HTTP/1.0 200 OK\r\nx-dbatch-state: %s\r\n\r\n" % state.encode(), b"job x: "
                                  + state.encode() + b"\n"))
            self.assertEqual(p.returncode, code, state)

    def test_bad_urls_and_options(self):
        for url in ("http://" + "h" * 300 + ":80/", "http://:80/", "http://127.0.0.1:99999/", "http://127.0.0.1:x/",
                    "http://[::1/"):
            p = run("status", url, check=False, timeout=30)
            self.assertEqual(p.returncode, 2, url)
            self.assertIn(b"dbatch status: ", p.stderr)
        for bad in (["--timeout", "0"], ["--timeout", "x"], ["--timeout"], ["a", "b"]):
            self.assertEqual(run("status", *bad, check=False).returncode, 2, bad)
        # Nobody listening: one clear line.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        p = run("status", "http://127.0.0.1:%d/" % port, check=False, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"cannot connect: Connection refused (has the job ended?", p.stderr)


if __name__ == "__main__":
    unittest.main()
