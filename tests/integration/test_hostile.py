"""Hostile peers on the coordinator's port: garbage, truncated, oversized, wrong version,
silent. The coordinator logs and drops them, and the job still finishes with the right answer.
A worker facing a coordinator of another protocol version says so and exits."""
import os
import time
import unittest
import urllib.request

import msgpack
import zmq

from dbx import DATA, TmpTest, free_port, lines_file, run, start, wait_for_line

MULTI = os.path.join(DATA, "multilingual.txt")


class HostilePeers(TmpTest):
    def test_coordinator_survives_bad_peers(self):
        data = lines_file(self.path("lines.txt"), 3000)
        want = run("wordcount", "--workers", "0", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "10",
                      "--max-message", "64K", "-v", data)
        ctx = zmq.Context()
        peers = []
        try:
            wait_for_line(coord.stderr, "waiting for workers")

            def peer():
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(ep)
                peers.append(s)
                return s

            peer()  # connects and says nothing
            peer().send(b"\x00\xffthis is not msgpack")
            good_hello = msgpack.packb(["DBX", 1, 1, 1, "evil", 1, True])
            peer().send(good_hello[:-3])  # truncated
            peer().send(msgpack.packb(["DBX", 1, 6, 0, 0, 1]))  # a result with missing fields
            peer().send(msgpack.packb(["NOPE", 1, 1]))
            peer().send(b"x" * 200000)  # over --max-message: the connection is cut
            old = peer()
            old.send(msgpack.packb(["DBX", 99, 1, 1, "old-host", 1, True]))
            self.assertTrue(old.poll(5000), "no answer to a wrong-version hello")
            refuse = msgpack.unpackb(old.recv(), raw=False)
            self.assertEqual(refuse[:3], ["DBX", 1, 3])
            self.assertIn("protocol version 99", refuse[3])
            # Now a real worker: the job completes exactly.
            w = start("worker", "--connect", ep, "--slots", "2")
            out, err = coord.communicate(timeout=120)
            err = err.decode(errors="replace")
            self.assertEqual(coord.returncode, 0, err)
            self.assertEqual(out, want)
            self.assertIn("dropped a peer", err)
            self.assertIn("refused a worker", err)
            self.assertEqual(w.wait(timeout=10), 0)
        finally:
            for s in peers:
                s.close()
            ctx.term()
            if coord.poll() is None:
                coord.kill()

    def test_host_name_not_utf8_keeps_metrics_parseable(self):
        """A peer whose hello names its host in bytes that are not UTF-8 (and heartbeats with
        usage): /metrics stays UTF-8 (U+FFFD in the label), parseable by Prometheus's parser,
        and the job is exact."""
        from prometheus_client.parser import text_string_to_metric_families
        data = lines_file(self.path("lines.txt"), 2000)
        want = run("wordcount", "--workers", "0", data).stdout
        ep = "tcp://127.0.0.1:%d" % free_port()
        dport = free_port()
        coord = start("wordcount", "--workers", "0", "--listen", ep, "--batch-records", "100",
                      "--dashboard", "127.0.0.1:%d" % dport, "--no-job-dir", "-v", data)
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            wait_for_line(coord.stderr, "waiting for workers")
            s.connect(ep)
            host = b"bad\xff\xfehost"
            hello = (b"\x97\xa3DBX\x01\x01\x01" + bytes([0xa0 | len(host)]) + host + msgpack.packb(os.getpid())
                     + b"\xc3")  # a str field holding bytes that are not UTF-8
            s.send(hello)
            wait_for_line(coord.stderr, "worker 1 joined")
            s.send(msgpack.packb(["DBX", 1, 8, 1500, 40 << 20, 50 << 20]))
            time.sleep(0.5)
            page = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % dport, timeout=10).read()
            text = page.decode("utf-8")  # strict: raises on bytes that are not UTF-8
            hosts = {smp.labels.get("host") for f in text_string_to_metric_families(text) for smp in f.samples}
            self.assertIn("bad\ufffd\ufffdhost", hosts)
            w = start("worker", "--connect", ep, "--slots", "1")
            out, err = coord.communicate(timeout=120)
            self.assertEqual(coord.returncode, 0, err)
            self.assertEqual(out, want)
            self.assertEqual(w.wait(timeout=10), 0)
        finally:
            s.close()
            ctx.term()
            if coord.poll() is None:
                coord.kill()
                coord.communicate()

    def test_worker_refuses_other_version(self):
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        w = start("worker", "--connect", "tcp://127.0.0.1:%d" % port, "--slots", "1")
        try:
            self.assertTrue(router.poll(10000))
            ident, hello = router.recv_multipart()
            h = msgpack.unpackb(hello, raw=False)
            self.assertEqual(h[:3], ["DBX", 1, 1])
            router.send_multipart([ident, msgpack.packb(["DBX", 7, 2, 1, 1000])])
            _, err = w.communicate(timeout=20)
            self.assertEqual(w.returncode, 1)
            self.assertIn(b"protocol version 7", err)
        finally:
            if w.poll() is None:
                w.kill()
            router.close()
            ctx.term()

    def test_worker_rejects_bad_tasks_and_survives(self):
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        w = start("worker", "--connect", "tcp://127.0.0.1:%d" % port, "--slots", "1")
        try:
            self.assertTrue(router.poll(10000))
            ident, _ = router.recv_multipart()
            send = lambda *f: router.send_multipart([ident, msgpack.packb(["DBX", 1, *f])])
            send(2, 1, 1000)                                     # welcome
            # A stage whose configuration has the wrong size is refused: its tasks fail.
            send(4, 1, "wordcount", b"\0" * 3, b"", ["/nonexistent"])
            send(5, 1, 9, 1, [[0, 0, 4, 0, 1, 4]], True, b"abc\n", False)
            # The no-op operator's configuration is one double (milliseconds to wait).
            send(4, 2, "noop", b"\0" * 8, b"", ["/nonexistent"])
            # A segment naming input 5 of 1, and a shipped length that does not add up.
            send(5, 2, 0, 1, [[5, 0, 4, 0, 1, 4]], True, b"abc\n", False)
            send(5, 2, 1, 1, [[0, 0, 4, 0, 1, 9]], True, b"abc\n", False)
            send(5, 2, 2, 1, [[0, 0, 4, 0, 1, 4]], True, b"abc\n", False)  # a good one
            got = {}
            deadline = time.time() + 20
            while len(got) < 4 and time.time() < deadline:
                if router.poll(500):
                    m = msgpack.unpackb(router.recv_multipart()[1], raw=False)
                    if m[2] in (6, 7):
                        got[m[4]] = m
            self.assertEqual(got[9][2], 7, got)            # no stage: the task fails
            self.assertEqual(got[0][2], 7, got)            # failure, naming the input
            self.assertIn("input 5 of 1", got[0][7])
            self.assertEqual(got[1][2], 7, got)            # lengths that do not add up: refused
            self.assertIn("malformed task", got[1][7])
            self.assertEqual(got[2][2], 6, got)            # the good task still runs
            self.assertIsNone(w.poll(), "the worker died on a bad task")
            send(10)                                       # bye
            self.assertEqual(w.wait(timeout=10), 0)
        finally:
            if w.poll() is None:
                w.kill()
            router.close()
            ctx.term()

    def test_worker_cannot_connect_bad_endpoint(self):
        p = run("worker", "--connect", "nonsense://x", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"nonsense://x", p.stderr)


if __name__ == "__main__":
    unittest.main()
