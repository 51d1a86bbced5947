"""What TLS costs: the same cluster measured over tcp:// and over tls://, in one run.

Run it from anywhere (it benchmarks the mpnet of this checkout)::

    python benchmarks/bench_tls.py                  # 1,000 round trips, 5 transfers of 100 MB
    python benchmarks/bench_tls.py --quick          # 200 round trips, 3 transfers
    python benchmarks/bench_tls.py --only tcp       # one mode only (e.g. before/after a change)

Each mode is a ``LocalCluster(n_workers=2, threads_per_worker=1)`` and a
``Client``; the tls mode gives every process the same certificate and CA, made for this
run by ``trustme`` (``pip install trustme``; it is in the ``test`` extra), so it measures
mutual TLS, the way a cluster runs it (docs/security-tls.md).

* round trip -- ms per ``submit(inc, i).result()``, one at a time, median after a warm-up:
  client → scheduler → worker → scheduler → client, all encrypted in the tls mode.
* worker → worker -- s to move a 100 MB numpy array that worker A computed to worker B
  (a task on B that takes it as input), median of the transfers; includes one task round
  trip (~0.5 ms).
* worker → client -- s for ``future.result()`` of a 100 MB array held by a worker (the
  client fetches it from the worker directly), median.

Ratios are tls/tcp (higher is slower). Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # benchmark this checkout, installed or not (children: PYTHONPATH)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

MB = 1_000_000


def inc(x):
    return x + 1


def make_array(nbytes, seed):
    import numpy as np
    return np.full(nbytes // 8, seed, dtype="int64")


def nbytes_of(a):
    return a.nbytes


def make_certificates(folder: str) -> dict:
    try:
        import trustme
    except ImportError:
        sys.exit("bench_tls.py makes its certificates with trustme: pip install trustme")
    ca = trustme.CA()
    node = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"tls_cert": os.path.join(folder, "node.pem"),
             "tls_ca_file": os.path.join(folder, "ca.pem")}
    node.private_key_and_cert_chain_pem.write_to_path(paths["tls_cert"])
    ca.cert_pem.write_to_path(paths["tls_ca_file"])
    return paths


def measure(cfg: dict, args) -> dict:
    from mpnet import Client, LocalCluster
    out = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, **cfg) as cluster, \
            Client(cluster.scheduler_address, token=cluster.token, **cfg) as client:
        a, b = (w.worker_address for w in cluster.workers)
        for i in range(args.warmup):
            client.submit(inc, i).result()
        times = []
        for i in range(args.calls):
            t = time.perf_counter()
            client.submit(inc, i).result()
            times.append(time.perf_counter() - t)
        out["round trip, ms"] = statistics.median(times) * 1e3

        size = args.mb * MB
        w2w, w2c = [], []
        for i in range(args.transfers + 1):       # the first of each is a warm-up
            src = client.submit(make_array, size, i, workers=[a])
            client.submit(nbytes_of, src, workers=[a]).result()    # computed, not moved
            t = time.perf_counter()
            got = client.submit(nbytes_of, src, workers=[b]).result()
            elapsed = time.perf_counter() - t
            assert got == size // 8 * 8
            t = time.perf_counter()
            arr = src.result()
            elapsed_client = time.perf_counter() - t
            assert arr.nbytes == got and int(arr[0]) == i
            del arr
            if i:
                w2w.append(elapsed)
                w2c.append(elapsed_client)
            del src
        out[f"{args.mb} MB worker → worker, s"] = statistics.median(w2w)
        out[f"{args.mb} MB worker → client, s"] = statistics.median(w2c)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and transfers")
    parser.add_argument("--only", choices=["tcp", "tls"], help="measure one mode only")
    parser.add_argument("--mb", type=int, default=100, help="transfer size in MB")
    args = parser.parse_args()
    args.calls, args.warmup, args.transfers = (200, 20, 3) if args.quick else (1000, 100, 5)

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        modes = {"tcp": {}, "tls": make_certificates(folder)}
        for mode in ([args.only] if args.only else ["tcp", "tls"]):
            print(f"measuring {mode} ...", file=sys.stderr, flush=True)
            results[mode] = measure(modes[mode], args)
    report(results, args)


def report(results: dict, args) -> None:
    modes = list(results)
    metrics = list(results[modes[0]])
    header = ["metric", *modes] + (["tls/tcp"] if len(modes) == 2 else [])
    rows = []
    for m in metrics:
        row = [m] + [f"{results[mode][m]:.3f}" for mode in modes]
        if len(modes) == 2:
            row.append(f"{results['tls'][m] / results['tcp'][m]:.2f}x")
        rows.append(row)
    print(f"\nbench_tls.py ({'quick' if args.quick else 'full'}; {args.calls} round trips, "
          f"median of {args.transfers} transfers; Python {sys.version.split()[0]})\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
