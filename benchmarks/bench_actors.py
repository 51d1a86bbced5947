"""Actor micro-benchmarks: mpnet actors against Ray and dask.distributed actors.

Run it from anywhere (it benchmarks the mpnet of this checkout)::

    python benchmarks/bench_actors.py                 # 20,000 pipelined calls, median of 3 runs
    python benchmarks/bench_actors.py --quick         # 2,000 pipelined calls, 1 run (~30 s)
    python benchmarks/bench_actors.py --runs 5 --json out.json

Every backend gets 2 worker processes with 1 thread each and one ``Counter`` actor on one
of them: mpnet ``LocalCluster(2, 1)`` and ``client.actor(Counter, 0)``, a raw
``multiprocessing.Pipe`` to one spawned process that holds a counter (always: the floor,
what any actor system on two Python processes pays at least), a ``multiprocessing``
manager's proxy to a counter (always: the stdlib's remote object, issue 14's yardstick), dask.distributed
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` and
``client.submit(Counter, 0, actor=True).result()``, and Ray ``ray.init(num_cpus=2)`` with
``ray.remote(Counter).remote(0)`` (each only if importable; otherwise "skipped").

What each number means (each is the median over ``--runs`` runs):

* latency    -- ms per ``counter.incr(1).result()`` (Ray: ``ray.get(counter.incr.remote(1))``),
  one call awaited at a time: the median of the calls, after a warm-up.
* pipelined  -- calls/s for N ``incr(1)`` calls fired one after the other without
  waiting, then all results gathered; timed from the first call to the last result.
  ``Counter.incr`` returns the new count, so the results must be start+1 .. start+N in
  that order; if they are not, the cell says "out of order" (calls ran in another order
  than they were made) or "wrong" (values missing or repeated).

The issue's targets for mpnet (latency < 0.15 ms, pipelined > 20,000 calls/s) are
checked as text after the table, never asserted, with the mpnet/pipe ratios. Every run
ends by checking that no child process of this script is left (WARNING lines otherwise).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections import namedtuple
from contextlib import contextmanager
from importlib.util import find_spec
from multiprocessing.managers import BaseManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # benchmark this checkout, installed or not (children: PYTHONPATH)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import leftover_children, print_notes, print_table

LATENCY_TARGET_MS = 0.15
THROUGHPUT_TARGET = 20_000
LATENCY_VS_PROXY = 2.5       # issue 14: a call at most 2.5x a manager proxy call
PIPELINED_VS_PROXY = 3.0     # and pipelined calls, in order, above 3x the proxy's rate


class Counter:
    def __init__(self, n=0):
        self.n = n

    def incr(self, k=1):
        self.n += k
        return self.n


# --- backends: name -> (module to find, context manager yielding Ops) --------------------
# call(k): counter.incr(k) awaited, its value; burst(n): n incr(1) calls fired without
# waiting, then all results gathered, as a list in call order.
Ops = namedtuple("Ops", "call burst")


@contextmanager
def mpnet_ops():
    from mpnet import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as c:
        counter = c.actor(Counter, 0)
        incr = counter.incr
        yield Ops(lambda k: incr(k).result(),
                  lambda n: [f.result() for f in [incr(1) for _ in range(n)]])


def _pipe_server(conn):
    incr, recv, send = Counter(0).incr, conn.recv, conn.send
    try:
        while (k := recv()) is not None:
            send(incr(k))
    except EOFError:
        pass


@contextmanager
def pipe_ops():
    """A counter in one spawned process behind a ``multiprocessing.Pipe``: one message
    each way per call. A burst sends from a thread while this one receives (a single
    thread sending 20,000 calls before reading would fill both pipes and block)."""
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_pipe_server, args=(there,), daemon=True)
    proc.start()
    there.close()

    def call(k):
        here.send(k)
        return here.recv()

    def burst(n):
        sender = threading.Thread(target=lambda: [here.send(1) for _ in range(n)])
        sender.start()
        out = [here.recv() for _ in range(n)]
        sender.join()
        return out

    try:
        yield Ops(call, burst)
    finally:
        here.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


class _CounterManager(BaseManager):
    pass


_CounterManager.register("Counter", Counter)


@contextmanager
def manager_ops():
    """A counter in a ``multiprocessing`` manager process, called through its proxy: the
    stdlib's own remote object, one request and one answer per call. A proxy cannot
    pipeline, so its "burst" is n calls one after the other."""
    with _CounterManager(ctx=multiprocessing.get_context("spawn")) as manager:
        incr = manager.Counter(0).incr
        yield Ops(incr, lambda n: [incr(1) for _ in range(n)])


@contextmanager
def dask_ops():   # dask's ActorFutures have .result() only (no gather)
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        counter = c.submit(Counter, 0, actor=True).result()
        incr = counter.incr
        yield Ops(lambda k: incr(k).result(),
                  lambda n: [f.result() for f in [incr(1) for _ in range(n)]])


@contextmanager
def ray_ops():   # Ray's own idiom for a batch: one ray.get of the list of refs
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        incr = ray.remote(Counter).remote(0).incr.remote
        yield Ops(lambda k: ray.get(incr(k)), lambda n: ray.get([incr(1) for _ in range(n)]))
    finally:
        ray.shutdown()


BACKENDS = {"mpnet": ("mpnet", mpnet_ops),
            "pipe": ("multiprocessing", pipe_ops),
            "manager": ("multiprocessing", manager_ops),
            "dask": ("distributed", dask_ops),
            "ray": ("ray", ray_ops)}


# --- measurements ----------------------------------------------------------------------
def latency_ms(b, n, warmup):
    for _ in range(warmup):
        b.call(1)
    last = b.call(0)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = b.call(1)
        times.append(time.perf_counter() - t)
        if r != last + 1:
            raise RuntimeError(f"incr(1) after {last} gave {r!r}")
        last = r
    return statistics.median(times) * 1e3


def pipelined(b, n):
    """(calls/s, "ok" | "out of order" | "wrong"): the results of incr(1) x n must be
    start+1 .. start+n in call order."""
    start = b.call(0)
    t = time.perf_counter()
    out = b.burst(n)
    dt = time.perf_counter() - t
    expected = list(range(start + 1, start + n + 1))
    status = ("ok" if out == expected
              else "out of order" if sorted(out) == expected else "wrong")
    return n / dt, status


def settle(b):
    """Untimed, between measurements: free the last batch's futures and let the cluster
    digest that (one call queues behind the releases), so no number pays for the
    previous one's clean-up."""
    gc.collect()
    time.sleep(0.2)
    b.call(0)


def run_backend(name, args):
    """{metric: median, "runs": {metric: [per-run values]}, ...} or {"skipped": why}."""
    module, ops = BACKENDS[name]
    if find_spec(module) is None:
        return {"skipped": "not installed"}
    version = ("spawn" if name in ("pipe", "manager")
               else getattr(importlib.import_module(module), "__version__", "?"))
    runs = {"latency_ms": [], "pipelined_cps": [], "order": []}
    try:
        with ops() as b:
            b.call(0)                        # the actor is placed and answering
            for _ in range(args.runs):
                settle(b)
                runs["latency_ms"].append(latency_ms(b, args.latency_calls, args.warmup))
                settle(b)
                cps, status = pipelined(b, args.calls)
                runs["pipelined_cps"].append(cps)
                runs["order"].append(status)
    except Exception as e:   # report it in the table; the other columns still run
        return {"skipped": f"error: {type(e).__name__}: {e}"[:200], "version": version,
                "leftover": leftover_children()}
    res = {k: statistics.median(v) for k, v in runs.items() if k != "order"}
    bad = [s for s in runs["order"] if s != "ok"]
    res["order"] = bad[0] if bad else "ok"
    return dict(res, runs=runs, version=version, leftover=leftover_children())


# --- reporting -------------------------------------------------------------------------
def report(results, args):
    def cell(r, key, fmt):
        if "skipped" in r:
            return "skipped"
        if key == "pipelined_cps" and r["order"] != "ok":
            return f"{fmt.format(r[key])} ({r['order']})"
        return fmt.format(r[key])

    rows = [("latency_ms", f"latency ({args.latency_calls:,} calls), ms", "{:.3f}"),
            ("pipelined_cps", f"{args.calls:,} pipelined, calls/s", "{:,.0f}")]
    header = ["metric"] + [f"{k} ({r.get('version', '-')})" for k, r in results.items()]
    body = [[label] + [cell(r, key, fmt) for r in results.values()]
            for key, label, fmt in rows]
    title = (f"1 Counter actor on 2 procs x 1 thread, median of {args.runs} run(s), "
             f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print_table(title, header, body)

    m, p = results["mpnet"], results["pipe"]
    ratios = {}
    if "skipped" not in m:
        ok = "MET" if m["latency_ms"] < LATENCY_TARGET_MS else "MISSED"
        print(f"mpnet latency: {m['latency_ms']:.3f} ms, target < {LATENCY_TARGET_MS} ms: {ok}")
        ok = ("MET" if m["pipelined_cps"] > THROUGHPUT_TARGET and m["order"] == "ok"
              else "MISSED")
        print(f"mpnet pipelined: {m['pipelined_cps']:,.0f} calls/s ({m['order']}), "
              f"target > {THROUGHPUT_TARGET:,} calls/s in order: {ok}")
        q = results.get("manager", {"skipped": "-"})
        if "skipped" not in q:
            lat, thr = m["latency_ms"] / q["latency_ms"], m["pipelined_cps"] / q["pipelined_cps"]
            print(f"mpnet/manager proxy: latency {lat:.2f}x, target <= {LATENCY_VS_PROXY}x: "
                  f"{'MET' if lat <= LATENCY_VS_PROXY else 'MISSED'}; pipelined {thr:.2f}x "
                  f"the proxy's calls/s, target > {PIPELINED_VS_PROXY}x in order: "
                  f"{'MET' if thr > PIPELINED_VS_PROXY and m['order'] == 'ok' else 'MISSED'}")
            ratios.update(latency_vs_manager=lat, pipelined_vs_manager=thr)
        if "skipped" not in p:
            ratios.update({"latency_ms": m["latency_ms"] / p["latency_ms"],
                      "pipelined_cps": m["pipelined_cps"] / p["pipelined_cps"]})
            print(f"mpnet/pipe: latency {ratios['latency_ms']:.2f}x (lower is better), "
                  f"throughput {ratios['pipelined_cps']:.2f}x (higher is better)")
        for k in ("ray", "dask"):
            r = results.get(k, {})
            if "skipped" not in r and r:
                print(f"{k}/mpnet: latency {r['latency_ms'] / m['latency_ms']:.1f}x, "
                      f"mpnet/{k} throughput {m['pipelined_cps'] / r['pipelined_cps']:.1f}x")
    print_notes(results)
    return ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2,000 pipelined calls, 500 sequential ones, 1 run")
    ap.add_argument("--runs", type=int, default=None, help="runs per number (default 3)")
    ap.add_argument("--calls", type=int, default=None,
                    help="pipelined calls per run (default 20,000)")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    args = ap.parse_args()
    args.calls = args.calls or (2_000 if args.quick else 20_000)
    args.runs = args.runs or (1 if args.quick else 3)
    args.latency_calls, args.warmup = (500, 50) if args.quick else (2_000, 200)

    results = {}
    for name in BACKENDS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        results[name] = run_backend(name, args)
        print(f"  {name} done in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    ratios = report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"calls": args.calls, "runs": args.runs,
                       "latency_calls": args.latency_calls, "cpus": os.cpu_count(),
                       "python": platform.python_version(), "platform": platform.platform(),
                       "results": results, "ratios_mpnet_over_pipe": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
