"""Self-test of pg_fixture: the throwaway PostgreSQL server and the fault-injecting proxy the
PostgreSQL sink tests stand on.

Run:  python3 tests/integration/test_pg_fixture.py -v     (root; skipped otherwise)
One server per test class; the framing tests need no server.
"""
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pg_fixture as pf  # noqa: E402
from pg_fixture import DBPASSWORD, DBUSER, PgServer, PgTest  # noqa: E402

OK, WHY = pf.available()
LOST = "connection to server was lost"


def startup_packet(user="dbuser", db="dbx"):
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0" + \
        db.encode() + b"\0\0"
    return struct.pack("!i", 4 + len(body)) + body


def msg(t, payload=b""):
    return t.encode() + struct.pack("!i", 4 + len(payload)) + payload


class Framing(unittest.TestCase):
    """FrontendFramer / BackendFramer / parse_copy_text on their own: every way recv() can cut."""

    def feed_in_pieces(self, make, stream, cuts):
        fr = make()
        out = []
        prev = 0
        for c in list(cuts) + [len(stream)]:
            out += fr.feed(stream[prev:c])
            prev = c
        return out

    def test_frontend_any_split(self):
        ssl = struct.pack("!ii", 8, pf.SSL_REQUEST)
        stream = ssl + startup_packet() + msg("Q", b"COMMIT;\0") + msg("P", b"\0COMMIT\0\0\0") + \
            msg("S") + msg("d", b"1\tx\n" * 50) + msg("c") + msg("X")
        whole = self.feed_in_pieces(pf.FrontendFramer, stream, [])
        self.assertEqual([k for k, _ in whole], ["ssl", "startup", "Q", "P", "S", "d", "c", "X"])
        self.assertEqual(b"".join(m for _, m in whole), stream)
        for i in range(1, len(stream)):                          # every cut in two
            self.assertEqual(self.feed_in_pieces(pf.FrontendFramer, stream, [i]), whole, i)
        self.assertEqual(self.feed_in_pieces(pf.FrontendFramer, stream, range(1, len(stream))),
                         whole)                                  # one byte at a time
        rnd = random.Random(7)
        for _ in range(50):
            cuts = sorted(rnd.sample(range(1, len(stream)), 6))
            self.assertEqual(self.feed_in_pieces(pf.FrontendFramer, stream, cuts), whole)

    def test_frontend_tls_and_cancel_are_passed_on_raw(self):
        hello = b"\x16\x03\x01\x00\x05hello"
        self.assertEqual(pf.FrontendFramer().feed(hello), [("raw", hello)])
        cancel = struct.pack("!iiii", 16, pf.CANCEL_REQUEST, 1234, 5678)
        fr = pf.FrontendFramer()
        self.assertEqual([k for k, _ in fr.feed(cancel + b"junk")], ["cancel", "raw"])
        self.assertEqual(fr.feed(b"more"), [("raw", b"more")])

    def test_backend_any_split(self):
        stream = b"N" + msg("R", struct.pack("!i", 0)) + msg("S", b"a\0b\0") + \
            msg("Z", b"I") + msg("C", b"COMMIT\0") + msg("Z", b"I")
        whole = self.feed_in_pieces(self.backend, stream, [])
        self.assertEqual([k for k, _ in whole], ["answer", "R", "S", "Z", "C", "Z"])
        self.assertEqual(b"".join(m for _, m in whole), stream)
        for i in range(1, len(stream)):
            self.assertEqual(self.feed_in_pieces(self.backend, stream, [i]), whole, i)
        self.assertEqual(self.feed_in_pieces(self.backend, stream, range(1, len(stream))), whole)

    @staticmethod
    def backend():
        b = pf.BackendFramer()
        b.expect_single_byte()
        return b

    def test_backend_ssl_yes_goes_raw(self):
        b = self.backend()
        self.assertEqual(b.feed(b"S\x16\x03"), [("answer", b"S"), ("raw", b"\x16\x03")])
        self.assertEqual(b.feed(b"Zzz"), [("raw", b"Zzz")])

    def test_parse_copy_text(self):
        data = b"a\\tb\t\\N\tx\\\\y\tl1\\nl2\t\\303\\274\t\\x41\t\t\\\\N\n2\t\t\t\t\t\t\t\n"
        self.assertEqual(pf.parse_copy_text(data), [
            ("a\tb", None, "x\\y", "l1\nl2", "\u00fc", "A", "", "\\N"),
            ("2", "", "", "", "", "", "", "")])
        self.assertEqual(pf.parse_copy_text(b""), [])
        self.assertEqual(pf.parse_copy_text(b"\n"), [("",)])

    def test_quoting(self):
        self.assertEqual(pf.quote_literal("s3cret pass'word"), "'s3cret pass''word'")
        self.assertEqual(pf.quote_ident('a"b'), '"a""b"')
        self.assertEqual(pf.conninfo_quote("a b'c\\"), "'a b\\'c\\\\'")
        self.assertEqual(pf.passfile_line("/s:x", 5, "*", "u", "p:w\\"), "/s\\:x:5:*:u:p\\:w\\\\\n")


@unittest.skipUnless(OK, WHY)
class Lifecycle(unittest.TestCase):
    """Start and stop of a server of its own; nothing is left behind, however it ends."""

    def assertGone(self, pid, base):
        deadline = time.monotonic() + 30
        while (pf._alive(pid) or os.path.exists(base)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(pf._alive(pid), "postmaster %d still runs" % pid)
        self.assertFalse(os.path.exists(base), base + " still exists")

    def test_with_statement_cleans_up_on_failure_and_stop_twice(self):
        with self.assertRaises(ZeroDivisionError):
            with PgServer() as pg:
                pid, base = pg._pid, pg.base
                self.assertTrue(pg.running)
                self.assertTrue(os.path.exists(os.path.join(pg.sockdir, ".s.PGSQL.%d" % pg.port)))
                self.assertEqual(pg.psql("SELECT 6*7").strip(), "42")
                1 / 0
        self.assertGone(pid, base)
        pg.stop()
        pg.stop()
        self.assertFalse(pg.running)

    def test_stop_after_kill_immediate(self):
        pg = PgServer()
        self.addCleanup(pg.stop)
        pg.start()
        pid, base = pg._pid, pg.base
        pg.kill_immediate()
        self.assertFalse(pg.running)
        self.assertFalse(pf._alive(pid))
        pg.kill_immediate()                    # nothing to stop: no error
        pg.stop()
        self.assertGone(pid, base)

    def test_watchdog_cleans_up_after_sigkill(self):
        # A test process killed outright runs neither __exit__ nor atexit.
        here = os.path.dirname(os.path.abspath(__file__))
        code = ("import os, signal, sys; sys.path.insert(0, %r); import pg_fixture as pf\n"
                "pg = pf.PgServer().start()\n"
                "print(pg._pid, pg.base, flush=True)\n"
                "os.kill(os.getpid(), signal.SIGKILL)\n" % here)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, -9, p.stderr)
        pid, base = p.stdout.split()
        self.assertGone(int(pid), base)


def client_env(pg, port, password=DBPASSWORD, **extra):
    """psql as dbuser over TCP to 127.0.0.1:port (the proxy's or the server's)."""
    return pg.psql_command(DBUSER, password=password, host="127.0.0.1", port=port, env=extra)


@unittest.skipUnless(OK, WHY)
class Server(PgTest):
    def test_settings_roles_and_socket(self):
        pg = self.pg
        self.assertTrue(os.path.exists(os.path.join(pg.sockdir, ".s.PGSQL.%d" % pg.port)))
        out = pg.psql("SELECT current_user; SHOW port; SHOW fsync; SHOW synchronous_commit;"
                      "SHOW listen_addresses; SHOW server_encoding; SHOW lc_collate;")
        self.assertEqual(out.split(), ["postgres", str(pg.port), "off", "on", "127.0.0.1",
                                       "UTF8", "C.UTF-8"])
        self.assertEqual(pg.copy_out(
            "SELECT rolcanlogin, rolcreatedb, rolsuper, rolpassword LIKE 'SCRAM-SHA-256$%' "
            "FROM pg_authid WHERE rolname = 'dbuser'"), [("t", "t", "f", "t")])
        self.assertEqual(pg.value("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                  "WHERE datname = 'dbx'"), "dbuser")
        # TCP: scram for everyone, so the passwordless superuser cannot come in that way.
        p = pg.psql_proc("SELECT 1", host="127.0.0.1")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("no password supplied", p.stderr)

    def test_dbuser_password(self):
        pg = self.pg
        for host in ("127.0.0.1", None):       # TCP, then the unix socket
            with self.subTest(host=host):
                self.assertEqual(pg.psql("SELECT current_user", user=DBUSER, password=DBPASSWORD,
                                         host=host).strip(), DBUSER)
                p = pg.psql_proc("SELECT 1", user=DBUSER, password="s3cret pass", host=host)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn('password authentication failed for user "dbuser"', p.stderr)
                p = pg.psql_proc("SELECT 1", user=DBUSER, host=host)
                self.assertIn("no password supplied", p.stderr)

    def test_passfile(self):
        pg = self.pg
        path = pg.write_passfile(self.path("pgpass"))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        for host in ("127.0.0.1", None):
            with self.subTest(host=host):
                p = pg.psql_proc("SELECT current_user", user=DBUSER, host=host,
                                 env={"PGPASSFILE": path})
                self.assertEqual((p.returncode, p.stdout.strip()), (0, DBUSER), p.stderr)
        # libpq ignores a password file others may read (and says so).
        os.chmod(path, 0o644)
        p = pg.psql_proc("SELECT 1", user=DBUSER, host="127.0.0.1", env={"PGPASSFILE": path})
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("group or world access", p.stderr)
        # A socket needs its directory in the host field ("localhost" would not match).
        with open(path, "w") as f:
            f.write(pf.passfile_line("localhost", pg.port, "*", DBUSER, DBPASSWORD))
        os.chmod(path, 0o600)
        p = pg.psql_proc("SELECT 1", user=DBUSER, env={"PGPASSFILE": path})
        self.assertIn("no password supplied", p.stderr)

    def test_uri_and_conninfo(self):
        pg = self.pg
        cases = [(DBUSER, DBPASSWORD, "127.0.0.1"), (DBUSER, DBPASSWORD, None),
                 ("postgres", None, None)]
        env = dict(pf._clean_env(), LC_ALL="C.UTF-8")           # no PG* at all
        for user, password, host in cases:
            for dsn in (pg.uri(user, password, host), pg.conninfo(user, password, host)):
                with self.subTest(dsn=dsn):
                    p = subprocess.run([pf.PSQL, "-X", "-w", "-A", "-t", "-c",
                                        "SELECT current_user || ' ' || current_database()", dsn],
                                       capture_output=True, text=True, env=env, timeout=30)
                    self.assertEqual((p.returncode, p.stdout.strip()), (0, user + " dbx"), p.stderr)
        self.assertIn("s3cret%20pass%27word@127.0.0.1", pg.uri(DBUSER, DBPASSWORD, "127.0.0.1"))
        self.assertIn("@/dbx?host=" + pg.sockdir, pg.uri())

    def test_copy_out_round_trip(self):
        pg = self.pg
        values = ["tab\there", "two\nlines", "cr\rlf", "back\\slash", "\\N", "\\", "",
                  "ünïcødé ✓ 😀", "quote'\"", " lead and trail ", "end\\", "\x01ctl\x7f"]
        sql = "CREATE TABLE rt(id int, v text, w text);\n" + "".join(
            "INSERT INTO rt VALUES (%d, %s, %s);\n" % (i, pf.quote_literal(v), pf.quote_literal(v))
            for i, v in enumerate(values)) + "INSERT INTO rt VALUES (99, NULL, '');\n"
        pg.psql(sql)
        self.addCleanup(pg.psql, "DROP TABLE rt")
        got = pg.copy_out("SELECT id::text, v, w FROM rt ORDER BY rt.id;")
        want = [(str(i), v, v) for i, v in enumerate(values)] + [("99", None, "")]
        self.assertEqual(got, want)
        self.assertEqual(pg.rows("SELECT count(*) FROM rt"), [(str(len(values) + 1),)])
        self.assertEqual(pg.copy_out("SELECT 1 WHERE false"), [])

    def test_kill_immediate_then_restart_keeps_commits(self):
        pg = self.pg
        pg.psql("CREATE TABLE kept(x int); INSERT INTO kept SELECT generate_series(1, 5000);",
                user=DBUSER, password=DBPASSWORD)
        port, pid = pg.port, pg._pid
        pg.kill_immediate()
        self.assertFalse(pg.running)
        self.assertFalse(pf._alive(pid))
        p = pg.psql_proc("SELECT 1")
        self.assertNotEqual(p.returncode, 0)
        pg.restart()
        self.assertEqual(pg.port, port)
        self.assertEqual(pg.value("SELECT sum(x) FROM kept"), str(5000 * 5001 // 2))
        self.assertIn("not properly shut down", pf._tail(pg.log, 200))
        pg.psql("DROP TABLE kept")


class Chopper:
    """A TCP relay that passes everything on in pieces of 1 to 7 bytes (TCP_NODELAY), so that
    the proxy's reads end in the middle of messages."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.socks = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            s = socket.create_connection(self.target)
            for x in (c, s):
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks += [c, s]
            for a, b, seed in ((c, s, 1), (s, c, 2)):
                threading.Thread(target=self.pump, args=(a, b, random.Random(seed)),
                                 daemon=True).start()

    @staticmethod
    def pump(a, b, rnd):
        try:
            while True:
                data = a.recv(4096)
                if not data:
                    break
                i = 0
                while i < len(data):
                    n = rnd.randint(1, 7)
                    b.sendall(data[i:i + n])
                    i += n
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        try:
            self.ls.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ls.close()
        for x in self.socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()


@unittest.skipUnless(OK, WHY)
class Proxy(PgTest):
    TXN = "BEGIN;\nCREATE TABLE %s(x int);\nINSERT INTO %s VALUES (1);\nCOMMIT;\n"

    def run_through(self, port, sql, timeout=60):
        argv, env = client_env(self.pg, port)
        return subprocess.run(argv, input=sql, capture_output=True, text=True, env=env,
                              timeout=timeout)

    def start_through(self, port, sql):
        """psql in the background, reading sql (from a file)."""
        argv, env = client_env(self.pg, port)
        script = self.write("script-%d.sql" % len(os.listdir(self.tmp)), sql)
        with open(script) as stdin:
            p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.communicate()))
        return p

    def finish(self, p, timeout=30):
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def table_exists(self, name):
        return self.pg.value("SELECT to_regclass(%s) IS NOT NULL" % pf.quote_literal(name)) == "t"

    def test_transparent(self):
        px = self.proxy()
        p = self.run_through(px.port,
                             "SELECT 'a' || chr(9) || 'b', 6*7;\nSELECT 1 AS one \\gdesc\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, "a\tb|42\none|integer\n")
        self.assertEqual(px.connections, 1)
        self.assertEqual(px.ssl_requests, 1)      # libpq's sslmode=prefer asks; the server says N
        self.assertEqual(px.queries[0], "SELECT 'a' || chr(9) || 'b', 6*7;")
        self.assertGreaterEqual(px.client_msgs["P"], 1)   # \gdesc: Parse/Describe/Sync, then
        self.assertIn("format_type", px.queries[1])       # a query to name the types
        self.assertEqual(px.fired, [])

    def test_extended_protocol_commit_does_not_trigger(self):
        px = self.proxy()
        px.hold_at_commit()
        p = self.run_through(px.port, "BEGIN;\nCOMMIT \\gdesc\nROLLBACK;\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertFalse(px.wait_held(0.2))
        self.assertEqual(px.queries[0], "BEGIN;")
        self.assertEqual(px.queries[-1], "ROLLBACK;")
        self.assertNotIn("COMMIT", " ".join(px.queries))
        px.reset()

    def test_drop_reply_after_commit(self):
        px = self.proxy()
        px.drop_reply_after_commit()
        p = self.run_through(px.port, self.TXN % ("t_drop", "t_drop"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(LOST, p.stderr)
        self.assertEqual(px.fired, [("drop_reply", "COMMIT;")])
        self.assertEqual(self.pg.copy_out("SELECT x FROM t_drop"), [("1",)])   # committed
        # One-shot: the next transaction through the proxy is answered.
        p = self.run_through(px.port, "BEGIN; INSERT INTO t_drop VALUES (2); END;")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.pg.value("SELECT sum(x) FROM t_drop"), "3")
        self.assertEqual(px.connections, 2)

    def test_hold_at_commit_then_release(self):
        px = self.proxy()
        px.hold_at_commit()
        p = self.start_through(px.port, self.TXN % ("t_rel", "t_rel"))
        self.assertTrue(px.wait_held(15), "no COMMIT held")
        self.assertFalse(self.table_exists("t_rel"))          # not committed yet
        self.assertTrue(px.release())
        self.assertEqual(self.finish(p), (0, "", ""))
        self.assertTrue(self.table_exists("t_rel"))
        self.assertFalse(px.release())                         # nothing held any more

    def test_hold_at_commit_kill_drop_loses_the_transaction(self):
        px = self.proxy()
        px.hold_at_commit()
        p = self.start_through(px.port, self.TXN % ("t_lost", "t_lost"))
        self.assertTrue(px.wait_held(15), "no COMMIT held")
        self.pg.kill_immediate()
        self.assertTrue(px.release(drop=True))
        rc, _, err = self.finish(p)
        self.assertEqual(rc, 2, err)
        self.pg.restart()
        self.assertFalse(self.table_exists("t_lost"))
        self.assertEqual(px.fired, [("hold_query", "COMMIT;")])

    def copy_setup(self, table, n):
        self.pg.psql("CREATE TABLE %s(i int, s text)" % table, user=DBUSER, password=DBPASSWORD)
        data = self.write(table + ".tsv",
                          "".join("%d\tzeile %d ü\\tx\n" % (i, i) for i in range(n)))
        return "\\copy %s FROM '%s'\n" % (table, data)

    def test_hold_at_copy_data_then_release(self):
        px = self.proxy()
        script = self.copy_setup("t_copy", 20000)
        px.hold_at_copy_data()
        p = self.start_through(px.port, script)
        self.assertTrue(px.wait_held(15), "no CopyData held")
        self.assertRegex(px.queries[0], r"^COPY\s+t_copy FROM STDIN\s*$")   # psql's \copy
        self.assertEqual(self.pg.value("SELECT count(*) FROM t_copy"), "0")
        px.release()
        self.assertEqual(self.finish(p), (0, "", ""))
        self.assertEqual(self.pg.copy_out("SELECT count(*), max(s) FROM t_copy"),
                         [("20000", "zeile 9999 ü\tx")])
        self.assertGreater(px.client_msgs["d"], 1)

    def test_hold_at_copy_data_kill_drop(self):
        px = self.proxy()
        script = self.copy_setup("t_copy_lost", 20000)
        px.hold_at_copy_data()
        p = self.start_through(px.port, script)
        self.assertTrue(px.wait_held(15), "no CopyData held")
        self.pg.kill_immediate()
        px.release(drop=True)
        rc, _, err = self.finish(p)
        self.assertNotEqual(rc, 0, err)
        self.pg.restart()
        self.assertTrue(self.table_exists("t_copy_lost"))     # committed before the COPY
        self.assertEqual(self.pg.value("SELECT count(*) FROM t_copy_lost"), "0")

    def test_cut_all(self):
        px = self.proxy()
        p = self.start_through(px.port, "SELECT pg_sleep(60);\n")
        deadline = time.monotonic() + 15
        while not px.queries and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(px.cut_all(), 1)
        t0 = time.monotonic()
        rc, _, err = self.finish(p, timeout=15)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(rc, 2, err)
        self.assertIn(LOST, err)
        # The backend sleeps on (it does not read its socket); end it.
        self.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE query LIKE 'SELECT pg_sleep(60)%'")

    def test_messages_cut_anywhere(self):
        # psql -> chopper -> proxy -> chopper -> server: both directions arrive in scraps.
        back = Chopper(self.pg.port)
        self.addCleanup(back.close)
        px = self.proxy(target=("127.0.0.1", back.port))
        front = Chopper(px.port)
        self.addCleanup(front.close)
        px.drop_reply_after_commit()
        script = self.copy_setup("t_chop", 300) + \
            "SELECT count(*) FROM t_chop;\n" + self.TXN % ("t_chop2", "t_chop2")
        p = self.run_through(front.port, script)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertEqual(p.stdout, "300\n")
        self.assertIn(LOST, p.stderr)
        self.assertEqual(px.fired, [("drop_reply", "COMMIT;")])
        self.assertEqual(self.pg.copy_out("SELECT x FROM t_chop2"), [("1",)])
        self.assertEqual(px.ssl_requests, 1)


if __name__ == "__main__":
    unittest.main()
