"""``mpnet ssh`` on namespace hosts (tests/hosts.py): start-up, round trip, transfers.

    sudo python benchmarks/bench_ssh.py             # 1, 2, 4, 8 hosts; 3 runs each
    sudo python benchmarks/bench_ssh.py --runs 5 --max-hosts 4

Needs root (network namespaces) and OpenSSH's sshd. It prints:

- start-up of an SSHCluster with the scheduler and one worker process on each of N hosts:
  the ssh phase (connect, authenticate and launch on every host, in parallel) and the
  total (every worker registered). The total includes Python start-up on the hosts,
  which here all share this machine's CPUs, so it grows with N where real hosts would not;
- round trip of ``submit(inc, i).result()`` and the time for a task on one worker to
  fetch a 100 MB input from a worker on another host, next to the same on loopback
  (a LocalCluster). Every number is a median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import cloudpickle  # noqa: E402

from hosts import TestHosts, unavailable  # noqa: E402
from mpnet import Client, LocalCluster  # noqa: E402
from mpnet.deploy.ssh import SSHCluster  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZE = 100 * 2**20


def inc(x: int) -> int:
    return x + 1


def block(n: int) -> bytes:
    return b"x" * n


def size_of(b: bytes) -> int:
    return len(b)


def ssh_cluster(hosts: TestHosts, n: int, **kw) -> SSHCluster:
    return SSHCluster(hosts.addresses[:n], dict(key_filename=str(hosts.key_path),
                                                known_hosts=str(hosts.known_hosts),
                                                config_file=os.devnull),
                      {"nworkers": 1, "nthreads": 1, "memory_limit": "0"},
                      scheduler=hosts.addresses[0], remote_dir=str(ROOT), **kw)


def startup(hosts: TestHosts, n: int, runs: int) -> tuple[float, float]:
    ssh, total = [], []
    for _ in range(runs):
        with ssh_cluster(hosts, n) as cluster:
            ssh.append(cluster.times.ssh)
            total.append(cluster.times.total)
    return statistics.median(ssh), statistics.median(total)


def round_trip_and_transfer(client: Client, a: str, b: str, runs: int) -> tuple[float, float]:
    for i in range(50):                               # warm-up
        client.submit(inc, i).result()
    rtt = []
    for i in range(300):
        t = time.perf_counter()
        client.submit(inc, i).result()
        rtt.append(time.perf_counter() - t)
    moves = []
    for i in range(runs):
        data = client.submit(block, SIZE + i, workers=[a])
        client.wait([data])
        t = time.perf_counter()
        assert client.submit(size_of, data, workers=[b]).result() == SIZE + i
        moves.append(time.perf_counter() - t)
        del data
    return statistics.median(rtt) * 1000, statistics.median(moves)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-hosts", type=int, default=8)
    args = parser.parse_args()
    why = unavailable()
    if why:
        print(f"skipped: {why}")
        return 0
    counts = [n for n in (1, 2, 4, 8) if n <= args.max_hosts]
    with TestHosts(max(max(counts), 3)) as hosts:
        print("| hosts | ssh phase, s | total start-up, s |\n|---:|---:|---:|")
        base = None
        for n in counts:
            ssh, total = startup(hosts, n, args.runs)
            base = base or ssh
            print(f"| {n} | {ssh:.3f} ({ssh / base:.2f}x) | {total:.3f} |", flush=True)
        with ssh_cluster(hosts, 3, scheduler_options={"port": 0}) as cluster, \
                Client(cluster) as client:
            w = [x["address"] for x in cluster.workers if x["host"] != hosts.addresses[0]]
            ns_rtt, ns_move = round_trip_and_transfer(client, w[0], w[1], args.runs)
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=0) as cluster, \
            Client(cluster) as client:
        w = [x.worker_address for x in cluster.workers]
        lo_rtt, lo_move = round_trip_and_transfer(client, w[0], w[1], args.runs)
    print()
    print("| | namespace hosts | loopback |\n|---|---:|---:|")
    print(f"| round trip, ms | {ns_rtt:.3f} | {lo_rtt:.3f} |")
    print(f"| 100 MiB worker to worker, s | {ns_move:.3f} ({SIZE / ns_move / 2**20:.0f} MiB/s) "
          f"| {lo_move:.3f} ({SIZE / lo_move / 2**20:.0f} MiB/s) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
