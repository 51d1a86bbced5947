"""The nanny's blocking work (spawn, join, psutil) stays off the event loop: in
LocalCluster that loop also serves the scheduler."""

from __future__ import annotations

import multiprocessing.process
import os
import signal
import threading
import time

from mpnet import Client, LocalCluster
from mpnet.nanny.process import WorkerProcess
from tests.utils import wait_for


def test_a_slow_spawn_leaves_the_clusters_loop_serving(monkeypatch):
    entered, release = threading.Event(), threading.Event()
    on_loop = []                # (what, ran on the cluster's loop thread?)
    cluster = LocalCluster(n_workers=0, dashboard_address=None, memory_limit="1GiB",
                           memory_interval=0.05)
    start, join, rss = (multiprocessing.process.BaseProcess.start,
                        multiprocessing.process.BaseProcess.join, WorkerProcess.rss)

    # Spies: each records where it ran and calls the real thing. The first spawn is
    # held (a slow fork, a slow disk) until the test has asked the scheduler something.
    def slow_start(self):
        if self.name == "mpnet-worker":
            on_loop.append(("spawn", cluster.loop.in_loop_thread()))
            entered.set()
            release.wait(10)
        return start(self)

    def spy_join(self, timeout=None):
        if self.name == "mpnet-worker":
            on_loop.append(("join", cluster.loop.in_loop_thread()))
        return join(self, timeout)

    def spy_rss(self):
        on_loop.append(("rss", cluster.loop.in_loop_thread()))
        return rss(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", slow_start)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "join", spy_join)
    monkeypatch.setattr(WorkerProcess, "rss", spy_rss)
    scaler = threading.Thread(target=cluster.scale, args=(1,), name="test-scale")
    try:
        with Client(cluster) as client:
            scaler.start()
            assert entered.wait(10)
            asked = time.monotonic()
            info = client.scheduler_info()      # served while the spawn is held
            answered = time.monotonic() - asked
            release.set()
            scaler.join(30)
            assert answered < 5, f"the scheduler answered after {answered:.1f}s"
            assert info["workers"] == {}
            nanny = cluster.workers[0]
            wait_for(lambda: any(what == "rss" for what, _ in on_loop), timeout=10,
                     what="a memory read")
            os.kill(nanny.pid, signal.SIGKILL)  # reaped (joined), then spawned again
            wait_for(lambda: nanny.restarts == 1 and nanny.worker_address, timeout=20,
                     what="the worker's restart")
    finally:
        release.set()
        if scaler.ident is not None:
            scaler.join(30)
        cluster.close()
    kinds = {what for what, _ in on_loop}
    assert {"spawn", "join", "rss"} <= kinds
    assert [what for what, looped in on_loop if looped] == []
