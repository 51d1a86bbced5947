"""Where one round trip's time goes: ``submit(inc, i).result()`` cut into segments.

::

    python benchmarks/profiles/roundtrip_segments.py [--calls 2000]

Client(cluster) on ``LocalCluster(1, 1)``. It wraps (in this process) the scheduler's
dispatch and the client's TASK_DONE handler, and (in the worker, through
``client.run``) the worker's COMPUTE handler, task start and completion, and records
``time.perf_counter()`` at each; it prints the median of each segment. Clocks of two
processes are not compared: the worker's segments are measured inside the worker.
A diagnostic, not a benchmark: the wrappers add a few microseconds each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

from mpnet import Client, LocalCluster          # noqa: E402
from mpnet.comm.protocol import Msg             # noqa: E402


def inc(x):
    return x + 1


def _wrap_table(dispatcher, msg_type, before):
    table = dispatcher._table
    fn, *rest = table[int(msg_type)]

    def wrapped(*args):
        before()
        return fn(*args)
    table[int(msg_type)] = (wrapped, *rest)


def install_in_worker(mpnet_worker):
    w = mpnet_worker
    r = w.runner
    w._segments, now = [], {}
    execute = r._execute
    # the end of a task: where its outcome is handed on (the executor thread writes
    # TASK_FINISHED itself since the hops branch; before, the loop got it to send)
    end_name = "_ended" if hasattr(r, "_ended") else "_finished"
    end = getattr(r, end_name)

    def timed_execute(task):
        now["start"] = time.perf_counter()
        execute(task)

    def timed_end(*args):
        now["back"] = time.perf_counter()
        end(*args)
        if len(now) == 3:
            w._segments.append((now["start"] - now["compute"], now["back"] - now["start"]))
        now.clear()
    r._execute = timed_execute
    setattr(r, end_name, timed_end)
    _wrap_table(w._handlers, Msg.COMPUTE, lambda: now.__setitem__("compute",
                                                                   time.perf_counter()))
    return True


def collect_in_worker(mpnet_worker):
    rows = mpnet_worker._segments
    return [statistics.median(r[i] for r in rows) * 1e6 for i in range(2)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    with LocalCluster(1, 1, dashboard_address=None) as cluster, Client(cluster) as client:
        marks = {}
        from mpnet.scheduler.workers import WORKER
        _wrap_table(cluster.scheduler.client_role.dispatch, Msg.SUBMIT,
                    lambda: marks.__setitem__("submit", time.perf_counter()))
        _wrap_table(WORKER.dispatch, Msg.TASK_FINISHED,
                    lambda: marks.__setitem__("finished", time.perf_counter()))
        _wrap_table(client._session.dispatch, Msg.TASK_DONE,
                    lambda: marks.__setitem__("done", time.perf_counter()))
        client.run(install_in_worker)
        for i in range(200):
            client.submit(inc, i).result()
        rows = []
        for i in range(args.calls):
            marks.clear()
            t0 = time.perf_counter()
            fut = client.submit(inc, i)
            t1 = time.perf_counter()
            fut.result()
            t2 = time.perf_counter()
            rows.append((t1 - t0, marks["submit"] - t1, marks["finished"] - marks["submit"],
                         marks["done"] - marks["finished"], t2 - marks["done"], t2 - t0))
        (worker,) = client.run(collect_in_worker).values()
    names = ["submit() returns (user thread)", "to the scheduler's SUBMIT handler",
             "SUBMIT handler .. TASK_FINISHED handler", "TASK_FINISHED .. client's TASK_DONE",
             "TASK_DONE .. result() returns", "total"]
    for i, name in enumerate(names):
        print(f"{name:42s} {statistics.median(r[i] for r in rows) * 1e6:7.1f} us")
    print("inside the worker (its own clock):")
    print(f"  {'COMPUTE handler .. executor thread starts':40s} {worker[0]:7.1f} us")
    print(f"  {'executor starts .. result handed on':40s} {worker[1]:7.1f} us")


if __name__ == "__main__":
    main()
