"""The measurements of bench/follow/run (see there). Standard library only."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DBATCH = sys.argv[1]
SECS = float(os.environ.get("FOLLOW_SECS", "20"))
INTERVAL = 1.0
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
BLOCK = ("".join(" ".join(WORDS[(i + j) % 10] for j in range(12)) + "\n" for i in range(13000))).encode()  # ~1 MB


def seen(out, probe):
    try:
        with open(out, "rb") as f:
            return (probe + "\t1\n").encode() in f.read()
    except OSError:
        return False


def session(rate_mb, secs, probes_every=0.5):
    """Append rate_mb MB/s for secs seconds with a probe line every probes_every seconds;
    returns (latencies of the probes, seconds to catch up after the writer stopped)."""
    tmp = tempfile.mkdtemp(prefix="dbatch-follow-bench-")
    logs, out, job = os.path.join(tmp, "logs"), os.path.join(tmp, "out.tsv"), os.path.join(tmp, "job")
    os.mkdir(logs)
    log = open(os.path.join(logs, "app.log"), "ab")
    p = subprocess.Popen([DBATCH, "wordcount", logs, "--follow", "--interval", str(INTERVAL), "--workers", "2",
                          "--job-dir", job, "-o", out, "-q"], stderr=subprocess.PIPE)
    try:
        while not os.path.exists(out):
            time.sleep(0.05)
        pending, lat = {}, []
        t0 = time.time()
        written, k, next_probe, last_poll = 0, 0, t0, 0.0
        block = BLOCK[: int(len(BLOCK) * min(1.0, rate_mb / 20))] if rate_mb < 20 else BLOCK * (4 if rate_mb > 60 else 1)
        while time.time() - t0 < secs:
            now = time.time()
            if now >= next_probe:
                name = "probe%d" % k
                log.write(("%s\n" % name).encode())
                log.flush()
                pending[name] = time.time()
                k += 1
                next_probe += probes_every
            want = (now - t0) * rate_mb * 1e6
            if written < want:
                log.write(block)
                log.flush()
                written += len(block)
            else:
                time.sleep(min(0.005, next_probe - now) if next_probe > now else 0)
            if now - last_poll >= 0.02:  # the output, read 50 times a second
                last_poll = now
                for name in [n for n in pending if seen(out, n)]:
                    lat.append(time.time() - pending.pop(name))
        stop = time.time()
        last = "probe_last"
        log.write(("%s\n" % last).encode())
        log.flush()
        while not seen(out, last) and time.time() - stop < 60:
            for name in [n for n in pending if seen(out, n)]:
                lat.append(time.time() - pending.pop(name))
            time.sleep(0.02)
        catch_up = time.time() - stop
        for name in [n for n in pending if seen(out, n)]:
            lat.append(time.time() - pending.pop(name))
        return lat, catch_up, written / (stop - t0) / 1e6
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))] if v else float("nan")


print("dbatch wordcount --follow --interval %g --workers 2; %g s per rate" % (INTERVAL, SECS))
print("%-14s %8s %8s %8s %10s" % ("append rate", "probes", "p50 s", "p99 s", "catch-up s"))
for rate in (1, 50):
    lat, cu, got = session(rate, SECS)
    print("%-14s %8d %8.2f %8.2f %10.2f" % ("%d MB/s" % rate, len(lat), pct(lat, 0.5), pct(lat, 0.99), cu))
    print("  goal p99 <= %.1f s: %s" % (INTERVAL + 1, "met" if pct(lat, 0.99) <= INTERVAL + 1 else "NOT met"))
held = 0
for rate in (100, 200, 300):
    lat, cu, got = session(rate, SECS, probes_every=1.0)
    ok = cu <= INTERVAL + 2
    print("%-14s %8d %8.2f %8.2f %10.2f  written %.0f MB/s: %s" % ("%d MB/s" % rate, len(lat), pct(lat, 0.5),
                                                                   pct(lat, 0.99), cu, got, "held" if ok else "behind"))
    if not ok or got < rate * 0.9:
        break
    held = rate
print("highest append rate held for %g s: %d MB/s (goal 100)" % (SECS, held))
