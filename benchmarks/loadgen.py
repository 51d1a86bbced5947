"""A load generator that speaks the worker protocol: many fake workers in one process.

::

    scheduler ──COMPUTE──► one selector loop (this process), N authenticated connections
              ◄─TASK_FINISHED (a fixed small result, inline) at once, on the same turn
              ◄─HEARTBEAT every heartbeat_interval, from each connection

Each connection registers as a worker (REGISTER_WORKER, with a made-up address that
nobody dials: results travel inline, so no peer ever fetches from it). It runs nothing:
the point is to measure the *scheduler* serving N workers, which a 2-core machine could
not do with N real worker processes. Used by ``bench_scale.py``; runnable alone::

    python benchmarks/loadgen.py --scheduler-file sched.json --workers 1000

It prints ``READY <n>`` on stdout once every connection is registered, and runs until
stdin closes (or SIGTERM), then closes every connection and its loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mpnet.comm.endpoints import connect                     # noqa: E402
from mpnet.comm.eventloop import EventLoop                   # noqa: E402
from mpnet.comm.protocol import Msg                          # noqa: E402
from mpnet.comm.serialize import dumps                       # noqa: E402
from mpnet.config import make_config                         # noqa: E402
from mpnet.versions import get_versions                      # noqa: E402

#: what every fake task returns (the no-op benchmarks check counts, not values)
RESULT = dumps(None)


class FakeWorkers:
    """``n`` worker sessions on one loop; ``computed`` counts COMPUTEs answered."""

    def __init__(self, address: str, token: str | None, n: int, nthreads: int = 1):
        self.address, self.token, self.n, self.nthreads = address, token, n, nthreads
        self.config = make_config()
        self.loop = EventLoop("mpnet-loadgen-loop")
        self.conns: list = []
        self.computed = 0
        self._stop = threading.Event()

    def _handle(self, conn, msg: list) -> None:
        # Loop thread. COMPUTE is answered on this same turn: the reply leaves with the
        # connection's next frame. FREE, PLUGIN and the rest are accepted and ignored.
        if msg[0] == Msg.COMPUTE:
            self.computed += 1
            conn.send([Msg.TASK_FINISHED, msg[1], RESULT, RESULT.nbytes])

    def start(self, timeout: float = 120.0) -> None:
        self.loop.start()
        pid = os.getpid()
        # Dial in waves: a listen backlog of a few hundred would refuse a thousand at once.
        wave = 100
        for first in range(0, self.n, wave):
            dials = [self.loop.run_sync(
                lambda i=i: connect(self.loop, self.address, config=self.config,
                                    token=self.token, role="worker",
                                    info={"address": self._addr(i)}, handler=self._handle,
                                    timeout=timeout))
                for i in range(first, min(self.n, first + wave))]
            conns = [f.result(timeout) for f in dials]
            self.conns.extend(conns)
            regs = [self.loop.run_sync(lambda c=c, i=i: c.request(Msg.REGISTER_WORKER, {
                "address": self._addr(i), "nthreads": self.nthreads, "name": f"fake-{i}",
                "pid": pid, "nanny": None, "resources": {}, "memory_limit": 0,
                "versions": get_versions()}))
                for i, c in zip(range(first, first + len(conns)), conns)]
            done, not_done = wait(regs, timeout)
            if not_done:
                raise TimeoutError(f"{len(not_done)} fake workers not registered in "
                                   f"{timeout}s")
            for f in done:
                f.result()
        self.loop.call_soon_threadsafe(self._heartbeat)

    def _addr(self, i: int) -> str:
        return f"tcp://127.0.0.1:{20000 + i}"

    def _heartbeat(self) -> None:
        if self._stop.is_set():
            return
        metrics = {"memory": 0, "cpu": 0.0, "paused": False, "executing": 0, "ready": 0,
                   "stored": 0, "nbytes": 0, "time": time.time()}
        for c in self.conns:
            c.send([Msg.HEARTBEAT, metrics])
        self.loop.call_later(self.config.heartbeat_interval, self._heartbeat)

    def close(self) -> None:
        self._stop.set()

        def close_all() -> None:
            for c in self.conns:
                c.close()
        if self.loop.running:
            self.loop.run_sync(close_all, timeout=10)
        self.loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scheduler-file", required=True)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--nthreads", type=int, default=1)
    args = ap.parse_args()
    from mpnet.comm.auth import resolve_token
    from mpnet.deploy.scheduler_file import read_scheduler_file
    found = read_scheduler_file(args.scheduler_file, timeout=30)
    gen = FakeWorkers(found["address"], resolve_token(None, scheduler_file_token=found.get(
        "token")), args.workers, args.nthreads)
    try:
        gen.start()
        print(f"READY {len(gen.conns)}", flush=True)
        sys.stdin.read()        # until the parent closes our stdin
        print(f"COMPUTED {gen.computed}", flush=True)
    finally:
        gen.close()


if __name__ == "__main__":
    main()
