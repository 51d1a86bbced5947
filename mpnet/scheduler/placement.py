"""Where tasks run: data locality, load, the per-worker bound, resources and restrictions.

Owned by :class:`~.state.SchedulerState`; no I/O, like the rest of the state machine.
It moves a task to "processing" and queues its COMPUTE through the two callables it is
given (``to`` and ``send``), and tells its owner when resources free up (``on_freed``).

- A task goes to the worker holding most of its input bytes, if it has room; else to
  the least loaded worker (tasks sent / threads; the first to join among equals).
  That one is found in O(log workers), not by a scan: the workers with room wait in a
  heap by load. Whatever changes a worker's load or room calls :meth:`touch`; before
  the next choice each touched worker gets a fresh entry and its old one is voided
  (stale entries leave as they reach the top, or when the heap is rebuilt at twice
  the live size).
- A worker holds at most ``nthreads + worker_queue_extra`` tasks (none while paused or
  retiring); the rest wait here, in a priority heap, or, for tasks with resources or
  worker restrictions, in ``restricted`` until a worker that fits has room.
- A task holds its resources (``{"GPU": 1}``) on its worker from COMPUTE until it
  finishes, fails or is released; a worker never runs more than it declared.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

from ..comm.protocol import Msg
from .taskstate import TaskState, WorkerState

__all__ = ["Placement"]


class Placement:
    def __init__(self, config: Any, workers: dict[str, WorkerState],
                 to: Callable[[TaskState, str], None], send: Callable[[Any, list], None]):
        self.config = config
        self.workers = workers                   # shared with the state: address → record
        self.ready: list = []                    # heap of (priority, TaskState)
        self.restricted: list[TaskState] = []    # ready, waiting for a worker that fits
        self._to = to
        self._send = send
        #: called when a worker's resources free up (actors waiting for them)
        self.on_freed: Callable[[], None] = lambda: None
        # Workers with room, least loaded first: entries [load, rank, worker, live].
        self._room: list[list] = []
        self._entry: dict[WorkerState, list] = {}     # each worker's live entry
        self._rank: dict[WorkerState, int] = {}       # join order, to break ties
        self._ranks = itertools.count()
        self._dirty: set[WorkerState] = set()         # touched since the last choice

    # --- the workers -------------------------------------------------------------------
    def add(self, ws: WorkerState) -> None:
        """``ws`` joined (it is in ``workers`` already)."""
        self._rank[ws] = next(self._ranks)
        self.touch(ws)

    def remove(self, ws: WorkerState) -> None:
        """``ws`` left: never choose it again."""
        self._rank.pop(ws, None)
        self._dirty.discard(ws)
        entry = self._entry.pop(ws, None)
        if entry is not None:
            entry[3] = False

    def touch(self, ws: WorkerState) -> None:
        """``ws``'s load or room changed (tasks sent or ended, paused, retiring). Noted
        only: the heap is brought up to date when a worker is next chosen, so a worker
        touched many times in between (a burst of results) costs one heap entry."""
        self._dirty.add(ws)

    def _refresh(self) -> None:
        """File a fresh heap entry for each touched worker that has room; void the old."""
        room = self._room
        for ws in self._dirty:
            old = self._entry.pop(ws, None)
            if old is not None:
                old[3] = False
                rank = old[1]
            else:
                rank = self._rank.get(ws)
                if rank is None:         # it left
                    continue
            n = len(ws.processing)
            if n < self.capacity(ws):
                entry = self._entry[ws] = [n / ws.nthreads, rank, ws, True]
                if room and room[0] is old:      # the usual case: the one just chosen
                    heapq.heapreplace(room, entry)
                else:
                    heapq.heappush(room, entry)
        self._dirty.clear()
        if len(self._room) > 2 * len(self._entry) + 64:
            self._room = [e for e in self._room if e[3]]
            heapq.heapify(self._room)

    def _least_loaded(self) -> WorkerState | None:
        if self._dirty:
            self._refresh()
        room = self._room
        while room:
            entry = room[0]
            if entry[3]:
                return entry[2]
            heapq.heappop(room)
        return None

    # --- how much room --------------------------------------------------------------
    def capacity(self, ws: WorkerState) -> int:
        if ws.paused or ws.retiring:
            return 0
        if ws.abandoned:     # threads still running freed tasks take no queue either
            free = ws.nthreads - len(ws.abandoned)
            return free + self.config.worker_queue_extra if free > 0 else 0
        return ws.nthreads + self.config.worker_queue_extra

    def has_room(self, ws: WorkerState) -> bool:
        return len(ws.processing) < self.capacity(ws)

    # --- choosing ----------------------------------------------------------------------
    def pick(self, ts: TaskState) -> WorkerState | None:
        """Data locality first (the worker holding most of its inputs), then least load."""
        if ts.resources or ts.restrict:
            return self._pick_constrained(ts)
        if ts.dependencies:
            held: dict[WorkerState, int] = {}
            for dep in ts.dependencies:
                for ws in dep.who_has:
                    held[ws] = held.get(ws, 0) + dep.nbytes + 1
            for ws in sorted(held, key=held.__getitem__, reverse=True):
                if len(ws.processing) < self.capacity(ws):
                    return ws
        return self._least_loaded()

    def _pick_constrained(self, ts: TaskState) -> WorkerState | None:
        fits = [ws for ws in self.workers.values()
                if len(ws.processing) < self.capacity(ws) and self.fits(ws, ts.resources,
                                                                     ts.restrict)]
        if not fits:
            return None
        return min(fits, key=lambda ws: len(ws.processing) / ws.nthreads)

    @staticmethod
    def allowed(ws: WorkerState, restrict: set | None) -> bool:
        return not restrict or ws.address in restrict or ws.name in restrict

    def fits(self, ws: WorkerState, resources: dict | None, restrict: set | None) -> bool:
        """``ws`` may run it and has the resources free now."""
        if not self.allowed(ws, restrict):
            return False
        for name, need in (resources or {}).items():
            if ws.resources.get(name, 0) - ws.used.get(name, 0) < need:
                return False
        return True

    def unsatisfiable(self, resources: dict | None, restrict: set | None) -> str:
        """Why no worker of the cluster could ever run it ("" if one could, or if there
        are no workers yet: some may come)."""
        if not self.workers:
            return ""
        allowed = [ws for ws in self.workers.values() if self.allowed(ws, restrict)]
        if not allowed:
            return (f"it may only run on {sorted(restrict)}, and no such worker is "
                    "connected")
        for ws in allowed:
            if all(ws.resources.get(n, 0) >= need for n, need in (resources or {}).items()):
                return ""
        offered = {ws.address: ws.resources for ws in allowed}
        return (f"it needs resources {resources} and no worker has that much "
                f"(workers offer {offered})")

    # --- resources ---------------------------------------------------------------------
    def acquire(self, ws: WorkerState, resources: dict | None) -> None:
        for name, need in (resources or {}).items():
            ws.used[name] = ws.used.get(name, 0) + need

    def release(self, ws: WorkerState, resources: dict | None) -> None:
        if not resources:
            return
        for name, need in resources.items():
            ws.used[name] = ws.used.get(name, 0) - need
        self.on_freed()      # actors may have waited for exactly these

    # --- assigning ---------------------------------------------------------------------
    def enqueue(self, ts: TaskState) -> None:
        """No worker has room for ``ts`` now: it waits here (its state is the caller's)."""
        if ts.resources or ts.restrict:
            self.restricted.append(ts)
        else:
            heapq.heappush(self.ready, (ts.priority, ts))

    def assign(self, ts: TaskState, ws: WorkerState) -> None:
        """Send ``ts`` to ``ws``: it is processing there from now on."""
        ts.processing_on = ws          # first: the monitor notes where it runs
        self._to(ts, "processing")
        ws.processing.add(ts)
        self._dirty.add(ws)            # touch(ws), inlined: once per task
        self.acquire(ws, ts.resources)
        who_has = [[d.key, [w.address for w in d.who_has]] for d in ts.dependencies]
        self._send(ws, [Msg.COMPUTE, ts.key, ts.fn, ts.args, who_has, ts.priority])

    def unassign(self, ts: TaskState) -> WorkerState | None:
        """Take ``ts`` off the worker it was sent to; free its resources there."""
        ws = ts.processing_on
        if ws is not None:
            ws.processing.discard(ts)
            self._dirty.add(ws)        # touch(ws), inlined: once per task
            self.release(ws, ts.resources)
            ts.processing_on = None
        return ws

    def abandon(self, ts: TaskState) -> WorkerState | None:
        """Take ``ts`` off its worker, which may be running it: a running thread cannot
        be stopped, so its slot (and resources) stay held until :meth:`ended`."""
        ws = ts.processing_on
        if ws is not None:
            ws.processing.discard(ts)
            ts.processing_on = None
            ws.abandoned.append((ts.key, ts.resources))
            self.touch(ws)
        return ws

    def ended(self, ws: WorkerState, key: str) -> bool:
        """An abandoned task has ended on ``ws`` (or will never start): free its slot."""
        for i, (k, resources) in enumerate(ws.abandoned):
            if k == key:
                del ws.abandoned[i]
                self.touch(ws)
                self.release(ws, resources)
                self.fill(ws)
                return True
        return False

    def fill(self, ws: WorkerState) -> None:
        """Give ``ws`` work from what waits here, best priority first."""
        if self.restricted:
            self.restricted.sort(key=lambda t: t.priority)
            for ts in list(self.restricted):
                if len(ws.processing) >= self.capacity(ws):
                    break
                if ts.state != "ready":
                    self.restricted.remove(ts)
                elif self.fits(ws, ts.resources, ts.restrict):
                    self.restricted.remove(ts)
                    self.assign(ts, ws)
        ready = self.ready
        while ready and len(ws.processing) < self.capacity(ws):
            ts = heapq.heappop(ready)[1]
            if ts.state == "ready":
                self.assign(ts, ws)

    def clear(self) -> None:
        """Forget everything waiting (every task was cancelled)."""
        self.ready.clear()
