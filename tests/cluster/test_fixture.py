"""Self-test of cluster_fixture: the test beds the cluster tests stand on.

Run from the repository root:  /usr/bin/python3 -m unittest -v tests/cluster/test_fixture.py
Needs root and network namespaces (skipped otherwise); the Slurm tests need slurm-wlm and
munge, the MPI test openmpi-bin.  Safe to run in several processes at once.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_fixture as cf  # noqa: E402

NET_SKIP = cf.need_root_netns()
SLURM_SKIP = cf.need_slurm()

# Connect to ADDR PORT within TIMEOUT s and print what the peer sends; exit 1 on failure.
CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(s.recv(64).decode().strip())
except OSError as e:
    print("connect failed:", e)
    sys.exit(1)
"""

# Listen on ADDR:PORT, say "ready", answer one connection with "hello from ADDR".
SERVE_ONCE = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(10)
print("ready", flush=True)
c, _ = s.accept()
c.sendall(("hello from %s\n" % sys.argv[1]).encode())
c.close()
"""


class Listener:
    """A TCP server in this process (outside the namespaces) answering 'hello' to everyone."""

    def __init__(self, addr):
        self.sock = socket.socket()
        self.sock.bind((addr, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with c:
                c.sendall(b"hello\n")

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def connect_from(hosts, i, addr, port, timeout):
    """Connect from host i to addr:port; (ok, elapsed seconds, output)."""
    t0 = time.monotonic()
    p = hosts.run(i, [sys.executable, "-c", CONNECT, addr, str(port), str(timeout)],
                  timeout=timeout + 10)
    return p.returncode == 0, time.monotonic() - t0, (p.stdout + p.stderr).strip()


def netns_names():
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in p.stdout.splitlines() if line.strip()}


def link_names():
    p = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10)
    return {m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", p.stdout, re.M)}


def running(pattern):
    """Pids (not zombies) whose command line matches pattern, as pgrep -f sees them."""
    p = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, timeout=10)
    return [pid for pid in map(int, p.stdout.split()) if cf._alive(pid)]


@unittest.skipIf(NET_SKIP, NET_SKIP)
class HostsTest(unittest.TestCase):

    def assert_gone(self, h):
        """Nothing of Hosts h is left: namespaces, veths, bridge."""
        names = [h.bridge] + ["dbc%sv%d" % (h.tag, i) for i in range(1, h.n + 1)]
        self.assertFalse(set(names) & link_names(), "links left behind")
        spaces = ["dbc%sh%d" % (h.tag, i) for i in range(1, h.n + 1)]
        self.assertFalse(set(spaces) & netns_names(), "namespaces left behind")

    def test_addresses_and_reachability(self):
        with cf.Hosts(2) as h:
            self.assertTrue(h.bridge_addr.startswith("10.201.") and h.bridge_addr.endswith(".1"))
            self.assertEqual(h.addr(1), h.bridge_addr[:-1] + "11")
            self.assertLessEqual(max(len(h.bridge), len(h.veth(2))), 15)
            for i in (1, 2):
                out = h.run(i, ["ip", "-4", "-o", "addr", "show", "eth0"], timeout=10).stdout
                self.assertIn(" %s/24 " % h.addr(i), out)
            # Every host reaches a listener on the bridge address.
            srv = Listener(h.bridge_addr)
            try:
                for i in (1, 2):
                    ok, _, out = connect_from(h, i, h.bridge_addr, srv.port, 2)
                    self.assertTrue(ok, "host %d -> bridge: %s" % (i, out))
                    self.assertEqual(out, "hello")
            finally:
                srv.close()
            # Host 2 reaches a server on host 1, and so does this process (outside).
            for client in (2, None):
                server = h.popen(1, [sys.executable, "-c", SERVE_ONCE, h.addr(1), "7000"],
                                 stdout=subprocess.PIPE, text=True)
                self.assertEqual(server.stdout.readline().strip(), "ready")
                if client:
                    ok, _, out = connect_from(h, client, h.addr(1), 7000, 2)
                    self.assertTrue(ok, "host 2 -> host 1: " + out)
                else:
                    with socket.create_connection((h.addr(1), 7000), timeout=2) as s:
                        out = s.recv(64).decode().strip()
                self.assertEqual(out, "hello from " + h.addr(1))
                self.assertEqual(server.wait(5), 0)
                server.stdout.close()
        self.assert_gone(h)

    def test_cut_and_heal(self):
        with cf.Hosts(2) as h:
            srv = Listener(h.bridge_addr)
            try:
                self.assertTrue(connect_from(h, 1, h.bridge_addr, srv.port, 2)[0])
                h.cut(1)
                ok, elapsed, out = connect_from(h, 1, h.bridge_addr, srv.port, 1.5)
                self.assertFalse(ok, "cut host 1 still connects: " + out)
                self.assertIn("timed out", out)
                self.assertLess(elapsed, 2.5)
                ok, _, out = connect_from(h, 2, h.bridge_addr, srv.port, 2)
                self.assertTrue(ok, "host 2 is not cut but: " + out)
                h.heal(1)
                ok, elapsed, out = connect_from(h, 1, h.bridge_addr, srv.port, 2)
                self.assertTrue(ok, "healed host 1: " + out)
                h.heal(1)                               # healing twice is harmless
            finally:
                srv.close()
        self.assert_gone(h)

    def test_two_instances_at_once(self):
        with cf.Hosts(1) as a, cf.Hosts(1) as b:
            self.assertNotEqual(a.tag, b.tag)
            self.assertNotEqual(a.subnet, b.subnet)
            self.assertNotEqual(a.ns(1), b.ns(1))
            for h in (a, b):
                srv = Listener(h.bridge_addr)
                try:
                    ok, _, out = connect_from(h, 1, h.bridge_addr, srv.port, 2)
                    self.assertTrue(ok, "%s -> its bridge: %s" % (h.ns(1), out))
                finally:
                    srv.close()
        self.assert_gone(a)
        self.assert_gone(b)

    def test_teardown_kills_processes(self):
        with cf.Hosts(1) as h:
            p = h.popen(1, ["sleep", "60"])
            # Not started with popen: still killed, or it would keep the namespace alive.
            stray = subprocess.Popen(h.nsenter(1) + ["sleep", "60"], start_new_session=True)
            # Inside the namespace before teardown looks (nsenter under load takes a while).
            deadline = time.time() + 10
            while stray.pid not in cf.pids_in_netns(h.ns(1)) and time.time() < deadline:
                time.sleep(0.02)
        self.assertIsNotNone(p.poll())
        self.assertEqual(stray.wait(5), -9)
        self.assert_gone(h)

    def test_failed_setup_cleans_up(self):
        class Broken(cf.Hosts):
            def addr(self, i):                  # fails after host 2's namespace and veth exist
                if i == 2:
                    raise RuntimeError("injected failure")
                return super().addr(i)
        h = Broken(3)
        with self.assertRaisesRegex(RuntimeError, "injected failure"):
            with h:
                self.fail("setup should have failed")
        self.assertIsNotNone(h.tag)
        self.assert_gone(h)


@unittest.skipIf(SLURM_SKIP, SLURM_SKIP)
class SlurmClusterTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.hosts = cf.Hosts(2).start()
        try:
            cls.cluster = cf.SlurmCluster(cls.hosts).start()
        except BaseException:
            cls.hosts.close(raise_errors=False)
            raise
        print("\nSlurm cluster %s up in %.2f s" % (cls.cluster.name, cls.cluster.startup_seconds),
              file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.cluster.close()
        finally:
            cls.hosts.close()

    def test_srun_tasks_run_in_node_namespaces(self):
        c, h = self.cluster, self.hosts
        shared = c.path("shared")
        os.mkdir(shared)
        script = ("echo $SLURM_PROCID $SLURM_NTASKS $SLURMD_NODENAME; ip -4 -o addr show eth0; "
                  "hostname > %s/rank.$SLURM_PROCID" % shared)
        p = c.srun(["-l", "-N2", "-n3", "sh", "-c", script], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr + c.log_tails())
        ranks, addrs = {}, {}
        for line in p.stdout.splitlines():
            task, rest = line.split(":", 1)
            m = re.search(r"inet (\S+)/24", rest)
            if m:
                addrs[int(task)] = m.group(1)
            else:
                ranks[int(task)] = rest.split()
        self.assertEqual(sorted(ranks), [0, 1, 2], p.stdout)
        self.assertEqual({r[1] for r in ranks.values()}, {"3"})
        self.assertEqual({r[2] for r in ranks.values()}, set(c.nodes), "3 ranks on 2 nodes")
        for task, (rank, _, node) in ranks.items():
            # The task's eth0 is its node's namespace's, and its hostname the node name.
            self.assertEqual(addrs[task], h.addr(c.nodes.index(node) + 1), p.stdout)
            with open(os.path.join(shared, "rank." + rank)) as f:   # written by the task
                self.assertEqual(f.read().strip(), node)

    def test_srun_exit_code(self):
        p = self.cluster.srun(["-N1", "sh", "-c", "exit 3"], timeout=30)
        self.assertNotEqual(p.returncode, 0)

    def test_sbatch_runs_to_completed(self):
        c = self.cluster
        script = c.path("ok.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho batch on $SLURMD_NODENAME\n")
        jobid = c.sbatch(script, timeout=30)
        self.assertEqual(c.wait_job(jobid, timeout=30), "COMPLETED")
        with open(c.path("slurm-%s.out" % jobid)) as f:
            self.assertRegex(f.read(), r"^batch on %sn\d\n$" % c.name)
        # A failing script ends FAILED.
        bad = c.path("bad.sh")
        with open(bad, "w") as f:
            f.write("#!/bin/sh\nexit 7\n")
        self.assertEqual(c.wait_job(c.sbatch(bad, timeout=30), timeout=30), "FAILED")


@unittest.skipIf(SLURM_SKIP, SLURM_SKIP)
class SlurmTeardownTest(unittest.TestCase):

    @staticmethod
    def comms(pids):
        names = set()
        for pid in pids:
            try:
                with open("/proc/%d/comm" % pid) as f:
                    names.add(f.read().strip())
            except OSError:
                pass
        return names

    def test_teardown_leaves_nothing(self):
        with cf.Hosts(1) as h:
            with cf.SlurmCluster(h) as c:
                base, node = c.base, c.node(1)
                # A job still running at teardown: srun here, slurmstepd and task in host 1.
                srun = subprocess.Popen(["srun", "-t", "1", "sleep", "60"], env=c.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 10
                while not self.comms(cf.pids_in_netns(h.ns(1))) >= {"slurmstepd", "sleep"}:
                    self.assertLess(time.monotonic(), deadline, "job step did not start")
                    time.sleep(0.05)
        srun.wait(5)
        self.assertFalse(os.path.exists(base))
        for pattern in (base, "slurmd .*-N %s" % node):
            self.assertEqual(running(pattern), [], "left running: " + pattern)
        self.assertEqual(cf.pids_with_env("DBC_CLUSTER", base), [])
        self.assertNotIn(h.ns(1), netns_names())
        self.assertFalse({h.bridge, h.veth(1)} & link_names())

    def test_startup_failure_names_the_daemon_and_cleans_up(self):
        with cf.Hosts(1) as h:
            c = cf.SlurmCluster(h, extra_conf="NoSuchSlurmOption=1")
            with self.assertRaises(cf.FixtureError) as ctx:
                c.start()
            msg = str(ctx.exception)
            self.assertIn("slurmctld", msg)
            self.assertIn("NoSuchSlurmOption", msg)      # the log tail says why
            self.assertFalse(os.path.exists(c.base))
            self.assertEqual(running(c.base), [])


@unittest.skipUnless(shutil.which("mpirun"), "openmpi-bin not installed")
class MpirunTest(unittest.TestCase):

    def test_mpirun_on_this_machine(self):
        p = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3",
                            "sh", "-c", "echo $OMPI_COMM_WORLD_RANK $OMPI_COMM_WORLD_SIZE"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(sorted(p.stdout.splitlines()), ["0 3", "1 3", "2 3"])


if __name__ == "__main__":
    unittest.main()
