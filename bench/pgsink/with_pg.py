#!/usr/bin/env python3
"""with_pg.py -- run a command beside a throwaway PostgreSQL 15 server (bench/pgsink).

Usage: with_pg.py COMMAND [ARG...]
       with_pg.py --check    (exit 0 if a server can run here, else 3, saying why)
Starts one tests/integration/pg_fixture.PgServer (initdb, postgres as the postgres user on a
private unix socket; needs root), runs COMMAND with the libpq variables pointing at it over
the unix socket as the superuser (PGHOST=socket directory, PGPORT, PGUSER=postgres,
PGDATABASE=dbx) and DBX_PG_URI (the same as a postgresql:// URI) and DBX_PG_LOG (the server
log), and stops and removes the server when COMMAND ends, whatever the way: its exit status
is COMMAND's. Ctrl-C, SIGTERM and SIGHUP end COMMAND's process group and stop the server too;
a SIGKILL leaves the server to the fixture's watchdog (which removes it once this process is
gone).

Benchmark settings, the same for every client of the server: autovacuum off (an autovacuum
of the table loaded by one timed run would otherwise run during the next), and the fixture's
fsync=off (neither side waits for a disk)."""
import os
import signal
import subprocess
import sys

top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(top, "tests", "integration"))
from pg_fixture import PgServer, available  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: with_pg.py COMMAND [ARG...] | --check")
    ok, why = available()
    if sys.argv[1] == "--check":
        if not ok:
            print(why)
        sys.exit(0 if ok else 3)
    if not ok:
        sys.exit("bench/pgsink: no PostgreSQL server here: " + why)

    def term(sig, frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGHUP, term)
    with PgServer() as pg:
        pg.psql("ALTER SYSTEM SET autovacuum = off", db="postgres")
        pg.psql("SELECT pg_reload_conf()", db="postgres")
        env = pg.env()                      # PGHOST=socket dir, PGPORT, PGUSER, PGDATABASE
        env["DBX_PG_URI"] = pg.uri()
        env["DBX_PG_LOG"] = pg.log
        # Its own process group: stopped whole (psql, dbatch and its workers) if this is.
        p = subprocess.Popen(sys.argv[1:], env=env, process_group=0)
        try:
            rc = p.wait()
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait()
            raise
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
