"""Where tasks run: data locality, load, the per-worker bound, resources and restrictions.

Mixed into :class:`~.state.SchedulerState`; no I/O, like the rest of the state machine.

- A task goes to the worker holding most of its input bytes, if it has room; else to
  the least loaded worker (tasks sent / threads).
- A worker holds at most ``nthreads + worker_queue_extra`` tasks (none while paused or
  retiring); the rest wait here, in a priority heap, or, for tasks with resources or
  worker restrictions, in ``restricted`` until a worker that fits has room.
- A task holds its resources (``{"GPU": 1}``) on its worker from COMPUTE until it
  finishes, fails or is released; a worker never runs more than it declared.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from ..comm.protocol import Msg
from .taskstate import TaskState, WorkerState

__all__ = ["Placement"]


class Placement:
    if TYPE_CHECKING:
        from .state import SchedulerState as _S
        workers: dict
        ready: list
        restricted: list

    def _capacity(self, ws: WorkerState) -> int:
        if ws.paused or ws.retiring:
            return 0
        if ws.abandoned:     # threads still running freed tasks take no queue either
            free = ws.nthreads - len(ws.abandoned)
            return free + self.config.worker_queue_extra if free > 0 else 0
        return ws.nthreads + self.config.worker_queue_extra

    def _make_ready(self, ts: TaskState) -> None:
        ws = self._pick_worker(ts)
        if ws is not None:
            self._compute(ts, ws)
            return
        if ts.resources or ts.restrict:
            why = self.unsatisfiable(ts.resources, ts.restrict)
            if why:
                self._lose(ts, "unsatisfiable", f"task {ts.key} cannot run anywhere: {why}")
                return
            self.restricted.append(ts)
        else:
            heapq.heappush(self.ready, (ts.priority, ts))
        self._to(ts, "ready")

    def _pick_worker(self, ts: TaskState) -> WorkerState | None:
        """Data locality first (the worker holding most of its inputs), then least load."""
        if ts.resources or ts.restrict:
            return self._pick_constrained(ts)
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

    def _pick_constrained(self, ts: TaskState) -> WorkerState | None:
        fits = [ws for ws in self.workers.values()
                if len(ws.processing) < self._capacity(ws) and self._fits(ws, ts.resources,
                                                                       ts.restrict)]
        if not fits:
            return None
        return min(fits, key=lambda ws: len(ws.processing) / ws.nthreads)

    @staticmethod
    def _allowed(ws: WorkerState, restrict: set | None) -> bool:
        return not restrict or ws.address in restrict or ws.name in restrict

    def _fits(self, ws: WorkerState, resources: dict | None, restrict: set | None) -> bool:
        """``ws`` may run it and has the resources free now."""
        if not self._allowed(ws, restrict):
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
        allowed = [ws for ws in self.workers.values() if self._allowed(ws, restrict)]
        if not allowed:
            return (f"it may only run on {sorted(restrict)}, and no such worker is "
                    "connected")
        for ws in allowed:
            if all(ws.resources.get(n, 0) >= need for n, need in (resources or {}).items()):
                return ""
        offered = {ws.address: ws.resources for ws in allowed}
        return (f"it needs resources {resources} and no worker has that much "
                f"(workers offer {offered})")

    def _acquire(self, ws: WorkerState, resources: dict | None) -> None:
        for name, need in (resources or {}).items():
            ws.used[name] = ws.used.get(name, 0) + need

    def _release_resources(self, ws: WorkerState, resources: dict | None) -> None:
        if not resources:
            return
        for name, need in resources.items():
            ws.used[name] = ws.used.get(name, 0) - need
        self.place_pending_actors()      # they may have waited for exactly these

    def _unassign(self, ts: TaskState) -> WorkerState | None:
        """Take ``ts`` off the worker it was sent to; free its resources there."""
        ws = ts.processing_on
        if ws is not None:
            ws.processing.discard(ts)
            self._release_resources(ws, ts.resources)
            ts.processing_on = None
        return ws

    def _compute(self, ts: TaskState, ws: WorkerState) -> None:
        ts.processing_on = ws          # first: the monitor notes where it runs
        self._to(ts, "processing")
        ws.processing.add(ts)
        self._acquire(ws, ts.resources)
        who_has = [[d.key, [w.address for w in d.who_has]] for d in ts.dependencies]
        self._send(ws, [Msg.COMPUTE, ts.key, ts.fn, ts.args, who_has, ts.priority])

    def _fill(self, ws: WorkerState) -> None:
        """Give ``ws`` work from what waits at the scheduler, best priority first."""
        if self.restricted:
            self.restricted.sort(key=lambda t: t.priority)
            for ts in list(self.restricted):
                if len(ws.processing) >= self._capacity(ws):
                    break
                if ts.state != "ready":
                    self.restricted.remove(ts)
                elif self._fits(ws, ts.resources, ts.restrict):
                    self.restricted.remove(ts)
                    self._compute(ts, ws)
        ready = self.ready
        while ready and len(ws.processing) < self._capacity(ws):
            ts = heapq.heappop(ready)[1]
            if ts.state == "ready":
                self._compute(ts, ws)
