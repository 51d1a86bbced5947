"""The scheduler's worker and nanny sessions: registration, results, heartbeats, exits.

::

    REGISTER_WORKER ──► register_worker ──► WorkerSession(link, WorkerState)
    TASK_FINISHED/FAILED, HEARTBEAT, ACTOR_* ──► WorkerSession.<handler> ──► SchedulerState
    REGISTER_NANNY  ──► register_nanny  ──► NannySession(link, address)
    WORKER_EXITED   ──► NannySession.worker_exited ──► the worker removed, its exit noted
    link closed ──► on_close: a worker is lost (after a grace for its nanny's report);
                  a nanny is forgotten

A session acts on close only while it is still the one its record names: a worker
already removed (GOODBYE, silent), or a nanny that registered again on a new link,
is no news. Runs on the scheduler's loop thread; ``server`` is the
:class:`~mpnet.scheduler.server.Scheduler`, used through its public names.
"""

from __future__ import annotations

import logging
from typing import Any

from ..comm.protocol import Msg
from ..comm.serialize import dumps_exception
from ..comm.session import Role, Session
from ..plugins import call_hook
from ..versions import format_mismatches, get_versions, mismatches
from . import operations
from .clients import HOLDER_HANDLERS, put_done
from .taskstate import WorkerState

__all__ = ["WorkerSession", "NannySession", "register_worker", "register_nanny",
           "WORKER", "NANNY"]

log = logging.getLogger("mpnet.scheduler")


def register_worker(server: Any, link: Any, req_id: int, info: dict) -> None:
    """REGISTER_WORKER on a link with no session: bind a :class:`WorkerSession`."""
    address = info["address"]
    if address in server.state.workers:
        link.reply(req_id, False, f"a worker at {address} is already registered")
        return
    ws = server.state.add_worker(address, nthreads=info.get("nthreads", 1),
                                 name=info.get("name", ""), pid=info.get("pid", 0),
                                 nanny=info.get("nanny"),
                                 info={"versions": info.get("versions", {}),
                                       "resources": info.get("resources", {}),
                                       "memory_limit": info.get("memory_limit", 0)},
                                 link=link)
    session = server.sessions.bind(link, WorkerSession(link, WORKER, server, ws))
    if hasattr(link, "on_too_large"):
        link.on_too_large = session.too_large
    for name, payload in server.worker_plugins.items():   # before any task reaches it
        link.send([Msg.PLUGIN, name, payload])
    link.reply(req_id, True, {"id": server.id, "address": server.address})
    log.info("registered worker %s (%s, %d threads)", address, ws.name, ws.nthreads)
    server.monitoring.worker_added(ws)
    call_hook(server.plugins, "add_worker", server, address)
    table = format_mismatches(mismatches({"scheduler": get_versions(),
                                          address: info.get("versions", {})}))
    if table:
        log.warning("worker %s runs different software than the scheduler:\n%s",
                    address, table)


def register_nanny(server: Any, link: Any, req_id: int, info: dict) -> None:
    """REGISTER_NANNY on a link with no session: bind a :class:`NannySession`."""
    address = info["address"]
    session = server.sessions.bind(link, NannySession(link, NANNY, server, address))
    server.nannies[address] = session
    for name, payload in server.nanny_plugins.items():
        link.send([Msg.PLUGIN, name, payload])
    link.reply(req_id, True, {"id": server.id})


class WorkerSession(Session):
    """A registered worker: its :class:`WorkerState` and the scheduler serving it."""

    __slots__ = ("server", "worker")

    def __init__(self, link: Any, role: Role, server: Any, worker: WorkerState):
        super().__init__(link, role)
        self.server = server
        self.worker = worker

    @property
    def holder(self) -> WorkerState:
        """The record that holds the actor handles its tasks use."""
        return self.worker

    def _current(self) -> bool:
        return self.server.state.workers.get(self.worker.address) is self.worker

    def on_close(self, exc: BaseException | None) -> None:
        ws = self.worker
        if ws.link is self.link:
            ws.link = None
        if not self._current():
            return          # removed already: it said goodbye, or went silent
        reason = f"its connection closed ({exc})" if exc else "it closed"
        server = self.server
        if ws.nanny and server.status == "running":
            # Its nanny usually reports the exit code within a millisecond.
            server.loop.call_later(server.config.lost_worker_grace, server.lose_worker,
                                   ws, reason)
        else:
            server.lose_worker(ws, reason)

    def too_large(self, link: Any, msg: list, err: Exception) -> None:
        """A COMPUTE or HOST_ACTOR over max_frame_bytes (its payloads fit in the SUBMIT,
        not with what the scheduler adds): fail that task or actor with the error rather
        than leave it waiting for an answer from a worker that never got it."""
        exc, tb = dumps_exception(err)
        if msg[0] == Msg.COMPUTE:
            self.server.state.task_failed(self.worker, msg[1], exc, tb)
        elif msg[0] == Msg.HOST_ACTOR:
            self.server.state.actor_failed(self.worker, msg[1], exc, tb)
        self.server.flush()

    # --- results: the hot path ---------------------------------------------------------
    def task_finished(self, key: str, payload: Any, nbytes: int) -> None:
        self.server.state.task_finished(self.worker, key, payload, nbytes)

    def task_failed(self, key: str, exc: Any, tb: str) -> None:
        self.server.state.task_failed(self.worker, key, exc, tb)

    def task_released(self, key: str) -> None:
        self.server.state.task_released(self.worker, key)

    def missing_data(self, key: str, dep: str, holder: str) -> None:
        self.server.state.missing_data(self.worker, key, dep, holder)

    # --- its own life ------------------------------------------------------------------
    def heartbeat(self, metrics: dict) -> None:
        ws = self.worker
        paused = ws.paused
        self.server.state.heartbeat(ws, metrics)
        if ws.paused != paused:
            self.server.monitoring.worker_paused(ws)

    def goodbye(self, reason: str) -> None:
        if not self._current():
            return
        server, ws = self.server, self.worker
        log.info("worker %s left: %s", ws.address, reason)
        server.monitoring.worker_removed(ws.address, reason, ws.name)
        server.state.remove_worker(ws.address, reason, graceful=True)
        call_hook(server.plugins, "remove_worker", server, ws.address)

    def retire_workers(self, req_id: int, addresses: list) -> None:
        """A worker at the end of its ``lifetime`` retires itself."""
        operations.retire(self.server, addresses, self.server.config.close_timeout * 10,
                          lambda ok, text: self.reply(req_id, ok, text))

    # --- the actors it hosts -----------------------------------------------------------
    def actor_started(self, key: str) -> None:
        self.server.state.actor_started(self.worker, key)

    def actor_failed(self, key: str, exc: Any, tb: str) -> None:
        self.server.state.actor_failed(self.worker, key, exc, tb)

    def actor_checkpoint(self, key: str, payload: Any) -> None:
        self.server.state.actor_checkpoint(key, payload)

    def actor_stopped(self, key: str) -> None:
        self.server.state.actor_stopped(self.worker, key)


class NannySession(Session):
    """A registered nanny: the address it serves on, and the scheduler serving it."""

    __slots__ = ("server", "address")

    def __init__(self, link: Any, role: Role, server: Any, address: str):
        super().__init__(link, role)
        self.server = server
        self.address = address

    def on_close(self, exc: BaseException | None) -> None:
        if self.server.nannies.get(self.address) is self:
            del self.server.nannies[self.address]

    def worker_exited(self, address: str, pid: int, code: int | None, how: str,
                      restarting: bool, running: list | None = None) -> None:
        server = self.server
        description = f"pid {pid}, {how}"
        ws = server.state.workers.get(address)
        if ws is not None and ws.nanny != self.address:
            # Only a worker's own nanny speaks for its death (any token holder can
            # register as a nanny: it must not remove others' workers).
            log.warning("nanny %s reported the exit of worker %s, whose nanny is %s: "
                        "ignored", self.address, address, ws.nanny or "none")
            return
        # Gone already after a GOODBYE, or retiring: a planned exit, not news to warn of.
        # Gone already because its link broke: a crash whose cause arrives late.
        lost = address in server.lost_unreported
        server.lost_unreported.pop(address, None)
        planned = (ws is None and not lost) or (ws is not None and ws.retiring)
        log.log(logging.INFO if planned else logging.WARNING, "worker %s exited: %s",
                address, description)
        server.monitoring.worker_exited(self.address, address, description, restarting)
        if restarting:
            server.restarts[self.address] = server.restarts.get(self.address, 0) + 1
        server.state.worker_exited(address, description, running)   # removes it
        if ws is not None:
            call_hook(server.plugins, "remove_worker", server, address)


_W = WorkerSession
WORKER = Role("worker", {
    Msg.TASK_FINISHED: _W.task_finished, Msg.TASK_FAILED: _W.task_failed,
    Msg.TASK_RELEASED: _W.task_released, Msg.MISSING_DATA: _W.missing_data,
    Msg.HEARTBEAT: _W.heartbeat, Msg.GOODBYE: _W.goodbye,
    Msg.RETIRE_WORKERS: _W.retire_workers,
    Msg.PUT_DONE: put_done,       # a client's direct put (scheduler/clients.py)
    Msg.ACTOR_STARTED: _W.actor_started, Msg.ACTOR_FAILED: _W.actor_failed,
    Msg.ACTOR_CHECKPOINT: _W.actor_checkpoint, Msg.ACTOR_STOPPED: _W.actor_stopped,
    **HOLDER_HANDLERS,
})
NANNY = Role("nanny", {Msg.WORKER_EXITED: NannySession.worker_exited})
