"""mpnet in one screen: start a 2-worker cluster, compute, shut down.

    python examples/quickstart.py
"""

import time

from mpnet import Client, LocalCluster, as_completed


def square(x):
    return x * x


def main():
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        up = time.perf_counter() - started
        print(f"cluster up in {up:.2f} s at {cluster.scheduler_address} "
              f"with {len(client.scheduler_info()['workers'])} worker processes")

        futures = client.map(square, range(1000))
        total = client.submit(sum, futures)          # futures as arguments are dependencies
        print("sum of squares of 0..999 =", total.result())

        first = [f.result() for f in as_completed(client.map(square, range(5)))]
        print("as they completed:", first)

        t = time.perf_counter()
        for i in range(200):
            client.submit(square, i).result()
        print(f"round trip: {(time.perf_counter() - t) / 200 * 1e3:.2f} ms per submit().result()")
    print(f"shut down cleanly; {time.perf_counter() - started:.2f} s in all")


if __name__ == "__main__":
    main()
