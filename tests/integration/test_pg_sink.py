"""Results into PostgreSQL: a real PostgreSQL 15 server (pg_fixture.PgServer: initdb and
pg_ctl as the postgres user on a private socket), a real proxy that loses or holds the
protocol's messages (pg_fixture.PgProxy), and dbatch's real CLI. Rows in the table are
compared with the TSV output of the same job; failures must leave the old table as it was."""
import os
import subprocess
import threading
import time
import unittest

from dbx import run, slurp
from pg_fixture import DBPASSWORD, DBUSER, PgProxy, PgTest


def tsv_rows(data):
    """TSV rows as the strings PostgreSQL's COPY text format gives (the same escapes)."""
    out = []
    for line in data.decode().splitlines():
        f = line.split("\t")
        out.append(tuple(x.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r").replace("\\\\", "\\")
                         for x in f))
    return out


def same(a, b):
    """Rows equal, numbers as numbers (a double prints as 1e-05 here and 1e-05 or 1.0e-05 there)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return False
        for x, y in zip(ra, rb):
            if x == y:
                continue
            try:
                if float(x) != float(y):
                    return False
            except (TypeError, ValueError):
                return False
    return True


def words(n, distinct):
    return "".join(" ".join("w%d" % ((i * 31 + k) % distinct) for k in range(8)) + "\n" for i in range(n))


class PgSink(PgTest):
    def setUp(self):
        super().setUp()
        self.db = "t%d" % (abs(hash(self.id())) % 10 ** 8)
        self.pg.create_db(self.db, owner="postgres")
        self.uri = self.pg.uri(db=self.db)
        self.inp = self.write("in.txt", words(3000, 700))

    def table(self, name, order="1"):
        return self.pg.copy_out("SELECT * FROM %s ORDER BY %s" % (name, order), db=self.db)

    def coltypes(self, table):
        return self.pg.copy_out("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '%s' "
                                "ORDER BY ordinal_position" % table, db=self.db)

    def job(self, *args, check=True, env=None, quiet=True):
        return run(*args, "--no-job-dir", *(["-q"] if quiet else []), check=check, env=env)

    def test_rows_equal_the_tsv_for_every_job_kind(self):
        csvin = self.write("sales.csv", "region,product,qty,price\n" + "".join(
            "%s,%s,%d,%s\n" % ("nsew"[i % 4], "p%d" % (i % 7), i % 5, "%.2f" % (i * 0.37)) for i in range(500)))
        orders = self.write("orders.csv", "user,item\n" + "".join("u%d,i%d\n" % (i % 40, (i * 7) % 13) for i in range(400)))
        train = self.path("train")
        for lab in ("spam", "ham", "eggs"):
            os.makedirs(os.path.join(train, lab))
            for d in range(6):
                with open(os.path.join(train, lab, "d%d.txt" % d), "w") as f:
                    f.write("%s %s common w%d\n" % (lab, lab * (d % 3 + 1), d))
        kinds = {
            "wordcount": ["wordcount", self.inp],
            "groupby": ["groupby", csvin, "--key", "region,product", "--agg", "count,sum:qty,mean:price,max:price"],
            "cooccur": ["cooccur", orders, "--user", "user", "--item", "item"],
            "reduce": ["run", "--map", "awk '{print $1\"\\t\"NF}'", "--reduce", "sum,count,mean", self.inp],
        }
        for name, cmd in kinds.items():
            tsv = self.path(name + ".tsv")
            self.job(*cmd, "-o", tsv)
            self.job(*cmd, "-o", self.uri, "--table", name)
            got = self.pg.copy_out("SELECT * FROM %s" % name, db=self.db)  # as loaded: the job's row order
            self.assertTrue(same(got, tsv_rows(slurp(tsv))), (name, got[:3], tsv_rows(slurp(tsv))[:3]))
        self.assertEqual(self.coltypes("wordcount"), [("word", "text"), ("count", "bigint")])
        self.assertIn(("sum:qty", "double precision"), self.coltypes("groupby"))
        # the classifier: model, predictions with probabilities, metrics
        self.job("nb", "run", "--train", train, "--test", train, "--model", self.uri, "--predictions", self.uri,
                 "--metrics", self.uri, "--proba")
        self.job("nb", "run", "--train", train, "--test", train, "--model", self.path("m.nb"),
                 "--predictions", self.path("p.tsv"), "--metrics", self.path("m.tsv"), "--proba")
        self.assertTrue(same(self.pg.copy_out("SELECT * FROM predictions", db=self.db), tsv_rows(slurp(self.path("p.tsv")))))
        self.assertTrue(same(self.pg.copy_out("SELECT * FROM metrics", db=self.db), tsv_rows(slurp(self.path("m.tsv")))))
        self.assertEqual([c for c, _ in self.coltypes("predictions")], ["path", "predicted", "p_eggs", "p_ham", "p_spam"])
        # the model stored in the database predicts as the model file does
        self.job("nb", "test", "--model", self.uri, "--corpus", train, "--predictions", self.path("p2.tsv"), "--proba")
        self.assertEqual(slurp(self.path("p2.tsv")), slurp(self.path("p.tsv")))

    def test_labels_with_quotes_commas_and_unicode_become_columns(self):
        train = self.path("train")
        labels = ['say "hi"', "a,b", "ünï 字", "x'y"]
        for i, lab in enumerate(labels):
            os.makedirs(os.path.join(train, lab))
            for d in range(4):
                with open(os.path.join(train, lab, "d%d.txt" % d), "w") as f:
                    f.write("tok%d tok%d shared\n" % (i, d))
        self.job("nb", "run", "--train", train, "--test", train, "--model", self.path("m.nb"),
                 "--predictions", self.uri, "--proba", "--table", "pred;drop")
        self.job("nb", "run", "--train", train, "--test", train, "--model", self.path("m.nb"),
                 "--predictions", self.path("p.tsv"), "--proba")
        cols = [c for c, _ in self.coltypes("pred;drop")]
        self.assertEqual(sorted(cols[2:]), sorted("p_" + l for l in labels))
        self.assertTrue(same(self.pg.copy_out('SELECT * FROM "pred;drop"', db=self.db), tsv_rows(slurp(self.path("p.tsv")))))
        got = {r[1] for r in self.pg.copy_out('SELECT * FROM "pred;drop"', db=self.db)}
        self.assertEqual(got, set(labels))

    def test_follow_running_result_and_windows(self):
        """--follow into PostgreSQL: the running result's table and its dbatch_follow row
        (the input it covers) are committed together; a window appended and then killed
        before its state says so is not appended again (dbatch_commits)."""
        import json
        import signal
        logs, job = self.path("logs"), self.path("job")
        os.mkdir(logs)
        log = os.path.join(logs, "a.log")
        with open(log, "w") as f:
            f.write(words(500, 90))
        args = ("wordcount", logs, "--follow", "--interval", "0.1", "--until-idle", "0.5", "--job-dir", job, "-o",
                self.uri, "--table", "words", "-q")
        run(*args)
        with open(log, "a") as f:
            f.write(words(300, 120) + "tail without newline")
        run(*args)  # goes on from its state
        want = tsv_rows(run("wordcount", logs, "--no-job-dir", "-q").stdout)
        self.assertTrue(same(self.table("words", "2 DESC, 1"), want))
        (key, mb, offsets), = self.pg.copy_out("SELECT job, micro_batch, offsets FROM dbatch_follow", db=self.db)
        self.assertEqual(key, os.path.realpath(job))
        self.assertEqual(json.loads(offsets)["files"][0]["offset"], os.path.getsize(log))
        self.assertEqual(int(mb), json.loads(offsets)["micro_batch"])
        # windows: killed right after window 0's rows are committed
        wlogs, wjob = self.path("wlogs"), self.path("wjob")
        os.mkdir(wlogs)
        with open(os.path.join(wlogs, "b.log"), "w") as f:
            f.write("one two two\n")
        wargs = ("wordcount", wlogs, "--follow", "--window", "1", "--interval", "0.1", "--job-dir", wjob, "-o",
                 self.uri, "--table", "per_second", "-q")
        env = dict(os.environ, DBATCH_FAULT="follow_crash_after_append=0")
        self.assertEqual(run(*wargs, check=False, env=env).returncode, -signal.SIGKILL)
        run(*wargs, "--until-idle", "1")
        rows = self.table("per_second", "1, 3 DESC, 2")
        self.assertEqual([r[1:] for r in rows], [("two", "2"), ("one", "1")])
        self.assertEqual(len(self.pg.copy_out("SELECT * FROM dbatch_commits WHERE table_name = 'per_second'",
                                              db=self.db)), 1)

    def test_replace_swaps_and_a_failed_job_leaves_the_old_table(self):
        self.pg.psql('CREATE TABLE words (old text); INSERT INTO words VALUES (\'kept\');', db=self.db)
        p = self.job("run", "--map", "exit 3", "--reduce", "count", self.inp, "-o", self.uri, "--table", "words",
                     "--max-attempts", "1", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(self.table("words"), [("kept",)])
        self.job("wordcount", self.inp, "-o", self.uri, "--table", "words")
        self.assertEqual(len(self.table("words")), 700)
        # nothing of the swap is left behind
        self.assertEqual(self.pg.copy_out("SELECT tablename FROM pg_tables WHERE tablename LIKE 'dbatch%'", db=self.db), [])
        # schema-qualified, and a name that needs quoting
        self.pg.psql('CREATE SCHEMA "Stage 1"', db=self.db)
        self.job("wordcount", self.inp, "-o", self.uri, "--table", 'Stage 1.Words "x"')
        self.assertEqual(len(self.pg.copy_out('SELECT * FROM "Stage 1"."Words ""x"""', db=self.db)), 700)

    def test_append_adds_once_per_job(self):
        self.job("wordcount", self.inp, "-o", self.uri, "--table", "w", "--append")
        self.job("wordcount", self.inp, "-o", self.uri, "--table", "w", "--append")
        self.assertEqual(self.pg.value("SELECT count(*) FROM w", db=self.db), "1400")
        commits = self.pg.copy_out("SELECT table_name, rows FROM dbatch_commits", db=self.db)
        self.assertEqual(commits, [("w", "700"), ("w", "700")])

    def test_append_resumed_after_its_commit_inserts_once(self):
        jd = self.path("job")
        env = dict(os.environ, DBATCH_FAULT="crash_after_commit")
        p = subprocess.run([os.environ.get("DBATCH", "build/dbatch"), "wordcount", self.inp, "--job-dir", jd, "-q",
                            "-o", self.uri, "--table", "w", "--append"], env=env, capture_output=True, timeout=120)
        self.assertEqual(p.returncode, -9, p.stderr)
        self.assertEqual(self.pg.value("SELECT count(*) FROM w", db=self.db), "700")
        p = run("resume", jd, check=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.pg.value("SELECT count(*) FROM w", db=self.db), "700")

    def test_append_retried_after_a_lost_commit_reply_inserts_once(self):
        self.pg.psql("GRANT ALL ON DATABASE %s TO %s; GRANT ALL ON SCHEMA public TO %s" % (self.db, DBUSER, DBUSER),
                     db=self.db)
        with PgProxy(self.pg) as px:
            uri = self.pg.uri(user=DBUSER, password=DBPASSWORD, host="127.0.0.1", port=px.port, db=self.db)
            self.job("wordcount", self.inp, "-o", uri, "--table", "w", "--append")
            px.drop_reply_after_commit()  # the server commits; dbatch never hears
            p = self.job("wordcount", self.inp, "-o", uri, "--table", "w", "--append", "-v", quiet=False)
            err = p.stderr.decode()
            self.assertIn("the connection was lost", err)
            self.assertIn("already has the rows of this job", err)
            self.assertEqual(self.pg.value("SELECT count(*) FROM w", db=self.db), "1400")
            self.assertEqual(self.pg.value("SELECT count(*) FROM dbatch_commits", db=self.db), "2")
            self.assertGreaterEqual(sum(1 for q in px.queries if q.strip().upper().startswith("COMMIT")), 3)

    def test_server_killed_during_the_commit_of_a_large_table(self):
        self.pg.psql("CREATE TABLE big (old text); INSERT INTO big VALUES ('kept');"
                     "GRANT ALL ON DATABASE %s TO %s; GRANT ALL ON SCHEMA public TO %s; ALTER TABLE big OWNER TO %s"
                     % (self.db, DBUSER, DBUSER, DBUSER), db=self.db)
        inp = self.write("big.txt", words(60000, 200000))
        try:
            with PgProxy(self.pg) as px:
                uri = self.pg.uri(user=DBUSER, password=DBPASSWORD, host="127.0.0.1", port=px.port, db=self.db)
                px.hold_at_copy_data()
                proc = subprocess.Popen([os.environ.get("DBATCH", "build/dbatch"), "wordcount", inp, "-o", uri,
                                         "--table", "big", "--no-job-dir", "-q"], stderr=subprocess.PIPE)
                self.assertTrue(px.wait_held(60), "the COPY never started")
                self.pg.kill_immediate()
                px.release(drop=True)
                _, err = proc.communicate(timeout=120)
        finally:
            self.pg.restart()
        self.assertEqual(proc.returncode, 1)
        err = err.decode()
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("postgresql server 127.0.0.1:%d, database %s" % (px.port, self.db), err)
        self.assertIn("the connection was lost", err)
        self.assertIn("nothing was written", err)
        self.assertEqual(self.table("big"), [("kept",)])

    def test_dbatch_killed_while_committing_leaves_the_old_table(self):
        self.pg.psql("CREATE TABLE w (old text); INSERT INTO w VALUES ('kept');"
                     "GRANT ALL ON DATABASE %s TO %s; GRANT ALL ON SCHEMA public TO %s; ALTER TABLE w OWNER TO %s"
                     % (self.db, DBUSER, DBUSER, DBUSER), db=self.db)
        with PgProxy(self.pg) as px:
            uri = self.pg.uri(user=DBUSER, password=DBPASSWORD, host="127.0.0.1", port=px.port, db=self.db)
            px.hold_at_commit()  # everything sent but the COMMIT
            proc = subprocess.Popen([os.environ.get("DBATCH", "build/dbatch"), "wordcount", self.inp, "-o", uri,
                                     "--table", "w", "--no-job-dir", "-q"], stderr=subprocess.PIPE)
            self.assertTrue(px.wait_held(60), "no COMMIT came")
            # the new table is complete and swapped in, uncommitted: nobody else sees it
            self.assertEqual(self.pg.value("SELECT count(*) FROM pg_tables WHERE tablename = 'w'", db=self.db), "1")
            proc.kill()
            proc.wait()
            px.release(drop=True)
        for _ in range(100):  # the server notices the closed connection and rolls back
            if self.pg.value("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbatch'") == "0":
                break
            time.sleep(0.05)
        self.assertEqual(self.table("w"), [("kept",)])
        self.assertEqual(self.pg.copy_out("SELECT tablename FROM pg_tables WHERE tablename LIKE 'dbatch%'", db=self.db), [])

    def test_connection_failures_are_one_line_before_any_work(self):
        self.pg.psql("GRANT ALL ON DATABASE %s TO %s; GRANT ALL ON SCHEMA public TO %s" % (self.db, DBUSER, DBUSER),
                     db=self.db)
        cases = [
            (self.pg.uri(user=DBUSER, password="wrong", host="127.0.0.1", db=self.db), "password authentication failed"),
            (self.pg.uri(db="no_such_db"), 'database "no_such_db" does not exist'),
            ("postgresql://%s@127.0.0.1:%d/%s" % (DBUSER, self.free_port(), self.db), "Connection refused"),
            ("postgresql://[::1", "not a valid connection URI"),
        ]
        for uri, why in cases:
            p = self.job("wordcount", self.inp, "-o", uri, check=False)
            err = p.stderr.decode()
            self.assertEqual(p.returncode, 1, (uri, err))
            self.assertIn(why, err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertNotIn("wrong", err.replace("wrong password", ""))  # the password is never printed
            if "URI" not in why:
                self.assertIn("postgresql server", err)
                self.assertIn("database", err)
            self.assertIn("nothing was run", err)
        self.assertEqual(self.pg.copy_out("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", db=self.db), [])
        # the password from a password file, and the PG* variables instead of a URI
        pf = self.pg.write_passfile(self.path("pgpass"))
        env = self.pg.env(DBUSER, host="127.0.0.1", db=self.db)
        env["PGPASSFILE"] = pf
        self.job("wordcount", self.inp, "-o", "postgresql://", "--table", "w", env=env)
        self.assertEqual(self.pg.value("SELECT count(*) FROM w", db=self.db), "700")

    def test_text_postgresql_cannot_hold_fails_naming_the_row(self):
        self.pg.psql("CREATE TABLE r (old text); INSERT INTO r VALUES ('kept')", db=self.db)
        bad = self.write("bad.txt", b"ok\nbad\xff\xfe\n")
        p = self.job("run", "--map", "awk '{print $0\"\\t1\"}'", "--reduce", "sum", bad, "-o", self.uri, "--table", "r",
                     check=False)
        self.assertEqual(p.returncode, 1)
        err = p.stderr.decode()
        self.assertIn("row 1, column key: invalid UTF-8", err)
        self.assertEqual(self.table("r"), [("kept",)])

    def test_usage_errors(self):
        for args, why in ((["--header"], "--header applies to TSV"), (["--format", "csv"], "--format csv applies to files"),
                          (["--table", "a.b.c"], "give NAME or SCHEMA.NAME"), (["--table", "x" * 64], "63 bytes"),
                          (["--table", "nope.t"], "there is no schema nope")):
            p = self.job("wordcount", self.inp, "-o", self.uri, *args, check=False)
            self.assertIn(why, p.stderr.decode(), args)
            self.assertNotEqual(p.returncode, 0)

    def test_a_table_named_without_schema_is_the_one_the_search_path_finds(self):
        self.pg.psql("CREATE TABLE uu (word text, count bigint); CREATE SCHEMA postgres; CREATE SCHEMA s1; "
                     "CREATE TABLE public.sp (x int)", db=self.db)
        # "$user" (postgres) comes first on the search path and exists now: the table in public is still the one
        self.job("wordcount", self.inp, "-o", self.uri, "--table", "uu", "--append")
        self.assertEqual(self.pg.value("SELECT count(*) FROM public.uu", db=self.db), "700")
        self.assertEqual(self.pg.value("SELECT count(*) FROM pg_tables WHERE schemaname = 'postgres'", db=self.db), "0")
        self.assertEqual(self.pg.value("SELECT count(*) FROM public.dbatch_commits", db=self.db), "1")
        # a search path from the URI: replaced where it is found, not created in the first schema
        uri = self.uri + "&options=-c%20search_path%3Ds1,public"
        self.job("wordcount", self.inp, "-o", uri, "--table", "sp")
        self.assertEqual(self.pg.value("SELECT count(*) FROM public.sp", db=self.db), "700")
        self.assertEqual(self.pg.value("SELECT count(*) FROM pg_tables WHERE schemaname = 's1'", db=self.db), "0")
        # a new table goes to the first schema of the search path, as CREATE TABLE puts it
        self.job("wordcount", self.inp, "-o", uri, "--table", "fresh")
        self.assertEqual(self.pg.value("SELECT count(*) FROM s1.fresh", db=self.db), "700")

    def test_concurrent_first_appends_all_land(self):
        errs = []

        def go():
            p = self.job("wordcount", self.inp, "-o", self.uri, "--table", "racy", "--append", "--workers", "0",
                         check=False)
            if p.returncode:
                errs.append(p.stderr.decode())
        # Twelve jobs racing to create dbatch_commits and the table: each may lose several
        # races in a row (six once failed after three), none may fail for it.
        ts = [threading.Thread(target=go) for _ in range(12)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errs, [])
        self.assertEqual(self.pg.value("SELECT count(*) FROM racy", db=self.db), str(12 * 700))
        self.assertEqual(self.pg.value("SELECT count(*) FROM dbatch_commits", db=self.db), "12")

    def test_outputs_that_would_collide_are_refused(self):
        train = self.path("train")
        for lab in ("a", "b"):
            os.makedirs(os.path.join(train, lab))
            with open(os.path.join(train, lab, "d.txt"), "w") as f:
                f.write("%s x\n" % lab)
        for table in ("nb_model", "dbatch_commits", "s.nb_model"):
            p = self.job("wordcount", self.inp, "-o", self.uri, "--table", table, check=False)
            self.assertEqual(p.returncode, 2, table)
            self.assertIn("the name is dbatch's own", p.stderr.decode())
        p = self.job("nb", "run", "--train", train, "--test", train, "--model", self.path("m.nb"),
                     "--predictions", self.uri, "--table", "public.metrics", "--metrics", self.uri + "&application_name=x",
                     check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--predictions and --metrics go to the same table", p.stderr.decode())
        same = self.path("same.tsv")
        p = self.job("nb", "run", "--train", train, "--test", train, "--model", self.path("m.nb"),
                     "--predictions", same, "--metrics", same, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("go to the same file", p.stderr.decode())

    def test_a_password_is_never_printed(self):
        for dest in ("postgresql://u:TOPSECRET%zz@127.0.0.1/db", "POSTGRESQL://u:TOPSECRET@h/db",
                     "postgresq://u:TOPSECRET@h/db", "postgresql://u:TOPSECRET@127.0.0.1:%d/db" % self.free_port()):
            p = self.job("wordcount", self.inp, "-o", dest, check=False)
            self.assertNotEqual(p.returncode, 0, dest)
            self.assertNotIn("TOPSECRET", p.stderr.decode(), dest)
            self.assertEqual(p.stderr.decode().count("dbatch wordcount:"), 1, p.stderr)

    def test_copy_errors_name_the_table_line_and_column(self):
        self.pg.psql("CREATE TABLE w (word bigint, count bigint)", db=self.db)
        p = self.job("wordcount", self.inp, "-o", self.uri, "--table", "w", "--append", check=False)
        self.assertEqual(p.returncode, 1)
        err = p.stderr.decode()
        self.assertIn('invalid input syntax for type bigint', err)
        self.assertIn("COPY w, line 1, column word", err)
        self.assertEqual(self.pg.value("SELECT count(*) FROM w", db=self.db), "0")
        self.assertEqual(self.pg.copy_out("SELECT * FROM pg_tables WHERE tablename = 'dbatch_commits'", db=self.db), [])

    def free_port(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port


if __name__ == "__main__":
    unittest.main()
