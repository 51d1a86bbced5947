"""Scale benchmarks: a million tasks, dependency graphs, a thousand workers.

Run it from anywhere (it benchmarks the mpnet of this checkout)::

    python benchmarks/bench_scale.py                # the full run (about 10 min on 2 cores)
    python benchmarks/bench_scale.py --quick        # about 1 min
    python benchmarks/bench_scale.py --only tasks,graphs,workers,memory
    python benchmarks/bench_scale.py --profile benchmarks/profiles   # cProfile text too

Four parts, each printing its ratio against the target of issue 14 and PASS or MISS
(printed, never asserted):

* **tasks** -- no-op tasks through one ``LocalCluster(2, 1)``, ``map`` in batches of
  100,000 (20,000 with ``--quick``), each batch gathered and then released (timed until
  the scheduler has forgotten the last batch: each batch pays for one release). Throughput
  over 1,000,000 tasks (100,000) against the median of three 10,000-task batches;
  target: within 15 % (ratio >= 0.85). ``ProcessPoolExecutor(2).map`` runs the same
  batches (``chunksize=1``, one task per item like mpnet) for the ratio to the pool.
* **memory** -- a scheduler in a process of its own (``mpnet scheduler``, the same code
  LocalCluster runs in a thread), two worker processes, the client here. Two tasks
  block both worker threads, then N no-op tasks queue at the scheduler: memory per
  in-flight task is the growth of the scheduler process over N, measured two ways:
  Python's own allocations (``tracemalloc``, started in the scheduler process) and RSS.
  Then they finish (results held by the client: "held"), then are released; target:
  memory back within 10 % of the start (RSS after ``malloc_trim``, since a C allocator
  keeps freed pages; the Python objects still kept, by tracemalloc, are printed too).
  The RSS cycle runs three times: memory kept after the first must be reused by the
  others, not grow with each batch.
* **graphs** -- a tree reduction (50,000 leaves + 49,999 ``add`` nodes = 99,999 tasks)
  and a grid of 1,000 chains x 100 ``inc`` steps (100,000 tasks), on ``LocalCluster(2,
  1)``: tasks/s from the first submit to the last result. No pool column: a pool has
  no dependencies (every edge would be a round trip through this process).
* **workers** -- a scheduler in its own process serving fake workers: one load-generator
  process (``loadgen.py``) holds W authenticated worker connections that register and
  answer every COMPUTE with TASK_FINISHED at once. The same N no-op tasks with W = 2 and
  W = 1,000; target: the 1,000-worker rate at least 70 % of the 2-worker rate. Also
  the scheduler process's CPU per task, steadier than wall time on a shared machine.

dask and Ray columns: the tasks part runs them when they are installed (``distributed``,
``ray``); otherwise it says "skipped".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.util import find_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # benchmark this checkout, installed or not (children: PYTHONPATH)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
# One token for every process of the run, so nothing reads or writes ~/.config/mpnet.
os.environ.setdefault("MPNET_TOKEN", secrets.token_hex(16))

TARGET_SCALE = 0.85          # 1M throughput / 10k throughput
TARGET_MEMORY_BACK = 1.10    # scheduler memory after release / before
TARGET_WORKERS = 0.70        # rate at 1,000 workers / rate at 2


def noop(x):
    return x


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def block(path):
    """Hold a worker thread until ``path`` exists (the memory part's plug)."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return 0


def verdict(ratio, target, higher_is_better=True):
    ok = ratio >= target if higher_is_better else ratio <= target
    return "PASS" if ok else "MISS"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- processes of our own: a scheduler, workers, the load generator ------------------
@contextmanager
def scheduler_process(tmp):
    """``mpnet scheduler`` in a child process: yields (Popen, scheduler file path)."""
    path = os.path.join(tmp, f"sched-{secrets.token_hex(4)}.json")
    p = subprocess.Popen([sys.executable, "-c", "from mpnet.cli.main import main; main()",
                          "scheduler", "--host", "127.0.0.1", "--port", "0",
                          "--no-dashboard", "--scheduler-file", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start (exit {p.poll()})")
            time.sleep(0.05)
        yield p, path
    finally:
        stop(p)


def stop(p, grace=15.0):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def worker_processes(sched_file, n):
    p = subprocess.Popen([sys.executable, "-c", "from mpnet.cli.main import main; main()",
                          "worker", "--scheduler-file", sched_file, "--nworkers", str(n),
                          "--nthreads", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        stop(p, 30)


@contextmanager
def loadgen_process(sched_file, n):
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks", "loadgen.py"),
                          "--scheduler-file", sched_file, "--workers", str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"the load generator did not start: {line!r}")
        yield p
    finally:
        if p.poll() is None:
            p.stdin.close()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_workers(client, n, timeout=120):
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info()["workers"]) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} workers after {timeout}s")
        time.sleep(0.1)


def scheduler_tasks(mpnet_scheduler):
    return len(mpnet_scheduler.state.tasks)


def wait_idle(client, timeout=120, interval=0.05, collect=True):
    """Until the scheduler holds no task (the releases have been digested).

    ``collect``: a full collection first, so that nothing waits for the collector to
    be released; not in timed code (no user program calls gc.collect() per batch)."""
    deadline = time.monotonic() + timeout
    if collect:
        gc.collect()
    while client.run_on_scheduler(scheduler_tasks):
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduler still holds tasks after the release")
        time.sleep(interval)


# --- profiling the scheduler's loop thread, from the client (run_on_scheduler) --------
def _profile_start(mpnet_scheduler):
    import cProfile
    prof = cProfile.Profile()
    prof.enable()                      # runs on the loop thread: profiles that thread
    mpnet_scheduler._bench_profile = prof


def _profile_stop(path, mpnet_scheduler):
    import io
    import pstats
    prof = mpnet_scheduler._bench_profile
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(35)
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(35)
    with open(path, "w") as f:
        f.write(out.getvalue())


@contextmanager
def profiled(client, path):
    """cProfile of the scheduler loop thread while the block runs (``path`` None: off)."""
    if path is None:
        yield
        return
    client.run_on_scheduler(_profile_start)
    try:
        yield
    finally:
        client.run_on_scheduler(_profile_stop, os.path.abspath(path))
        log(f"  profile written to {path}")


# --- the garbage collector's share, in this process (gc.callbacks) ----------------------
class GCTime:
    """Time spent in collections of this process, by generation, between ``mark()`` calls.

    In a LocalCluster the client and the scheduler share this process, so this is the
    collector's cost on both sides (the workers' own processes are not counted)."""

    def __init__(self):
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._t = 0.0
        self._gen = 0

    def _callback(self, phase, info):
        if phase == "start":
            self._gen, self._t = info["generation"], time.perf_counter()
        else:
            self.seconds[self._gen] += time.perf_counter() - self._t
            self.counts[self._gen] += 1

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)

    def mark(self):
        """(seconds, [young, middle, full] counts) since the last mark; resets."""
        out = (sum(self.seconds), list(self.counts), list(self.seconds))
        self.seconds, self.counts = [0.0, 0.0, 0.0], [0, 0, 0]
        return out


class Marks:
    """What batches_tps calls at the end of each batch: keeps each batch's GCTime."""

    def __init__(self, gct):
        self.gct, self.taken = gct, []

    def mark(self):
        self.taken.append(self.gct.mark())


def gc_summary(marks):
    """[(seconds, counts)] of several batches -> a dict for the report (per batch)."""
    n = len(marks)
    return {"batches": n, "seconds": sum(m[0] for m in marks) / n,
            "counts": [sum(m[1][g] for m in marks) / n for g in range(3)],
            "max_seconds": max(m[0] for m in marks),
            "seconds_by_generation": [sum(m[2][g] for m in marks) / n for g in range(3)]}


# --- part 1: a million tasks ----------------------------------------------------------
def batches_tps(run_batch, total, batch, drained=None, gc_marks=None):
    """Throughput of ``total`` tasks in batches (each gathered, then dropped).

    ``drained()`` (timed too) waits until the last batch's release has been digested:
    every batch but the last pays for the release of the one before it, so the last
    must pay for its own, or a single batch would look cheaper than many."""
    t = time.perf_counter()
    done = 0
    while done < total:
        n = min(batch, total - done)
        out = run_batch(done, n)
        if len(out) != n or out[0] != done or out[-1] != done + n - 1:
            raise RuntimeError(f"wrong results in batch at {done}")
        del out
        done += n
        if gc_marks is not None and done < total:
            gc_marks.mark()
    if drained is not None:
        drained()
    if gc_marks is not None:
        gc_marks.mark()
    return total / (time.perf_counter() - t)


def part_tasks(args, tmp):
    total, batch = (100_000, 20_000) if args.quick else (1_000_000, 100_000)
    small, small_runs = 10_000, 3
    res = {"total": total, "batch": batch, "small": small}
    from mpnet import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client, GCTime() as gct:
        def mpnet_batch(start, n):
            return client.gather(client.map(noop, range(start, start + n)))
        mpnet_batch(0, 2_000)                                       # warm-up
        wait_idle(client)
        def drained():
            wait_idle(client, interval=0.002, collect=False)
        smalls, marks = [], Marks(gct)
        for _ in range(small_runs):
            gct.mark()
            smalls.append(batches_tps(mpnet_batch, small, small, drained, marks))
        res["mpnet_small_tps"] = statistics.median(smalls)
        res["gc_small"] = gc_summary(marks.taken)
        log(f"  mpnet {small:,}: {res['mpnet_small_tps']:,.0f}/s; now {total:,} ...")
        marks = Marks(gct)
        gct.mark()
        res["mpnet_total_tps"] = batches_tps(mpnet_batch, total, batch, drained, marks)
        res["gc_total"] = gc_summary(marks.taken)
        res["gc_threshold"] = list(gc.get_threshold())
        wait_idle(client)
        if args.profile:        # one more batch, profiled (cProfile slows the loop ~2x)
            with profiled(client, os.path.join(args.profile, "scale_tasks_map.txt")):
                batches_tps(mpnet_batch, batch, batch)
            wait_idle(client)
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(2) as ex:
        def pool_batch(start, n):
            return list(ex.map(noop, range(start, start + n)))
        pool_batch(0, 2_000)
        res["pool_small_tps"] = statistics.median(
            batches_tps(pool_batch, small, small) for _ in range(small_runs))
        log(f"  pool {small:,}: {res['pool_small_tps']:,.0f}/s; now {total:,} ...")
        res["pool_total_tps"] = batches_tps(pool_batch, total, batch)
    res["dask"] = peer_tasks("dask", total, batch, small) if not args.no_peers else None
    res["ray"] = peer_tasks("ray", total, batch, small) if not args.no_peers else None
    res["scale_ratio"] = res["mpnet_total_tps"] / res["mpnet_small_tps"]
    res["pool_ratio"] = res["mpnet_total_tps"] / res["pool_total_tps"]
    return res


def peer_tasks(name, total, batch, small):
    """dask or Ray through the same batches, if installed (None: skipped)."""
    if find_spec({"dask": "distributed", "ray": "ray"}[name]) is None:
        return None
    try:
        if name == "dask":
            import logging

            from distributed import Client, LocalCluster
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=None, silence_logs=logging.CRITICAL) as c, \
                    Client(c) as client:
                def run(start, n):
                    return client.gather(client.map(noop, range(start, start + n),
                                                    pure=False))
                return {"small_tps": batches_tps(run, small, small),
                        "total_tps": batches_tps(run, total, batch)}
        import ray
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            rnoop = ray.remote(noop)

            def run(start, n):
                return ray.get([rnoop.remote(i) for i in range(start, start + n)])
            return {"small_tps": batches_tps(run, small, small),
                    "total_tps": batches_tps(run, total, batch)}
        finally:
            ray.shutdown()
    except Exception as e:   # a peer's failure is reported, not fatal
        return {"error": f"{type(e).__name__}: {e}"[:200]}


# --- part 2: scheduler memory per in-flight task --------------------------------------
def _mem_start(mpnet_scheduler):
    import tracemalloc
    gc.collect()
    tracemalloc.start()


def _mem_now(trim=False, mpnet_scheduler=None):
    import ctypes
    import tracemalloc

    import psutil
    gc.collect()
    out = {}
    if trim:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        out = _pymalloc()
    out.update(traced=tracemalloc.get_traced_memory()[0],
               rss=psutil.Process().memory_info().rss)
    return out


def _pymalloc():
    """Python's small-object allocator: its arenas (1 MiB each, given back to the OS only
    when every block in them is free) and the bytes in live blocks, read from
    ``sys._debugmallocstats()`` (which writes to the C stderr: caught in a file)."""
    import re
    import tempfile
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    def number(label):
        m = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else 0
    return {"arenas": number("# arenas allocated current"),
            "blocks": number("# bytes in allocated blocks")}


def _mem_top(path, mpnet_scheduler=None):
    """Write the 25 biggest allocation sites still alive (tracemalloc) to ``path``."""
    import tracemalloc
    gc.collect()
    stats = tracemalloc.take_snapshot().statistics("lineno")
    with open(path, "w") as f:
        f.write(f"{sum(s.size for s in stats):,} bytes traced in all; the biggest sites:\n")
        for stat in stats[:25]:
            f.write(f"{stat.size:>12,} B {stat.count:>9,} blocks  {stat.traceback}\n")


def _mem_stop(mpnet_scheduler):
    import tracemalloc
    tracemalloc.stop()


def _memory_cycle(client, n, plug, top=None):
    """N tasks queued behind two plugs, then run and held, then released: the
    scheduler's memory at each step (and, with ``top``, its biggest allocation sites)."""
    if os.path.exists(plug):
        os.remove(plug)
    blockers = [client.submit(block, plug, priority=10, pure=False) for _ in range(2)]
    futures = client.map(noop, range(n))
    deadline = time.monotonic() + 300
    while client.run_on_scheduler(scheduler_tasks) < n + 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the tasks did not all reach the scheduler")
        time.sleep(0.05)
    queued = client.run_on_scheduler(_mem_now)
    if top:
        client.run_on_scheduler(_mem_top, os.path.abspath(top + "_queued.txt"))
    open(plug, "w").close()
    client.gather(blockers + futures)
    held = client.run_on_scheduler(_mem_now)
    del blockers, futures
    wait_idle(client)
    after = client.run_on_scheduler(_mem_now)
    trimmed = client.run_on_scheduler(_mem_now, True)
    if top:
        client.run_on_scheduler(_mem_top, os.path.abspath(top + "_released.txt"))
    return {"queued": queued, "held": held, "after": after, "trimmed": trimmed}


def part_memory(args, tmp):
    n = 20_000 if args.quick else 100_000
    res = {"n": n}
    from mpnet import Client
    plug = os.path.join(tmp, "unplug")
    with scheduler_process(tmp) as (sched, sched_file), worker_processes(sched_file, 2), \
            Client(scheduler_file=sched_file) as client:
        wait_workers(client, 2)
        # warm-up: every code path (and its caches) once, so the baseline holds them
        client.gather(client.map(noop, range(10_000)))
        wait_idle(client)
        # RSS first, without tracemalloc (whose own records would count). Three cycles:
        # the later ones show whether what the first kept is reused (the allocators'
        # free lists) or grows with every batch (a leak).
        base = client.run_on_scheduler(_mem_now)
        base_pym = client.run_on_scheduler(_mem_now, True)     # arenas at the start
        rss = [_memory_cycle(client, n, plug) for _ in range(3)]
        # Then Python's own allocations, by tracemalloc started in the scheduler.
        client.run_on_scheduler(_mem_start)
        tbase = client.run_on_scheduler(_mem_now)
        traced = _memory_cycle(client, n, plug, top=args.profile and os.path.join(
            args.profile, "scale_memory"))
        client.run_on_scheduler(_mem_stop)
    for k, cycle, start in (("traced", traced, tbase), ("rss", rss[0], base)):
        res[f"queued_{k}_per_task"] = (cycle["queued"][k] - start[k]) / n
        res[f"held_{k}_per_task"] = (cycle["held"][k] - start[k]) / n
        res[f"{k}_base"] = start[k]
    res["traced_kept"] = traced["after"]["traced"] - tbase["traced"]
    res["traced_kept_share"] = res["traced_kept"] / (traced["held"]["traced"] - tbase["traced"])
    res["rss_after"] = [c["after"]["rss"] for c in rss]
    res["rss_trimmed"] = [c["trimmed"]["rss"] for c in rss]
    res["rss_trimmed_ratio"] = res["rss_trimmed"][0] / base["rss"]
    res["pymalloc_base"] = {"arenas": base_pym["arenas"], "blocks": base_pym["blocks"]}
    res["pymalloc_trimmed"] = [{"arenas": c["trimmed"].get("arenas", 0),
                                "blocks": c["trimmed"].get("blocks", 0)} for c in rss]
    return res


# --- part 3: dependency graphs ----------------------------------------------------------
def tree_reduce(client, leaves):
    level = client.map(noop, range(leaves))
    tasks = leaves
    while len(level) > 1:
        nxt = [client.submit(add, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        tasks += len(level) // 2
        level = nxt
    total = level[0].result()
    if total != leaves * (leaves - 1) // 2:
        raise RuntimeError(f"tree reduction gave {total}")
    return tasks


def chain_grid(client, chains, length):
    row = client.map(inc, range(chains))
    for _ in range(length - 1):
        row = [client.submit(inc, f) for f in row]
    out = client.gather(row)
    if out != [i + length for i in range(chains)]:
        raise RuntimeError("chain grid gave wrong results")
    return chains * length


def part_graphs(args, tmp):
    leaves = 10_000 if args.quick else 50_000
    chains, length = (100, 100) if args.quick else (1_000, 100)
    res = {}
    from mpnet import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        tree_reduce(client, 1_000)                                # warm-up
        wait_idle(client)
        t = time.perf_counter()
        res["tree_tasks"] = tree_reduce(client, leaves)
        res["tree_tps"] = res["tree_tasks"] / (time.perf_counter() - t)
        wait_idle(client)
        t = time.perf_counter()
        res["grid_tasks"] = chain_grid(client, chains, length)
        res["grid_tps"] = res["grid_tasks"] / (time.perf_counter() - t)
        res["grid_shape"] = f"{chains:,} x {length}"
        wait_idle(client)
        if args.profile:
            with profiled(client, os.path.join(args.profile, "scale_chain_grid.txt")):
                chain_grid(client, chains, length)
            wait_idle(client)
    return res


# --- part 4: a thousand workers -------------------------------------------------------
def _cpu(pid):
    import psutil
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def part_workers(args, tmp):
    n = 20_000 if args.quick else 100_000
    res = {"n": n}
    from mpnet import Client
    for w in (2, 1_000):
        with scheduler_process(tmp) as (sched, sched_file), \
                loadgen_process(sched_file, w), Client(scheduler_file=sched_file) as client:
            wait_workers(client, w)
            client.gather(client.map(noop, range(5_000)))          # warm-up
            wait_idle(client)
            rates, cpus = [], []
            for _ in range(1 if args.quick else 3):
                c0, t = _cpu(sched.pid), time.perf_counter()
                out = client.gather(client.map(noop, range(n)))
                dt, cpu = time.perf_counter() - t, _cpu(sched.pid) - c0
                if len(out) != n:
                    raise RuntimeError("lost tasks")
                del out
                rates.append(n / dt)
                cpus.append(cpu / n * 1e6)
                wait_idle(client)
            if args.profile:
                with profiled(client, os.path.join(args.profile, f"scale_workers_{w}.txt")):
                    client.gather(client.map(noop, range(min(n, 20_000))))
                wait_idle(client)
            res[f"tps_{w}"] = statistics.median(rates)
            res[f"cpu_us_{w}"] = statistics.median(cpus)
            log(f"  {w} workers: {res[f'tps_{w}']:,.0f}/s, scheduler CPU "
                f"{res[f'cpu_us_{w}']:.1f} us/task")
    res["ratio"] = res["tps_1000"] / res["tps_2"]
    res["cpu_ratio"] = res["cpu_us_2"] / res["cpu_us_1000"]
    return res


# --- reporting --------------------------------------------------------------------------
def report(r):
    if "tasks" in r:
        t = r["tasks"]
        print(f"\n== tasks: no-op map in batches of {t['batch']:,}, LocalCluster(2, 1) ==")
        print(f"  mpnet  {t['small']:>9,}: {t['mpnet_small_tps']:>9,.0f} tasks/s")
        print(f"  mpnet  {t['total']:>9,}: {t['mpnet_total_tps']:>9,.0f} tasks/s")
        print(f"  pool   {t['small']:>9,}: {t['pool_small_tps']:>9,.0f} tasks/s")
        print(f"  pool   {t['total']:>9,}: {t['pool_total_tps']:>9,.0f} tasks/s")
        for peer in ("dask", "ray"):
            p = t.get(peer)
            if p is None:
                print(f"  {peer}: skipped (not installed)")
            elif "error" in p:
                print(f"  {peer}: error: {p['error']}")
            else:
                print(f"  {peer:<6} {t['small']:>9,}: {p['small_tps']:>9,.0f} tasks/s; "
                      f"{t['total']:,}: {p['total_tps']:,.0f} tasks/s")
        for k, n in (("gc_small", t["small"]), ("gc_total", t["batch"])):
            g = t.get(k)
            if g:
                print(f"  GC per {n:,}-task batch (client + scheduler process): "
                      f"{g['seconds']:.2f} s (max {g['max_seconds']:.2f}), "
                      f"{g['counts'][0]:.0f} young, {g['counts'][1]:.1f} middle, "
                      f"{g['counts'][2]:.1f} full collections")
        if "gc_threshold" in t:
            print(f"  gc thresholds: {tuple(t['gc_threshold'])}")
        print(f"  {t['total']:,} vs {t['small']:,}: {t['scale_ratio']:.2f}x "
              f"(target >= {TARGET_SCALE}): {verdict(t['scale_ratio'], TARGET_SCALE)}")
        print(f"  (the pool, same batches: {t['pool_total_tps'] / t['pool_small_tps']:.2f}x)")
        print(f"  mpnet/pool at {t['total']:,}: {t['pool_ratio']:.2f}x "
              f"(issue target for 20k: >= 1.5x): {verdict(t['pool_ratio'], 1.5)}")
    if "memory" in r:
        m = r["memory"]
        print(f"\n== memory: scheduler process, {m['n']:,} no-op tasks ==")
        print(f"  queued at the scheduler: {m['queued_traced_per_task']:,.0f} B/task "
              f"(tracemalloc), {m['queued_rss_per_task']:,.0f} B/task (RSS)")
        print(f"  finished, held by the client: {m['held_traced_per_task']:,.0f} B/task "
              f"(tracemalloc), {m['held_rss_per_task']:,.0f} B/task (RSS)")
        print(f"  after release, Python objects kept (tracemalloc): "
              f"{m['traced_kept'] / 1e6:.2f} MB, {m['traced_kept_share']:.1%} of the growth")
        a, t = m["rss_after"], m["rss_trimmed"]
        print(f"  after release, RSS: {a[0] / 1e6:.1f} MB ({t[0] / 1e6:.1f} MB after "
              f"malloc_trim) vs {m['rss_base'] / 1e6:.1f} MB at the start = "
              f"{m['rss_trimmed_ratio']:.2f}x (target <= {TARGET_MEMORY_BACK}): "
              f"{verdict(m['rss_trimmed_ratio'], TARGET_MEMORY_BACK, False)}")
        if m.get("pymalloc_base"):
            b = m["pymalloc_base"]
            print(f"  pymalloc (after malloc_trim): at the start {b['arenas']} arenas of "
                  f"1 MiB holding {b['blocks'] / 1e6:.1f} MB of live blocks; after each "
                  "release: " + ", ".join(f"{p['arenas']} arenas holding "
                                          f"{p['blocks'] / 1e6:.1f} MB"
                                          for p in m["pymalloc_trimmed"]))
        later = ", ".join(f"{x / 1e6:.1f} MB" for x in t[1:])
        print(f"  RSS after malloc_trim after each further cycle of {m['n']:,}: {later}: "
              f"{'reused, not grown' if t[-1] <= t[0] * 1.05 else 'GREW'}")
    if "graphs" in r:
        g = r["graphs"]
        print("\n== graphs: LocalCluster(2, 1) ==")
        print(f"  tree reduction, {g['tree_tasks']:,} tasks: {g['tree_tps']:,.0f} tasks/s")
        print(f"  chain grid {g['grid_shape']} ({g['grid_tasks']:,} tasks): "
              f"{g['grid_tps']:,.0f} tasks/s")
        print("  (no pool column: a pool has no dependencies)")
    if "workers" in r:
        w = r["workers"]
        print(f"\n== workers: scheduler process + fake workers (loadgen), {w['n']:,} tasks ==")
        print(f"  2 workers:     {w['tps_2']:>9,.0f} tasks/s, scheduler CPU "
              f"{w['cpu_us_2']:.1f} us/task")
        print(f"  1,000 workers: {w['tps_1000']:>9,.0f} tasks/s, scheduler CPU "
              f"{w['cpu_us_1000']:.1f} us/task")
        print(f"  1,000 vs 2: {w['ratio']:.2f}x (target >= {TARGET_WORKERS}): "
              f"{verdict(w['ratio'], TARGET_WORKERS)}; by scheduler CPU per task "
              f"{w['cpu_ratio']:.2f}x: {verdict(w['cpu_ratio'], TARGET_WORKERS)}")


PARTS = {"tasks": part_tasks, "memory": part_memory, "graphs": part_graphs,
         "workers": part_workers}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, about 1 minute")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    ap.add_argument("--profile", metavar="DIR", help="write cProfile text of the "
                    "scheduler loop thread here")
    ap.add_argument("--no-peers", action="store_true", help="skip dask and Ray")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    args = ap.parse_args()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mpnet-scale-") as tmp:
        for name in args.only.split(","):
            log(f"running {name} ...")
            t = time.perf_counter()
            results[name] = PARTS[name](args, tmp)
            log(f"  {name} done in {time.perf_counter() - t:.1f} s")
    print(f"{os.cpu_count()} cores, Python {platform.python_version()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
