#!/usr/bin/env python3
"""Run a command and report the peak RSS of it and of every process under it.

Usage: peak_rss.py REPORT CMD [ARG...]
Polls /proc/<pid>/status (VmHWM: the kernel's high-water mark of the resident set) of the
command and its descendants every 20 ms while it runs; a process's last reading is its peak
(VmHWM only grows, so at most the growth of its last 20 ms is missed). Writes REPORT, one
line per kind of process:  KIND PROCESSES MAX_PEAK_KB MAX_ANON_KB CPU_SECONDS (kinds:
coordinator, worker, and the program name of anything else; MAX_ANON_KB the largest RssAnon
seen, i.e. the peak without mapped file pages, sampled; CPU seconds summed over the kind's
processes, as of their last reading), then "elapsed SECONDS". Exits with the command's status.
"""
import os
import subprocess
import sys
import time


def children(pid):
    """Pids whose parent is pid (from /proc/<pid>/task/*/children, else a scan of /proc)."""
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out.extend(int(x) for x in f.read().split())
        return out
    except OSError:
        pass
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(name))
    return out


def hwm_kb(pid):
    """(VmHWM, RssAnon) of pid in kB: the peak resident set, and its anonymous part now."""
    hwm = anon = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return (hwm, anon) if hwm is not None and anon is not None else None


def cpu_s(pid):
    """User + system seconds of pid so far."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kind(pid, root):
    if pid == root:
        return "coordinator"
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    if len(argv) > 1 and argv[1] == b"worker":
        return "worker"
    return os.path.basename(argv[0].decode(errors="replace")) or None


def main():
    report, cmd = sys.argv[1], sys.argv[2:]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    peak = {}    # pid -> (kind, peak kb, peak anonymous kb, cpu seconds)
    while proc.poll() is None:
        todo = [proc.pid]
        while todo:
            pid = todo.pop()
            kb, cpu = hwm_kb(pid), cpu_s(pid)
            if kb is not None and cpu is not None:
                k = peak[pid][0] if pid in peak else kind(pid, proc.pid)
                if k is not None:
                    anon = max(kb[1], peak[pid][2]) if pid in peak else kb[1]
                    peak[pid] = (k, kb[0], anon, cpu)
            todo.extend(children(pid))
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    kinds = {}
    for k, kb, anon, cpu in peak.values():
        n, top, top_anon, total = kinds.get(k, (0, 0, 0, 0.0))
        kinds[k] = (n + 1, max(top, kb), max(top_anon, anon), total + cpu)
    with open(report, "w") as f:
        for k in sorted(kinds):
            f.write("%s %d %d %d %.2f\n" % (k, *kinds[k]))
        f.write("elapsed %.3f\n" % elapsed)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
