"""The scheduler's monitoring service: what `mpnet top`, `mpnet status`, `mpnet logs` and
the dashboard ask it, and the events and samples they show.

::

    clients ── STATUS / TASK_STREAM / GET_LOGS ──► handlers here (loop thread) ── REPLY
    server  ── worker joined/exited/left, client joined/left, paused ──► Monitor.event
    timer, every second (loop thread) ──► Monitor.tick: tasks/s, per-worker sparklines
    mpnet-dashboard thread (HTTP) ── loop.run_sync(snapshot) ──► /metrics, /api/status, /

Everything it serves is read-only and leaves the token out.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..comm.protocol import Msg
from ..diagnostics import logring
from .snapshot import snapshot


__all__ = ["Monitoring"]

log = logging.getLogger("mpnet.scheduler")

TICK = 1.0      # seconds between samples (rates, sparklines)


class Monitoring:
    """Owned by a :class:`~mpnet.Scheduler`; ``start()`` once serving, ``close()`` on its
    loop at close."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.monitor = scheduler.state.monitor
        self.dashboard = None
        self._timer = None
        self._exited_at: dict[str, float] = {}     # nanny → when its worker died
        logring.install()          # from the first line ("Scheduler at: ...")

    @property
    def handlers(self) -> dict:
        return {Msg.STATUS: self._status, Msg.TASK_STREAM: self._task_stream,
                Msg.GET_LOGS: self._get_logs}

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start sampling; serve the dashboard if the scheduler has an address for it."""
        s = self.scheduler
        if s.dashboard_address:
            from ..diagnostics.dashboard import Dashboard
            host = "" if s.host is None else s.host
            self.dashboard = Dashboard(s.dashboard_address, self.snapshot,
                                       self.task_stream, default_host=host)
            self.dashboard.start()
            s.dashboard_link = self.dashboard.link
            log.info("Dashboard at: %s", s.dashboard_link)
        s.loop.call_soon_threadsafe(self._tick)

    def _tick(self) -> None:
        if self.scheduler.status != "running":
            return
        self.monitor.tick(self.scheduler.state.workers.values())
        self._timer = self.scheduler.loop.call_later(TICK, self._tick)

    def close(self) -> None:
        """Stop the timer and the dashboard (its thread is joined). Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.dashboard is not None:
            self.dashboard.close()

    # --- reading (any thread: hops onto the loop) ----------------------------------
    def snapshot(self, history: bool = False, events: int = 20) -> dict:
        return self.scheduler.loop.run_sync(
            lambda: snapshot(self.scheduler, history=history, events=events), timeout=5)

    def task_stream(self, since: float = 0.0, n: int | None = None) -> list[dict]:
        return self.scheduler.loop.run_sync(self.monitor.task_stream, since, n, timeout=5)

    # --- requests from clients -------------------------------------------------------
    def _status(self, conn: Any, req_id: int, options: dict) -> None:
        events = options.get("events", 20)
        if type(events) is not int:      # a peer's value: never let it raise here
            events = 20
        conn.reply(req_id, True, snapshot(self.scheduler,
                                          history=options.get("history") is True,
                                          events=max(0, min(events, 500))))

    def _task_stream(self, conn: Any, req_id: int, since: float,
                     n: int | None) -> None:
        conn.reply(req_id, True, self.monitor.task_stream(since, n))

    def _get_logs(self, conn: Any, req_id: int, which: str, n: int,
                  workers: list | None) -> None:
        if which == "scheduler":
            conn.reply(req_id, True, logring.lines(n))
            return
        st = self.scheduler.state
        targets = [(ws.address, ws.link) for ws in st.workers.values() if ws.link is not None
                   and (workers is None or ws.address in workers or ws.name in workers)]
        if workers is None:    # nannies too: they saw how their worker died
            targets += [(f"nanny {a}", c) for a, c in self.scheduler.nannies.items()]
        futures = [link.request(Msg.LOGS, n) for _, link in targets]
        self.scheduler.when_all(futures, lambda results: conn.reply(req_id, True, {
            name: value if ok else [[time.time(), "ERROR", "mpnet", f"no logs: {value}"]]
            for (name, _), (ok, value) in zip(targets, results)}))

    # --- events from the server --------------------------------------------------------
    def worker_added(self, ws: Any) -> None:
        died = self._exited_at.pop(ws.nanny, None) if ws.nanny else None
        if died is not None:
            self.monitor.event("worker-restarted", f"{ws.name} restarted in "
                               f"{time.monotonic() - died:.2f} s (pid {ws.pid})",
                               worker=ws.address)
        else:
            self.monitor.event("worker-added", f"{ws.name} joined ({ws.nthreads} threads, "
                               f"pid {ws.pid})", worker=ws.address)

    def worker_exited(self, nanny: Any, address: str, description: str,
                      restarting: bool) -> None:
        ws = self.scheduler.state.workers.get(address)
        name = ws.name if ws is not None else address
        if restarting and isinstance(nanny, str):
            self._exited_at[nanny] = time.monotonic()
        self.monitor.event("worker-exited", f"{name} exited: {description}"
                           + ("; restarting" if restarting else ""), worker=address)

    def worker_removed(self, address: str, reason: str, name: str = "") -> None:
        self.monitor.event("worker-removed", f"{name or address} removed: {reason}",
                           worker=address)

    def worker_paused(self, ws: Any) -> None:
        mem = ws.metrics.get("memory", 0)
        self.monitor.event("worker-paused" if ws.paused else "worker-resumed",
                           f"{ws.name} {'paused' if ws.paused else 'resumed'}: memory "
                           f"{mem / 2**20:.0f} MiB", worker=ws.address)

    def client_changed(self, client_id: str, joined: bool) -> None:
        self.monitor.event("client-added" if joined else "client-removed",
                           f"{client_id} {'connected' if joined else 'left'}")
