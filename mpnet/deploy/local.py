"""LocalCluster: a scheduler and workers on this machine, in one line.

::

    this process                                     child processes (processes=True)
    ┌─────────────────────────────────────────┐
    │ mpnet-cluster-loop thread:              │      ┌──────────────────────────┐
    │   Scheduler  ◄──── tcp, authenticated ──┼────► │ Worker (loop + executor) │
    │   Nanny × n  ── spawn / watch / stop ───┼────► │ ...                      │
    │   Client(cluster) shares this loop      │      └──────────────────────────┘
    └─────────────────────────────────────────┘

With ``processes=False`` the workers are threads of this process instead (same loop).
Each cluster makes a random token and gives it to its own processes and to
``Client(cluster)``; ``cluster.token`` lets other clients in.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

import psutil

from ..comm.auth import new_token, resolve_token, token_arg
from ..comm.eventloop import EventLoop
from ..config import Config, make_config, parse_bytes
from ..errors import ClusterClosedError
from ..lifecycle import Lifecycle, Status
from ..nanny.nanny import Nanny, close_all
from ..scheduler.server import Scheduler
from ..worker.worker import Worker

__all__ = ["LocalCluster"]

log = logging.getLogger("mpnet.cluster")

_live: "weakref.WeakSet[LocalCluster]" = weakref.WeakSet()


def memory_per_worker(memory_limit: Any, n_workers: int) -> int:
    """``"auto"`` shares the machine's memory out; a fraction (≤ 1) is of the machine;
    ``"2GiB"`` or a byte count is per worker; ``0``/``None`` means no limit."""
    if memory_limit in (None, 0, "0"):
        return 0
    total = psutil.virtual_memory().total
    if memory_limit == "auto":
        return total // max(1, n_workers)
    if isinstance(memory_limit, float) and 0 < memory_limit <= 1:
        return int(total * memory_limit)
    return parse_bytes(memory_limit)


class LocalCluster:
    """``LocalCluster(n_workers=2, threads_per_worker=1)``: ready when it returns.

    ``resources={"db": 2}`` is declared by every worker; ``gpus=[0, 1]`` gives worker i
    GPU ``gpus[i]`` (``CUDA_VISIBLE_DEVICES`` and a ``GPU`` resource of 1).
    ``lifetime`` (seconds), ``lifetime_stagger``, ``lifetime_restart`` recycle workers:
    see docs/supervision.md. ``dashboard_address`` (default ``":8787"``, a free port if
    taken; ``None``: no dashboard) serves the page of docs/monitoring.md.
    """

    def __init__(self, n_workers: int | None = None, threads_per_worker: int | None = None,
                 processes: bool = True, memory_limit: Any = "auto", host: str = "127.0.0.1",
                 scheduler_port: int = 0, dashboard_address: str | None = ":8787",
                 resources: dict | None = None, token: str | None = None,
                 gpus: list | None = None, lifetime: float | None = None,
                 lifetime_stagger: float = 0.0, lifetime_restart: bool = False,
                 config: Config | None = None, **config_overrides: Any):
        self.config = make_config(config, **config_overrides)
        cpus = os.cpu_count() or 1
        if n_workers is None:
            n_workers = cpus if processes else 1
        if threads_per_worker is None:
            threads_per_worker = 1 if processes else cpus
        if n_workers < 0 or threads_per_worker < 1:
            raise ValueError(f"need n_workers >= 0 and threads_per_worker >= 1, got "
                             f"{n_workers} and {threads_per_worker}")
        self.processes = processes
        self.threads_per_worker = threads_per_worker
        self.memory_limit = memory_per_worker(memory_limit, n_workers)
        if resources is not None:
            from ..client.client import task_options
            task_options(resources, None)      # the same check tasks get, at once
        self.resources = resources
        self.gpus = list(gpus) if gpus is not None else None
        self.lifetime = dict(lifetime=lifetime, lifetime_stagger=lifetime_stagger,
                             lifetime_restart=lifetime_restart)
        if self.gpus is not None and not processes:
            raise ValueError("gpus= needs processes=True: each worker process gets its own "
                             "CUDA_VISIBLE_DEVICES")
        self.dashboard_address = dashboard_address
        if token is False:
            log.warning("LocalCluster(token=False): anyone who can reach its ports can run "
                        "code on this cluster")
        self.token = None if token is False else resolve_token(token or new_token())
        self.loop = EventLoop("mpnet-cluster-loop")
        self.workers: list[Nanny | Worker] = []
        self._lock = threading.Lock()          # one scale() or close() at a time
        self._life = Lifecycle("LocalCluster")
        self._life.move(Status.STARTING)
        self.scheduler = Scheduler(host, scheduler_port, token=token_arg(self.token),
                                   loop=self.loop, dashboard_address=dashboard_address or None,
                                   config=self.config)
        try:
            self.scheduler.start()
            self.scale(n_workers)
        except BaseException:
            self._life.move(Status.FAILED, only_from=(Status.STARTING,))
            self.close()
            raise
        self._life.move(Status.RUNNING, only_from=(Status.STARTING,))
        _live.add(self)

    @property
    def scheduler_address(self) -> str:
        return self.scheduler.address

    @property
    def dashboard_link(self) -> str | None:
        """``http://127.0.0.1:8787/`` (another port if that one was taken), or None when
        made with ``dashboard_address=None``."""
        return self.scheduler.dashboard_link

    @property
    def status(self) -> Status:
        return self._life.state

    def __repr__(self) -> str:
        n = len(self.workers)
        memory = f" memory={self.memory_limit * n / 2**30:.1f} GiB" if self.memory_limit else ""
        dashboard = f" dashboard={self.dashboard_link}" if self.dashboard_link else ""
        return (f"<LocalCluster {self.scheduler_address} workers={n} "
                f"threads={n * self.threads_per_worker}{memory}{dashboard} {self.status}>")

    def _repr_html_(self) -> str:
        from ..client.monitoring import cluster_html
        snap = None
        if self.status == "running":
            from ..scheduler.snapshot import snapshot
            try:
                snap = self.loop.run_sync(snapshot, self.scheduler, timeout=2)
            except Exception:        # a notebook repr must never raise
                snap = None
        return cluster_html("LocalCluster", self.scheduler_address, self.status.value, snap)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _new_worker(self, index: int) -> Nanny | Worker:
        kw = dict(nthreads=self.threads_per_worker, token=token_arg(self.token), config=self.config,
                  resources=self.resources, memory_limit=self.memory_limit, host="127.0.0.1",
                  **self.lifetime)
        if self.processes:
            if self.gpus is not None:     # one GPU per worker, in order, round robin
                kw["gpus"] = [self.gpus[index % len(self.gpus)]]
            return Nanny(self.scheduler_address, loop=self.loop, **kw)
        return Worker(self.scheduler_address, loop=self.loop, **kw)

    def scale(self, n: int, timeout: float = 60.0) -> None:
        """Start or stop workers until there are ``n``; returns once they serve."""
        with self._lock:
            if not self._life.is_in(Status.STARTING, Status.RUNNING):
                raise ClusterClosedError("scale() on a closed LocalCluster")
            if n > len(self.workers):
                new = [self._new_worker(i) for i in range(len(self.workers), n)]
                self.workers.extend(new)
                if self.processes:       # spawn all, then wait: start-up in parallel
                    for w in new:
                        w.start_nowait()
                    for w in new:
                        w.wait_started(timeout)
                else:
                    for w in new:
                        w.start()
            elif n < len(self.workers):
                gone = self.workers[n:]
                del self.workers[n:]
                self._close_workers(gone)

    def _close_workers(self, workers: list, timeout: float | None = None) -> None:
        """Close many workers in parallel under one deadline (``timeout`` seconds)."""
        close_all(workers, timeout or self.config.close_timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop workers (ask, SIGTERM, SIGKILL), the scheduler and the loop. Idempotent."""
        if not self._life.move(Status.CLOSING, only_from=(Status.STARTING, Status.RUNNING,
                                                          Status.FAILED)):
            # closed already, or another thread is closing it: wait for that, bounded
            self._life.wait_for(Status.CLOSED, timeout=timeout or self.config.close_timeout)
            return
        with self._lock:
            workers, self.workers = self.workers, []
        try:
            self._close_workers(workers, timeout)
        finally:
            self.scheduler.close()
            self.loop.close()
            self._life.move(Status.CLOSED)
            _live.discard(self)


def _close_forgotten_clusters() -> None:
    for cluster in list(_live):
        cluster.close()


# At interpreter exit, clusters a script did not close are closed before ``atexit``
# handlers run: multiprocessing's own handler would otherwise terminate the worker
# processes first, under their nannies (which would report crashes and restart them).
# Clients register their own hook later (at their first creation), so theirs runs
# first: submitted work finishes, clients close, then workers and the scheduler.
threading._register_atexit(_close_forgotten_clusters)
