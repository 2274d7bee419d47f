"""cluster_fixture.py -- throwaway multi-host test beds for dbatch cluster tests.

Two context managers, standard library only (runs under Debian's /usr/bin/python3, as root):

  Hosts(n)            a Linux bridge and n network namespaces ("hosts") on it, each with its
                      own address; run commands on a host, partition it from the bridge
                      address with nftables (cut) and heal it again.
  SlurmCluster(hosts) munged + slurmctld (on the bridge address) + one slurmd per host, each
                      slurmd inside its host's network namespace under the host's node name.

    with Hosts(2) as h, SlurmCluster(h) as c:
        p = c.srun(["-N2", "-n2", "hostname"])

Everything an instance creates is named after a tag derived from os.getpid() plus an
in-process counter (interface, namespace and node names, subnet 10.201.X.0/24, Slurm
ports), so several test processes can run side by side.  Teardown removes namespaces,
links, daemons, their children and the state directory even after a failure, including
a failure half-way through setup.  Every wait is bounded.

Facts this relies on (see TESTBEDS.md): commands go into a namespace with
`nsenter --net=/run/netns/NAME` (`ip netns exec` remounts /sys, which breaks slurmd's
cgroup plugin); Slurm tasks inherit their slurmd's network namespace and see the same
filesystem as the test; `srun` waits forever for resources, so it always runs under
`timeout`.
"""

import fcntl
import functools
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from dbx import log_tail, pid_alive  # noqa: E402

NETNS_DIR = "/run/netns"
# Serialises the choice of names and subnet between fixture instances of all processes.
LOCK_PATH = os.path.join("/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir(),
                         "dbatch-cluster-fixture.lock")
SUBNET_FMT = "10.201.{}.0/24"
HOST_OFFSET = 10                     # host i has address .(10 + i); the bridge has .1
CUT_TABLE = "dbxcut"                 # nftables table that cut() installs in a namespace
NET_BINARIES = ("ip", "nsenter", "unshare", "nft")
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "sinfo", "scontrol")
# Slurm job states after which a job does not change any more.
FINAL_JOB_STATES = frozenset((
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"))

_instances = itertools.count()
_instances_lock = threading.Lock()


class FixtureError(RuntimeError):
    """A test bed could not be set up or torn down; the message names what failed."""


# ---------------------------------------------------------------------------------------
# small helpers

def _cmd(argv, timeout=10, check=True, input=None):
    """Run argv with output captured (text); raise FixtureError naming it on failure."""
    try:
        p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FixtureError("%s: no answer within %g s" % (" ".join(argv), timeout)) from None
    except OSError as e:
        raise FixtureError("%s: %s" % (" ".join(argv), e)) from None
    if check and p.returncode != 0:
        raise FixtureError("%s failed (exit %d): %s"
                           % (" ".join(argv), p.returncode, (p.stderr or p.stdout).strip()))
    return p


def _base36(n):
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = digits[r] + s
        if n == 0:
            return s


def _next_instance():
    with _instances_lock:
        return next(_instances)


class _GlobalLock:
    """An flock on LOCK_PATH, taken with a bounded wait (holders keep it for milliseconds)."""

    def __init__(self, timeout=10.0):
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        self.fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise FixtureError("lock %s still held after %g s" % (LOCK_PATH, self.timeout))
                time.sleep(0.02)

    def __exit__(self, *exc):
        os.close(self.fd)          # closing the descriptor releases the flock


_tail = log_tail  # dbx.py: the fixtures share them
_alive = pid_alive


def _stop_processes(procs, grace=5.0, kill_wait=5.0):
    """SIGTERM each (Popen, group) pair, SIGKILL what is left after grace seconds.

    group=True signals the whole process group (processes started in their own session).
    Returns the descriptions of processes that still did not exit.
    """
    def signal_it(p, group, sig):
        try:
            if group:
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    live = [(p, g) for p, g in procs if p.poll() is None]
    for p, g in live:
        signal_it(p, g, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p, g in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        if g:                       # the rest of its group, leader gone or not
            signal_it(p, g, signal.SIGKILL)
    stuck = []
    for p, g in live:
        if p.poll() is None:
            signal_it(p, g, signal.SIGKILL)
            try:
                p.wait(kill_wait)
            except subprocess.TimeoutExpired:
                stuck.append("pid %d (%s)" % (p.pid, " ".join(map(str, p.args))[:120]))
    return stuck


def _kill_pids(pids, wait=5.0):
    """SIGKILL pids (not our children) and wait, bounded, until they are gone; returns survivors."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    left = [pid for pid in pids if _alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if _alive(pid)]
    return left


def _all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_in_netns(name):
    """Pids of the processes whose network namespace is /run/netns/NAME."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    found = []
    for pid in _all_pids():
        try:
            s = os.stat("/proc/%d/ns/net" % pid)
        except OSError:
            continue
        if (s.st_ino, s.st_dev) == (st.st_ino, st.st_dev) and pid != os.getpid():
            found.append(pid)
    return found


def pids_with_env(name, value):
    """Pids of the processes whose environment holds NAME=VALUE."""
    needle = ("%s=%s" % (name, value)).encode()
    found = []
    for pid in _all_pids():
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env and pid != os.getpid():
            found.append(pid)
    return found


# ---------------------------------------------------------------------------------------
# skip reasons

@functools.lru_cache(maxsize=None)
def need_root_netns():
    """None if Hosts can work here, else the reason to skip (for unittest.skip)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, nftables)"
    missing = [b for b in NET_BINARIES if not shutil.which(b)]
    if missing:
        return "missing binaries: " + " ".join(missing)
    # Try the real thing in a throwaway namespace: a veth pair and an nftables table.
    probe = "dbcprobe%d" % os.getpid()
    try:
        _cmd(["ip", "netns", "add", probe])
    except FixtureError as e:
        return "ip netns not usable: %s" % e
    try:
        nsenter = ["nsenter", "--net=%s/%s" % (NETNS_DIR, probe)]
        _cmd(["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        _cmd(nsenter + ["nft", "-f", "-"], input="table inet probe {\n}\n")
    except FixtureError as e:
        return "network namespaces not usable: %s" % e
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@functools.lru_cache(maxsize=None)
def need_slurm():
    """None if SlurmCluster can work here, else the reason to skip."""
    reason = need_root_netns()
    if reason:
        return reason
    missing = [b for b in SLURM_BINARIES if not shutil.which(b)]
    if missing:
        return "missing Slurm/munge binaries: " + " ".join(missing)
    return None


# ---------------------------------------------------------------------------------------
# Hosts

class _Managed:
    """A test bed used in a with-statement: start() on entry, close() on exit (raising its
    own errors only when no other exception is on its way)."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(raise_errors=exc_type is None)


class Hosts(_Managed):
    """A bridge plus n network namespaces on it, one per simulated host.

    Host i (1-based) has namespace ns(i), interface eth0 with address addr(i) in the
    instance's own /24, and a veth whose bridge-side end is veth(i).  The bridge has
    bridge_addr, where a process running outside the namespaces (a coordinator, slurmctld)
    can listen and be reached from every host.  Namespaces have no default route: they
    reach the bridge address and each other, nothing else.
    """

    def __init__(self, n=2):
        if not 1 <= n <= 200:
            raise ValueError("Hosts(n): n must be 1..200, got %r" % (n,))
        self.n = n
        self.tag = None              # short unique name part, e.g. "2k9x0"
        self.bridge = None           # bridge interface name
        self.subnet = None           # ipaddress.IPv4Network
        self.bridge_addr = None      # str, host side address on the bridge
        self._netns = []             # namespaces created (for teardown)
        self._links = []             # host-side links created (for teardown)
        self._procs = []             # (Popen, own process group) started by popen()
        self._cut = set()
        self._closed = False

    # -- lifecycle: start(), close(); with-statement from _Managed

    def start(self):
        """Create bridge and namespaces; on any failure remove what was made, then raise."""
        try:
            self._setup()
        except BaseException:
            self.close(raise_errors=False)
            raise
        return self

    def _setup(self):
        with _GlobalLock():
            # Names: pid in base 36 plus an instance counter; skip any still in use (a
            # leftover of a dead process that had the same pid).  Never delete those.
            while True:
                tag = _base36(os.getpid()) + _base36(_next_instance())
                names = ["dbc%sb" % tag] + ["dbc%sv%d" % (tag, i) for i in range(1, self.n + 1)]
                spaces = ["dbc%sh%d" % (tag, i) for i in range(1, self.n + 1)]
                if not any(os.path.exists("/sys/class/net/" + x) for x in names) and \
                   not any(os.path.exists(os.path.join(NETNS_DIR, x)) for x in spaces):
                    break
            self.tag = tag
            self.bridge = names[0]
            self.subnet = self._free_subnet()
            self.bridge_addr = str(self.subnet.network_address + 1)
            # The bridge gets its address while the lock is held: that marks the subnet taken.
            self._links.append(self.bridge)
            _cmd(["ip", "link", "add", self.bridge, "type", "bridge"])
            _cmd(["ip", "addr", "add", "%s/%d" % (self.bridge_addr, self.subnet.prefixlen),
                  "dev", self.bridge])
            _cmd(["ip", "link", "set", self.bridge, "up"])
        for i in range(1, self.n + 1):
            ns, veth = self.ns(i), self.veth(i)
            self._netns.append(ns)
            _cmd(["ip", "netns", "add", ns])
            self._links.append(veth)
            _cmd(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _cmd(["ip", "link", "set", veth, "master", self.bridge, "up"])
            _cmd(["ip", "-n", ns, "addr", "add",
                  "%s/%d" % (self.addr(i), self.subnet.prefixlen), "dev", "eth0"])
            _cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
            _cmd(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _free_subnet(self):
        """A 10.201.X.0/24 that no interface or route of this machine uses (lock held)."""
        used = []
        for argv in (["ip", "-4", "-o", "addr", "show"],
                     ["ip", "-4", "route", "show", "table", "all"]):
            for m in re.finditer(r"(?<![\d.])(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", _cmd(argv).stdout):
                try:
                    used.append(ipaddress.ip_network(m.group(1), strict=False))
                except ValueError:
                    pass
        start = os.getpid() % 250
        for k in range(250):
            net = ipaddress.ip_network(SUBNET_FMT.format(1 + (start + k) % 250))
            if not any(net.overlaps(u) and u.prefixlen > 0 for u in used):
                return net
        raise FixtureError("no free subnet of the form %s" % SUBNET_FMT)

    def close(self, raise_errors=True):
        """Kill what runs on the hosts, delete namespaces, veths and bridge.  Idempotent.

        Errors are collected (everything is attempted); they raise FixtureError when
        raise_errors, else they are printed to stderr (another error is already on its way).
        """
        if self._closed:
            return
        self._closed = True
        errors = ["still running: " + s for s in _stop_processes(self._procs, grace=2.0)]
        # Anything else still in a namespace (slurmstepd, tasks, strays) would keep the
        # namespace and its veth alive after `ip netns del`.
        for ns in self._netns:
            left = _kill_pids(pids_in_netns(ns))
            if left:
                errors.append("processes in %s did not die: %s" % (ns, left))
        for ns in self._netns:
            if os.path.exists(os.path.join(NETNS_DIR, ns)):
                p = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                                   timeout=10)
                if p.returncode:
                    errors.append("ip netns del %s: %s" % (ns, p.stderr.strip()))
        for link in reversed(self._links):   # veths first, then the bridge
            if os.path.exists("/sys/class/net/" + link):
                p = subprocess.run(["ip", "link", "del", link], capture_output=True, text=True,
                                   timeout=10)
                if p.returncode and os.path.exists("/sys/class/net/" + link):
                    errors.append("ip link del %s: %s" % (link, p.stderr.strip()))
        if errors:
            msg = "Hosts(%s) teardown: %s" % (self.tag, "; ".join(errors))
            if raise_errors:
                raise FixtureError(msg)
            print(msg, file=sys.stderr)

    # -- naming

    def _check(self, i):
        if not 1 <= i <= self.n:
            raise IndexError("host %r: hosts are 1..%d" % (i, self.n))

    def ns(self, i):
        """Name of host i's network namespace (under /run/netns)."""
        self._check(i)
        return "dbc%sh%d" % (self.tag, i)

    def veth(self, i):
        """Bridge-side interface of host i (`ip link set VETH down` pulls its cable)."""
        self._check(i)
        return "dbc%sv%d" % (self.tag, i)

    def addr(self, i):
        """Address of host i (its eth0), e.g. 10.201.X.11 for host 1."""
        self._check(i)
        return str(self.subnet.network_address + HOST_OFFSET + i)

    def nsenter(self, i):
        """argv prefix that runs a command in host i's network namespace."""
        return ["nsenter", "--net=%s/%s" % (NETNS_DIR, self.ns(i))]

    # -- running things on a host

    def popen(self, i, argv, **kw):
        """Popen argv in host i's network namespace.

        Starts a new session by default, so teardown kills the process and its children
        (any process of the namespace is killed at teardown anyway).
        """
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self.nsenter(i) + list(argv), **kw)
        self._procs.append((p, kw["start_new_session"]))
        return p

    def run(self, i, argv, timeout=30, **kw):
        """subprocess.run argv in host i's namespace; output captured as text unless
        stdout/stderr are given.  Raises subprocess.TimeoutExpired after timeout s."""
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.nsenter(i) + list(argv), timeout=timeout, **kw)

    # -- partitions

    def cut(self, i, addrs=None):
        """Drop host i's traffic to and from addrs (default: the bridge address).

        nftables rules inside the namespace: established TCP connections stall, new ones
        time out.  Pass other hosts' addresses to partition hosts from each other.
        """
        addrs = [self.bridge_addr] if addrs is None else list(addrs)
        if i in self._cut:
            self.heal(i)
        out_rules = "".join("    ip daddr %s drop\n" % a for a in addrs)
        in_rules = "".join("    ip saddr %s drop\n" % a for a in addrs)
        ruleset = ("table inet %s {\n"
                   "  chain out {\n    type filter hook output priority 0; policy accept;\n%s  }\n"
                   "  chain in {\n    type filter hook input priority 0; policy accept;\n%s  }\n"
                   "}\n") % (CUT_TABLE, out_rules, in_rules)
        _cmd(self.nsenter(i) + ["nft", "-f", "-"], input=ruleset)
        self._cut.add(i)

    def heal(self, i):
        """Undo cut(i); established TCP connections recover about 1.5 s later."""
        self._check(i)
        if i in self._cut:
            _cmd(self.nsenter(i) + ["nft", "delete", "table", "inet", CUT_TABLE])
            self._cut.discard(i)


# ---------------------------------------------------------------------------------------
# Slurm

def _port_pair(tag_number):
    """Two consecutive TCP ports outside the ephemeral range, free on this machine now.

    Start from a point derived from the pid and instance, so concurrent fixtures start far
    apart; the bind test catches the rest.
    """
    lo, hi = 20000, 28000
    start = (tag_number * 2) % (hi - lo)
    for k in range(0, hi - lo, 2):
        port = lo + (start + k) % (hi - lo)
        socks = []
        try:
            for p in (port, port + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return port, port + 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise FixtureError("no free TCP port pair in %d..%d" % (lo, hi))


class SlurmCluster(_Managed):
    """A Slurm 22.05 cluster over a Hosts: node i is host i.

    munged and slurmctld run on the machine (slurmctld reached at hosts.bridge_addr);
    slurmd for node(i) runs in host i's network namespace in its own UTS namespace
    (hostname = node name).  Tasks run in their node's network namespace and share the
    test's filesystem.  No PMIx: `srun --mpi=pmix` needs libpmix.so (libpmix-dev), which
    scripts/install-deps.sh does not install; use mpirun for MPI.

    Clients need `env` (SLURM_CONF, and a marker teardown uses to find leftovers).
    Everything (config, munge key, state, spool, logs) lives under `base`, removed at
    teardown.  Job output of sbatch() goes to base/slurm-JOBID.out.
    """

    def __init__(self, hosts, cpus=2, memory=1000, extra_conf="", start_timeout=20):
        if hosts.tag is None:
            raise FixtureError("SlurmCluster needs a started Hosts (inside `with Hosts(..)`)")
        self.hosts = hosts
        self.cpus = cpus
        self.memory = memory
        self.extra_conf = extra_conf
        self.start_timeout = start_timeout
        self.name = "d" + hosts.tag                       # ClusterName, node name prefix
        self.nodes = ["%sn%d" % (self.name, i) for i in range(1, hosts.n + 1)]
        self.base = None
        self.conf = None
        self.env = None
        self.ctld_port = self.slurmd_port = None
        self.startup_seconds = None
        self._munged = None
        self._slurmctld = None
        self._slurmds = []
        self._closed = False

    # -- lifecycle: start(), close(); with-statement from _Managed

    def node(self, i):
        """Slurm node name of host i."""
        self.hosts._check(i)
        return self.nodes[i - 1]

    def path(self, *parts):
        """A path under base."""
        return os.path.join(self.base, *parts)

    def start(self):
        """Start munged, slurmctld and the slurmds; wait until every node is idle.

        On failure, stop what started, remove base and raise FixtureError with the tails
        of all daemon logs (they are gone with base afterwards).
        """
        t0 = time.monotonic()
        try:
            self._setup()
        except BaseException as e:
            logs = self.log_tails()
            self.close(raise_errors=False)
            if isinstance(e, FixtureError):
                raise FixtureError("SlurmCluster %s: %s\n%s" % (self.name, e, logs)) from None
            if isinstance(e, Exception):
                raise FixtureError("SlurmCluster %s: %s: %s\n%s"
                                   % (self.name, type(e).__name__, e, logs)) from e
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _setup(self):
        self.base = tempfile.mkdtemp(prefix="dbc-slurm-%s-" % self.hosts.tag)  # mode 0700
        os.chmod(self.base, 0o755)
        # munged refuses group/world-writable directories and warns unless its socket's
        # directory is searchable by all; the key itself is 0400.
        for d in ("munge", "log", "state", "spool"):
            os.mkdir(self.path(d), 0o755)
        self.conf = self.path("slurm.conf")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env.update(SLURM_CONF=self.conf, DBC_CLUSTER=self.base)
        self._start_munged()
        self.ctld_port, self.slurmd_port = _port_pair(int(self.hosts.tag, 36))
        self._write_conf()
        self._start_slurmctld()
        for i in range(1, self.hosts.n + 1):
            self._start_slurmd(i)
        self._wait_idle()

    def _spawn(self, argv, logname):
        """Start a daemon in the foreground, its stdout/stderr in log/LOGNAME.out."""
        with open(self.path("log", logname + ".out"), "wb") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)

    def _start_munged(self):
        key = self.path("munge", "munge.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with open("/dev/urandom", "rb") as rnd:
            os.write(fd, rnd.read(1024))
        os.close(fd)
        self.munge_socket = self.path("munge", "munge.sock")
        self._munged = self._spawn(
            ["munged", "-F", "-f", "--socket=" + self.munge_socket, "--key-file=" + key,
             "--pid-file=" + self.path("munge", "munged.pid"),
             "--seed-file=" + self.path("munge", "munged.seed")], "munged")  # -F: logs to stderr
        self._wait_for("munged to create its socket", lambda: os.path.exists(self.munge_socket),
                       5, [self._munged])

    def _write_conf(self):
        h = self.hosts
        lines = [
            "ClusterName=%s" % self.name,
            "SlurmctldHost=%s(%s)" % (socket.gethostname().split(".")[0], h.bridge_addr),
            "SlurmctldPort=%d" % self.ctld_port,
            "SlurmdPort=%d" % self.slurmd_port,
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "AuthInfo=socket=%s" % self.munge_socket,
            "StateSaveLocation=%s" % self.path("state"),
            "SlurmdSpoolDir=%s" % self.path("spool", "%n"),
            "SlurmctldPidFile=%s" % self.path("slurmctld.pid"),
            "SlurmdPidFile=%s" % self.path("slurmd-%n.pid"),
            "SlurmctldLogFile=%s" % self.path("log", "slurmctld.log"),
            "SlurmdLogFile=%s" % self.path("log", "slurmd-%n.log"),
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "SlurmdTimeout=10",
            "MinJobAge=300",              # finished jobs stay visible to scontrol (wait_job)
            "KillWait=5",
        ]
        for i, node in enumerate(self.nodes, 1):
            lines.append("NodeName=%s NodeAddr=%s NodeHostname=%s CPUs=%d RealMemory=%d"
                         % (node, h.addr(i), node, self.cpus, self.memory))
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        if self.extra_conf:
            lines.append(self.extra_conf)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _start_slurmctld(self):
        self._slurmctld = self._spawn(["slurmctld", "-D", "-i", "-f", self.conf], "slurmctld")

        def answers():
            p = subprocess.run(["scontrol", "ping"], env=self.env, capture_output=True,
                               text=True, timeout=10)
            return "is UP" in p.stdout
        # slurmd registers at once if slurmctld already listens, else it retries later.
        self._wait_for("slurmctld to answer `scontrol ping`", answers, 10,
                       [self._munged, self._slurmctld], interval=0.05)

    def _start_slurmd(self, i):
        node = self.node(i)
        os.mkdir(self.path("spool", node))
        # Own UTS namespace so the node's hostname is its node name.  nsenter and unshare
        # exec without forking and sh execs slurmd, so the Popen's pid is slurmd itself.
        inner = "hostname %s && exec slurmd -D -f %s -N %s" % (node, self.conf, node)
        self._slurmds.append(self._spawn(
            self.hosts.nsenter(i) + ["unshare", "--uts", "sh", "-c", inner], "slurmd-" + node))

    def _wait_idle(self):
        want = set(self.nodes)
        seen = set()

        def all_idle():
            nonlocal seen
            p = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], env=self.env,
                               capture_output=True, text=True, timeout=10)
            seen = set(p.stdout.split())
            return want <= seen
        try:
            self._wait_for("all nodes idle in sinfo", all_idle, self.start_timeout,
                           [self._munged, self._slurmctld] + self._slurmds)
        except FixtureError as e:
            raise FixtureError("%s (idle: %s; wanted: %s)"
                               % (e, " ".join(sorted(seen)) or "none", " ".join(sorted(want))))

    def _wait_for(self, what, ready, timeout, procs, interval=0.1):
        """Poll ready() until true; fail early if one of procs exits, or after timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            for p in procs:
                if p.poll() is not None:
                    raise FixtureError("waiting for %s: `%s` exited with %d"
                                       % (what, " ".join(p.args), p.returncode))
            try:
                if ready():
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise FixtureError("waiting for %s: not ready after %g s" % (what, timeout))
            time.sleep(interval)

    def log_tails(self, lines=25):
        """The last lines of every daemon log, for failure messages."""
        if not self.base or not os.path.isdir(self.path("log")):
            return "(no logs)"
        out = []
        for name in sorted(os.listdir(self.path("log"))):
            out.append("--- %s:\n%s" % (name, _tail(self.path("log", name), lines)))
        return "\n".join(out)

    def close(self, raise_errors=True):
        """Stop slurmd, slurmctld, munged and everything started with `env`; remove base."""
        if self._closed:
            return
        self._closed = True
        errors = []
        # SIGTERM all Slurm daemons at once (each takes 1-2 s to exit), munged after them.
        daemons = [(p, True) for p in self._slurmds + [self._slurmctld] if p]
        errors += _stop_processes(daemons, grace=5.0)
        if self._munged:
            errors += _stop_processes([(self._munged, True)], grace=3.0)
        # slurmstepd, job tasks, clients: all carry DBC_CLUSTER=base in their environment.
        if self.base:
            left = _kill_pids(pids_with_env("DBC_CLUSTER", self.base))
            errors += ["pid %d" % pid for pid in left]
            shutil.rmtree(self.base, ignore_errors=True)
            if os.path.exists(self.base):
                errors.append("could not remove " + self.base)
        if errors:
            msg = "SlurmCluster %s teardown: still running or left: %s" % (
                self.name, "; ".join(errors))
            if raise_errors:
                raise FixtureError(msg)
            print(msg, file=sys.stderr)

    # -- clients

    def _client_kw(self, kw):
        kw.setdefault("env", self.env)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return kw

    def srun(self, args, timeout=60, **kw):
        """Run `timeout TIMEOUT srun -t 1 ARGS...` and return the CompletedProcess.

        srun waits forever for resources (down nodes), hence the timeout (exit 124 when it
        fires).  Output is captured as text unless stdout/stderr are given.
        """
        argv = ["timeout", "-k", "5", str(timeout), "srun", "-t", "1"] + list(args)
        return subprocess.run(argv, timeout=timeout + 15, **self._client_kw(kw))

    def sbatch(self, script_path, timeout=30, args=(), **kw):
        """Submit script_path (`sbatch --parsable -t 1 ARGS... SCRIPT`), return the job id.

        Runs in base by default, so the job's output is base/slurm-JOBID.out.  Even with
        batch_sched_delay=0, slurmctld starts batch jobs on its once-a-second background
        pass, and the first one no earlier than about 3 s after slurmctld started; srun
        allocations are immediate.
        """
        kw.setdefault("cwd", self.base)
        argv = ["timeout", "-k", "5", str(timeout), "sbatch", "--parsable", "-t", "1"] \
            + list(args) + [script_path]
        p = subprocess.run(argv, timeout=timeout + 15, **self._client_kw(kw))
        out = (p.stdout or "").strip()
        if p.returncode != 0 or not out:
            raise FixtureError("sbatch %s failed (exit %d): %s"
                               % (script_path, p.returncode, (p.stderr or "").strip()))
        return out.split(";")[0]

    def job_info(self, jobid):
        """`scontrol show job -o JOBID` as a dict (empty if Slurm does not know the job)."""
        p = subprocess.run(["scontrol", "show", "job", "-o", str(jobid)], env=self.env,
                           capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            return {}
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", p.stdout))

    def wait_job(self, jobid, timeout=60):
        """Wait until the job reaches a final state (COMPLETED, FAILED, ...) and return it."""
        deadline = time.monotonic() + timeout
        info = {}
        while True:
            try:
                info = self.job_info(jobid) or info
            except subprocess.TimeoutExpired:
                pass
            state = info.get("JobState")
            if state in FINAL_JOB_STATES:
                return state
            if time.monotonic() > deadline:
                raise FixtureError("job %s not finished after %g s (state %s, reason %s)"
                                   % (jobid, timeout, state, info.get("Reason")))
            time.sleep(0.1)
