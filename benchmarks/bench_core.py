"""Core micro-benchmarks: mpnet against ProcessPoolExecutor (and dask.distributed, Ray).

Run it from anywhere (it benchmarks the mpnet of this checkout)::

    python benchmarks/bench_core.py                 # 20,000 tasks, median of 3 runs
    python benchmarks/bench_core.py --quick         # 2,000 tasks, 1 run (about 30 s)
    python benchmarks/bench_core.py --runs 5 --json out.json

Every backend gets 2 worker processes with 1 thread each: mpnet ``LocalCluster(2, 1)``,
``concurrent.futures.ProcessPoolExecutor(2)`` (always), dask.distributed
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` and Ray
``ray.init(num_cpus=2)`` (each only if importable; otherwise its column says skipped).

What each number means (each is the median over ``--runs`` runs):

* latency  -- ms per ``submit(inc, i).result()``, one call at a time (median of the calls,
  after a warm-up): the round trip of one small task.
* submit   -- tasks/s for N no-op tasks (``noop(x)`` returns ``x``) submitted one by one,
  then all gathered; timed from the first submit to the last result.
* map      -- tasks/s for ``map(noop, range(N))`` then gathered (Ray has no map: n/a).
* cold     -- s from ``Popen`` of a fresh ``python`` running a tiny script (import the
  library, start the 2-process cluster, compute ``inc(1)``) to the line "2" on its stdout.
  Shutdown is not counted.

Ratios are mpnet/ProcessPoolExecutor (latency: lower is better; throughput: higher is
better). The cold-start target (< 0.5 s) is reported as text, never asserted. Column
headers give versions; ppe's gives its start method (fork on Linux, so its workers skip
the interpreter start-up that mpnet's spawned workers pay). Every run ends by checking
that no child process of this script is left (WARNING lines otherwise).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import json
import logging
import multiprocessing
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import namedtuple
from contextlib import contextmanager
from importlib.util import find_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # benchmark this checkout, installed or not (children: PYTHONPATH)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

COLD_TARGET_S = 0.5
THROUGHPUT_TARGET = 1.5       # mpnet/ppe tasks/s, submit and map (issue 14)


def inc(x):
    return x + 1


def noop(x):
    return x


# --- backends: name -> (module to find, context manager yielding Ops, cold-start script) ---
Ops = namedtuple("Ops", "submit result gather map")   # submit(fn, x); map(fn, xs) -> list
result_of = operator.methodcaller("result")


@contextmanager
def mpnet_ops():
    from mpnet import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as c:
        yield Ops(c.submit, result_of, c.gather, lambda fn, xs: c.gather(c.map(fn, xs)))


@contextmanager
def ppe_ops():
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(2) as ex:
        yield Ops(ex.submit, result_of, lambda fs: [f.result() for f in fs],
                  lambda fn, xs: list(ex.map(fn, xs)))


@contextmanager
def dask_ops():   # pure=False: dask must not deduplicate equal calls across runs
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        yield Ops(lambda fn, x: c.submit(fn, x, pure=False), result_of, c.gather,
                  lambda fn, xs: c.gather(c.map(fn, xs, pure=False)))


@contextmanager
def ray_ops():   # Ray core has no map
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        remote = functools.lru_cache(None)(ray.remote)
        yield Ops(lambda fn, x: remote(fn).remote(x), ray.get, ray.get, None)
    finally:
        ray.shutdown()


COLD_MPNET = """
from mpnet import LocalCluster, Client
with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
    print(client.submit(inc, 1).result(), flush=True)
"""
COLD_PPE = """
from concurrent.futures import ProcessPoolExecutor
with ProcessPoolExecutor(2) as ex:
    print(ex.submit(inc, 1).result(), flush=True)
"""
COLD_DASK = """
import logging
from distributed import LocalCluster, Client
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                  silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
    print(client.submit(inc, 1).result(), flush=True)
"""
COLD_RAY = """
import ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
print(ray.get(ray.remote(inc).remote(1)), flush=True)
ray.shutdown()
"""
BACKENDS = {"mpnet": ("mpnet", mpnet_ops, COLD_MPNET),
            "ppe": ("concurrent.futures", ppe_ops, COLD_PPE),
            "dask": ("distributed", dask_ops, COLD_DASK),
            "ray": ("ray", ray_ops, COLD_RAY)}


# --- measurements ----------------------------------------------------------------------
def latency_ms(b, n, warmup):
    for i in range(warmup):
        b.result(b.submit(inc, i))
    times = []
    for i in range(n):
        t = time.perf_counter()
        r = b.result(b.submit(inc, i))
        times.append(time.perf_counter() - t)
        if r != i + 1:
            raise RuntimeError(f"inc({i}) gave {r!r}")
    return statistics.median(times) * 1e3


def _check(out, n):
    if list(out) != list(range(n)):
        raise RuntimeError(f"wrong results: {len(out)} values, expected 0..{n - 1}")


def submit_tps(b, n):
    t = time.perf_counter()
    out = b.gather([b.submit(noop, i) for i in range(n)])
    dt = time.perf_counter() - t
    _check(out, n)
    return n / dt


def map_tps(b, n):
    t = time.perf_counter()
    out = b.map(noop, range(n))
    dt = time.perf_counter() - t
    _check(out, n)
    return n / dt


def settle(b):
    """Untimed, between measurements: free the last batch's futures and let the cluster
    digest that (one round trip queues behind the releases), so no number pays for the
    previous one's clean-up."""
    gc.collect()
    time.sleep(0.2)
    b.result(b.submit(inc, 0))


def cold_start_s(name, script, tmpdir):
    path = os.path.join(tmpdir, f"cold_{name}.py")
    with open(path, "w") as f:
        f.write("def inc(x):\n    return x + 1\n\n\nif __name__ == '__main__':\n"
                + textwrap.indent(script.strip(), "    ") + "\n")
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE, stderr=err,
                             text=True, cwd=tmpdir)
        line = p.stdout.readline()
        dt = time.perf_counter() - t
        try:
            p.communicate(timeout=120)     # shutdown is not timed, but must finish
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise RuntimeError("cold-start child did not exit within 120 s") from None
        if line.strip() != "2" or p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"cold-start child printed {line!r}, exit {p.returncode}: "
                               f"{err.read()[-300:]}")
    return dt


def leftover_children(grace=5.0):
    """Our live descendants after up to ``grace`` s (should be none), bar multiprocessing's
    resource tracker, which lives as long as this process by design."""
    import psutil

    def alive():
        out = []
        for k in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(k.cmdline())
                if k.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in cmd:
                    out.append(f"{k.pid}:{cmd[:80]}")
            except psutil.Error:   # exited meanwhile
                pass
        return out
    deadline = time.monotonic() + grace
    while (kids := alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return kids


def run_backend(name, args, n, tmpdir):
    """{metric: median, "runs": {metric: [per-run values]}, ...} or {"skipped": why}."""
    module, ops, cold = BACKENDS[name]
    if find_spec(module) is None:
        return {"skipped": "not installed"}
    version = (multiprocessing.get_start_method() if name == "ppe"
               else getattr(importlib.import_module(module), "__version__", "?"))
    runs = {"latency_ms": [], "submit_tps": [], "map_tps": [], "cold_s": []}
    try:
        with ops() as b:
            for _ in range(args.runs):
                runs["latency_ms"].append(latency_ms(b, args.latency_calls, args.warmup))
                settle(b)
                runs["submit_tps"].append(submit_tps(b, n))
                settle(b)
                if b.map is not None:
                    runs["map_tps"].append(map_tps(b, n))
                    settle(b)
        for _ in range(args.runs):
            runs["cold_s"].append(cold_start_s(name, cold, tmpdir))
    except Exception as e:   # report it in the table; the other columns still run
        return {"skipped": f"error: {type(e).__name__}: {e}"[:200], "version": version,
                "leftover": leftover_children()}
    res = {k: statistics.median(v) if v else None for k, v in runs.items()}
    return dict(res, runs=runs, version=version, leftover=leftover_children())


# --- reporting -------------------------------------------------------------------------
ROWS = [("latency_ms", "latency, ms/call", "{:.3f}"),
        ("submit_tps", "submit N + gather, tasks/s", "{:,.0f}"),
        ("map_tps", "map N + gather, tasks/s", "{:,.0f}"),
        ("cold_s", "cold start, s", "{:.3f}")]


def print_table(title, header, body):
    """A table with rich when it is installed, plain aligned text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in body:
            table.add_row(*row)
        Console(width=max(100, Console().width)).print(table)
    except ImportError:
        print(title)
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        for row in [header] + body:
            print("  ".join(c.rjust(w) if i else c.ljust(w)
                            for i, (c, w) in enumerate(zip(row, widths))))


def print_notes(results):
    """Say which backends were skipped and which left processes behind."""
    for k, r in results.items():
        if "skipped" in r:
            print(f"{k}: skipped ({r['skipped']})")
        if r.get("leftover"):
            print(f"WARNING: {k} left processes running: {', '.join(r['leftover'])}")


def report(results, n, args):
    header = ["metric"] + [f"{k} ({r.get('version', '-')})" for k, r in results.items()]
    body = [[label.replace("N", f"{n:,}")]
            + ["skipped" if "skipped" in r
               else "n/a" if r.get(key) is None else fmt.format(r[key])
               for r in results.values()]
            for key, label, fmt in ROWS]
    title = (f"2 procs x 1 thread, N={n:,}, median of {args.runs} run(s), "
             f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print_table(title, header, body)

    ratios = {}
    m, p = results["mpnet"], results["ppe"]
    for key, label, _ in ROWS[:3]:
        if m.get(key) and p.get(key):
            ratios[key] = m[key] / p[key]
            better = "lower" if key == "latency_ms" else "higher"
            print(f"{label.split(',')[0].replace(' N', '')}: mpnet/ppe = {ratios[key]:.2f}x "
                  f"({better} is better for mpnet)")
    for key, label in (("submit_tps", "submit"), ("map_tps", "map")):
        if key in ratios:       # issue 14, target 3: throughput at least 1.5x the pool
            print(f"throughput target, {label}: mpnet/ppe {ratios[key]:.2f}x, target >= "
                  f"{THROUGHPUT_TARGET}x: {'PASS' if ratios[key] >= THROUGHPUT_TARGET else 'MISS'}")
    if m.get("cold_s") is not None:
        ok = "MET" if m["cold_s"] < COLD_TARGET_S else "MISSED"
        print(f"mpnet cold start: {m['cold_s']:.3f} s, target < {COLD_TARGET_S} s: {ok}")
    print_notes(results)
    return ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 tasks and 1 run")
    ap.add_argument("--runs", type=int, default=None, help="runs per number (default 3)")
    ap.add_argument("--tasks", type=int, default=None, help="N (default 20,000)")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    args = ap.parse_args()
    n = args.tasks or (2_000 if args.quick else 20_000)
    args.runs = args.runs or (1 if args.quick else 3)
    args.latency_calls, args.warmup = (200, 20) if args.quick else (1_000, 100)

    results = {}
    with tempfile.TemporaryDirectory(prefix="mpnet-bench-") as tmpdir:
        for name in BACKENDS:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            results[name] = run_backend(name, args, n, tmpdir)
            print(f"  {name} done in {time.perf_counter() - t:.1f} s", file=sys.stderr,
                  flush=True)
    ratios = report(results, n, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": n, "runs": args.runs, "latency_calls": args.latency_calls,
                       "cpus": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform(), "results": results,
                       "ratios_mpnet_over_ppe": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
