"""The scheduler's state machine: plain objects, no sockets, no threads.

Events come in as method calls (a task submitted, finished or failed; a worker joined
or was lost; a client released a key); each appends the messages they cause to
``self.outbox`` as ``(destination, message)`` pairs, where the destination is a
:class:`WorkerState` or :class:`ClientState`. The I/O layer (:mod:`.server`) drains the
outbox after each event and sends; tests read it directly.

A task moves through::

    waiting ──(all dependencies in memory)──► ready ──(a worker has room)──► processing
       ▲                                        ▲                               │
       └───── a dependency's data was lost ─────┴── its worker died (retry) ────┤
                                                                                ▼
                              forgotten ◄──(no client and no dependent wants it)── memory
                                                                     erred ◄── failed

``ready`` tasks wait in a priority heap: each worker holds at most
``nthreads + worker_queue_extra`` tasks, so work stays balanceable as workers come and go.
Payloads (functions, arguments, results) are opaque objects here: never looked into.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Iterable

from ..comm.protocol import Msg
from ..config import Config

ACTIVE = frozenset({"waiting", "ready", "processing"})
_MAX_EXITS = 1000      # remembered worker exits, for KilledWorkerError messages

__all__ = ["SchedulerState", "TaskState", "WorkerState", "ClientState"]


class TaskState:
    __slots__ = ("key", "state", "fn", "args", "dependencies", "dependents", "waiting_on",
                 "who_has", "processing_on", "who_wants", "priority", "retries", "nbytes",
                 "exception", "traceback", "lost", "failed_on", "scattered", "__weakref__")

    def __init__(self, key: str, fn: Any, args: Any, priority: tuple, retries: int):
        self.key = key
        self.state = "waiting"
        self.fn, self.args = fn, args
        self.dependencies: set[TaskState] = set()
        self.dependents: set[TaskState] = set()
        self.waiting_on: set[TaskState] = set()
        self.who_has: set[WorkerState] = set()
        self.processing_on: WorkerState | None = None
        self.who_wants: set[ClientState] = set()
        self.priority = priority
        self.retries = retries
        self.nbytes = 0
        self.exception: Any = None
        self.traceback = ""
        self.lost = ""                     # "killed" / "lost" when the scheduler failed it
        self.failed_on: list[str] = []     # workers that died while running it
        self.scattered = False

    def __repr__(self) -> str:
        return f"<Task {self.key} {self.state}>"


class WorkerState:
    __slots__ = ("address", "name", "nthreads", "pid", "nanny", "info", "processing",
                 "has_what", "nbytes", "metrics", "last_seen", "link", "exit", "paused",
                 "retiring")

    def __init__(self, address: str, nthreads: int, name: str, pid: int, nanny: str | None,
                 info: dict):
        self.address, self.nthreads, self.name, self.pid = address, nthreads, name, pid
        self.nanny = nanny
        self.info = info
        self.processing: set[TaskState] = set()
        self.has_what: set[TaskState] = set()
        self.nbytes = 0
        self.metrics: dict = {}
        self.last_seen = time.monotonic()
        self.link: Any = None            # the I/O layer's handle (its connection)
        self.exit: str = ""              # how it ended, when its nanny told us
        self.paused = False              # memory pressure: send it nothing new
        self.retiring = False            # leaving: send it nothing new

    def __repr__(self) -> str:
        return f"<Worker {self.address} processing={len(self.processing)}>"


class ClientState:
    __slots__ = ("id", "wants", "link", "info")

    def __init__(self, client_id: str, info: dict):
        self.id = client_id
        self.info = info
        self.wants: set[TaskState] = set()
        self.link: Any = None


class SchedulerState:
    def __init__(self, config: Config):
        self.config = config
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: dict[str, ClientState] = {}
        self.ready: list = []                    # heap of (priority, TaskState)
        self.outbox: list[tuple[Any, list]] = []
        self.exits: dict[str, str] = {}          # worker address → "pid 12, exit code 3"
        self.counts = {"submitted": 0, "finished": 0, "erred": 0, "workers_lost": 0}
        #: called as on_transition(key, start, finish) for every change (plugins)
        self.on_transition: Any = None
        self._seq = itertools.count()

    # --- helpers -------------------------------------------------------------------
    def _to(self, ts: TaskState, state: str) -> None:
        """Every state change goes through here, so plugins can watch them."""
        start = ts.state
        ts.state = state
        if self.on_transition is not None:
            self.on_transition(ts.key, start, state)

    def _send(self, dest: Any, msg: list) -> None:
        self.outbox.append((dest, msg))

    def take_outbox(self) -> list:
        out, self.outbox = self.outbox, []
        return out

    def _capacity(self, ws: WorkerState) -> int:
        if ws.paused or ws.retiring:
            return 0
        return ws.nthreads + self.config.worker_queue_extra

    # --- clients -------------------------------------------------------------------
    def add_client(self, client_id: str, info: dict | None = None,
                   link: Any = None) -> ClientState:
        cs = self.clients.get(client_id)
        if cs is None:
            cs = self.clients[client_id] = ClientState(client_id, info or {})
        cs.link = link
        return cs

    def remove_client(self, client_id: str) -> None:
        cs = self.clients.pop(client_id, None)
        if cs is not None:
            self.release(cs, [ts.key for ts in cs.wants])

    # --- submitting ----------------------------------------------------------------
    def submit(self, cs: ClientState, key: str, fn: Any, args: Any, deps: list,
               priority: int = 0, retries: int = 0) -> None:
        ts = self.tasks.get(key)
        if ts is not None:                         # a key someone already computes
            self._want(cs, ts)
            return
        ts = self.tasks[key] = TaskState(key, fn, args, (-priority, next(self._seq)), retries)
        self.counts["submitted"] += 1
        self._want(cs, ts)
        for dkey in deps:
            dep = self.tasks.get(dkey)
            if dep is None or dep.state == "forgotten":
                self._cancel_one(ts, f"its dependency {dkey} was cancelled or released")
                return
            ts.dependencies.add(dep)
            dep.dependents.add(ts)
        if any(d.state == "erred" for d in ts.dependencies):
            bad = next(d for d in ts.dependencies if d.state == "erred")
            self._to(ts, "erred")
            ts.exception, ts.traceback, ts.lost = bad.exception, bad.traceback, bad.lost
            for c in ts.who_wants:
                self._send(c, self._failure_msg(ts))
            return
        self._wait_for_inputs(ts)

    def _want(self, cs: ClientState, ts: TaskState) -> None:
        if ts in cs.wants:
            return
        cs.wants.add(ts)
        ts.who_wants.add(cs)
        if ts.state == "memory":
            ws = next(iter(ts.who_has))
            self._send(cs, [Msg.TASK_DONE, ts.key, None, ws.address, ts.nbytes])
        elif ts.state == "erred":
            self._send(cs, self._failure_msg(ts))
        elif ts.state == "released":       # the recipe was kept: compute it again
            self._recompute(ts)

    @staticmethod
    def _failure_msg(ts: TaskState) -> list:
        if ts.lost:
            return [Msg.TASK_LOST, ts.key, ts.lost, ts.traceback]
        return [Msg.TASK_ERRED, ts.key, ts.exception, ts.traceback]

    def scatter(self, cs: ClientState, items: list[tuple[str, int]],
                workers: list[str] | None = None) -> dict[str, WorkerState]:
        """Place client-held data on workers: ``{key: worker}``; the caller sends it."""
        pool = [self.workers[a] for a in workers or () if a in self.workers] \
            or list(self.workers.values())
        if not pool:
            raise RuntimeError("no workers to scatter to")
        placed = {}
        for key, nbytes in items:
            ws = min(pool, key=lambda w: w.nbytes)
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = TaskState(key, None, None, (0, next(self._seq)), 0)
            ts.scattered = True
            self._to(ts, "memory")
            ts.nbytes = nbytes
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += nbytes
            cs.wants.add(ts)
            ts.who_wants.add(cs)
            placed[key] = ws
        return placed

    # --- placing work --------------------------------------------------------------
    def _make_ready(self, ts: TaskState) -> None:
        ws = self._pick_worker(ts)
        if ws is None:
            self._to(ts, "ready")
            heapq.heappush(self.ready, (ts.priority, ts))
        else:
            self._compute(ts, ws)

    def _pick_worker(self, ts: TaskState) -> WorkerState | None:
        """Data locality first (the worker holding most of its inputs), then least load."""
        if ts.dependencies:
            held: dict[WorkerState, int] = {}
            for dep in ts.dependencies:
                for ws in dep.who_has:
                    held[ws] = held.get(ws, 0) + dep.nbytes + 1
            for ws in sorted(held, key=held.__getitem__, reverse=True):
                if len(ws.processing) < self._capacity(ws):
                    return ws
        best, best_load = None, None
        for ws in self.workers.values():
            load = len(ws.processing) / ws.nthreads
            if len(ws.processing) < self._capacity(ws) and (best is None or load < best_load):
                best, best_load = ws, load
        return best

    def _compute(self, ts: TaskState, ws: WorkerState) -> None:
        self._to(ts, "processing")
        ts.processing_on = ws
        ws.processing.add(ts)
        who_has = [[d.key, [w.address for w in d.who_has]] for d in ts.dependencies]
        self._send(ws, [Msg.COMPUTE, ts.key, ts.fn, ts.args, who_has, ts.priority])

    def _fill(self, ws: WorkerState) -> None:
        ready = self.ready
        while ready and len(ws.processing) < self._capacity(ws):
            ts = heapq.heappop(ready)[1]
            if ts.state == "ready":
                self._compute(ts, ws)

    # --- results -------------------------------------------------------------------
    def task_finished(self, ws: WorkerState, key: str, payload: Any, nbytes: int) -> None:
        ts = self.tasks.get(key)
        if ts is None or ts.processing_on is not ws:
            # Released or moved while it ran: the worker should not keep it.
            if ts is None or ws not in ts.who_has:
                self._send(ws, [Msg.FREE, [key]])
            return
        ws.processing.discard(ts)
        ts.processing_on = None
        self._to(ts, "memory")
        ts.nbytes = nbytes
        ts.who_has.add(ws)
        ws.has_what.add(ts)
        ws.nbytes += nbytes
        self.counts["finished"] += 1
        for cs in ts.who_wants:
            self._send(cs, [Msg.TASK_DONE, key, payload, ws.address, nbytes])
        for dep in ts.dependents:
            dep.waiting_on.discard(ts)
            if not dep.waiting_on and dep.state == "waiting":
                self._make_ready(dep)
        self._maybe_forget(ts)
        self._inputs_done(ts)
        self._fill(ws)

    def _inputs_done(self, ts: TaskState) -> None:
        """``ts`` no longer runs: its inputs may not be needed any more."""
        for dep in ts.dependencies:
            self._maybe_forget(dep)

    def task_failed(self, ws: WorkerState, key: str, exception: Any, tb: str) -> None:
        ts = self.tasks.get(key)
        if ts is None or ts.processing_on is not ws:
            return
        ws.processing.discard(ts)
        ts.processing_on = None
        if ts.retries > 0:
            ts.retries -= 1
            self._make_ready(ts)
        else:
            self._err(ts, exception, tb)
        self._fill(ws)

    def _err(self, ts: TaskState, exception: Any, tb: str) -> None:
        """Fail a task and, with the same error, everything waiting on it."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state in ("erred", "memory", "forgotten"):
                continue
            if t.processing_on is not None:
                t.processing_on.processing.discard(t)
                self._send(t.processing_on, [Msg.FREE, [t.key]])
                t.processing_on = None
            self._to(t, "erred")
            t.exception, t.traceback = exception, tb
            self.counts["erred"] += 1
            for cs in t.who_wants:
                self._send(cs, [Msg.TASK_ERRED, t.key, exception, tb])
            stack.extend(d for d in t.dependents if d.state in ACTIVE)
            self._inputs_done(t)

    def _lose(self, ts: TaskState, kind: str, reason: str) -> None:
        """Fail a task (and its dependents) for a reason the scheduler itself knows."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state in ("erred", "forgotten") or (t.state == "memory" and t is not ts):
                continue
            if t.processing_on is not None:
                t.processing_on.processing.discard(t)
                t.processing_on = None
            self._to(t, "erred")
            t.exception, t.traceback, t.lost = None, reason, kind
            self.counts["erred"] += 1
            for cs in t.who_wants:
                self._send(cs, [Msg.TASK_LOST, t.key, kind, reason])
            stack.extend(d for d in t.dependents if d.state in ACTIVE)
            self._inputs_done(t)

    def missing_data(self, ws: WorkerState, key: str, dep_key: str, holder: str) -> None:
        """``ws`` could not fetch ``dep_key`` from ``holder`` for task ``key``."""
        dep = self.tasks.get(dep_key)
        gone = self.workers.get(holder)
        if dep is not None and gone is not None and gone in dep.who_has:
            # Unreachable or without the data: either way we stop counting on it there,
            # and tell it so, in case it still holds a copy nobody would free.
            dep.who_has.discard(gone)
            gone.has_what.discard(dep)
            gone.nbytes -= dep.nbytes
            self._send(gone, [Msg.FREE, [dep_key]])
        if dep is not None and dep.state == "memory" and not dep.who_has:
            self._data_lost(dep)
        ts = self.tasks.get(key)
        if ts is not None and ts.processing_on is ws:
            ws.processing.discard(ts)
            ts.processing_on = None
            self._to(ts, "waiting")
            self._wait_for_inputs(ts)
            self._fill(ws)

    # --- cancelling and forgetting --------------------------------------------------
    def release(self, cs: ClientState, keys: Iterable[str]) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts not in cs.wants:
                continue
            cs.wants.discard(ts)
            ts.who_wants.discard(cs)
            self._maybe_forget(ts)

    def cancel(self, keys: Iterable[str], reason: str) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None:
                self._cancel_one(ts, reason)

    def _cancel_one(self, ts: TaskState, reason: str) -> None:
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state == "forgotten":
                continue
            for cs in list(t.who_wants):
                self._send(cs, [Msg.TASK_CANCELLED, t.key, reason])
                cs.wants.discard(t)
            t.who_wants.clear()
            stack.extend(t.dependents)
            self._forget(t)

    def _needed(self, ts: TaskState) -> bool:
        return bool(ts.who_wants) or any(d.state in ACTIVE for d in ts.dependents)

    def _maybe_forget(self, ts: TaskState) -> None:
        if ts.state == "forgotten" or self._needed(ts):
            return
        if ts.dependents and not ts.scattered:
            # Finished dependents may need this again if their data is lost: keep the
            # recipe, free the data.
            if ts.state == "memory":
                self._release_data(ts)
            return
        if not ts.dependents:
            self._forget(ts)

    def _release_data(self, ts: TaskState) -> None:
        self._to(ts, "released")
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
            self._send(ws, [Msg.FREE, [ts.key]])
        ts.who_has.clear()

    def _forget(self, ts: TaskState) -> None:
        if ts.state == "forgotten":
            return
        self._to(ts, "forgotten")
        self.tasks.pop(ts.key, None)
        ws = ts.processing_on
        if ws is not None:
            ws.processing.discard(ts)
            ts.processing_on = None
            self._send(ws, [Msg.FREE, [ts.key]])
            self._fill(ws)
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
            self._send(ws, [Msg.FREE, [ts.key]])
        ts.who_has.clear()
        for dep in ts.dependencies:
            dep.dependents.discard(ts)
            self._maybe_forget(dep)
        ts.fn = ts.args = None

    # --- workers -------------------------------------------------------------------
    def add_worker(self, address: str, *, nthreads: int = 1, name: str = "", pid: int = 0,
                   nanny: str | None = None, info: dict | None = None,
                   link: Any = None) -> WorkerState:
        """A worker joined; ``link`` is the I/O layer's handle for sending to it."""
        ws = WorkerState(address, max(1, nthreads), name or address, pid, nanny, info or {})
        ws.link = link
        self.workers[address] = ws
        self.exits.pop(address, None)
        self._fill(ws)
        return ws

    def heartbeat(self, ws: WorkerState, metrics: dict) -> None:
        ws.last_seen = time.monotonic()
        ws.metrics = metrics
        paused = bool(metrics.get("paused"))
        if paused != ws.paused:
            ws.paused = paused
            if not paused:
                self._fill(ws)

    def silent_workers(self, now: float, ttl: float) -> list[str]:
        """Workers with no heartbeat for ``ttl`` seconds (hung with the socket open)."""
        return [a for a, ws in self.workers.items() if now - ws.last_seen > ttl]

    def cancel_all(self, reason: str) -> None:
        """Every task of every client: cancelled and forgotten (``client.restart()``)."""
        for ts in list(self.tasks.values()):
            if ts.state != "forgotten":
                self._cancel_one(ts, reason)
        self.ready.clear()

    def stop_assigning(self, address: str) -> None:
        """Send ``address`` no new work (it is retiring)."""
        if address in self.workers:
            self.workers[address].retiring = True

    def retire(self, address: str) -> list[list]:
        """Plan the move of data that lives only on ``address`` (retiring) and is still
        needed: ``[[target address, [[key, [address]], ...]], ...]``."""
        ws = self.workers[address]
        ws.retiring = True
        others = [w for w in self.workers.values() if not w.retiring and w is not ws]
        if not others:
            return []
        plan: dict[str, list] = {}
        for ts in ws.has_what:
            if len(ts.who_has) == 1 and self._needed_data(ts):
                target = min(others, key=lambda w: w.nbytes + sum(
                    self.tasks[k].nbytes for k, _ in plan.get(w.address, ()) if k in self.tasks))
                plan.setdefault(target.address, []).append([ts.key, [address]])
        return [[target, items] for target, items in plan.items()]

    def _needed_data(self, ts: TaskState) -> bool:
        return bool(ts.who_wants) or any(d.state in ACTIVE for d in ts.dependents) \
            or ts.scattered

    def add_replica(self, address: str, key: str) -> None:
        """``address`` now holds a copy of ``key`` too."""
        ws = self.workers.get(address)
        ts = self.tasks.get(key)
        if ws is None:
            return
        if ts is None or ts.state != "memory":
            self._send(ws, [Msg.FREE, [key]])
            return
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes

    def worker_exited(self, address: str, description: str) -> None:
        """A nanny reports how its worker ended (e.g. ``pid 41, exit code 3``)."""
        self.exits[address] = description
        while len(self.exits) > _MAX_EXITS:          # oldest first: dicts keep order
            del self.exits[next(iter(self.exits))]
        if address in self.workers:
            self.workers[address].exit = description
            self.remove_worker(address, description)

    def remove_worker(self, address: str, reason: str) -> None:
        ws = self.workers.pop(address, None)
        if ws is None:
            return
        self.counts["workers_lost"] += 1
        ended = f"{address} ({self.exits.get(address) or ws.exit or reason})"
        limit = self.config.allowed_failures
        # First forget everything the worker held, so nothing below counts on it ...
        held = list(ws.has_what)
        for ts in held:
            ts.who_has.discard(ws)
        ws.has_what.clear()
        interrupted = sorted(ws.processing, key=lambda t: t.priority)
        ws.processing.clear()
        for ts in interrupted:
            ts.processing_on = None
            ts.failed_on.append(ended)
            self._to(ts, "waiting")
        # ... then recompute what was lost and reschedule what was interrupted.
        for ts in held:
            if ts.state == "memory" and not ts.who_has:
                self._data_lost(ts)
        for ts in interrupted:
            if ts.state != "waiting" or ts.processing_on is not None:
                continue
            if len(ts.failed_on) > limit:
                self._lose(ts, "killed", (
                    f"task {ts.key} was running on {len(ts.failed_on)} workers that died: "
                    f"{', '.join(ts.failed_on)}. It probably kills its worker itself (a "
                    f"crash, os._exit, running out of memory): fix the task, or raise "
                    f"allowed_failures (now {limit}) if the deaths were bad luck."))
            else:
                self._wait_for_inputs(ts)

    def _data_lost(self, ts: TaskState) -> None:
        """The only copy of ``ts``'s result is gone: recompute it if anyone needs it."""
        if not self._needed(ts):
            self._to(ts, "released")
            self._maybe_forget(ts)
            return
        for dep in ts.dependents:
            if dep.state == "ready":           # queued here, not yet sent: wait again
                self._to(dep, "waiting")
            if dep.state == "waiting":
                dep.waiting_on.add(ts)
        self._recompute(ts)

    def _recompute(self, ts: TaskState) -> None:
        if ts.scattered or ts.fn is None:
            self._lose(ts, "lost", f"the data of {ts.key} was scattered to a worker that "
                                   "died, and mpnet cannot recompute it: scatter it again")
            return
        self._to(ts, "waiting")
        self._wait_for_inputs(ts)

    def _wait_for_inputs(self, ts: TaskState) -> None:
        """``ts`` is waiting: find which inputs it lacks, recomputing lost ones."""
        ts.waiting_on = set()
        for dep in ts.dependencies:
            if dep.state == "memory" and dep.who_has:
                continue
            if dep.state in ("erred", "forgotten"):
                self._lose(ts, "lost", f"input {dep.key} of {ts.key} is no longer available")
                return
            ts.waiting_on.add(dep)
            if dep.state in ("released", "memory"):
                self._recompute(dep)
                if ts.state != "waiting":
                    return
        if not ts.waiting_on:
            self._make_ready(ts)

    # --- reporting -----------------------------------------------------------------
    def worker_info(self) -> dict:
        return {ws.address: {"name": ws.name, "nthreads": ws.nthreads, "pid": ws.pid,
                             "nanny": ws.nanny, "processing": len(ws.processing),
                             "stored": len(ws.has_what), "nbytes": ws.nbytes,
                             "metrics": ws.metrics, **ws.info}
                for ws in self.workers.values()}
