"""No-op tasks per second through Dask distributed: a LocalCluster of 2 worker processes,
client.map of a no-op, as the peer of `dbatch bench-tasks`. Prints the rate."""
import sys
import time

from distributed import Client, LocalCluster


def noop(i):
    return i


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with Client(cl) as c:
            c.gather(c.map(noop, range(100), pure=False))  # warm up
            t0 = time.time()
            c.gather(c.map(noop, range(n), pure=False))
            dt = time.time() - t0
    print("%d tasks in %.3f s = %.0f tasks/s" % (n, dt, n / dt))


if __name__ == "__main__":
    main()
