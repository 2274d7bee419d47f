"""Adversarial pass over --cluster (src/cli/cluster.c, src/net/rendezvous.c): mpirun with one
rank, rank 0 or a worker rank killed, inputs that differ or are missing on worker ranks,
nb under --cluster, two launches sharing one --job-dir, --key with --authorized-keys,
k8s without a port, and rendezvous files planted by someone else.

Ranks are started by mpirun (OpenMPI) where the launcher matters, or as plain processes
with the environment mpirun gives its ranks (OMPI_COMM_WORLD_RANK/SIZE,
OMPI_MCA_ess_base_jobid) where a test must kill or delay one rank precisely.

Tests named test_defect_* fail on 3cd6b5d and pass once the defect they name is fixed;
the others pass and must stay so. Every wait is bounded; outputs are compared byte for
byte with --workers 0."""
import os
import re
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import cluster_fixture as cf  # noqa: E402

DBATCH = os.path.abspath(os.environ.get("DBATCH", "build/dbatch"))
DATA = os.path.abspath(os.environ.get("DBX_TEST_DATA", os.path.join(os.path.dirname(__file__), "..", "data")))
MPI_SKIP = None if shutil.which("mpirun") else "mpirun is not installed (openmpi-bin)"
ROOT_SKIP = None if os.geteuid() == 0 and shutil.which("unshare") else "needs root and unshare (mount namespaces)"
NET_SKIP = cf.need_root_netns()
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl="self,tcp", OMPI_MCA_btl_tcp_if_include="lo")


def corpus(path, lines=60000, word="alpha"):
    with open(path, "w") as f:
        for i in range(lines):
            f.write("rank%d node%d %s beta w%d café\n" % (i % 7, i % 3, word, i % 211))
    return path


def dbatch(*args, timeout=120, **kw):
    return subprocess.run([DBATCH, *map(str, args)], capture_output=True, timeout=timeout, **kw)


def slurp(p):
    with open(p, "rb") as f:
        return f.read()


class ClusterAdvTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbx-cladv-")
        os.chmod(self.tmp, 0o755)
        self.input = corpus(self.path("in.txt"))
        r = dbatch("wordcount", self.input, "--workers", "0", "--no-job-dir")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.expected = r.stdout
        self.procs = []

    def tearDown(self):
        self.sweep()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def sweep(self):
        """Kill every dbatch process still running in this test's directory (ranks that a
        killed mpirun left behind)."""
        exe, cwd = os.path.realpath(DBATCH), os.path.realpath(self.tmp)
        for pid in [int(x) for x in os.listdir("/proc") if x.isdigit()]:
            try:
                if os.readlink("/proc/%d/exe" % pid) == exe and os.readlink("/proc/%d/cwd" % pid) == cwd:
                    os.kill(pid, 9)
            except OSError:
                pass

    def mpirun(self, n, *args, timeout=60, wrap=None, **kw):
        """mpirun -n N dbatch ARGS (or -n N WRAP... dbatch ARGS) in self.tmp; None on timeout."""
        argv = ["mpirun", "--oversubscribe", "-n", str(n), *(wrap or []), DBATCH, *map(str, args)]
        p = subprocess.Popen(argv, cwd=self.tmp, env=MPI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
            return subprocess.CompletedProcess(argv, p.returncode, out, err)
        except subprocess.TimeoutExpired:
            p.terminate()  # mpirun passes it on to its ranks
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=10)
            self.sweep()
            return None

    def rank(self, launch, rank, size, *args, extra_env=None, **kw):
        """One rank as mpirun would start it, in the background."""
        env = dict(os.environ, OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE=str(size),
                   OMPI_MCA_ess_base_jobid=launch, **(extra_env or {}))
        p = subprocess.Popen([DBATCH, *map(str, args)], cwd=self.tmp, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, **kw)
        self.procs.append(p)
        return p


# ---------------------------------------------------------------- defects

@unittest.skipIf(MPI_SKIP, MPI_SKIP or "")
class TestMpiDefects(ClusterAdvTest):
    def test_defect_single_rank_waits_for_workers_that_never_come(self):
        """mpirun -n 1 ... --cluster auto: rank 0 is the only rank, so no worker will ever
        join, yet it listens and waits (wait_workers 0, workers 0: 120 s, then 'no worker has
        been connected'). With one rank the coordinator must run the tasks itself (as
        --workers 0 does) and give the exact answer at once."""
        t = time.time()
        r = self.mpirun(1, "wordcount", "--cluster", "auto", self.input, "-o", self.path("out.tsv"),
                        "--batch-records", "4000", timeout=30)
        self.assertIsNotNone(r, "mpirun -n 1 --cluster auto still runs after 30 s: rank 0 waits for workers")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)
        self.assertLess(time.time() - t, 30)

    def test_defect_nb_under_cluster(self):
        """nb's corpora are not among the job's inputs when a worker rank computes its
        --allow-read (cluster.c inputs_dirs), so worker ranks refuse every document: with a
        .tsv corpus the job fails (4 attempts refused), with a directory corpus every worker
        is excluded and rank 0 waits for ever. nb under --cluster must give exactly what
        --workers 0 gives."""
        train, test = os.path.join(DATA, "nbcorpus", "train"), os.path.join(DATA, "nbcorpus", "test")
        ref = dbatch("nb", "run", "--train", train, "--test", test, "--workers", "0", "--no-job-dir",
                     "--predictions", self.path("ref.tsv"), "-m", self.path("ref.model"), cwd=self.tmp)
        self.assertEqual(ref.returncode, 0, ref.stderr)
        r = self.mpirun(3, "nb", "run", "--train", train, "--test", test, "--cluster", "auto",
                        "--predictions", self.path("out.tsv"), "-m", self.path("out.model"), timeout=60)
        self.assertIsNotNone(r, "nb run --cluster (directory corpus) still runs after 60 s: every worker rank "
                                "refuses the documents and is excluded")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        # The metrics the same (the stage timings beside them are not).
        drop_times = lambda out: [ln for ln in out.splitlines() if not re.search(rb"\d\.\d+ s\b", ln)]
        self.assertEqual(drop_times(r.stdout), drop_times(ref.stdout))
        self.assertEqual(slurp(self.path("out.tsv")), slurp(self.path("ref.tsv")))
        self.assertEqual(slurp(self.path("out.model")), slurp(self.path("ref.model")))
        # A .tsv corpus: label<TAB>text lines.
        tsv = self.path("train.tsv")
        with open(tsv, "w") as f:
            for label in sorted(os.listdir(train)):
                for doc in sorted(os.listdir(os.path.join(train, label))):
                    with open(os.path.join(train, label, doc), errors="replace") as d:
                        f.write("%s\t%s\n" % (label, " ".join(d.read().split())))
        ref = dbatch("nb", "train", "--corpus", tsv, "-m", self.path("ref2.model"), "--workers", "0",
                     "--no-job-dir")
        self.assertEqual(ref.returncode, 0, ref.stderr)
        r = self.mpirun(3, "nb", "train", "--corpus", tsv, "-m", self.path("out2.model"), "--cluster", "auto",
                        timeout=60)
        self.assertIsNotNone(r)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(slurp(self.path("out2.model")), slurp(self.path("ref2.model")))

    def test_defect_cluster_key_with_authorized_keys_refuses_own_ranks(self):
        """--cluster --key SITE.key --authorized-keys EXTRA (EXTRA: hand-started workers to
        admit as well): worker ranks connect with SITE.key, which rank 0 admits only when no
        --authorized-keys is given, so every rank is refused and the launch fails. The
        launch's own key must always be admitted: the exact answer, exit 0."""
        site, extra = self.path("site.key"), self.path("extra.key")
        for k in (site, extra):
            self.assertEqual(dbatch("keygen", k).returncode, 0)
        r = self.mpirun(3, "wordcount", "--cluster", "auto", self.input, "-o", self.path("out.tsv"), "--key", site,
                        "--authorized-keys", extra + ".pub", timeout=60)
        self.assertIsNotNone(r)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)


@unittest.skipIf(MPI_SKIP or ROOT_SKIP, MPI_SKIP or ROOT_SKIP or "")
class TestInputViewDefects(ClusterAdvTest):
    """Worker ranks in their own mount namespace, where the input's directory is a tmpfs:
    a node-local disk that holds another file of the same name, or none."""

    def wrap(self, setup):
        # Rank 0 runs dbatch as is; every other rank first hides data/ under a tmpfs.
        script = ('if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then exec "$@"; fi; '
                  'exec unshare -m sh -c \'mount -t tmpfs none "%s" && %s && exec "$@"\' sh "$@"'
                  % (self.path("data"), setup))
        return ["sh", "-c", script, "sh"]

    def setUp(self):
        super().setUp()
        # A mount namespace of its own (unshare -m) is refused where / is not a mount point
        # (a chroot): no node-local view can be made there.
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
        if probe.returncode != 0:
            self.skipTest("unshare -m does not work here: %s" % probe.stderr.decode(errors="replace").strip())
        os.makedirs(self.path("data"))
        self.data_input = corpus(self.path("data", "in.txt"))
        corpus(self.path("other.txt"), word="gamma")  # same size, another word

    def test_defect_different_file_on_worker_ranks_gives_wrong_answer(self):
        """A worker rank reads the input by path from its own file system; when its node has
        another file under that path (node-local scratch, a stale copy), its counts are
        merged into the answer: exit 0 with 'gamma 60000' where the input says 'alpha 60000'.
        Nothing compares what the worker opens with what rank 0 planned (size, mtime or
        content). The answer must be exact (the batches shipped to such a rank) or the job
        must fail naming the input; never a wrong answer with exit 0."""
        r = self.mpirun(3, "wordcount", "--cluster", "auto", "data/in.txt", "-o", self.path("out.tsv"),
                        "--batch-records", "4000", timeout=60,
                        wrap=self.wrap('cp "%s" "%s"' % (self.path("other.txt"), self.data_input)))
        self.assertIsNotNone(r)
        if r.returncode == 0:
            out = slurp(self.path("out.tsv"))
            self.assertNotIn(b"gamma", out, "exit 0 with the worker ranks' own file counted")
            self.assertEqual(out, self.expected)
        else:
            self.assertIn(b"in.txt", r.stderr)

    def test_defect_input_missing_on_worker_ranks(self):
        """Worker ranks whose node does not have the input (a node-local path) stop at once
        with 'data/in.txt: No such file or directory' before they join; the launch fails.
        Design: workers without the file system get the bytes shipped. The worker ranks must
        join and the job give the exact answer."""
        r = self.mpirun(3, "wordcount", "--cluster", "auto", "data/in.txt", "-o", self.path("out.tsv"),
                        "--batch-records", "4000", timeout=60, wrap=self.wrap("true"))
        self.assertIsNotNone(r, "still running after 60 s")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)


class TestRankDefects(ClusterAdvTest):
    def test_defect_worker_ranks_exit_0_when_rank_0_dies(self):
        """Rank 0 killed mid-job: the worker ranks leave after --worker-timeout of silence,
        but with status 0, as if the job had ended (a Kubernetes Indexed Job counts those
        indexes complete; a restarted rank 0 then waits for workers that never return). A
        worker rank that lost its coordinator mid-job must exit 1 saying so."""
        args = ("wordcount", "--cluster", "mpi", self.input, "-o", self.path("out.tsv"), "--batch-records", "2000",
                "--worker-timeout", "3")
        slow = {"DBATCH_FAULT": "delay_ms=300"}
        r0 = self.rank("kill0", 0, 3, *args)
        ws = [self.rank("kill0", i, 3, *args, extra_env=slow) for i in (1, 2)]
        d = self.path("dbatch-jobs", "wordcount-mpi-kill0")
        deadline = time.time() + 20
        while not os.path.exists(os.path.join(d, "rendezvous")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # the workers are in the middle of the job's 30 tasks
        self.assertIsNone(r0.poll())
        r0.kill()
        t = time.time()
        for w in ws:
            try:
                _, err = w.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.fail("a worker rank still runs 30 s after rank 0 died")
            self.assertEqual(w.returncode, 1, err)
            self.assertIn(b"coordinator", err)
        self.assertLess(time.time() - t, 30)
        self.assertFalse(os.path.exists(self.path("out.tsv")))

    def test_defect_second_launch_in_same_job_dir_clobbers_the_first(self):
        """Two launches given one --job-dir: the second one's rank 0 removes the first one's
        rendezvous and replaces its cluster.key before it finds the directory locked (then
        fails, as it should). A late worker rank of the first launch then never finds its
        coordinator, and the first launch waits for it. A launch that cannot use the directory
        must leave it as it was: the first launch finishes with all its ranks."""
        jd = self.path("jd")
        args = ("wordcount", "--cluster", "mpi", "--job-dir", jd, self.input, "-o", self.path("outA.tsv"),
                "--batch-records", "4000")
        a0 = self.rank("jobA", 0, 3, *args)
        a1 = self.rank("jobA", 1, 3, *args)
        rv = os.path.join(jd, "rendezvous")
        deadline = time.time() + 20
        while not os.path.exists(rv) and time.time() < deadline:
            time.sleep(0.1)
        rv_a, pub_a = slurp(rv), slurp(os.path.join(jd, "cluster.key.pub"))
        self.assertIn(b"launch mpi-jobA", rv_a)
        b0 = self.rank("jobB", 0, 2, "wordcount", "--cluster", "mpi", "--job-dir", jd, self.input, "-o",
                       self.path("outB.tsv"))
        _, err = b0.communicate(timeout=30)
        self.assertEqual(b0.returncode, 1, err)
        self.assertIn(b"in use by another dbatch process", err)
        self.assertTrue(os.path.exists(rv), "launch B removed launch A's rendezvous")
        self.assertEqual(slurp(rv), rv_a)
        self.assertEqual(slurp(os.path.join(jd, "cluster.key.pub")), pub_a, "launch B replaced A's cluster.key")
        a2 = self.rank("jobA", 2, 3, *args)
        try:
            _, err = a0.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            self.fail("launch A's rank 0 still waits for its third rank")
        self.assertEqual(a0.returncode, 0, err)
        self.assertEqual(slurp(self.path("outA.tsv")), self.expected)
        for w in (a1, a2):
            self.assertEqual(w.wait(timeout=20), 0)

    def test_defect_k8s_coordinator_without_port_listens_anywhere(self):
        """--cluster k8s with DBATCH_COORDINATOR=coord-0.svc (no port): the worker indexes
        refuse it at once (exit 2, 'a port is needed'), but index 0 listens on a random port
        (its hint says 'tcp://0.0.0.0:*') and waits 120 s for workers that cannot come. Index
        0 must refuse it the same way, at once."""
        key = self.path("k8s.key")
        self.assertEqual(dbatch("keygen", key).returncode, 0)
        env = dict(os.environ, JOB_COMPLETION_INDEX="0", DBATCH_CLUSTER_SIZE="2", DBATCH_COORDINATOR="coord-0.svc")
        try:
            r = subprocess.run([DBATCH, "wordcount", "--cluster", "k8s", "--key", key, self.input, "-o",
                                self.path("out.tsv")], cwd=self.tmp, env=env, capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            self.fail("index 0 still waits after 15 s")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(b"DBATCH_COORDINATOR", r.stderr)
        self.assertIn(b"port", r.stderr)

    @unittest.skipIf(MPI_SKIP, MPI_SKIP or "")
    def test_defect_cluster_job_cannot_be_resumed(self):
        """A --cluster job with --job-dir keeps a journal, and --job-dir's help promises that
        'dbatch resume DIR' finishes the job if the coordinator dies. Rank 0 killed mid-job:
        `dbatch resume DIR` alone refuses ('--cluster auto: not started by srun, mpirun...'),
        and under mpirun every rank opens the journal first, so all but one fail with 'the
        job directory is in use by another dbatch process' and mpirun aborts. Resumed by the
        same launcher, the job must finish with the exact answer."""
        jd = self.path("jd")
        args = ("wordcount", "--cluster", "mpi", self.input, "-o", self.path("out.tsv"), "--batch-records", "2000",
                "--job-dir", jd)
        slow = {"DBATCH_FAULT": "delay_ms=300"}
        r0 = self.rank("first", 0, 3, *args)
        for i in (1, 2):
            self.rank("first", i, 3, *args, extra_env=slow)
        deadline = time.time() + 20
        while not os.path.exists(os.path.join(jd, "rendezvous")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2.5)
        self.assertIsNone(r0.poll())
        r0.kill()
        r0.wait(timeout=10)
        self.sweep()  # the first launch's worker ranks go with it, as under mpirun
        self.assertFalse(os.path.exists(self.path("out.tsv")))
        r = self.mpirun(3, "resume", jd, timeout=60)
        self.assertIsNotNone(r, "mpirun -n 3 dbatch resume still runs after 60 s")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)


@unittest.skipIf(NET_SKIP or os.geteuid() != 0, NET_SKIP or "needs root")
class TestRendezvousTrustDefects(ClusterAdvTest):
    """A rendezvous tells worker ranks where their coordinator is and which public key it
    has; with the launch's cluster.key they then trust that coordinator with tasks (which
    may be shell commands or plugin libraries). Who may write it matters."""

    def rogue(self, hosts, curve):
        import zmq
        ctx = zmq.Context()
        r = ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.LINGER, 0)
        pub = None
        if curve:  # a CURVE server with no ZAP handler: it admits any client key
            pub, sec = zmq.curve_keypair()
            r.curve_server = True
            r.curve_secretkey = sec
        port = r.bind_to_random_port("tcp://%s" % hosts.bridge_addr)
        return ctx, r, "tcp://%s:%d" % (hosts.bridge_addr, port), pub

    def test_defect_rendezvous_of_another_user_is_trusted(self):
        """The job directory was made by another user (here 'nobody', mode 0777) who writes
        the rendezvous: a worker rank reads it, loads the launch's cluster.key and connects
        to the endpoint and public key it names, a coordinator of that user's choosing,
        which then sees its hello. rv_wait() checks neither the file's owner nor the
        directory's mode. A worker rank must refuse a rendezvous it cannot trust (owned by
        another user, or in a directory others can write): exit non-zero naming it, never
        connecting."""
        nobody = pwd.getpwnam("nobody")
        jd = self.path("jd")
        os.mkdir(jd)
        with cf.Hosts(1) as hosts:
            ctx, r, ep, pub = self.rogue(hosts, curve=True)
            try:
                self.assertEqual(dbatch("keygen", os.path.join(jd, "cluster.key")).returncode, 0)
                rv = os.path.join(jd, "rendezvous")
                with open(rv, "w") as f:
                    f.write("launch mpi-999\nendpoint %s\ncoordinator-key %s\n" % (ep, pub.decode()))
                os.chown(rv, nobody.pw_uid, nobody.pw_gid)
                os.chown(jd, nobody.pw_uid, nobody.pw_gid)
                os.chmod(jd, 0o777)
                w = self.rank("999", 1, 2, "wordcount", "--cluster", "mpi", "--job-dir", jd, self.input)
                got = r.poll(8000)
                w.kill() if got else None
                _, err = w.communicate(timeout=20)
                self.assertFalse(got, "the worker rank said hello to the coordinator another user's rendezvous named")
                self.assertNotEqual(w.returncode, 0)
                self.assertIn(rv.encode(), err)
            finally:
                r.close()
                ctx.term()

    def test_defect_rendezvous_without_key_sends_in_clear(self):
        """A rendezvous with no coordinator-key line (rank 0 always writes one) makes a worker
        rank connect without keys to a network address, in clear, where `dbatch worker`
        itself would demand --insecure; it then takes tasks from whoever listens there. A
        worker rank must refuse such a rendezvous: exit non-zero naming it, never
        connecting."""
        jd = self.path("jd")
        os.mkdir(jd)
        with cf.Hosts(1) as hosts:
            ctx, r, ep, _ = self.rogue(hosts, curve=False)
            try:
                rv = os.path.join(jd, "rendezvous")
                with open(rv, "w") as f:
                    f.write("launch mpi-998\nendpoint %s\n" % ep)
                w = self.rank("998", 1, 2, "wordcount", "--cluster", "mpi", "--job-dir", jd, self.input)
                got = r.poll(8000)
                w.kill() if got else None
                _, err = w.communicate(timeout=20)
                self.assertFalse(got, "the worker rank connected in clear to %s" % ep)
                self.assertNotEqual(w.returncode, 0)
                self.assertIn(rv.encode(), err)
            finally:
                r.close()
                ctx.term()

    def test_defect_rank0_writes_its_keys_into_another_users_dir(self):
        """--job-dir names a directory owned by another user: rank 0 writes the launch's
        secret cluster.key and the rendezvous into it, where that user can replace the
        rendezvous (see above) or plant rendezvous.tmp-PID as a link (rv_write opens it with
        O_TRUNC, following links). Rank 0 must refuse such a directory before writing
        anything, naming it."""
        nobody = pwd.getpwnam("nobody")
        jd = self.path("jd")
        os.mkdir(jd)
        os.chown(jd, nobody.pw_uid, nobody.pw_gid)
        os.chmod(jd, 0o777)
        r0 = self.rank("997", 0, 2, "wordcount", "--cluster", "mpi", "--job-dir", jd, self.input, "-o",
                       self.path("out.tsv"))
        try:
            _, err = r0.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            r0.kill()
            _, err = r0.communicate(timeout=10)
        self.assertNotEqual(r0.returncode, 0, err)
        self.assertIn(jd.encode(), err)
        self.assertFalse(os.path.exists(os.path.join(jd, "cluster.key")), "the secret key went into %s" % jd)


# ---------------------------------------------------------------- what works

@unittest.skipIf(MPI_SKIP, MPI_SKIP or "")
class TestMpiWorks(ClusterAdvTest):
    def test_stdin_input_under_cluster(self):
        with open(self.input, "rb") as f:
            r = self.mpirun(3, "wordcount", "--cluster", "auto", "-", "-o", self.path("out.tsv"), "--batch-records",
                            "4000", timeout=60, stdin=f)
        self.assertIsNotNone(r)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)

    def test_rank0_killed_mpirun_fails_and_every_rank_ends(self):
        env = dict(MPI_ENV, DBATCH_FAULT="delay_ms=300")
        p = subprocess.Popen(["mpirun", "--oversubscribe", "-n", "3", "-x", "DBATCH_FAULT", DBATCH, "wordcount",
                              "--cluster", "auto", self.input, "-o", self.path("out.tsv"), "--batch-records", "2000"],
                             cwd=self.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        deadline = time.time() + 20
        rank0 = None
        while rank0 is None and time.time() < deadline:
            for pid in cf.pids_with_env("OMPI_COMM_WORLD_RANK", "0"):
                try:
                    if os.readlink("/proc/%d/exe" % pid) == os.path.realpath(DBATCH) and \
                       os.readlink("/proc/%d/cwd" % pid) == os.path.realpath(self.tmp):
                        rank0 = pid
                except OSError:
                    pass
            time.sleep(0.2)
        self.assertIsNotNone(rank0)
        time.sleep(2)
        os.kill(rank0, 9)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail("mpirun still runs 30 s after rank 0 was killed")
        self.assertNotEqual(p.returncode, 0)
        self.assertFalse(os.path.exists(self.path("out.tsv")))


class TestRanksWork(ClusterAdvTest):
    def test_worker_rank_killed_job_exact(self):
        args = ("wordcount", "--cluster", "mpi", self.input, "-o", self.path("out.tsv"), "--batch-records", "2000")
        slow = {"DBATCH_FAULT": "delay_ms=200"}
        r0 = self.rank("wk", 0, 3, *args)
        w1 = self.rank("wk", 1, 3, *args, extra_env=slow)
        self.rank("wk", 2, 3, *args, extra_env=slow)
        time.sleep(3)
        w1.kill()
        _, err = r0.communicate(timeout=90)
        self.assertEqual(r0.returncode, 0, err)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)

    def test_rendezvous_of_another_launch_is_not_followed(self):
        """A worker rank finds a rendezvous of another launch in its job directory: it keeps
        waiting for its own, which rank 0 writes later; the job is exact."""
        jd = self.path("jd")
        os.mkdir(jd)
        with open(os.path.join(jd, "rendezvous"), "w") as f:
            f.write("launch mpi-elsewhere\nendpoint tcp://127.0.0.1:1\n")
        args = ("wordcount", "--cluster", "mpi", "--job-dir", jd, self.input, "-o", self.path("out.tsv"))
        w = self.rank("mine", 1, 2, *args)
        time.sleep(1.5)
        self.assertIsNone(w.poll())
        r0 = self.rank("mine", 0, 2, *args)
        _, err = r0.communicate(timeout=60)
        self.assertEqual(r0.returncode, 0, err)
        self.assertEqual(w.wait(timeout=20), 0)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)

    def test_hand_started_worker_joins_by_rendezvous(self):
        """`dbatch worker --rendezvous DIR/rendezvous` started by hand joins a running launch
        with the launch's key pair beside it, takes tasks, and ends with the job."""
        args = ("wordcount", "--cluster", "mpi", self.input, "-o", self.path("out.tsv"), "--batch-records", "2000",
                "--summary-json", self.path("summary.json"))
        slow = {"DBATCH_FAULT": "delay_ms=100"}
        r0 = self.rank("hand", 0, 2, *args)
        rv = self.path("dbatch-jobs", "wordcount-mpi-hand", "rendezvous")
        hand = subprocess.Popen([DBATCH, "worker", "--rendezvous", rv, "--connect-timeout", "30"], cwd=self.tmp,
                                env=dict(os.environ, **slow), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(hand)
        time.sleep(1)
        self.rank("hand", 1, 2, *args, extra_env=slow)
        _, err = r0.communicate(timeout=60)
        self.assertEqual(r0.returncode, 0, err)
        self.assertEqual(hand.wait(timeout=20), 0)
        self.assertEqual(slurp(self.path("out.tsv")), self.expected)
        import json
        with open(self.path("summary.json")) as f:
            stats = json.load(f)["worker_stats"]
        self.assertEqual(len(stats), 2)
        self.assertTrue(all(w["tasks"] > 0 for w in stats), stats)


if __name__ == "__main__":
    unittest.main()
