"""The measurements of bench/follow/run (see there). Standard library only.

The writer appends blocks of real e-mail text (the corpus given) at a fixed rate and notes,
for a line every half second, the byte offset where it ends and when it was written. A line
is counted in the output once the output has been committed from a state whose offset is
past it: the job writes JOB_DIR/follow.state (its header holds the file's offset) before
it commits the output, so the output's modification after the state passed the line is the
moment the line's count is visible. Both are read with a few bytes and a stat, 50 times a
second, whatever the size of the output."""
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

DBATCH, CORPUS = sys.argv[1], sys.argv[2]
SECS = float(os.environ.get("FOLLOW_SECS", "20"))
INTERVAL = 1.0
with open(CORPUS, "rb") as f:
    TEXT = f.read(64 << 20)
TEXT = TEXT[: TEXT.rfind(b"\n") + 1]


def state_offset(job):
    """(modification time in ns, offset consumed in the first followed file) of the state file
    as it is now, read from one open file (it is replaced by a rename), or None."""
    try:
        with open(os.path.join(job, "follow.state"), "rb") as f:
            m = os.fstat(f.fileno()).st_mtime_ns
            h = f.read(58)
        return (m, struct.unpack("<Q", h[50:58])[0]) if len(h) == 58 and struct.unpack("<Q", h[26:34])[0] else None
    except OSError:
        return None


def session(rate_mb, secs, probe_every=0.5):
    """Append rate_mb MB/s for secs seconds; returns (latencies, catch-up seconds after the
    writer stopped, MB/s written)."""
    tmp = tempfile.mkdtemp(prefix="dbatch-follow-bench-")
    logs, out, job = os.path.join(tmp, "logs"), os.path.join(tmp, "out.tsv"), os.path.join(tmp, "job")
    os.mkdir(logs)
    log = open(os.path.join(logs, "app.log"), "ab")
    p = subprocess.Popen([DBATCH, "wordcount", logs, "--follow", "--interval", str(INTERVAL), "--workers", "2",
                          "--job-dir", job, "-o", out, "-q"], stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(out):
            time.sleep(0.05)
        probes, lat = [], []  # (offset after the line, time written)
        written, pos, t0 = 0, 0, time.time()
        next_probe, last_poll, prev_off, prev_m = t0, 0.0, 0, os.stat(out).st_mtime_ns
        step = max(4096, int(rate_mb * 1e6 / 200))  # ~200 writes a second

        states = []  # (state's mtime, its offset), as seen

        def poll(now):
            # The output is committed from the latest state written before it: the one with
            # the largest offset among those not newer than the output.
            nonlocal prev_off, prev_m
            st = state_offset(job)
            if st and (not states or states[-1] != st):
                states.append(st)
            m = os.stat(out).st_mtime_ns
            if m != prev_m:
                prev_off = max([o for sm, o in states if sm <= m] + [prev_off])
                while probes and probes[0][0] <= prev_off:
                    lat.append(now - probes.pop(0)[1])
                prev_m = m

        while True:
            now = time.time()
            if now - t0 >= secs:
                break
            want = (now - t0) * rate_mb * 1e6
            if written < want:
                chunk = TEXT[pos: pos + step]
                if len(chunk) < step:
                    chunk += TEXT[: step - len(chunk)]
                pos = (pos + step) % len(TEXT)
                cut = chunk.rfind(b"\n") + 1 if now >= next_probe else 0
                log.write(chunk)
                written += len(chunk)
                if cut:  # the line ending at `cut` in this chunk is a probe
                    log.flush()
                    probes.append((written - len(chunk) + cut, time.time()))
                    next_probe += probe_every
            else:
                log.flush()
                time.sleep(0.002)
            if now - last_poll >= 0.02:
                last_poll = now
                poll(now)
        log.write(b"\n")  # the last line whole: everything written can be consumed
        written += 1
        log.flush()
        stop = time.time()
        end = written
        while time.time() - stop < 120 and not (prev_off >= end and not probes):
            poll(time.time())
            time.sleep(0.02)
        catch_up = time.time() - stop
        return lat, catch_up, written / (stop - t0) / 1e6
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=300)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))] if v else float("nan")


print("dbatch wordcount --follow --interval %g --workers 2 on e-mail text; %g s per rate" % (INTERVAL, SECS))
print("%-10s %7s %7s %7s %10s %10s" % ("rate", "probes", "p50 s", "p99 s", "catch-up s", "written"))
for rate in (1, 50):
    lat, cu, got = session(rate, SECS)
    print("%-10s %7d %7.2f %7.2f %10.2f %7.0f MB/s  p99 goal %.1f s: %s" % (
        "%d MB/s" % rate, len(lat), pct(lat, 0.5), pct(lat, 0.99), cu, got, INTERVAL + 1,
        "met" if pct(lat, 0.99) <= INTERVAL + 1 else "NOT met"))
held = 0
for rate in (100, 150, 200):
    lat, cu, got = session(rate, SECS, probe_every=1.0)
    ok = cu <= INTERVAL + 2 and got >= rate * 0.9
    print("%-10s %7d %7.2f %7.2f %10.2f %7.0f MB/s  %s" % ("%d MB/s" % rate, len(lat), pct(lat, 0.5), pct(lat, 0.99), cu,
                                                          got, "held" if ok else "behind"))
    if not ok:
        break
    held = rate
print("highest append rate held for %g s: %d MB/s (goal 100)" % (SECS, held))
