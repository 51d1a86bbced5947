"""The round trip of one small task, three ways, in one run: ``submit(inc, i).result()``.

::

    python benchmarks/bench_roundtrip.py                  # 2,000 calls per way, 3 rounds
    python benchmarks/bench_roundtrip.py --calls 500 --rounds 1
    python benchmarks/bench_roundtrip.py --only cluster --calls 3000   # one way, for strace

The ways, each with 2 worker processes of 1 thread:

* ``cluster`` -- ``Client(cluster)`` in the process that runs ``LocalCluster(2, 1)``;
* ``remote``  -- a client in another process (``Client(address, token=...)``) on that
  same cluster (this one is timed inside the child and reported back on stdout);
* ``ppe``     -- ``concurrent.futures.ProcessPoolExecutor(2)``, the floor to compare with.

Rounds alternate the ways so that the machine's load hits each alike. Each number is the
median (and the 10th percentile) of the calls after a warm-up; the ratios are to ``ppe``
of the same round. Targets (issue 14): cluster <= 1.2x, remote <= 1.5x.

Syscalls per task: run one way under ``strace -f -c`` twice with different ``--calls`` and
divide the difference by the difference in calls (start-up cancels out)::

    strace -f -c -o a.txt python benchmarks/bench_roundtrip.py --only cluster --calls 500
    strace -f -c -o b.txt python benchmarks/bench_roundtrip.py --only cluster --calls 2500
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))


def inc(x):
    return x + 1


def timed(submit, result, calls, warmup):
    for i in range(warmup):
        result(submit(inc, i))
    times = []
    for i in range(calls):
        t = time.perf_counter()
        r = result(submit(inc, i))
        times.append(time.perf_counter() - t)
        if r != i + 1:
            raise RuntimeError(f"inc({i}) gave {r!r}")
    times.sort()
    return {"median_us": statistics.median(times) * 1e6,
            "p10_us": times[len(times) // 10] * 1e6}


_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from benchmarks.bench_roundtrip import inc, timed
from mpnet import Client
with Client({address!r}, token={token!r}) as c:
    print(json.dumps(timed(c.submit, lambda f: f.result(), {calls}, {warmup})), flush=True)
"""


def remote(cluster, calls, warmup):
    code = _CHILD.format(root=ROOT, address=cluster.scheduler_address, token=cluster.token,
                         calls=calls, warmup=warmup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    if out.returncode:
        raise RuntimeError(f"remote client failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["cluster", "remote", "ppe"])
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    from mpnet import Client, LocalCluster
    ways = [args.only] if args.only else ["cluster", "remote", "ppe"]
    rows = []
    with LocalCluster(2, 1, dashboard_address=None) as cluster, Client(cluster) as client, \
            cf.ProcessPoolExecutor(2) as pool:
        for r in range(args.rounds):
            row = {}
            for way in ways:
                if way == "cluster":
                    row[way] = timed(client.submit, lambda f: f.result(), args.calls,
                                     args.warmup)
                elif way == "remote":
                    row[way] = remote(cluster, args.calls, args.warmup)
                else:
                    row[way] = timed(pool.submit, lambda f: f.result(), args.calls,
                                     args.warmup)
            rows.append(row)
            line = "  ".join(f"{w} {v['median_us']:7.1f} us (p10 {v['p10_us']:6.1f})"
                             for w, v in row.items())
            if "ppe" in row:
                line += "  |" + "".join(
                    f"  {w}/ppe {row[w]['median_us'] / row['ppe']['median_us']:.2f}x"
                    for w in row if w != "ppe")
            print(f"round {r + 1}: {line}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
