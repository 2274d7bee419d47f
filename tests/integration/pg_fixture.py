"""pg_fixture.py -- a throwaway PostgreSQL 15 server and a fault-injecting proxy for the
tests of dbatch's PostgreSQL sink.  Standard library only; queries go through the psql binary.

  PgServer     initdb + postgres as the postgres user (runuser), on a private unix socket
               directory and on 127.0.0.1 at one free port (the same number for both).
               Role DBUSER (password DBPASSWORD, LOGIN CREATEDB) owns database DBNAME.
  PgProxy      a TCP proxy in front of it that frames the PostgreSQL protocol and can drop
               the reply to a COMMIT, hold a COMMIT or the first CopyData, or cut everything.
  PgTest       a TmpTest with one PgServer per test class in cls.pg (skipped where the server
               cannot run), restarted before a test if an earlier one left it stopped.

    with PgServer() as pg:
        pg.psql("CREATE TABLE t(x int)")
        with PgProxy(pg) as px:
            px.drop_reply_after_commit()
            subprocess.run([PSQL, "-X", "-w", "-f", script], env=pg.env("dbuser", DBPASSWORD,
                           host="127.0.0.1", port=px.port))
        pg.copy_out("SELECT x FROM t")            # -> [("1",)], None for NULL

Authentication (pg_hba.conf):  local all postgres trust;  local all dbuser scram-sha-256;
host all all 127.0.0.1/32 scram-sha-256.  So the postgres superuser works over the socket
only, and anything through the proxy (TCP) logs in as dbuser with its password.

The server runs with fsync=off but synchronous_commit on: a commit's WAL is written to the
kernel before the client hears of it, so kill_immediate() (a crash of PostgreSQL, not of the
machine) never loses a commit a client was told about, and restart() recovers it.

Cleanup: stop() (idempotent) removes the server and its directory; __exit__ and an atexit
hook call it, and a small watchdog process started with the server does the same if the
test process dies without running either (SIGKILL, a CTest timeout).
"""

import atexit
import collections
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dbx import TmpTest, free_port, log_tail, pid_alive  # noqa: E402

PGBIN = os.environ.get("DBX_PGBIN", "/usr/lib/postgresql/15/bin")
PG_OS_USER = "postgres"
DBUSER = "dbuser"
DBPASSWORD = "s3cret pass'word"          # a quote and a space: callers must quote it properly
DBNAME = "dbx"
START_TIMEOUT = 30                        # seconds a start or a stop may take

# Protocol codes of the packets that come before the StartupMessage (no type byte).
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
# A simple Query that ends a transaction; a trailing semicolon (psql sends one) is allowed.
COMMIT_RE = re.compile(r"\s*(?:COMMIT|END)(?:\s+(?:WORK|TRANSACTION))?\s*;?\s*", re.I)


class FixtureError(RuntimeError):
    """The server or the proxy could not do what was asked; the message names what failed."""


class PsqlError(FixtureError):
    """psql failed; .returncode, .stdout and .stderr (text) say how."""

    def __init__(self, msg, proc):
        super().__init__(msg)
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------
# small helpers

def quote_literal(s):
    """s as an SQL string literal (standard_conforming_strings is on: only ' is doubled)."""
    return "'" + str(s).replace("'", "''") + "'"


def quote_ident(s):
    """s as a double-quoted SQL identifier."""
    return '"' + str(s).replace('"', '""') + '"'


def conninfo_quote(v):
    """v as a value of a libpq key=value connection string."""
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def passfile_line(host, port, db, user, password):
    """A line of a libpq password file (~/.pgpass format: : and \\ escaped by \\).

    Note: for a unix socket, libpq matches the host field against the socket directory path;
    only the compiled-in default directory also matches "localhost".  "*" matches anything.
    """
    def esc(v):
        v = str(v)
        return v if v == "*" else v.replace("\\", "\\\\").replace(":", "\\:")
    return ":".join(esc(v) for v in (host, port, db, user, password)) + "\n"


def parse_copy_text(data):
    """Rows of PostgreSQL's COPY text format (bytes) as a list of tuples of str, None for \\N.

    Fields are split at tabs, rows at newlines; backslash escapes (\\b \\f \\n \\r \\t \\v, \\\\,
    octal \\NNN, hex \\xHH) are undone on the bytes before they are decoded as UTF-8."""
    simple = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}
    rows = data.split(b"\n") if data else []
    if rows and rows[-1] == b"":                  # the newline ending the last row
        rows.pop()
    if rows and rows[-1] == b"\\.":              # an end-of-data marker
        rows.pop()
    out = []
    for line in rows:
        fields = []
        for raw in line.split(b"\t"):
            if raw == b"\\N":
                fields.append(None)
                continue
            buf = bytearray()
            i, n = 0, len(raw)
            while i < n:
                c = raw[i]
                if c != 0x5C or i + 1 >= n:          # not a backslash (or a lone one at the end)
                    buf.append(c)
                    i += 1
                    continue
                e = raw[i + 1]
                if e in simple:
                    buf.append(simple[e])
                    i += 2
                elif 0x30 <= e <= 0x37:                # \NNN octal, 1 to 3 digits
                    j = i + 1
                    while j < n and j < i + 4 and 0x30 <= raw[j] <= 0x37:
                        j += 1
                    buf.append(int(raw[i + 1:j], 8) & 0xFF)
                    i = j
                elif e == ord("x") and i + 2 < n and chr(raw[i + 2]) in "0123456789abcdefABCDEF":
                    j = i + 2
                    while j < n and j < i + 4 and chr(raw[j]) in "0123456789abcdefABCDEF":
                        j += 1
                    buf.append(int(raw[i + 2:j], 16))
                    i = j
                else:                                  # \\ and any other escaped byte: itself
                    buf.append(e)
                    i += 2
            fields.append(buf.decode("utf-8"))
        out.append(tuple(fields))
    return out


_tail = log_tail  # dbx.py: the fixtures share them
_alive = pid_alive


def _children(pid):
    """The pids whose parent is pid (read from /proc)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d, "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _clean_env(base=None):
    """os.environ (or base) without any PG* variable that could point a client elsewhere."""
    return {k: v for k, v in (os.environ if base is None else base).items()
            if not k.startswith("PG")}


def available():
    """(True, "") when PgServer can run here, else (False, the reason to skip)."""
    if os.geteuid() != 0:
        return False, "needs root (the server runs as the postgres user, via runuser)"
    if not shutil.which("runuser"):
        return False, "runuser is missing (util-linux)"
    for tool in ("initdb", "postgres", "pg_ctl", "psql"):
        if not os.access(os.path.join(PGBIN, tool), os.X_OK):
            return False, "%s is missing (postgresql-15)" % os.path.join(PGBIN, tool)
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        return False, "no %s user" % PG_OS_USER
    return True, ""


PSQL = os.path.join(PGBIN, "psql")

# The watchdog: waits for EOF on stdin (the test process closed the pipe or died), then
# stops whatever server still runs on the data directory and removes the directory.
_WATCHDOG = r"""
import os, shutil, signal, subprocess, sys
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
sys.stdin.buffer.read()
runuser, pg_ctl, data, base = sys.argv[1:5]
if os.path.exists(os.path.join(data, "postmaster.pid")):
    subprocess.run([runuser, "-u", "postgres", "--", pg_ctl, "-D", data, "-m", "immediate",
                    "-w", "-t", "20", "stop"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd="/", timeout=40)
shutil.rmtree(base, ignore_errors=True)
"""

_live = set()                    # started PgServers not yet stopped, for the atexit hook
_live_lock = threading.Lock()


@atexit.register
def _stop_all():
    with _live_lock:
        servers = list(_live)
    for s in servers:
        s.stop(raise_errors=False)


# ---------------------------------------------------------------------------------------
# PgServer

class PgServer:
    """A throwaway PostgreSQL server.  start() / stop(), or use it in a with-statement.

    Attributes (set by start()): base (the temporary directory), datadir, sockdir, log (the
    server log file), port (TCP on 127.0.0.1 and the unix socket .s.PGSQL.<port>), bin.
    """

    def __init__(self, bindir=PGBIN):
        self.bin = bindir
        self.base = self.datadir = self.sockdir = self.log = None
        self.port = None
        self._proc = None              # runuser, the postmaster's parent (our child)
        self._pid = None               # the postmaster's pid
        self._watchdog = None
        self._stopped = False
        self._lock = threading.Lock()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop(raise_errors=exc_type is None)

    def __repr__(self):
        return "PgServer(port=%s, base=%s)" % (self.port, self.base)

    # -- lifecycle

    def start(self):
        """initdb, configure, start, create DBUSER and DBNAME.  On failure remove everything
        made so far and raise FixtureError (with the end of the server log)."""
        ok, reason = available()
        if not ok:
            raise FixtureError("PgServer cannot run here: " + reason)
        if self.base is not None:
            raise FixtureError("PgServer.start() called twice; use restart()")
        try:
            self._setup()
        except BaseException:
            self.stop(raise_errors=False)
            raise
        return self

    def _setup(self):
        pg = pwd.getpwnam(PG_OS_USER)
        # The socket path (base/sock/.s.PGSQL.NNNNN) must fit in 107 bytes: a long TMPDIR
        # would make the server refuse it, so fall back to /tmp then.
        parent = tempfile.gettempdir()
        self.base = tempfile.mkdtemp(prefix="dbx-pg-", dir=parent if len(parent) < 64 else "/tmp")
        os.chmod(self.base, 0o711)                   # postgres may pass through, not list
        with _live_lock:
            _live.add(self)
        self.datadir = os.path.join(self.base, "data")
        self.sockdir = os.path.join(self.base, "sock")
        logdir = os.path.join(self.base, "log")
        self.log = os.path.join(logdir, "postgresql.log")
        for d, mode in ((self.datadir, 0o700), (self.sockdir, 0o755), (logdir, 0o755)):
            os.mkdir(d)
            os.chown(d, pg.pw_uid, pg.pw_gid)
            os.chmod(d, mode)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, shutil.which("runuser"),
             os.path.join(self.bin, "pg_ctl"), self.datadir, self.base],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/")
        self._as_postgres(["initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust",
                           "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
                          timeout=120)
        hba = os.path.join(self.datadir, "pg_hba.conf")
        with open(hba, "w") as f:
            f.write("# written by pg_fixture.py\n"
                    "local all postgres trust\n"
                    "local all %s scram-sha-256\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n" % DBUSER)
        os.chown(hba, pg.pw_uid, pg.pw_gid)
        for _ in range(5):                          # the free port may be taken meanwhile
            self.port = free_port()
            err = self._start_postmaster()
            if err is None:
                break
            if "could not bind" not in err and "could not create any TCP/IP" not in err:
                raise FixtureError("PostgreSQL did not start: " + err)
        else:
            raise FixtureError("PostgreSQL found no free port in 5 attempts:\n" + _tail(self.log))
        self.psql("CREATE ROLE %s LOGIN CREATEDB PASSWORD %s;\n"
                  "CREATE DATABASE %s OWNER %s;\n"
                  % (quote_ident(DBUSER), quote_literal(DBPASSWORD), quote_ident(DBNAME),
                     quote_ident(DBUSER)), db="postgres")

    def _as_postgres(self, argv, timeout=60, check=True):
        """Run a PostgreSQL tool (name in self.bin) as the postgres user; CompletedProcess."""
        cmd = ["runuser", "-u", PG_OS_USER, "--", os.path.join(self.bin, argv[0])] + argv[1:]
        env = _clean_env()
        env["LC_ALL"] = "C.UTF-8"
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                               cwd="/", stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FixtureError("%s: no answer within %g s" % (" ".join(cmd), timeout)) from None
        if check and p.returncode != 0:
            raise FixtureError("%s failed (exit %d): %s"
                               % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()))
        return p

    def _start_postmaster(self):
        """Start the postmaster on self.port and wait until it accepts connections; None when
        it runs, else an error text.  It runs as a child of runuser, itself our child, rather
        than under pg_ctl: a postmaster pg_ctl leaves behind is reparented to pid 1, which in
        some containers never reaps it (a zombie postgres after every stop)."""
        argv = ["runuser", "-u", PG_OS_USER, "--", os.path.join(self.bin, "postgres"),
                "-D", self.datadir, "-p", str(self.port), "-k", self.sockdir,
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        env = _clean_env()
        env["LC_ALL"] = "C.UTF-8"
        pidfile = os.path.join(self.datadir, "postmaster.pid")
        with open(self.log, "ab") as logf:
            pg = pwd.getpwnam(PG_OS_USER)
            os.chown(self.log, pg.pw_uid, pg.pw_gid)
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                          stderr=subprocess.STDOUT, env=env, cwd="/",
                                          start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return "the postmaster exited:\n" + _tail(self.log, 8)
            try:                        # as pg_ctl -w: line 8 of postmaster.pid says "ready"
                with open(pidfile) as f:
                    lines = f.read().split("\n")
                pid = int(lines[0])
                if len(lines) > 7 and lines[7].strip() == "ready" and \
                        pid in _children(self._proc.pid):
                    self._pid = pid
                    return None
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        self._signal_and_reap(signal.SIGQUIT)
        return "the postmaster was not ready within %d s:\n%s" % (START_TIMEOUT, _tail(self.log, 8))

    def _signal_and_reap(self, sig, timeout=START_TIMEOUT):
        """Send sig to the postmaster and wait until it (and runuser) exited; False if not."""
        proc, pid = self._proc, self._pid
        if proc is None:
            return True
        for victim in [pid] if pid is not None else _children(proc.pid):
            try:
                os.kill(victim, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._proc = self._pid = None
        return True

    @property
    def running(self):
        """True while the postmaster this fixture started is alive."""
        return self._proc is not None and self._proc.poll() is None and \
            self._pid is not None and _alive(self._pid)

    # Shutdown modes and the postmaster's signal for each (what pg_ctl stop -m sends).
    _MODES = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

    def shutdown(self, mode="fast"):
        """Stop the server as pg_ctl stop -m mode would (smart, fast or immediate) and wait
        for it; the data directory stays.  Raises FixtureError if it does not stop."""
        if not self._signal_and_reap(self._MODES[mode]):
            raise FixtureError("PostgreSQL did not stop (-m %s) within %d s:\n%s"
                               % (mode, START_TIMEOUT, _tail(self.log, 8)))

    def kill_immediate(self):
        """Crash PostgreSQL: an immediate shutdown (SIGQUIT, no checkpoint; restart() then
        runs crash recovery).  Everything committed stays: fsync is off, but the WAL of a
        commit reached the kernel before the client was told."""
        self.shutdown("immediate")

    def restart(self):
        """Start again on the same data directory and port (a fast stop first if running)."""
        if self._stopped or self.base is None:
            raise FixtureError("restart() of a PgServer that was stopped or never started")
        self.shutdown("fast")
        err = self._start_postmaster()
        if err is not None:
            raise FixtureError("PostgreSQL did not restart on port %d: %s" % (self.port, err))
        return self

    def stop(self, raise_errors=True):
        """Stop the server (fast, then immediate, then SIGKILL) and remove its directory.

        Safe to call twice, after kill_immediate(), and after a failed start().  Errors are
        collected; they raise FixtureError when raise_errors, else go to stderr."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        errors = []
        for mode in ("fast", "immediate"):
            if self._signal_and_reap(self._MODES[mode], timeout=20):
                break
            errors.append("no stop within 20 s (-m %s)" % mode)
        else:                                          # our postmaster and its children only
            pid = self._pid
            for victim in [pid] + _children(pid) if pid else []:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not self._signal_and_reap(signal.SIGKILL, timeout=10):
                errors.append("postmaster %s survived SIGKILL" % pid)
        self._pid = None
        if self._watchdog is not None:
            try:
                self._watchdog.stdin.close()           # EOF: it finds nothing left and exits
                self._watchdog.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                errors.append("watchdog: %s" % e)
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)
            if os.path.exists(self.base):
                errors.append("could not remove " + self.base)
        with _live_lock:
            _live.discard(self)
        if errors:
            msg = "%r stop: %s" % (self, "; ".join(errors))
            if raise_errors:
                raise FixtureError(msg)
            print(msg, file=sys.stderr)

    # -- clients

    def env(self, user="postgres", password=None, host=None, port=None, db=DBNAME, base=None):
        """Environment for a libpq client: os.environ (or base) without its PG* variables,
        plus PGHOST (the socket directory unless host), PGPORT (self.port unless port),
        PGUSER, PGDATABASE and, with a password, PGPASSWORD."""
        e = _clean_env(base)
        e.update(PGHOST=host or self.sockdir, PGPORT=str(port or self.port), PGUSER=user,
                 PGDATABASE=db)
        if password is not None:
            e["PGPASSWORD"] = password
        return e

    def uri(self, user="postgres", password=None, host=None, db=DBNAME, port=None):
        """A postgresql:// URI.  User, password and database are percent-encoded.  host None
        means the unix socket, given as a query parameter (libpq's form for a socket path):
        postgresql://postgres@/dbx?host=/tmp/dbx-pg-x/sock&port=N."""
        q = lambda s: urllib.parse.quote(str(s), safe="")  # noqa: E731
        auth = q(user) + (":" + q(password) if password is not None else "") + "@"
        if host is None:
            return "postgresql://%s/%s?host=%s&port=%d" % (
                auth, q(db), urllib.parse.quote(self.sockdir, safe="/"), port or self.port)
        h = "[%s]" % host if ":" in host else host
        return "postgresql://%s%s:%d/%s" % (auth, h, port or self.port, q(db))

    def conninfo(self, user="postgres", password=None, host=None, db=DBNAME, port=None):
        """The same as uri() as a key=value string (values quoted for libpq)."""
        kv = [("host", host or self.sockdir), ("port", port or self.port), ("user", user),
              ("dbname", db)]
        if password is not None:
            kv.append(("password", password))
        return " ".join("%s=%s" % (k, conninfo_quote(v)) for k, v in kv)

    def psql_command(self, user="postgres", db=DBNAME, password=None, host=None, port=None,
                     args=(), env=None):
        """(argv, env) of psql -X -w -q -A -t -v ON_ERROR_STOP=1 -f - (the SQL goes to its
        stdin, so each statement is its own Query message and backslash commands work),
        connecting as self.env(...) says; env: extra variables.  For a psql run in the
        background (subprocess.Popen(argv, env=env, stdin=PIPE, ...))."""
        e = self.env(user, password, host, port, db)
        e.update(PGCLIENTENCODING="UTF8", PGCONNECT_TIMEOUT="10", LC_ALL="C.UTF-8")
        e.update(env or {})
        return [PSQL, "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args, "-f", "-"], e

    def psql_proc(self, sql, user="postgres", db=DBNAME, password=None, host=None, port=None,
                  args=(), env=None, timeout=60):
        """Run sql through psql (see psql_command); the CompletedProcess (text), whether psql
        failed or not."""
        argv, e = self.psql_command(user, db, password, host, port, args, env)
        try:
            return subprocess.run(argv, input=sql, capture_output=True, text=True,
                                  encoding="utf-8", errors="replace", env=e, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FixtureError("psql: no answer within %g s (sql %.200r)"
                               % (timeout, sql)) from None

    def psql(self, sql, user="postgres", db=DBNAME, check=True, password=None, host=None,
             port=None, timeout=60):
        """Run sql through psql (see psql_proc); its stdout.  check: raise PsqlError if it fails."""
        p = self.psql_proc(sql, user=user, db=db, password=password, host=host, port=port,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise PsqlError("psql as %s on %s failed (exit %d): %s\n(sql: %.300r)"
                            % (user, db, p.returncode, p.stderr.strip(), sql), p)
        return p.stdout

    def copy_out(self, query, user="postgres", db=DBNAME, password=None):
        """Rows of query (COPY (query) TO STDOUT, text format) as a list of tuples of str,
        None for NULL; tabs, newlines, backslashes and any UTF-8 come back exactly."""
        query = query.strip().rstrip(";").rstrip()
        e = self.env(user, password, None, None, db)
        e.update(PGCLIENTENCODING="UTF8", PGCONNECT_TIMEOUT="10", LC_ALL="C.UTF-8")
        p = subprocess.run([PSQL, "-X", "-w", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                            "COPY (%s) TO STDOUT" % query], capture_output=True, env=e,
                           timeout=120, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise FixtureError("COPY (%s) TO STDOUT failed (exit %d): %s"
                               % (query[:300], p.returncode, p.stderr.decode(errors="replace")))
        return parse_copy_text(p.stdout)

    rows = copy_out

    def value(self, query, **kw):
        """The single value of a one-row, one-column query (None for NULL)."""
        r = self.copy_out(query, **kw)
        if len(r) != 1 or len(r[0]) != 1:
            raise FixtureError("%r gave %d rows, not one value: %r" % (query, len(r), r[:5]))
        return r[0][0]

    def create_db(self, name, owner=DBUSER):
        """A new database owned by owner; its name."""
        self.psql("CREATE DATABASE %s OWNER %s" % (quote_ident(name), quote_ident(owner)),
                  db="postgres")
        return name

    def write_passfile(self, path, user=DBUSER, password=DBPASSWORD, db="*", mode=0o600):
        """A libpq password file for user at path (lines for 127.0.0.1 and the socket
        directory, this port), chmod mode; its path."""
        with open(path, "w") as f:
            for host in ("127.0.0.1", self.sockdir):
                f.write(passfile_line(host, self.port, db, user, password))
        os.chmod(path, mode)
        return path


# ---------------------------------------------------------------------------------------
# protocol framing (used by PgProxy; pure, so it is tested on its own)

class FrontendFramer:
    """Splits the client's byte stream into packets, however recv() cut it.

    feed(data) returns a list of (kind, bytes): kind "ssl", "gssenc", "cancel" or "startup"
    for the length-prefixed packets before the protocol proper, a one-character message
    type ("Q", "P", "d", ...) afterwards, or "raw" for bytes passed on unparsed (after TLS or
    GSS encryption was agreed, or a stream that does not look like PostgreSQL)."""

    def __init__(self):
        self.buf = bytearray()
        self.startup = True
        self.transparent = False

    def go_transparent(self):
        """Stop parsing; returns what was buffered (as a "raw" item list)."""
        self.transparent = True
        rest, self.buf = bytes(self.buf), bytearray()
        return [("raw", rest)] if rest else []

    def feed(self, data):
        if self.transparent:
            return [("raw", bytes(data))] if data else []
        self.buf += data
        out, off, buf = [], 0, self.buf
        while True:
            avail = len(buf) - off
            if self.startup:
                if avail == 0:
                    return self._consume(out, off)
                if buf[off] == 0x16:                          # a TLS ClientHello (direct SSL)
                    break
                if avail < 8:
                    return self._consume(out, off)
                n, code = struct.unpack_from("!ii", buf, off)
                if n < 8 or n > 1 << 20:
                    break
                if avail < n:
                    return self._consume(out, off)
                pkt = bytes(buf[off:off + n])
                off += n
                kind = {SSL_REQUEST: "ssl", GSSENC_REQUEST: "gssenc",
                        CANCEL_REQUEST: "cancel"}.get(code, "startup")
                out.append((kind, pkt))
                if kind == "cancel":
                    self._consume(out, off)
                    return out + self.go_transparent()
                if kind == "startup":
                    self.startup = False
            else:
                if avail < 5:
                    return self._consume(out, off)
                n = struct.unpack_from("!i", buf, off + 1)[0]
                if n < 4:
                    break
                if avail < 1 + n:
                    return self._consume(out, off)
                out.append((chr(buf[off]), bytes(buf[off:off + 1 + n])))
                off += 1 + n
        # Not PostgreSQL framing (TLS, garbage): pass everything on as it comes.
        self._consume(out, off)
        return out + self.go_transparent()

    def _consume(self, out, off):
        del self.buf[:off]
        return out


class BackendFramer:
    """Splits the server's byte stream into messages (1 type byte + int32 length).

    expect_single_byte() announces that the client sent an SSLRequest or GSSENCRequest: the
    next server byte is a bare answer, returned as ("answer", b"N"); an "S" or "G" answer
    (encryption follows) or an error makes the rest "raw", unparsed."""

    def __init__(self):
        self.buf = bytearray()
        self.single = 0
        self.transparent = False

    def expect_single_byte(self):
        self.single += 1

    def feed(self, data):
        if self.transparent:
            return [("raw", bytes(data))] if data else []
        self.buf += data
        out, off, buf = [], 0, self.buf
        while True:
            avail = len(buf) - off
            if self.single:
                if avail < 1:
                    break
                b = bytes(buf[off:off + 1])
                off += 1
                self.single -= 1
                out.append(("answer", b))
                if b != b"N":
                    self.transparent = True
                    rest = bytes(buf[off:])
                    self.buf = bytearray()
                    return out + ([("raw", rest)] if rest else [])
                continue
            if avail < 5:
                break
            n = struct.unpack_from("!i", buf, off + 1)[0]
            if n < 4:
                self.transparent = True
                rest = bytes(buf[off:])
                self.buf = bytearray()
                return out + [("raw", rest)]
            if avail < 1 + n:
                break
            out.append((chr(buf[off]), bytes(buf[off:off + 1 + n])))
            off += 1 + n
        del self.buf[:off]
        return out


# ---------------------------------------------------------------------------------------
# PgProxy

class _Hold:
    """A client message kept back by a hold_* mode until PgProxy.release()."""

    def __init__(self, conn, mode, msg, sql):
        self.conn, self.mode, self.msg, self.sql = conn, mode, msg, sql
        self.done = threading.Event()
        self.drop = False


class _Conn:
    """One client connection and its server connection; two pumping threads."""

    def __init__(self, proxy, csock, ssock, n):
        self.proxy, self.c, self.s, self.n = proxy, csock, ssock, n
        self.lock = threading.Lock()
        self.fe, self.be = FrontendFramer(), BackendFramer()
        self.closed = False
        self.hold = None
        self.z_expected = 0        # ReadyForQuery messages the client's messages will cause
        self.z_seen = 0
        self.drop_at = None        # the ReadyForQuery number ending the reply to drop
        self.drop_sql = None
        self._running = 2
        self.threads = [threading.Thread(target=self._pump, args=(f,), daemon=True,
                                         name="pgproxy-%d-%s" % (n, f.__name__))
                        for f in (self._client_to_server, self._server_to_client)]

    def start(self):
        for t in self.threads:
            t.start()

    def close(self):
        """Shut both sockets down (wakes both threads); the last thread closes them."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            hold = self.hold
        for sock in (self.c, self.s):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if hold is not None:
            hold.done.set()

    def _pump(self, f):
        try:
            f()
        except OSError:
            pass
        finally:
            self.close()
            with self.lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self.c.close()
                self.s.close()
                self.proxy._forget(self)

    def _client_to_server(self):
        px = self.proxy
        while True:
            data = self.c.recv(65536)
            if not data:
                return
            with self.lock:
                items = self.fe.feed(data)
            out = bytearray()
            for kind, msg in items:
                hold = drop = None
                if kind in ("ssl", "gssenc"):
                    with self.lock:
                        self.be.expect_single_byte()
                    with px._lock:
                        px.ssl_requests += kind == "ssl"
                        px.gssenc_requests += kind == "gssenc"
                elif kind == "startup":
                    with self.lock:
                        self.z_expected += 1       # the ReadyForQuery after authentication
                elif kind == "raw":
                    pass
                else:
                    sql = None
                    if kind == "Q":
                        sql = msg[5:].split(b"\0", 1)[0].decode("utf-8", "replace")
                    with px._lock:
                        px.client_msgs[kind] += 1
                        if sql is not None:
                            px.queries.append(sql)
                    if kind == "Q":
                        hold = px._claim("hold_query", sql, msg, self)
                    elif kind == "d":
                        hold = px._claim("hold_copy_data", None, msg, self)
                if hold is not None:
                    self._send_server(out)
                    out = bytearray()
                    hold.done.wait()
                    if hold.drop or self.closed:
                        return
                if kind == "Q":
                    drop = px._claim("drop_reply", sql)
                if drop is not None:
                    with self.lock:
                        self.drop_at = self.z_expected + 1
                        self.drop_sql = drop
                if kind in ("Q", "S", "F"):       # Query, Sync, FunctionCall: one 'Z' each
                    with self.lock:
                        self.z_expected += 1
                out += msg
            self._send_server(out)

    def _send_server(self, out):
        if out:
            self.s.sendall(out)

    def _server_to_client(self):
        px = self.proxy
        while True:
            data = self.s.recv(65536)
            if not data:
                return
            out = bytearray()
            with self.lock:
                items = self.be.feed(data)
            for kind, msg in items:
                if kind == "answer" and msg != b"N":
                    with self.lock:               # encryption follows: stop parsing
                        rest = b"".join(m for _, m in self.fe.go_transparent())
                    if rest:                      # (the client waits for the answer: empty)
                        self.s.sendall(rest)
                if len(kind) == 1 and kind != "Z" and self._dropping():
                    continue
                if kind == "Z":
                    with self.lock:
                        self.z_seen += 1
                        z, at, sql = self.z_seen, self.drop_at, self.drop_sql
                    if at is not None and z >= at:
                        # The whole reply came and is withheld: the client never hears.
                        self._send_client(out)
                        with px._lock:
                            px.fired.append(("drop_reply", sql))
                        return
                out += msg
            self._send_client(out)

    def _dropping(self):
        with self.lock:
            return self.drop_at is not None and self.z_seen + 1 >= self.drop_at

    def _send_client(self, out):
        if out:
            self.c.sendall(out)


class PgProxy:
    """A TCP proxy on 127.0.0.1:port in front of a PgServer's TCP port (or target, a
    (host, port) pair or a unix socket path), byte-transparent until a fault is armed.

    Faults, each armed once (one-shot) and fired by the next matching event on any
    connection; arm again for another:
      drop_reply_after_commit()  forward a simple-Query COMMIT/END, read the server's whole
                                 reply (to ReadyForQuery), then close the client's
                                 connection without it: committed, but the client never hears.
      hold_at_commit()           keep a simple-Query COMMIT/END back until release();
      hold_at_copy_data()        the same for the first CopyData message from a client.
      release(drop=False)        forward what is held, or (drop=True) close both sides.
      wait_held(timeout)         True once something is being held.
      cut_all()                  close every open connection now.
    drop_reply_after_query(rx) and hold_at_query(rx) take any regex the whole Query text
    must match.  Only simple Query messages ('Q', what PQexec sends) match; the extended
    protocol (Parse/Bind/Execute) passes through untouched.  SSLRequest/GSSENCRequest are
    forwarded and their one-byte answer too ('N' here: the server has no TLS); after an 'S'
    a connection is relayed unparsed.

    Counters: connections (accepted), queries (every simple Query text, in order),
    client_msgs (Counter of client message types), ssl_requests, gssenc_requests,
    fired (list of (fault, sql) in the order they fired: "drop_reply" once the reply was
    withheld and the connection closed, "hold_query" / "hold_copy_data" when the hold began;
    sql None for CopyData).
    """

    def __init__(self, server=None, target=None):
        if target is None:
            if server is None:
                raise ValueError("PgProxy needs a server or a target")
            target = ("127.0.0.1", server.port)
        self.target = target
        self.port = None
        self.connections = 0
        self.queries = []
        self.client_msgs = collections.Counter()
        self.ssl_requests = self.gssenc_requests = 0
        self.fired = []
        self._lock = threading.Lock()
        self._armed = {}              # mode -> regex (or None)
        self._held = None
        self._held_event = threading.Event()
        self._conns = set()
        self._listener = None
        self._thread = None
        self._closed = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def start(self):
        """Listen on 127.0.0.1 at a free port (self.port) and start accepting."""
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="pgproxy-accept-%d" % self.port)
        self._thread.start()
        return self

    def _connect_target(self):
        if isinstance(self.target, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(self.target)
        else:
            s = socket.create_connection(self.target, timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(None)
        return s

    def _accept_loop(self):
        while not self._closed:
            try:
                c, _ = self._listener.accept()
            except OSError:
                return
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                n = self.connections
            try:
                s = self._connect_target()
            except OSError:
                c.close()                  # the server is down: the client sees it closed
                continue
            conn = _Conn(self, c, s, n)
            with self._lock:
                if self._closed:
                    c.close()
                    s.close()
                    return
                self._conns.add(conn)
            conn.start()

    def _forget(self, conn):
        with self._lock:
            self._conns.discard(conn)

    # -- faults

    def _arm(self, mode, regex):
        with self._lock:
            self._armed[mode] = re.compile(regex, re.I) if isinstance(regex, str) else regex

    def drop_reply_after_query(self, regex):
        """Arm: drop the reply to the next simple Query whose whole text matches regex."""
        self._arm("drop_reply", regex)

    def drop_reply_after_commit(self):
        """Arm: the next COMMIT/END commits, but its client's connection closes unanswered."""
        self._arm("drop_reply", COMMIT_RE)

    def hold_at_query(self, regex):
        """Arm: hold the next simple Query whose whole text matches regex."""
        self._arm("hold_query", regex)

    def hold_at_commit(self):
        """Arm: hold the next COMMIT/END until release()."""
        self._arm("hold_query", COMMIT_RE)

    def hold_at_copy_data(self):
        """Arm: hold the next CopyData ('d') message any client sends (the first of a COPY
        FROM STDIN: its connection stops there, the COPY in flight) until release()."""
        self._arm("hold_copy_data", None)

    def _claim(self, mode, sql, msg=None, conn=None):
        """Fire mode if armed and matching: for drop_reply the sql, for a hold a _Hold."""
        with self._lock:
            if mode not in self._armed:
                return None
            rx = self._armed[mode]
            if rx is not None and not rx.fullmatch(sql or ""):
                return None
            del self._armed[mode]
            if mode == "drop_reply":
                return sql
            hold = _Hold(conn, mode, msg, sql)
            self._held = hold
            self.fired.append((mode, sql))
        with conn.lock:
            conn.hold = hold
            closed = conn.closed
        if closed:
            hold.done.set()
        self._held_event.set()
        return hold

    def wait_held(self, timeout=10):
        """True once a COMMIT (or CopyData) is being held, False after timeout seconds."""
        return self._held_event.wait(timeout)

    def release(self, drop=False):
        """Forward the held message, or with drop=True close both sides of its connection.
        False if nothing was held (a hold whose connection died meanwhile still counts)."""
        with self._lock:
            hold, self._held = self._held, None
            self._held_event.clear()
        if hold is None:
            return False
        hold.drop = drop
        if drop:
            hold.conn.close()
        hold.done.set()
        return True

    def reset(self):
        """Disarm every fault; forward anything held."""
        with self._lock:
            self._armed.clear()
        self.release()

    def cut_all(self):
        """Close every open connection (both sides) now."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()
        return len(conns)

    def open_connections(self):
        with self._lock:
            return len(self._conns)

    def close(self):
        """Stop listening, drop anything held, close all connections, join the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._armed.clear()
        self.release(drop=True)
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        if self._thread is not None:
            self._thread.join(5)
        self.cut_all()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            for t in c.threads:
                t.join(5)


# ---------------------------------------------------------------------------------------
# unittest base

class PgTest(TmpTest):
    """A TmpTest with one PgServer per test class in cls.pg (skipped, saying why, where it
    cannot run; stopped after the class even when setUpClass or a test fails).  A test that
    left the server stopped (kill_immediate) finds it restarted by the next setUp()."""

    pg = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        ok, reason = available()
        if not ok:
            raise unittest.SkipTest(reason)
        cls.pg = PgServer()
        cls.addClassCleanup(cls.pg.stop)
        cls.pg.start()

    def setUp(self):
        super().setUp()
        if not self.pg.running:
            self.pg.restart()

    def proxy(self, target=None):
        """A started PgProxy in front of cls.pg, closed after the test."""
        p = PgProxy(self.pg, target=target).start()
        self.addCleanup(p.close)
        return p
