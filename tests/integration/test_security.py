"""Authenticated, encrypted links (CURVE): dbatch keygen, --key/--authorized-keys on the
coordinator, --key/--coordinator-key on workers, --insecure, --allow-read. Peers that are
refused are real ZeroMQ clients speaking dbatch's protocol; the relay that checks for
plaintext is a real TCP proxy recording what crosses it."""
import os
import socket
import stat
import threading
import time
import unittest

import msgpack
import zmq

from dbx import TmpTest, run, start, stop, free_port, slurp, wait_for_line


def corpus(path, n=3000, token="zebracornsecret"):
    """Text whose word counts are known, with a word that must never cross a link in clear."""
    with open(path, "w") as f:
        for i in range(n):
            f.write("%s line %d alpha w%d\n" % (token, i, i % 13))
    return path


class Relay:
    """A TCP proxy from a local port to target, keeping every byte it forwards."""

    def __init__(self, target_port):
        self.target = target_port
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _pipe(self, a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                with self.lock:
                    self.seen += d
                b.sendall(d)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()  # the coordinator is not listening (yet): the worker retries
                continue
            threading.Thread(target=self._pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c), daemon=True).start()

    def close(self):
        self.closed = True
        self.srv.close()


class KeysTest(TmpTest):
    def keygen(self, name, *more):
        p = self.path(name)
        r = run("keygen", p, *more)
        return p, r

    def setUp(self):
        super().setUp()
        self.ckey, _ = self.keygen("coord.key")
        self.wkey, _ = self.keygen("worker.key")
        self.authz = self.write("authorized_keys", "# the workers of this test\n\n" + slurp(self.wkey + ".pub", text=True))
        self.input = corpus(self.path("in.txt"))
        self.expected = run("wordcount", self.input, "--workers", "0", "--no-job-dir").stdout

    def coordinator(self, port, *more):
        return start("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % port,
                     "--no-job-dir", "--batch-records", "500", "-o", self.path("out.tsv"), *more)


class TestKeygen(KeysTest):
    def test_files_modes_and_format(self):
        p, r = self.keygen("k", "--comment", "node7")
        self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o600)
        pub = slurp(p + ".pub", text=True)
        self.assertRegex(pub, r"^\S{40} node7\n$")
        self.assertEqual(r.stdout.decode(), pub)  # printed too, ready for authorized_keys
        text = slurp(p, text=True)
        self.assertIn("public-key " + pub.split()[0] + "\n", text)
        self.assertRegex(text, r"\nsecret-key \S{40}\n")
        # Never overwritten by accident; --force replaces both.
        again = run("keygen", p, check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn(b"never overwritten", again.stderr)
        self.assertEqual(slurp(p + ".pub", text=True), pub)
        run("keygen", p, "--force")
        self.assertNotEqual(slurp(p + ".pub", text=True), pub)
        self.assertEqual(run("keygen", check=False).returncode, 2)

    def test_secret_key_readable_by_others_is_refused(self):
        os.chmod(self.ckey, 0o644)
        r = run("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % free_port(),
                "--key", self.ckey, "--authorized-keys", self.authz, "--no-job-dir", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(b"chmod 600", r.stderr)

    def test_bad_authorized_keys_name_file_and_line(self):
        bad = self.write("bad_keys", "# ok\n" + slurp(self.wkey + ".pub", text=True) + "not-a-key at all\n")
        r = run("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % free_port(),
                "--key", self.ckey, "--authorized-keys", bad, "--no-job-dir", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(("%s line 3" % bad).encode(), r.stderr)
        empty = self.write("empty_keys", "# nobody\n")
        r = run("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % free_port(),
                "--key", self.ckey, "--authorized-keys", empty, "--no-job-dir", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"no keys in it", r.stderr)
        # A .pub given where a key pair is expected, and the other way round.
        r = run("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % free_port(),
                "--key", self.ckey + ".pub", "--authorized-keys", self.authz, "--no-job-dir", check=False)
        self.assertEqual(r.returncode, 2)
        r = run("worker", "--connect", "127.0.0.1:1", "--key", self.wkey, "--coordinator-key", self.ckey, check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"secret key file", r.stderr)


class TestAuthenticatedJob(KeysTest):
    def test_keyed_worker_runs_the_job_exactly(self):
        port = free_port()
        c = self.coordinator(port, "--key", self.ckey, "--authorized-keys", self.authz)
        try:
            # HOST:PORT without tcp://, the coordinator's key given as the 40 characters.
            pub = slurp(self.ckey + ".pub", text=True).split()[0]
            w = run("worker", "--connect", "127.0.0.1:%d" % port, "--key", self.wkey, "--coordinator-key", pub,
                    "--allow-read", self.tmp, timeout=60)
            self.assertEqual(w.returncode, 0)
            self.assertEqual(c.wait(timeout=60), 0, c.stderr.read())
        finally:
            stop(c)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)

    def test_refused_peers_get_nothing_and_change_nothing(self):
        port = free_port()
        c = self.coordinator(port, "--key", self.ckey, "--authorized-keys", self.authz)
        ctx = zmq.Context()
        rogues = []
        try:
            # A client without keys, and one with a key that is not listed: each says hello
            # as a worker would and offers a fabricated result.
            plain = ctx.socket(zmq.DEALER)
            unlisted = ctx.socket(zmq.DEALER)
            pub, sec = zmq.curve_keypair()
            unlisted.curve_publickey, unlisted.curve_secretkey = pub, sec
            unlisted.curve_serverkey = slurp(self.ckey + ".pub").split()[0]
            for s in (plain, unlisted):
                s.setsockopt(zmq.LINGER, 0)
                s.connect("tcp://127.0.0.1:%d" % port)
                s.send(msgpack.packb(["DBX", 1, 1, 4, "rogue", 1, True]))
                s.send(msgpack.packb(["DBX", 1, 6, 1, 0, 1, 1, 0, "", 1, 0.0, b"\x81\xa5alpha\xcd\x03\xe7"]))
                rogues.append(s)
            for s in rogues:
                self.assertFalse(s.poll(1500), "a refused peer received a message")
            w = start("worker", "--connect", "127.0.0.1:%d" % port, "--key", self.wkey, "--coordinator-key",
                      self.ckey + ".pub", "--allow-read", self.tmp)
            self.assertEqual(c.wait(timeout=60), 0)
            self.assertEqual(w.wait(timeout=30), 0)
            err = c.stderr.read().decode()
            for s in rogues:
                self.assertFalse(s.poll(200), "a refused peer received a message")
            # Logged with what is known of them: the unlisted key and its address.
            self.assertIn("refused a worker at 127.0.0.1: its key %s is not in the authorized keys" % pub.decode(), err)
            # The keyless one fails before any key is shown: only our own endpoint is known.
            self.assertIn("refused a peer on tcp://127.0.0.1:%d at the handshake" % port, err)
        finally:
            for s in rogues:
                s.close()
            ctx.term()
            stop(c)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)

    def test_worker_says_why_it_was_refused(self):
        port = free_port()
        other, _ = self.keygen("other.key")
        c = self.coordinator(port, "--key", self.ckey, "--authorized-keys", self.authz)
        try:
            cases = [
                (("--key", other, "--coordinator-key", self.ckey + ".pub"), "refused this worker's key"),
                (("--key", self.wkey, "--coordinator-key", other + ".pub"), "does not hold the secret half"),
                ((), "requires keys"),
            ]
            for args, why in cases:
                r = run("worker", "--connect", "127.0.0.1:%d" % port, *args, check=False, timeout=30)
                self.assertEqual(r.returncode, 1, (args, r.stderr))
                self.assertIn(why.encode(), r.stderr, args)
                self.assertIn(b"127.0.0.1:%d" % port, r.stderr)
            self.assertIsNone(c.poll(), "the coordinator must keep waiting for a good worker")
        finally:
            stop(c)
        # A worker with keys in front of a coordinator without them.
        port = free_port()
        c = self.coordinator(port)
        try:
            r = run("worker", "--connect", "127.0.0.1:%d" % port, "--key", self.wkey, "--coordinator-key",
                    self.ckey + ".pub", check=False, timeout=30)
            self.assertEqual(r.returncode, 1, r.stderr)
            # Which of the two libzmq reports depends on timing; both say what to fix.
            self.assertRegex(r.stderr, b"does not use keys|does not hold the secret half")
        finally:
            stop(c)

    def test_no_plaintext_on_the_wire(self):
        """With keys, a recording relay between worker and coordinator sees none of the
        input's words even when batch bytes are shipped; without keys it does (so this test
        would see a link left in clear)."""
        for keyed in (False, True):
            port = free_port()
            more = ("--key", self.ckey, "--authorized-keys", self.authz) if keyed else ()
            c = self.coordinator(port, "--ship", *more)
            wait_for_line(c.stderr, "waiting for workers")
            relay = Relay(port)
            try:
                wargs = ("--key", self.wkey, "--coordinator-key", self.ckey + ".pub") if keyed else ()
                w = run("worker", "--connect", "127.0.0.1:%d" % relay.port, *wargs, timeout=60)
                self.assertEqual(w.returncode, 0)
                self.assertEqual(c.wait(timeout=60), 0)
            finally:
                relay.close()
                stop(c)
            self.assertEqual(slurp(self.path("out.tsv")), self.expected)
            with relay.lock:
                seen = bytes(relay.seen)
            self.assertGreater(len(seen), 100000)  # the batches did cross the relay
            if keyed:
                self.assertNotIn(b"zebracornsecret", seen)
                self.assertNotIn(b"alpha", seen)
                self.assertNotIn(b"wordcount", seen)  # nor the protocol's own strings
            else:
                self.assertIn(b"zebracornsecret", seen)


class TestNetworkGuards(KeysTest):
    def test_network_listen_needs_keys_or_insecure(self):
        for ep in ("0.0.0.0:%d" % free_port(), "tcp://*:%d" % free_port()):
            r = run("wordcount", self.input, "--listen", ep, "--no-job-dir", check=False)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(b"--insecure", r.stderr)
            self.assertIn(b"dbatch keygen", r.stderr)
        r = run("wordcount", self.input, "--workers", "1", "--listen", "0.0.0.0:%d" % free_port(), "--insecure",
                "--no-job-dir")
        self.assertEqual(r.stdout, self.expected)
        r = run("worker", "--connect", "10.200.200.200:5555", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"--insecure", r.stderr)
        self.assertEqual(run("worker", "--connect", "127.0.0.1", check=False).returncode, 2)  # no port
        r = run("wordcount", self.input, "--key", self.ckey, "--no-job-dir", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"--listen", r.stderr)

    def test_connect_timeout(self):
        t = time.time()
        r = run("worker", "--connect", "127.0.0.1:%d" % free_port(), "--connect-timeout", "1.5", check=False,
                timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"--connect-timeout", r.stderr)
        self.assertLess(time.time() - t, 20)


class TestAllowRead(TmpTest):
    """A coordinator (here a hostile one, speaking the protocol from Python) asks a worker to
    read a file outside the directories it allows: the task fails naming the path."""

    def rogue_asks(self, path, *worker_args):
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        w = start("worker", "--connect", "127.0.0.1:%d" % port, "--slots", "1", *worker_args)
        try:
            self.assertTrue(router.poll(10000))
            ident, hello = router.recv_multipart()
            h = msgpack.unpackb(hello, raw=False)
            send = lambda *f: router.send_multipart([ident, msgpack.packb(["DBX", 1, *f])])
            send(2, 1, 1000)
            send(4, 1, "noop", b"\0" * 8, b"", [path])
            send(5, 1, 0, 1, [[0, 0, os.path.getsize(path), 0, 2**64 - 1, 0]], False, b"", False)
            deadline = time.time() + 20
            while time.time() < deadline:
                if router.poll(500):
                    m = msgpack.unpackb(router.recv_multipart()[1], raw=False)
                    if m[2] in (6, 7):
                        send(10)
                        w.wait(timeout=10)
                        return h, m
            self.fail("no answer to the task")
        finally:
            stop(w)
            router.close()
            ctx.term()

    def test_paths_outside_allow_read_are_refused(self):
        inside = self.write("data/in.txt", "hello world\n")
        outside = self.write("private/secret.txt", "top secret\n")
        os.symlink(outside, self.path("data/link.txt"))
        allow = ("--allow-read", self.path("data"))
        hello, m = self.rogue_asks(inside, *allow)
        self.assertTrue(hello[6], "a worker with --allow-read reads in place")
        self.assertEqual(m[2], 6, m)  # allowed: a result
        for path in (outside, self.path("data/link.txt"), self.path("data/../private/secret.txt"), "/etc/passwd"):
            _, m = self.rogue_asks(path, *allow)
            self.assertEqual(m[2], 7, (path, m))
            self.assertIn("refuses to read", m[7])
            self.assertIn(path, m[7])
        # Without --allow-read a worker reads nothing by path, and says so in its hello.
        hello, m = self.rogue_asks(inside)
        self.assertFalse(hello[6])
        self.assertEqual(m[2], 7, m)
        self.assertIn("refuses to read", m[7])

    def test_job_through_allow_read_worker(self):
        """The coordinator ships bytes to a worker that reads nothing in place; a worker that
        allows the input's directory reads it: both give the exact counts."""
        inp = corpus(self.path("in.txt"))
        expected = run("wordcount", inp, "--workers", "0", "--no-job-dir").stdout
        for wargs in ((), ("--allow-read", self.tmp)):
            port = free_port()
            c = start("wordcount", inp, "--workers", "0", "--listen", "127.0.0.1:%d" % port, "--no-job-dir",
                      "--batch-records", "700")
            w = run("worker", "--connect", "127.0.0.1:%d" % port, *wargs, timeout=60)
            self.assertEqual(w.returncode, 0)
            out, err = c.communicate(timeout=60)
            self.assertEqual(c.returncode, 0, err)
            self.assertEqual(out, expected)


@unittest.skipUnless(os.geteuid() == 0, "running a peer as another user needs root")
class TestLocalSocket(TmpTest):
    """Local workers talk over an abstract unix socket, which any user of the machine could
    connect to: only processes of the job's own user are let in."""

    PEER = ("import zmq, msgpack, sys\n"
            "c = zmq.Context(); s = c.socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0)\n"
            "s.connect('ipc://' + sys.argv[1])\n"
            "s.send(msgpack.packb(['DBX', 1, 1, 1, 'intruder', 1, True]))\n"
            "print('welcomed' if s.poll(2000) else 'nothing')\n")

    def test_other_users_cannot_join(self):
        import pwd
        import re
        import subprocess
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user 'nobody'")
        inp = corpus(self.path("in.txt"), n=20000)
        expected = run("wordcount", inp, "--workers", "0", "--no-job-dir").stdout
        env = dict(os.environ, DBATCH_FAULT="delay_ms=200")
        c = start("wordcount", inp, "--workers", "1", "--batch-records", "1000", "--no-job-dir", env=env)
        try:
            ep = None
            deadline = time.time() + 20
            while not ep and time.time() < deadline:
                with open("/proc/net/unix") as f:
                    m = re.search(r"@dbatch-%d-[0-9a-f]+" % c.pid, f.read())
                ep = m and m.group(0)
                time.sleep(0.05)
            self.assertTrue(ep, "the local socket never appeared")
            peer = self.write("peer.py", self.PEER)
            os.chmod(self.tmp, 0o755)
            os.chmod(peer, 0o644)
            other = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", peer, ep],
                                   capture_output=True, timeout=30)
            self.assertEqual(other.stdout.strip(), b"nothing", other.stderr)
            out, err = c.communicate(timeout=120)
            self.assertEqual(c.returncode, 0, err)
            self.assertEqual(out, expected)
            self.assertNotIn(b"intruder", err)
        finally:
            stop(c)


class TestDashboardToken(TmpTest):
    def token_file(self, text, mode=0o600):
        self.ntok = getattr(self, "ntok", 0) + 1
        p = self.write("token%d" % self.ntok, text)
        os.chmod(p, mode)
        return p

    def test_token_is_required_on_every_path(self):
        import urllib.error
        import urllib.request
        tok = "s3cret-Token-0123456789"
        tf = self.token_file(tok + "\n")
        inp = corpus(self.path("in.txt"), n=4000)
        port = free_port()
        env = dict(os.environ, DBATCH_FAULT="delay_ms=300")
        c = start("wordcount", inp, "--workers", "1", "--batch-records", "400", "--no-job-dir", "--dashboard",
                  "0.0.0.0:%d" % port, "--dashboard-token", tf, env=env)
        try:
            wait_for_line(c.stderr, "dashboard at")
            base = "http://127.0.0.1:%d" % port

            def get(path, headers=None):
                req = urllib.request.Request(base + path, headers=headers or {})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.read()

            for path in ("/", "/api/status", "/metrics", "/status.txt", "/nope"):
                code, body = get(path)
                self.assertEqual(code, 401, path)
                self.assertIn(b"Bearer", body)
                self.assertEqual(get(path, {"Authorization": "Bearer wrong-token-0123456789"})[0], 401)
                self.assertEqual(get(path + "?token=" + tok[:-1])[0], 401)
                self.assertEqual(get(path, {"Authorization": "Bearer " + tok + "x"})[0], 401)
            code, body = get("/api/status", {"Authorization": "Bearer " + tok})
            self.assertEqual(code, 200)
            self.assertIn(b'"job"', body)
            self.assertEqual(get("/metrics?token=" + tok)[0], 200)
            out, err = c.communicate(timeout=120)
            self.assertEqual(c.returncode, 0, err)
        finally:
            stop(c)

    def test_token_file_checks(self):
        inp = corpus(self.path("in.txt"), n=10)
        port = free_port()
        cases = [(self.token_file("long-enough-token-123\n", 0o644), b"chmod 600"),
                 (self.token_file("short\n"), b"too short"),
                 (self.token_file("has space in the token\n"), b"blank"),
                 (self.path("missing"), b"No such file")]
        for tf, why in cases:
            r = run("wordcount", inp, "--no-job-dir", "--dashboard", "127.0.0.1:%d" % port, "--dashboard-token", tf,
                    check=False)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(why, r.stderr)
        r = run("wordcount", inp, "--no-job-dir", "--dashboard", "0.0.0.0:%d" % port, check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"--dashboard-token FILE", r.stderr)


if __name__ == "__main__":
    unittest.main()
