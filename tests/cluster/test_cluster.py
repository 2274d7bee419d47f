"""dbatch on clusters: every rank of srun (a 2-node Slurm cluster, each node in its own
network namespace) or mpirun runs the same command with --cluster auto; rank 0 coordinates,
the others work, found through the rendezvous in the job directory, with a key pair made
for the launch. Then network partitions (nftables inside a host's namespace) mid-job.
Every output is compared byte for byte with a run on --workers 0.

Needs root, network namespaces, slurm-wlm, munge, openmpi-bin, nftables (skipped with the
reason where missing)."""
import os
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
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NET_SKIP = cf.need_root_netns()
SLURM_SKIP = cf.need_slurm()
MPI_SKIP = None if shutil.which("mpirun") else "mpirun is not installed (openmpi-bin)"


def corpus(path, lines=60000):
    with open(path, "w") as f:
        for i in range(lines):
            f.write("rank%d node%d alpha beta w%d café\n" % (i % 7, i % 3, i % 211))
    return path


def reference(path, *more):
    r = subprocess.run([DBATCH, "wordcount", path, "--workers", "0", "--no-job-dir", *more],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


class ClusterTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbx-cluster-")
        os.chmod(self.tmp, 0o755)
        self.input = corpus(os.path.join(self.tmp, "in.txt"))
        self.expected = reference(self.input)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def out(self, name="out.tsv"):
        with open(self.path(name), "rb") as f:
            return f.read()


@unittest.skipIf(SLURM_SKIP, SLURM_SKIP or "")
class TestSlurm(ClusterTest):
    def test_srun_two_nodes_three_ranks(self):
        with cf.Hosts(2) as hosts, cf.SlurmCluster(hosts) as slurm:
            r = slurm.srun(["-N2", "-n3", DBATCH, "wordcount", "--cluster", "auto", self.input,
                            "-o", self.path("out.tsv"), "--batch-records", "4000"], timeout=90, cwd=self.tmp)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(self.out(), self.expected)
            jobs = os.listdir(self.path("dbatch-jobs"))
            self.assertEqual(len(jobs), 1, jobs)
            d = self.path("dbatch-jobs", jobs[0])
            self.assertRegex(jobs[0], r"^wordcount-slurm-\d+\.\d+$")
            # The launch's key pair: this user's only. The rendezvous names rank 0's address
            # on host 1 (rank 0 runs on the first node).
            self.assertEqual(os.stat(os.path.join(d, "cluster.key")).st_mode & 0o777, 0o600)
            with open(os.path.join(d, "rendezvous")) as f:
                rv = f.read()
            self.assertIn("endpoint tcp://%s:" % hosts.addr(1), rv)
            self.assertIn("coordinator-key ", rv)
            # Two workers did the work (the ranks on both nodes), none on rank 0.
            import json
            with open(os.path.join(d, "summary.json")) as f:
                s = json.load(f)
            hosts_seen = {w["host"] for w in s["worker_stats"] if w["tasks"] > 0}
            self.assertEqual(len(s["worker_stats"]), 2, s["worker_stats"])
            self.assertEqual(hosts_seen, {slurm.node(1), slurm.node(2)})

    def test_sbatch_example_script(self):
        with cf.Hosts(2) as hosts, cf.SlurmCluster(hosts) as slurm:
            script = os.path.join(REPO, "examples", "slurm", "wordcount.sbatch")
            env = dict(slurm.env, DBATCH=DBATCH, INPUT=self.input, OUTPUT=self.path("out.tsv"))
            jobid = slurm.sbatch(script, cwd=self.tmp, env=env)
            state = slurm.wait_job(jobid, timeout=90)
            log = ""
            for f in os.listdir(slurm.base):
                if f.startswith("slurm-"):
                    with open(os.path.join(slurm.base, f)) as fh:
                        log += fh.read()
            self.assertEqual(state, "COMPLETED", log)
            self.assertEqual(self.out(), self.expected)

    def test_worker_rank_cut_off_mid_job(self):
        """Host 2's link to the others is cut while its worker rank holds tasks: they run again
        on host 1's worker, the answer is the same; rank 0's exit status is the job's."""
        with cf.Hosts(2) as hosts, cf.SlurmCluster(hosts) as slurm:
            env = dict(slurm.env, DBATCH_FAULT="delay_ms=150")
            p = subprocess.Popen(["timeout", "120", "srun", "-t", "2", "-N2", "-n3", "--kill-on-bad-exit=0",
                                  DBATCH, "wordcount", "--cluster", "auto", self.input, "-o", self.path("out.tsv"),
                                  "--batch-records", "1500", "--worker-timeout", "3", "--heartbeat", "0.5"],
                                 cwd=self.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                time.sleep(2.5)
                hosts.cut(2, addrs=[hosts.addr(1)])
                out, err = p.communicate(timeout=110)
            finally:
                hosts.heal(2)
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.assertEqual(self.out(), self.expected, err.decode(errors="replace"))
            self.assertIn(b"silent", err + out)  # the cut-off worker was noticed


@unittest.skipIf(MPI_SKIP, MPI_SKIP or "")
class TestMpi(ClusterTest):
    def test_mpirun_three_ranks(self):
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_btl="self,tcp", OMPI_MCA_btl_tcp_if_include="lo")
        r = subprocess.run(["timeout", "120", "mpirun", "--oversubscribe", "-n", "3", DBATCH, "wordcount",
                            "--cluster", "auto", self.input, "-o", self.path("out.tsv"), "--batch-records", "4000"],
                           cwd=self.tmp, env=env, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.out(), self.expected)
        # Only rank 0 wrote: one output, one job directory, named after the launch.
        jobs = os.listdir(self.path("dbatch-jobs"))
        self.assertEqual(len(jobs), 1)
        self.assertTrue(jobs[0].startswith("wordcount-mpi-"), jobs)

    def test_explicit_mode_outside_its_launcher(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "SLURM_"))}
        for mode, var in (("mpi", "OMPI_COMM_WORLD_RANK"), ("slurm", "SLURM_PROCID"), ("auto", "srun, mpirun")):
            r = subprocess.run([DBATCH, "wordcount", "--cluster", mode, self.input], env=env, capture_output=True,
                               cwd=self.tmp, timeout=30)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(var.encode(), r.stderr)


@unittest.skipIf(NET_SKIP, NET_SKIP or "")
class TestPartitions(ClusterTest):
    """A coordinator on the bridge, keyed workers in two namespaces, links cut with nftables."""

    def keys(self):
        ck, wk = self.path("coord.key"), self.path("worker.key")
        for k in (ck, wk):
            subprocess.run([DBATCH, "keygen", k], check=True, capture_output=True)
        with open(wk + ".pub") as f, open(self.path("authz"), "w") as a:
            a.write(f.read())
        return ck, wk

    def start(self, hosts, port, *coord_more, fault="delay_ms=300", timeout="3"):
        ck, wk = self.keys()
        coord = subprocess.Popen([DBATCH, "wordcount", self.input, "--workers", "0", "--no-job-dir",
                                  "--listen", "%s:%d" % (hosts.bridge_addr, port), "--key", ck,
                                  "--authorized-keys", self.path("authz"), "--batch-records", "1500",
                                  "--worker-timeout", timeout, "--heartbeat", "0.5", "--wait-workers", "2",
                                  "-o", self.path("out.tsv"), *coord_more],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        env = dict(os.environ, DBATCH_FAULT=fault)
        workers = [hosts.popen(i, [DBATCH, "worker", "--connect", "%s:%d" % (hosts.bridge_addr, port),
                                   "--key", wk, "--coordinator-key", ck + ".pub", "--allow-read", self.tmp,
                                   "--slots", "1", "--heartbeat", "0.5", "--timeout", timeout],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (1, 2)]
        return coord, workers

    def test_cut_worker_reruns_elsewhere_then_rejoins(self):
        """Host 1 is cut off past --worker-timeout: its tasks run again on host 2. Healed while
        the job still runs, host 1's worker joins again and takes tasks; both end with it."""
        with cf.Hosts(2) as hosts:
            port = 47000 + os.getpid() % 1000
            coord, workers = self.start(hosts, port, "--summary-json", self.path("summary.json"),
                                        fault="delay_ms=400")
            try:
                time.sleep(2.0)
                hosts.cut(1)
                time.sleep(4.5)
                hosts.heal(1)
                _, err = coord.communicate(timeout=120)
                self.assertEqual(coord.returncode, 0, err)
            finally:
                hosts.heal(1)
                if coord.poll() is None:
                    coord.kill()
                    coord.communicate()
            self.assertEqual(self.out(), self.expected)
            self.assertIn(b"silent", err)
            for w in workers:
                _, werr = w.communicate(timeout=30)
                self.assertEqual(w.returncode, 0, werr)
            import json
            with open(self.path("summary.json")) as f:
                s = json.load(f)
            states = [(w["id"], w["state"], w["tasks"]) for w in s["worker_stats"]]
            self.assertEqual(len(states), 3, states)  # host 1's worker, lost, then back as a new one
            self.assertIn("lost", [st for _, st, _ in states], states)
            self.assertGreater(states[-1][2], 0, states)

    def test_short_cut_of_the_coordinator_link_loses_nothing(self):
        """Cut for less than --worker-timeout: TCP holds the connection, nothing is retried."""
        with cf.Hosts(2) as hosts:
            port = 48000 + os.getpid() % 1000
            coord, workers = self.start(hosts, port, timeout="8")
            try:
                time.sleep(1.5)
                hosts.cut(1)
                hosts.cut(2)
                time.sleep(2.0)
                hosts.heal(1)
                hosts.heal(2)
                _, err = coord.communicate(timeout=120)
                self.assertEqual(coord.returncode, 0, err)
            finally:
                for i in (1, 2):
                    hosts.heal(i)
                if coord.poll() is None:
                    coord.kill()
                    coord.communicate()
            self.assertEqual(self.out(), self.expected)
            self.assertNotIn(b"silent", err)
            for w in workers:
                _, werr = w.communicate(timeout=30)
                self.assertEqual(w.returncode, 0, werr)


class TestIndexedJob(ClusterTest):
    """The --cluster k8s code path, run as an Indexed Job would run it but as local processes:
    JOB_COMPLETION_INDEX per process, the size and pod 0's address from the environment, one
    key pair (a Secret's file) shared by every rank."""

    def test_three_indexes(self):
        key = self.path("cluster.key")
        subprocess.run([DBATCH, "keygen", key], check=True, capture_output=True)
        port = 43000 + os.getpid() % 2000
        procs = []
        try:
            for i in (2, 1, 0):  # workers first: they wait for pod 0
                env = dict(os.environ, JOB_COMPLETION_INDEX=str(i), DBATCH_CLUSTER_SIZE="3",
                           DBATCH_COORDINATOR="127.0.0.1:%d" % port, DBATCH_LAUNCH_ID="wc", DBATCH_SLOTS="2")
                procs.append(subprocess.Popen([DBATCH, "wordcount", "--cluster", "auto", "--key", key, self.input,
                                               "-o", self.path("out.tsv"), "--batch-records", "4000"],
                                              cwd=self.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            res = [p.communicate(timeout=120) for p in procs]
            for p, (out, err) in zip(procs, res):
                self.assertEqual(p.returncode, 0, err)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        self.assertEqual(self.out(), self.expected)
        import json
        jobs = os.listdir(self.path("dbatch-jobs"))
        self.assertEqual(jobs, ["wordcount-k8s-wc"])
        with open(self.path("dbatch-jobs", jobs[0], "summary.json")) as f:
            s = json.load(f)
        self.assertEqual(sorted(w["slots"] for w in s["worker_stats"]), [2, 2])
        # Without the shared key, pod 0 refuses to start; a worker index says why too.
        env = dict(os.environ, JOB_COMPLETION_INDEX="0", DBATCH_CLUSTER_SIZE="3", DBATCH_COORDINATOR="127.0.0.1:1")
        r = subprocess.run([DBATCH, "wordcount", "--cluster", "k8s", self.input], cwd=self.tmp, env=env,
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(b"--key", r.stderr)


if __name__ == "__main__":
    unittest.main()
