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

import itertools
import time
from typing import Any, Iterable

from ..comm.protocol import Msg
from ..config import Config
from .actors import ActorRegistry
from .monitor import Monitor
from .placement import Placement
from .recovery import Recovery
from .taskstate import ACTIVE, ClientState, TaskState, WorkerState, depend

__all__ = ["SchedulerState", "TaskState", "WorkerState", "ClientState", "ACTIVE"]


def _same(a: Any, b: Any) -> bool:
    """Two payloads (opaque here) hold the same bytes."""
    if a is b:
        return True
    if hasattr(a, "header") and hasattr(b, "header"):
        return (a.kind == b.kind and a.header == b.header and len(a.buffers) == len(b.buffers)
                and all(memoryview(x) == memoryview(y) for x, y in zip(a.buffers, b.buffers)))
    return a == b


class SchedulerState:
    """The task graph and its clients; where tasks run, what is recovered after a loss
    and where actors live are its three collaborators' (:attr:`placement`,
    :attr:`recovery`, :attr:`actor_registry`), whose events it exposes as its own."""

    def __init__(self, config: Config):
        self.config = config
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: dict[str, ClientState] = {}
        self.outbox: list[tuple[Any, list]] = []
        self.exits: dict[str, str] = {}          # worker address → "pid 12, exit code 3"
        self.counts = {"submitted": 0, "finished": 0, "erred": 0, "workers_lost": 0}
        #: called as on_transition(key, start, finish) for every change (plugins)
        self.on_transition: Any = None
        #: counts per function name, events, task stream: what `mpnet top` shows
        self.monitor = Monitor()
        self._seq = itertools.count()
        self.placement = Placement(config, self.workers, self.to, self.send)
        self.actor_registry = actors = ActorRegistry(self.workers, self.placement, self.send)
        self.placement.on_freed = actors.place_pending
        self.recovery = rec = Recovery(self, self.placement, actors)
        # The collaborators' events, callable on the state as the I/O layer and the
        # tests always have (bound methods: no extra call on any path).
        self.missing_data, self.worker_exited = rec.missing_data, rec.worker_exited
        self.remove_worker, self.retire = rec.remove_worker, rec.retire
        self.add_replica, self.silent_workers = rec.add_replica, rec.silent_workers
        self.stop_assigning = rec.stop_assigning
        self.create_actor = actors.create_actor
        self.create_named_actor = actors.create_named_actor
        self.lookup_actor, self.kill_actor = actors.lookup_actor, actors.kill_actor
        self.release_actor, self.list_actors = actors.release_actor, actors.listing
        self.actor_started, self.actor_failed = actors.actor_started, actors.actor_failed
        self.actor_checkpoint = actors.actor_checkpoint
        self.actor_stopped = actors.actor_stopped
        self.unsatisfiable = self.placement.unsatisfiable

    # --- what the collaborators hold --------------------------------------------------
    @property
    def ready(self) -> list:
        """Tasks waiting at the scheduler for room on a worker (a heap)."""
        return self.placement.ready

    @property
    def actors(self) -> dict:
        """``{key: ActorState}``"""
        return self.actor_registry.actors

    @property
    def stopping_actors(self) -> dict:
        """``{key: (worker, resources)}`` of killed actors whose threads still run."""
        return self.actor_registry.stopping

    # --- helpers -------------------------------------------------------------------
    def to(self, ts: TaskState, state: str) -> None:
        """Every state change goes through here, so plugins can watch them."""
        start = ts.state
        ts.state = state
        self.monitor.transition(ts, start, state)
        if self.on_transition is not None:
            self.on_transition(ts.key, start, state)

    def send(self, dest: Any, msg: list) -> None:
        self.outbox.append((dest, msg))

    def take_outbox(self) -> list:
        out, self.outbox = self.outbox, []
        return out

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
            self.actor_registry.release_all_of(cs)

    # --- submitting ----------------------------------------------------------------
    def submit(self, cs: ClientState, key: str, fn: Any, args: Any, deps: list,
               priority: int = 0, retries: int = 0, resources: dict | None = None,
               restrict: list | None = None) -> None:
        ts = self.tasks.get(key)
        if ts is not None:                         # a key someone already computes
            if not (_same(ts.fn, fn) and _same(ts.args, args)):
                # Never hand out a result for arguments it was not computed from.
                self.send(cs, [Msg.TASK_LOST, key, "conflict", (
                    f"the key {key!r} already names a different computation on this "
                    "cluster (another function, other arguments, or scattered data); "
                    "give this one another key")])
                return
            self._want(cs, ts)
            return
        ts = self.tasks[key] = TaskState(key, fn, args, (-priority, next(self._seq)), retries)
        ts.resources = resources or None
        ts.restrict = set(restrict) if restrict else None
        self.counts["submitted"] += 1
        self._want(cs, ts)
        for dkey in deps:
            dep = self.tasks.get(dkey)
            if dep is None or dep.state == "forgotten":
                self._cancel_one(ts, f"its dependency {dkey} was cancelled or released")
                return
            depend(ts, dep)
        if any(d.state == "erred" for d in ts.dependencies):
            bad = next(d for d in ts.dependencies if d.state == "erred")
            self.to(ts, "erred")
            ts.exception, ts.traceback, ts.lost = bad.exception, bad.traceback, bad.lost
            for c in ts.who_wants:
                self.send(c, self._failure_msg(ts))
            return
        self.recovery.wait_for_inputs(ts)

    def _want(self, cs: ClientState, ts: TaskState) -> None:
        if ts in cs.wants:
            return
        cs.wants.add(ts)
        ts.who_wants.add(cs)
        if ts.state == "memory":
            ws = next(iter(ts.who_has))
            self.send(cs, [Msg.TASK_DONE, ts.key, None, ws.address, ts.nbytes])
        elif ts.state == "erred":
            self.send(cs, self._failure_msg(ts))
        elif ts.state == "released":       # the recipe was kept: compute it again
            self.recovery.recompute(ts)

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
            self.to(ts, "memory")
            ts.nbytes = nbytes
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += nbytes
            cs.wants.add(ts)
            ts.who_wants.add(cs)
            placed[key] = ws
        return placed

    # --- results -------------------------------------------------------------------
    def task_finished(self, ws: WorkerState, key: str, payload: Any, nbytes: int) -> None:
        if ws.abandoned and self.task_released(ws, key):
            return                 # it ended before the worker saw our FREE: drop it
        ts = self.tasks.get(key)
        if ts is None or ts.processing_on is not ws:
            # Released or moved while it ran: the worker should not keep it.
            if ts is None or ws not in ts.who_has:
                self.send(ws, [Msg.FREE, [key]])
            return
        self.placement.unassign(ts)
        self.to(ts, "memory")
        ts.nbytes = nbytes
        ts.who_has.add(ws)
        ws.has_what.add(ts)
        ws.nbytes += nbytes
        self.counts["finished"] += 1
        if payload is not None and ts.who_wants:
            ts.inline_to = frozenset(ts.who_wants)
        for cs in ts.who_wants:
            self.send(cs, [Msg.TASK_DONE, key, payload, ws.address, nbytes])
        for dep in ts.dependents:
            waiting = dep.waiting_on
            if waiting:                # else not made yet (EMPTY: nothing to discard)
                waiting.discard(ts)
            if not waiting and dep.state == "waiting":
                self.make_ready(dep)
        self.maybe_forget(ts)
        self._inputs_done(ts)
        self.placement.fill(ws)

    def _inputs_done(self, ts: TaskState) -> None:
        """``ts`` no longer runs: its inputs may not be needed any more."""
        for dep in ts.dependencies:
            self.maybe_forget(dep)

    def task_failed(self, ws: WorkerState, key: str, exception: Any, tb: str) -> None:
        if ws.abandoned and self.task_released(ws, key):
            return
        ts = self.tasks.get(key)
        if ts is None or ts.processing_on is not ws:
            return
        self.placement.unassign(ts)
        if ts.retries > 0:
            ts.retries -= 1
            self.make_ready(ts)
        else:
            self._err(ts, exception, tb)
        self.placement.fill(ws)

    def _err(self, ts: TaskState, exception: Any, tb: str) -> None:
        """Fail a task and, with the same error, everything waiting on it."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state in ("erred", "memory", "forgotten"):
                continue
            self._stop_on_worker(t)
            self.to(t, "erred")
            t.exception, t.traceback = exception, tb
            self.counts["erred"] += 1
            for cs in t.who_wants:
                self.send(cs, [Msg.TASK_ERRED, t.key, exception, tb])
            stack.extend(d for d in t.dependents if d.state in ACTIVE)
            self._inputs_done(t)

    def lose(self, ts: TaskState, kind: str, reason: str) -> None:
        """Fail a task (and its dependents) for a reason the scheduler itself knows."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state in ("erred", "forgotten") or (t.state == "memory" and t is not ts):
                continue
            self._stop_on_worker(t)
            self.to(t, "erred")
            t.exception, t.traceback, t.lost = None, reason, kind
            if t is ts:
                self.monitor.event(f"task-{kind}", reason, key=t.key)
            self.counts["erred"] += 1
            for cs in t.who_wants:
                self.send(cs, [Msg.TASK_LOST, t.key, kind, reason])
            stack.extend(d for d in t.dependents if d.state in ACTIVE)
            self._inputs_done(t)

    def make_ready(self, ts: TaskState) -> None:
        """Every input of ``ts`` is in memory: send it to a worker, or queue it."""
        place = self.placement
        ws = place.pick(ts)
        if ws is not None:
            place.assign(ts, ws)
            return
        if ts.resources or ts.restrict:
            why = place.unsatisfiable(ts.resources, ts.restrict)
            if why:
                self.lose(ts, "unsatisfiable", f"task {ts.key} cannot run anywhere: {why}")
                return
        place.enqueue(ts)
        self.to(ts, "ready")

    # --- cancelling and forgetting --------------------------------------------------
    def release(self, cs: ClientState, keys: Iterable[str]) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts not in cs.wants:
                continue
            cs.wants.discard(ts)
            ts.who_wants.discard(cs)
            self.maybe_forget(ts)

    def cancel(self, keys: Iterable[str], reason: str, cs: ClientState | None = None) -> None:
        """dask's cancel: running work is abandoned. From a client (``cs``), a key other
        clients want too only loses that client's interest."""
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            if cs is not None and len(ts.who_wants) > (cs in ts.who_wants):
                if ts in cs.wants:
                    cs.wants.discard(ts)
                    ts.who_wants.discard(cs)
                    self.send(cs, [Msg.TASK_CANCELLED, key, reason])
            else:
                self._cancel_one(ts, reason)

    def try_cancel(self, cs: ClientState, keys: Iterable[str], reason: str
                   ) -> tuple[list[str], dict[WorkerState, list[str]]]:
        """The stdlib's cancel: only what has not started. Returns the keys cancelled now
        and, per worker, the keys to ask about (sent there; the I/O layer asks whether it
        started them and passes the answer to :meth:`cancel_unstarted`)."""
        done: list[str] = []
        ask: dict[WorkerState, list[str]] = {}
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts not in cs.wants:
                continue
            if ts.state in ("waiting", "ready", "released"):
                self.cancel([key], reason, cs)
                done.append(key)
            elif ts.state == "processing" and ts.who_wants == {cs}:
                # (shared work is never stopped for one client: it counts as started)
                ask.setdefault(ts.processing_on, []).append(key)
        return done, ask

    def cancel_unstarted(self, cs: ClientState | None, ws: WorkerState, keys: Iterable[str],
                         reason: str) -> list[str]:
        """``ws`` says it will never start ``keys``: cancel them for ``cs`` (or, if that is
        no longer possible, run them elsewhere). Returns the keys cancelled."""
        done = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.processing_on is not ws:
                continue
            if cs is not None and ts.who_wants == {cs}:
                self.cancel([key], reason, cs)
                done.append(key)
            else:                  # wanted by someone else meanwhile: it must run
                self._stop_on_worker(ts)
                self.make_ready(ts)
        return done

    def _cancel_one(self, ts: TaskState, reason: str) -> None:
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state == "forgotten":
                continue
            for cs in list(t.who_wants):
                self.send(cs, [Msg.TASK_CANCELLED, t.key, reason])
                cs.wants.discard(t)
            t.who_wants.clear()
            stack.extend(t.dependents)
            self._forget(t)

    def needed(self, ts: TaskState) -> bool:
        return bool(ts.who_wants) or any(d.state in ACTIVE for d in ts.dependents)

    def maybe_forget(self, ts: TaskState) -> None:
        if self._unneeded(ts):
            self._forget(ts)

    def _unneeded(self, ts: TaskState) -> bool:
        """True when nothing needs ``ts`` any more: it should be forgotten. A task still
        kept as a recipe for finished dependents has its data freed instead."""
        if ts.state == "forgotten" or self.needed(ts):
            return False
        if ts.dependents and not ts.scattered:
            # Finished dependents may need this again if their data is lost: keep the
            # recipe, free the data.
            if ts.state == "memory":
                self._release_data(ts)
            return False
        return not ts.dependents

    def _release_data(self, ts: TaskState) -> None:
        self.to(ts, "released")
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
            self.send(ws, [Msg.FREE, [ts.key]])
        ts.who_has.clear()

    def _forget(self, ts: TaskState) -> None:
        # A worklist, not recursion: releasing the end of a long chain forgets every
        # link of it (a 100,000-task chain would overflow Python's stack).
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state == "forgotten":
                continue
            self.to(t, "forgotten")
            self.tasks.pop(t.key, None)
            self._stop_on_worker(t)
            for ws in t.who_has:
                ws.has_what.discard(t)
                ws.nbytes -= t.nbytes
                self.send(ws, [Msg.FREE, [t.key]])
            t.who_has.clear()
            for dep in t.dependencies:
                dep.dependents.discard(t)
                if self._unneeded(dep):
                    stack.append(dep)
            t.fn = t.args = None

    def _stop_on_worker(self, ts: TaskState) -> None:
        """Take ``ts`` off its worker, which may be running it: a running thread cannot
        be stopped, so the slot (and resources) stay held until the worker says the task
        ended (:meth:`task_released`); no new work is sent there on its account."""
        ws = self.placement.abandon(ts)
        if ws is not None:
            self.send(ws, [Msg.FREE, [ts.key]])

    def task_released(self, ws: WorkerState, key: str) -> bool:
        """A task freed on ``ws`` has ended (or will never start): free its slot."""
        return self.placement.ended(ws, key)

    # --- workers -------------------------------------------------------------------
    def add_worker(self, address: str, *, nthreads: int = 1, name: str = "", pid: int = 0,
                   nanny: str | None = None, info: dict | None = None,
                   link: Any = None) -> WorkerState:
        """A worker joined; ``link`` is the I/O layer's handle for sending to it."""
        ws = WorkerState(address, max(1, nthreads), name or address, pid, nanny, info or {})
        ws.link = link
        self.workers[address] = ws
        self.placement.add(ws)
        self.exits.pop(address, None)
        self.actor_registry.place_pending()
        self.placement.fill(ws)
        return ws

    def heartbeat(self, ws: WorkerState, metrics: dict) -> None:
        ws.last_seen = time.monotonic()
        ws.metrics = metrics
        paused = bool(metrics.get("paused"))
        if paused != ws.paused:
            ws.paused = paused
            self.placement.touch(ws)
            if not paused:
                self.placement.fill(ws)

    def cancel_all(self, reason: str) -> None:
        """Every task of every client: cancelled and forgotten (``client.restart()``)."""
        for ts in list(self.tasks.values()):
            if ts.state != "forgotten":
                self._cancel_one(ts, reason)
        self.placement.clear()

    # --- reporting -----------------------------------------------------------------
    def worker_info(self) -> dict:
        return {ws.address: {"name": ws.name, "nthreads": ws.nthreads, "pid": ws.pid,
                             "nanny": ws.nanny, "processing": len(ws.processing),
                             "stored": len(ws.has_what), "nbytes": ws.nbytes,
                             "metrics": ws.metrics, **ws.info}
                for ws in self.workers.values()}
