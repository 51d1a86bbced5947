"""Every figure of the performance issue in one run, then its verdicts on one screen.

::

    python benchmarks/run_all.py            # the full sizes (about 20 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # the --quick sizes (about 5 minutes)

Runs, one after the other (never two at once: each measures against a peer in its own
run, and they would disturb each other), ``bench_roundtrip.py`` (round trip, target 1),
``bench_actors.py`` (actor calls, 2), ``bench_core.py`` (throughput, 3),
``bench_data.py`` (large data over TCP and shared memory, 4 and 5) and
``bench_scale.py`` (a million tasks, graphs, a thousand workers, 6 and 7). Each prints
its own table and its ratios against the targets; this script repeats, at the end,
every line where a benchmark states a target, so the verdicts are read in one place.
Their JSON goes to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (script, arguments for a full run, arguments for --quick)
RUNS = [
    ("bench_roundtrip.py", [], ["--calls", "1000", "--rounds", "1"]),
    ("bench_actors.py", [], ["--quick"]),
    ("bench_core.py", ["--runs", "3"], ["--quick"]),
    ("bench_data.py", [], ["--quick"]),
    ("bench_scale.py", [], ["--quick"]),
]

VERDICT = re.compile(r"target|PASS|MISS|MET\b|/ppe", re.I)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="each benchmark's small sizes")
    ap.add_argument("--only", help="comma-separated script names (bench_core,...)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"),
                    help="folder for each benchmark's JSON")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    verdicts: list[tuple[str, str]] = []
    failed = []
    for script, full, quick in RUNS:
        name = script[:-3]
        if only and name not in only:
            continue
        argv = [sys.executable, os.path.join(HERE, script), *(quick if args.quick else full),
                "--json", os.path.join(args.out, f"{name}.json")]
        print(f"\n=== {' '.join(argv[1:])}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(proc.stdout)
        print(f"=== {name}: {time.perf_counter() - t:.0f} s, exit code {proc.returncode}",
              flush=True)
        if proc.returncode:
            failed.append(name)
        verdicts += [(name, line.strip()) for line in proc.stdout.splitlines()
                     if VERDICT.search(line) and not line.lstrip().startswith(("┃", "│"))]
    print("\n=== verdicts against the targets")
    for name, line in verdicts:
        print(f"{name:16} {line}")
    if failed:
        print(f"\nthese benchmarks failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
