"""Adversarial pass over authenticated links, --allow-read and the rendezvous as seen by
`dbatch worker` (tests/integration/test_security.py has the functional tests).

Tests named test_defect_* fail on 3cd6b5d and pass once the defect they name is fixed;
the others are attacks that are repelled today and must stay so. Every wait is bounded."""
import os
import socket
import struct
import subprocess
import threading
import time
import unittest

import msgpack
import zmq

from dbx import TmpTest, DBATCH, run, start, stop, free_port, slurp, wait_for_line


def corpus(path, n=3000, token="zebracornsecret"):
    with open(path, "w") as f:
        for i in range(n):
            f.write("%s line %d alpha w%d\n" % (token, i, i % 13))
    return path


def keypair_file(path, pub, sec):
    """A key pair file in dbatch's format from pyzmq's keys (mode 0600) and its .pub."""
    with open(path, "w") as f:
        f.write("public-key %s\nsecret-key %s\n" % (pub.decode(), sec.decode()))
    os.chmod(path, 0o600)
    with open(path + ".pub", "w") as f:
        f.write(pub.decode() + " made-by-test\n")
    return path


class Rogue:
    """A hostile coordinator speaking dbatch's protocol from Python: a ROUTER on loopback
    without keys, to which a real `dbatch worker` connects."""

    def __init__(self, test, *worker_args):
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.w = start("worker", "--connect", "127.0.0.1:%d" % self.port, "--slots", "1", *worker_args)
        test.assertTrue(self.router.poll(10000), "the worker never said hello")
        self.ident, hello = self.router.recv_multipart()
        self.hello = msgpack.unpackb(hello, raw=False)
        self.send(2, 1, 1000)  # WELCOME

    def send(self, *f):
        self.router.send_multipart([self.ident, msgpack.packb(["DBX", 1, *f])])

    def task(self, stage, index, path, size):
        """A TASK reading size bytes of input 0 by path; returns the RESULT or FAILURE."""
        self.send(5, stage, index, 1, [[0, 0, size, 0, 2**64 - 1, 0]], False, b"", False)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.router.poll(500):
                m = msgpack.unpackb(self.router.recv_multipart()[1], raw=False)
                if m[2] in (6, 7):
                    return m
        raise AssertionError("no answer to task %d" % index)

    def close(self):
        try:
            self.send(10)  # BYE
            self.w.wait(timeout=10)
        except Exception:
            pass
        stop(self.w)
        self.router.close()
        self.ctx.term()


class AdvTest(TmpTest):
    def setUp(self):
        super().setUp()
        self.input = corpus(self.path("in.txt"))
        self.expected = run("wordcount", self.input, "--workers", "0", "--no-job-dir").stdout

    def keygen(self, name):
        p = self.path(name)
        run("keygen", p)
        return p


# ---------------------------------------------------------------- defects

class TestAllowReadDefects(AdvTest):
    def test_defect_allow_read_checked_once_per_path_not_per_open(self):
        """--allow-read is decided once per stage and path (worker.c: st->readable caches
        realpath's verdict), but the file is opened by name on every task. A file inside the
        allowed directory that is replaced by a symbolic link to a file outside it is then
        read through the link; likewise a path that did not exist at its first task (cached
        as allowed, 'left to the reader') and later appears as such a link. The worker must
        refuse both reads, naming the path."""
        os.makedirs(self.path("data"))
        os.makedirs(self.path("private"))
        inside = self.write("data/in.txt", "hello world\n" * 10)
        later = self.path("data/later.txt")
        secret = self.write("private/secret.txt", "topsecret words\n" * 10)
        rogue = Rogue(self, "--allow-read", self.path("data"))
        try:
            rogue.send(4, 1, "noop", b"\0" * 8, b"", [inside, later])
            m = rogue.task(1, 0, inside, os.path.getsize(inside))
            self.assertEqual(m[2], 6, m)  # allowed: a result (120 bytes read)
            self.assertEqual(m[8], 120)
            os.unlink(inside)
            os.symlink(secret, inside)
            m = rogue.task(1, 1, inside, os.path.getsize(secret))
            self.assertEqual(m[2], 7, "the worker read %s through a link to %s: %r" % (inside, secret, m))
            self.assertIn("refuses to read", m[7])
            self.assertIn(inside, m[7])
            # The path that did not exist: its first task fails as missing ...
            rogue.send(5, 1, 2, 1, [[1, 0, 160, 0, 2**64 - 1, 0]], False, b"", False)
            m = self._answer(rogue)
            self.assertEqual(m[2], 7, m)
            # ... then it appears as a link out of the allowed directory.
            os.symlink(secret, later)
            rogue.send(5, 1, 3, 1, [[1, 0, 160, 0, 2**64 - 1, 0]], False, b"", False)
            m = self._answer(rogue)
            self.assertEqual(m[2], 7, "the worker read %s through a link to %s: %r" % (later, secret, m))
            self.assertIn("refuses to read", m[7])
        finally:
            rogue.close()

    def _answer(self, rogue):
        deadline = time.time() + 15
        while time.time() < deadline:
            if rogue.router.poll(500):
                m = msgpack.unpackb(rogue.router.recv_multipart()[1], raw=False)
                if m[2] in (6, 7):
                    return m
        self.fail("no answer")

    def test_defect_worker_allowing_another_dir_hangs_the_job(self):
        """A remote worker with --allow-read DIR says in its hello that it reads in place, so
        the coordinator sends every batch by reference; the input is not under DIR, so the
        worker refuses every task, is excluded after 3, and the coordinator then waits for
        ever (exit only by a signal). A worker that refuses a path must get the batch's
        bytes shipped (as a worker without --allow-read does): the job ends with the exact
        answer."""
        os.makedirs(self.path("elsewhere"))
        port = free_port()
        c = start("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % port, "--no-job-dir",
                  "--batch-records", "500")
        w = start("worker", "--connect", "127.0.0.1:%d" % port, "--allow-read", self.path("elsewhere"))
        try:
            try:
                out, err = c.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                self.fail("the coordinator still runs after 40 s (a 6-batch job): every task was sent by reference "
                          "to a worker that refuses the path, which was then excluded")
            self.assertEqual(c.returncode, 0, err)
            self.assertEqual(out, self.expected)
            self.assertEqual(w.wait(timeout=20), 0)
        finally:
            stop(c)
            stop(w)


class TestConnectDefects(AdvTest):
    def test_defect_hostname_starting_with_127_counts_as_loopback(self):
        """tr_endpoint_loopback() takes any host beginning with '127.' for loopback, so a DNS
        name such as 127.0.0.1.example.invalid (names like 127.0.0.1.nip.io resolve to any
        address someone chooses) is joined without keys and without --insecure, in clear.
        Only a numeric 127.x.y.z address is loopback: this must be refused like any network
        address (exit 2, saying --insecure)."""
        for host in ("127.0.0.1.example.invalid", "127.evil.example.invalid"):
            r = run("worker", "--connect", "%s:%d" % (host, free_port()), "--connect-timeout", "2", check=False,
                    timeout=30)
            self.assertEqual(r.returncode, 2, (host, r.stderr))
            self.assertIn(b"--insecure", r.stderr)
            self.assertIn(host.encode(), r.stderr)

    def test_defect_waiting_hint_omits_keys(self):
        """A coordinator with --key waits for workers saying: start them with 'dbatch worker
        --connect tcp://127.0.0.1:PORT'. That command is refused by this very coordinator
        ('requires keys'). With keys, the hint must name --key and --coordinator-key with the
        coordinator's public key."""
        ckey, wkey = self.keygen("c.key"), self.keygen("w.key")
        authz = self.write("authz", slurp(wkey + ".pub", text=True))
        port = free_port()
        c = start("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % port, "--no-job-dir",
                  "--key", ckey, "--authorized-keys", authz)
        try:
            lines = wait_for_line(c.stderr, "waiting for workers", timeout=20)
            hint = lines[-1]
            # The hint, followed as written, is refused:
            r = run("worker", "--connect", "127.0.0.1:%d" % port, "--connect-timeout", "5", check=False, timeout=30)
            self.assertEqual(r.returncode, 1)
            self.assertIn(b"requires keys", r.stderr)
            self.assertIn("--coordinator-key", hint, hint)
            self.assertIn(slurp(ckey + ".pub", text=True).split()[0], hint, hint)
            self.assertIn("--key", hint.replace("--coordinator-key", ""), hint)
        finally:
            stop(c)
        # --listen 0.0.0.0: the hint tells other machines to connect to 0.0.0.0, which is no
        # address of this machine they can reach; it must name a reachable one (as
        # --cluster's rendezvous does).
        port = free_port()
        c = start("wordcount", self.input, "--workers", "0", "--listen", "0.0.0.0:%d" % port, "--insecure",
                  "--no-job-dir")
        try:
            hint = wait_for_line(c.stderr, "waiting for workers", timeout=20)[-1]
            self.assertNotIn("0.0.0.0", hint, hint)
        finally:
            stop(c)


class TestKeyFileDefects(AdvTest):
    def test_defect_pub_file_as_key_advises_chmod(self):
        """`--key coord.key.pub` (the public half, mode 0644) is answered 'a secret key must
        not be readable by others (mode 644): chmod 600 coord.key.pub'. Following that advice
        only leads to the next error: it is not a secret key at all. The message must say it is
        a public key file and to give the key pair file (coord.key), and never suggest chmod."""
        ckey, wkey = self.keygen("c.key"), self.keygen("w.key")
        authz = self.write("authz", slurp(wkey + ".pub", text=True))
        r = run("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % free_port(), "--key",
                ckey + ".pub", "--authorized-keys", authz, "--no-job-dir", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertNotIn(b"chmod", r.stderr)
        self.assertIn(b".pub", r.stderr)
        self.assertIn(b"dbatch keygen", r.stderr)
        r = run("worker", "--connect", "127.0.0.1:1", "--key", wkey + ".pub", "--coordinator-key", ckey + ".pub",
                check=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertNotIn(b"chmod", r.stderr)

    def test_defect_pub_with_secret_key_in_its_comment_is_refused(self):
        """`dbatch keygen k --comment "backup secret-key holder"` writes k.pub with that
        comment; `--coordinator-key k.pub` then says 'k.pub is a secret key file: give its
        .pub' (tr_pubkey_load looks for 'secret-key' anywhere after a blank). The .pub that
        keygen wrote must be accepted: the worker goes on to connect (here: nothing listens,
        --connect-timeout, exit 1)."""
        k = self.path("k.key")
        run("keygen", k, "--comment", "backup secret-key holder")
        wkey = self.keygen("w.key")
        r = run("worker", "--connect", "127.0.0.1:%d" % free_port(), "--key", wkey, "--coordinator-key", k + ".pub",
                "--connect-timeout", "1", check=False, timeout=30)
        self.assertNotIn(b"secret key file", r.stderr)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(b"--connect-timeout", r.stderr)


class TestRendezvousByHandDefects(AdvTest):
    def test_defect_rendezvous_fifo_blocks_past_connect_timeout(self):
        """`dbatch worker --rendezvous FILE --connect-timeout 2` where FILE is a FIFO (anyone
        who can write the shared directory can put one there before rank 0 starts) blocks in
        open() for ever: the timeout is never checked. It must give up after about 2 s,
        exit 1, naming the file."""
        fifo = self.path("rendezvous")
        os.mkfifo(fifo)
        t = time.time()
        try:
            r = run("worker", "--rendezvous", fifo, "--connect-timeout", "2", check=False, timeout=20)
        except subprocess.TimeoutExpired:
            self.fail("dbatch worker --rendezvous FIFO --connect-timeout 2 still blocks after 20 s")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(fifo.encode(), r.stderr)
        self.assertLess(time.time() - t, 15)

    def test_defect_stale_rendezvous_is_followed_for_ever(self):
        """A rendezvous left in a --job-dir by an earlier launch (its coordinator was killed)
        is read by a `dbatch worker --rendezvous` started before the next launch's rank 0; the
        worker then tries the dead endpoint for ever, silently, although rank 0 of the new
        launch removes the stale file and writes a new one. The worker must follow the
        rendezvous its coordinator writes (re-read it while nobody answers): the new launch
        finishes with the exact answer."""
        jd = self.path("jd")
        env = dict(os.environ, OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2", OMPI_MCA_ess_base_jobid="old")
        old = subprocess.Popen([DBATCH, "wordcount", "--cluster", "mpi", "--job-dir", jd, self.input, "--no-job-dir"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while not os.path.exists(os.path.join(jd, "rendezvous")) and time.time() < deadline:
            time.sleep(0.1)
        old.kill()
        old.wait(timeout=10)
        self.assertIn("launch mpi-old", slurp(os.path.join(jd, "rendezvous"), text=True))
        w = start("worker", "--rendezvous", os.path.join(jd, "rendezvous"))
        time.sleep(1)
        env["OMPI_MCA_ess_base_jobid"] = "new"
        c = subprocess.Popen([DBATCH, "wordcount", "--cluster", "mpi", "--job-dir", jd, self.input, "-o",
                              self.path("out.tsv")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            try:
                _, err = c.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.fail("the new launch's rank 0 got no worker in 30 s: the hand-started worker still follows "
                          "the stale rendezvous")
            self.assertEqual(c.returncode, 0, err)
            self.assertEqual(slurp(self.path("out.tsv")), self.expected)
            self.assertEqual(w.wait(timeout=20), 0)
        finally:
            stop(c)
            stop(w)


# ---------------------------------------------------------------- repelled attacks

def greeting(mech):
    """A ZMTP 3.0 greeting offering mechanism mech."""
    return b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + mech.ljust(20, b"\0") + b"\0" + b"\0" * 31


class TestRepelled(AdvTest):
    def setUp(self):
        super().setUp()
        self.ckey, self.wkey = self.keygen("c.key"), self.keygen("w.key")
        self.authz = self.write("authz", slurp(self.wkey + ".pub", text=True))

    def keyed_coordinator(self, port, *more):
        return start("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % port, "--no-job-dir",
                     "--batch-records", "300", "-o", self.path("out.tsv"), "--key", self.ckey, "--authorized-keys",
                     self.authz, *more)

    def test_handshake_flood_leaves_the_job_exact(self):
        """Thousands of TCP peers at once (idle, half a greeting, NULL and PLAIN greetings,
        CURVE HELLOs of the wrong size, a frame claiming 2^62 bytes, random bytes), then a
        keyed worker joins: the job ends with the exact answer; refusals are logged, but not
        one line per peer."""
        port = free_port()
        c = self.keyed_coordinator(port)
        payloads = [b"", b"\xff\0\0\0", os.urandom(200),
                    greeting(b"CURVE") + b"\x04\xff\x05HELLO" + os.urandom(250),
                    greeting(b"NULL") + b"\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER",
                    greeting(b"PLAIN") + b"\x04\x0e\x05HELLO\x04user\x04pass",
                    greeting(b"CURVE") + b"\x06" + struct.pack(">Q", 2**62) + b"\x05HELLO"]
        socks, lock, zsocks, ctx = [], threading.Lock(), [], zmq.Context()

        def flood(n):
            for i in range(n):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(payloads[i % len(payloads)])
                    with lock:
                        socks.append(s)
                except OSError:
                    pass
        try:
            wait_for_line(c.stderr, "waiting for workers", timeout=20)
            ts = [threading.Thread(target=flood, args=(100,)) for _ in range(15)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=60)
            self.assertGreater(len(socks), 500)
            # And 200 real CURVE clients with keys nobody listed, retrying every 100 ms.
            for _ in range(200):
                z = ctx.socket(zmq.DEALER)
                pub, sec = zmq.curve_keypair()
                z.curve_publickey, z.curve_secretkey = pub, sec
                z.curve_serverkey = slurp(self.ckey + ".pub").split()[0]
                z.setsockopt(zmq.LINGER, 0)
                z.setsockopt(zmq.RECONNECT_IVL, 100)
                z.connect("tcp://127.0.0.1:%d" % port)
                zsocks.append(z)
            time.sleep(3)
            w = run("worker", "--connect", "127.0.0.1:%d" % port, "--key", self.wkey, "--coordinator-key",
                    self.ckey + ".pub", timeout=60)
            self.assertEqual(w.returncode, 0)
            self.assertEqual(c.wait(timeout=60), 0)
            err = c.stderr.read().decode()
            self.assertLess(err.count("refused a peer"), 60)
            self.assertLess(err.count("refused a worker"), 60)
            for z in zsocks:
                self.assertFalse(z.poll(0), "a refused peer received a message")
        finally:
            for s in socks:
                s.close()
            for z in zsocks:
                z.close()
            ctx.term()
            stop(c)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)

    def test_listed_key_sending_garbage_is_dropped(self):
        """A peer holding a listed key sends malformed frames after the handshake (not
        msgpack, wrong types, other versions, unknown types, results of tasks it was never
        given, a 64 MiB frame): it is dropped with a log line; a good worker finishes the
        job exactly. (Not an array header claiming 2^32 elements: the release build fails its
        128 GiB allocation cleanly, a DBX_SANITIZE build aborts in ASan, as known.)"""
        port = free_port()
        c = self.keyed_coordinator(port)
        ctx = zmq.Context()
        with open(self.wkey) as f:
            kp = dict(l.split() for l in f if l.startswith(("public-key", "secret-key")))
        msgs = [b"", os.urandom(100), msgpack.packb(123), msgpack.packb(["DBX"]), msgpack.packb(["DBX", 2, 1]),
                msgpack.packb(["DBX", 1, 1, 2**64 - 1, "h" * 100000, 2**64 - 1, True]),
                msgpack.packb(["DBX", 1, 6, 2**64 - 1, 2**64 - 1, 2**64 - 1, 1, 0, "", 1, 0.0, b"x"]),
                msgpack.packb(["DBX", 1, 6, 1, 0, 1, 2**64 - 1, 2**64 - 1, "n" * 5000, 2**64 - 1, float("nan"),
                               b"\x81\xa5alpha\xcd\x03\xe7"]),
                msgpack.packb(["DBX", 1, 7, 1, 0, 1, -1, "x" * 100000]), msgpack.packb(["DBX", 1, 99]),
                msgpack.packb(["DBX", 1, 3, "bye"]), b"\xc1" * 50, b"\0" * (64 << 20)]
        socks = []
        try:
            wait_for_line(c.stderr, "waiting for workers", timeout=20)
            for m in msgs:
                s = ctx.socket(zmq.DEALER)
                s.curve_publickey, s.curve_secretkey = kp["public-key"].encode(), kp["secret-key"].encode()
                s.curve_serverkey = slurp(self.ckey + ".pub").split()[0]
                s.setsockopt(zmq.LINGER, 0)
                s.connect("tcp://127.0.0.1:%d" % port)
                s.send(m)
                socks.append(s)
            time.sleep(2)
            self.assertIsNone(c.poll(), "the coordinator ended on garbage")
            w = run("worker", "--connect", "127.0.0.1:%d" % port, "--key", self.wkey, "--coordinator-key",
                    self.ckey + ".pub", timeout=60)
            self.assertEqual(w.returncode, 0)
            self.assertEqual(c.wait(timeout=60), 0)
            self.assertIn("dropped a peer that sent malformed message", c.stderr.read().decode())
        finally:
            for s in socks:
                s.close()
            ctx.term()
            stop(c)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)

    def test_allow_read_escapes_are_refused(self):
        """Sibling directory sharing a prefix (/x/a vs /x/ab), '..', /proc/self/root/...,
        a directory link inside the allowed one, /proc/self/environ: all refused naming the
        path; a file really inside is read."""
        a = self.path("a")
        os.makedirs(a)
        inside = self.write("a/in.txt", "hello\n")
        sib = self.write("ab/secret.txt", "secret\n")
        os.symlink(self.path("ab"), self.path("a/dirlink"))
        cases = [sib, self.path("a/../ab/secret.txt"), "/proc/self/root" + sib, self.path("a/dirlink/secret.txt"),
                 "/proc/self/environ", "/proc/%d/root%s" % (os.getpid(), sib)]
        rogue = Rogue(self, "--allow-read", a)
        try:
            rogue.send(4, 1, "noop", b"\0" * 8, b"", [inside])
            m = rogue.task(1, 0, inside, 6)
            self.assertEqual(m[2], 6, m)
        finally:
            rogue.close()
        for i, p in enumerate(cases):
            rogue = Rogue(self, "--allow-read", a)
            try:
                rogue.send(4, 1, "noop", b"\0" * 8, b"", [p])
                m = rogue.task(1, i, p, 7)
                self.assertEqual(m[2], 7, (p, m))
                self.assertIn("refuses to read", m[7])
            finally:
                rogue.close()

    def test_key_files_odd_but_valid_or_refused_clearly(self):
        """Key files: CRLF line endings, comments, duplicate authorized keys and a key with
        '#' inside its Z85 are accepted; an empty file, a directory and a 10 MB file are
        refused (exit 2) naming the file."""
        while True:
            pub, sec = zmq.curve_keypair()
            if b"#" in pub:
                break
        hkey = keypair_file(self.path("hash.key"), pub, sec)
        crlf = self.write("c_crlf.key", slurp(self.ckey).replace(b"\n", b"\r\n"))
        os.chmod(crlf, 0o600)
        authz = self.write("authz2", "# workers\r\n\r\n%s\r\n  %s  dup\r\n# end\r\n" % (pub.decode(), pub.decode()))
        port = free_port()
        c = start("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % port, "--no-job-dir",
                  "-o", self.path("out.tsv"), "--key", crlf, "--authorized-keys", authz)
        try:
            w = run("worker", "--connect", "127.0.0.1:%d" % port, "--key", hkey, "--coordinator-key",
                    self.ckey + ".pub", timeout=60)
            self.assertEqual(w.returncode, 0, w.stderr)
            self.assertEqual(c.wait(timeout=60), 0)
        finally:
            stop(c)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)
        empty = self.write("empty.key", "")
        os.chmod(empty, 0o600)
        big = self.write("big.key", b"\0" * 10_000_000)
        os.chmod(big, 0o600)
        os.makedirs(self.path("dir.key"))
        for bad in (empty, big, self.path("dir.key")):
            r = run("wordcount", self.input, "--workers", "0", "--listen", "127.0.0.1:%d" % free_port(),
                    "--key", bad, "--authorized-keys", self.authz, "--no-job-dir", check=False)
            self.assertEqual(r.returncode, 2, (bad, r.stderr))
            self.assertIn(bad.encode(), r.stderr)
            r = run("worker", "--connect", "127.0.0.1:1", "--key", bad, "--coordinator-key", self.ckey + ".pub",
                    check=False)
            self.assertEqual(r.returncode, 2, (bad, r.stderr))
            self.assertIn(bad.encode(), r.stderr)

    def test_garbage_rendezvous_named_with_its_line(self):
        """A rendezvous that is not one: the hand-started worker gives up at --connect-timeout
        naming the file and the line."""
        rv = self.write("rendezvous", "launch x\nendpoint\n")
        r = run("worker", "--rendezvous", rv, "--connect-timeout", "1.5", check=False, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(("%s line 2" % rv).encode(), r.stderr)
        rv = self.write("rendezvous2", "launch x\nendpoint http://evil:80\n")
        r = run("worker", "--rendezvous", rv, "--connect-timeout", "1.5", check=False, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(b"not tcp:// or ipc://", r.stderr)


if __name__ == "__main__":
    unittest.main()
