"""Cluster-wide operations that take several round trips: restart, retire, liveness.

::

    client ── RESTART(all) ──► cancel every task ─► RESTART_WORKER to each nanny ─┐
                  ◄── REPLY once every nanny's new worker has registered ◄────────┘
    client ── RETIRE_WORKERS ─► no new work there ─► its tasks finish ─► ACQUIRE:
              other workers copy what lives only there ─► CLOSE_WORKER("retired") ─► REPLY

These run on the scheduler's loop thread, driven by events (``Scheduler.when``: no
polling) and replies; the state machine does the bookkeeping, this module the
choreography.
``scheduler`` is the :class:`~mpnet.scheduler.server.Scheduler`, used through its public
names (the server imports this module, not the other way round).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any, Callable

from ..comm.protocol import Msg


__all__ = ["restart", "retire", "check_heartbeats"]

log = logging.getLogger("mpnet.scheduler")


def check_heartbeats(scheduler: Any) -> None:
    """Declare lost the workers silent for ``worker_ttl`` seconds (hung, socket open)."""
    cfg = scheduler.config
    for address in scheduler.state.silent_workers(time.monotonic(), cfg.worker_ttl):
        ws = scheduler.state.workers[address]
        log.warning("worker %s sent no heartbeat for %.1fs: declaring it lost",
                    address, cfg.worker_ttl)
        link, ws.link = ws.link, None
        scheduler.lose_worker(ws, f"no heartbeat for {cfg.worker_ttl:.1f}s (hung?)")
        if link is not None:
            link.close()           # its session sees the worker gone: no second loss


def restart(scheduler: Any, addresses: list[str] | None, timeout: float,
            done: Callable[[bool, str], None]) -> None:
    """Restart workers through their nannies; ``addresses=None`` means every worker and
    cancels every task. ``done(ok, message)`` once all are back or ``timeout`` passed."""
    state = scheduler.state
    chosen = [ws for ws in state.workers.values()
              if addresses is None or ws.address in addresses or ws.name in addresses]
    nannies = {ws.nanny for ws in chosen if ws.nanny in scheduler.nannies}
    without = [ws.address for ws in chosen if ws.nanny not in scheduler.nannies]
    if addresses is None:
        state.cancel_all("the cluster was restarted (client.restart()): resubmit the work")
    for nanny in nannies:
        scheduler.nannies[nanny].send([Msg.RESTART_WORKER, "client.restart()"])
    scheduler.flush()
    old = {ws.address for ws in chosen}

    def back() -> set[str]:
        """Nannies whose new worker has registered."""
        return {ws.nanny for ws in state.workers.values()
                if ws.nanny in nannies and ws.address not in old}

    def finished(all_back: bool) -> None:
        if all_back:
            note = (f"; {len(without)} workers without a nanny were not restarted: "
                    f"{', '.join(without)}") if without else ""
            done(True, f"restarted {len(nannies)} workers{note}")
        else:
            done(False, f"only {len(back())} of {len(nannies)} workers came back within "
                        f"{timeout}s; the others' nannies are still trying (see their logs)")
    scheduler.when(lambda: back() == nannies, finished, timeout)


def retire(scheduler: Any, addresses: list[str], timeout: float,
           done: Callable[[bool, str], None]) -> None:
    """Move data off ``addresses`` and close them (their nannies do not restart them)."""
    state = scheduler.state
    targets = [a for a in addresses if a in state.workers]
    for address in targets:
        state.stop_assigning(address)

    def drained() -> bool:
        return not any(a in state.workers and state.workers[a].processing for a in targets)

    def move() -> None:
        copies: list[Future] = []
        for address in targets:
            if address not in state.workers:
                continue
            for target, items in state.retire(address):
                link = state.workers[target].link
                if link is not None:
                    fut = link.request(Msg.ACQUIRE, items)
                    fut.add_done_callback(lambda f, t=target: _got(f, t))
                    copies.append(fut)
        scheduler.when_all(copies, lambda results: close())

    def _got(fut: Future, target: str) -> None:
        if fut.exception() is None:
            for key in fut.result():
                state.add_replica(target, key)

    def close() -> None:
        for address in targets:
            ws = state.workers.get(address)
            if ws is not None and ws.link is not None:
                ws.link.send([Msg.CLOSE_WORKER, "retired", "retired"])
        scheduler.flush()
        done(True, f"retired {len(targets)} workers")

    # Their tasks end (or the timeout passes): then move what only they hold.
    scheduler.when(drained, lambda _: move(), timeout)
