"""Moving data in and out of a worker: inputs fetched from peers, results served to
peers and clients, scattered data stored, copies taken from retiring workers.

A component of :class:`~.worker.Worker`; loop thread only. Inputs a task needs that
live elsewhere are fetched with one GET_DATA per holder; a fetched input is kept while
local tasks use it ("borrowed") and dropped after, unless the scheduler placed it here.

What it needs from around it, and nothing more: the worker's ``address`` and its link
to the scheduler (``home``), and the task table (``runner``: tasks waiting for inputs,
run once the inputs are here).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from ..comm import shm
from ..comm.connection import Connection
from ..comm.protocol import Msg
from ..comm.serialize import Payload, dumps_exception
from ..errors import FrameTooLargeError

__all__ = ["Transfer"]

log = logging.getLogger("mpnet.worker")


class Transfer:
    """Data in and out of one worker (see the module docstring)."""

    def __init__(self, home: Any, runner: Any, *, loop: Any, config: Any,
                 token: str | None):
        self._home, self._runner = home, runner
        self.loop, self.config, self.token = loop, config, token
        self.store = runner.store
        self._fetching: dict[str, list[str]] = {}     # input being fetched → its tasks
        self._peers: Any = None         # the worker's Pool, given by open()

    def handlers(self) -> dict:
        """The scheduler's orders this component answers (peers' GET_DATA: ``_get_data``,
        served on the worker's port, mpnet/worker/peers.py)."""
        return {Msg.FREE: self._free, Msg.STORE: self._store, Msg.ACQUIRE: self._acquire}

    # What the methods below read from the worker and its task table.
    address = property(lambda self: self._home.address)
    scheduler = property(lambda self: self._home.scheduler)
    tasks = property(lambda self: self._runner.tasks)
    _owned = property(lambda self: self._runner.owned)
    _borrowed = property(lambda self: self._runner.borrowed)
    _stopped = property(lambda self: self._runner.stopped)
    _run_task = property(lambda self: self._runner.run)
    _release_inputs = property(lambda self: self._runner.release_inputs)
    _ended_freed = property(lambda self: self._runner.ended_freed)

    def fetch_inputs(self, task: Any, who_has: list) -> None:
        """Borrow the inputs held here, fetch the others (one request per holder)."""
        by_holder: dict[str, list[str]] = {}
        for dep, holders in who_has:
            if dep in self.store:
                self._borrowed[dep] = self._borrowed.get(dep, 0) + 1
                continue
            task.missing.add(dep)
            waiting = self._fetching.get(dep)
            if waiting is not None:
                waiting.append(task.key)
                continue
            self._fetching[dep] = [task.key]
            if not holders:
                self._fetch_failed([dep], "(nobody)")
                continue
            by_holder.setdefault(holders[0], []).append(dep)
        for holder, deps in by_holder.items():
            self._fetch(holder, deps)

    def open(self, pool: Any) -> None:
        """Connections to peers come from ``pool`` (a :class:`~mpnet.comm.pool.Pool`)."""
        self._peers = pool

    def close(self) -> None:
        """Loop thread: close the connections to peers."""
        if self._peers is not None:
            self._peers.close()

    def _fetch(self, holder: str, keys: list[str]) -> None:
        peer = self._peer(holder)

        def connected(fut: Future) -> None:
            if fut.exception() is not None:
                self._fetch_failed(keys, holder)
                return
            fut.result().request(Msg.GET_DATA, keys).add_done_callback(got)

        def got(fut: Future) -> None:
            exc = fut.exception()
            if isinstance(exc, FrameTooLargeError):
                # Together over max_frame_bytes: ask for each on its own. One alone over
                # it can never come: its tasks fail with the error (reporting it missing
                # would have it recomputed, and refused again, forever).
                if len(keys) > 1:
                    for dep in keys:
                        self._fetch(holder, [dep])
                else:
                    self._fetch_too_large(keys[0], exc)
                return
            if exc is not None:
                self._fetch_failed(keys, holder)
                return
            received = dict(fut.result())
            for dep in keys:
                if dep in received:
                    self._arrived(dep, received[dep])
            lost = [dep for dep in keys if dep not in received]
            if lost:
                self._fetch_failed(lost, holder)
        peer.add_done_callback(lambda f: self.loop.call_soon(connected, f)
                               if self.loop.in_loop_thread() else
                               self.loop.call_soon_threadsafe(connected, f))

    def _arrived(self, dep: str, payload: Payload) -> None:
        waiting = self._fetching.pop(dep, [])
        users = [self.tasks[k] for k in waiting if k in self.tasks]
        if not users or self._stopped.is_set():
            return
        self.store.put(dep, payload=payload)
        self._borrowed[dep] = self._borrowed.get(dep, 0) + len(users)
        for task in users:
            task.missing.discard(dep)
            if not task.missing:
                self._run_task(task)

    def _fetch_too_large(self, dep: str, exc: BaseException) -> None:
        payload, tb = dumps_exception(exc)
        for key in self._fetching.pop(dep, []):
            task = self.tasks.pop(key, None)
            if task is not None:
                self._release_inputs(task)
                if self.scheduler is not None:
                    self.scheduler.send([Msg.TASK_FAILED, key, payload, tb])

    def _fetch_failed(self, deps: list[str], holder: str) -> None:
        for dep in deps:
            for key in self._fetching.pop(dep, []):
                if self.tasks.pop(key, None) is not None and self.scheduler is not None:
                    self.scheduler.send([Msg.MISSING_DATA, key, dep, holder])

    def _free(self, conn: Connection, keys: list) -> None:
        for key in keys:
            task = self.tasks.pop(key, None)
            if task is not None:
                self._release_inputs(task)
                if task.stop():        # never started: its slot is free now; else
                    self._ended_freed(task)    # the thread says so when it ends
            self._owned.discard(key)
            if key not in self._borrowed:
                self.store.pop(key)

    def _store(self, conn: Connection, req_id: int, key: str, payload: Payload) -> None:
        self.store.put(key, payload=payload)
        self._owned.add(key)
        conn.reply(req_id, True, None)

    def put_data(self, conn: Any, req_id: int, items: list) -> None:
        """PUT_DATA, a client's large scatter sent straight here (docs/data.md, "Direct
        put"): store the values, tell the scheduler (PUT_DONE), then answer the client.

        The client hears back only once the scheduler knows: a task it submits next may
        use the keys at once. Until then no task can be sent one of them. If the
        scheduler refuses (the client left meanwhile) or cannot be told, the values are
        dropped again: nothing stays that nobody knows of. Served on the worker's port
        to a client's session only (mpnet/worker/peers.py)."""
        client_id = conn.peer_info.get("id")
        link = self.scheduler.conn if self.scheduler is not None else None
        if not isinstance(client_id, str) or link is None or link.state != "open":
            conn.reply(req_id, False, f"worker {self.address} has no connection to its "
                       "scheduler right now: scatter again")
            return
        keys = [key for key, _ in items]
        for key, payload in items:
            self.store.put(key, payload=payload)
            self._owned.add(key)

        def told(fut: Future) -> None:
            if fut.exception() is None:
                conn.reply(req_id, True, None)
                return
            for key in keys:            # the scheduler does not know them: drop them
                self._owned.discard(key)
                if key not in self._borrowed:
                    self.store.pop(key)
            conn.reply(req_id, False, f"worker {self.address} could not register the "
                       f"data with the scheduler ({fut.exception()}): scatter again")
        link.request(Msg.PUT_DONE, client_id,
                     [[key, payload.nbytes] for key, payload in items]).add_done_callback(told)

    def _acquire(self, conn: Connection, req_id: int, items: list) -> None:
        """Copy keys from the workers holding them (a retiring worker); reply the keys
        now held here."""
        by_holder: dict[str, list[str]] = {}
        for key, holders in items:
            if key not in self.store and holders:
                by_holder.setdefault(holders[0], []).append(key)
        if not by_holder:
            conn.reply(req_id, True, [k for k, _ in items if k in self.store])
            return
        remaining = [len(by_holder)]

        def got(fut: Future) -> None:
            if fut.exception() is None:
                for key, payload in fut.result():
                    self.store.put(key, payload=payload)
                    self._owned.add(key)
            remaining[0] -= 1
            if remaining[0] == 0:
                conn.reply(req_id, True, [k for k, _ in items if k in self.store])

        for holder, keys in by_holder.items():
            self._peer(holder).add_done_callback(
                lambda f, keys=keys: f.result().request(Msg.GET_DATA, keys)
                .add_done_callback(got) if f.exception() is None else got(f))

    def _peer(self, address: str) -> Future:
        """A connection to another worker, from the pool; it resolves on the loop."""
        return self._peers.get(address)

    def _get_data(self, conn: Connection, req_id: int, keys: list) -> None:
        found = []
        shm_min = shm.threshold(self.config, conn.peer_info)   # 0: not on this host
        for key in keys:
            if key in self.store:
                try:
                    found.append([key, self.store.payload(key, shm_min=shm_min)])
                except Exception as e:
                    log.error("cannot serialize %s for a peer: %s", key, e)
        conn.reply(req_id, True, found)
