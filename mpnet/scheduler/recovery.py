"""Losing workers and data: rescheduling, recomputing from lineage, retiring.

Owned by :class:`~.state.SchedulerState`; no I/O. When a worker is lost, everything
it held is forgotten first, then results that are gone and still needed are recomputed
from their recipes (recursively), then its interrupted tasks are rescheduled — or fail
with ``KilledWorkerError`` once they were running on ``allowed_failures + 1`` workers
that died.
"""

from __future__ import annotations

from typing import Any

from ..comm.protocol import Msg, running_key
from .actors import ActorRegistry
from .placement import Placement
from .taskstate import ACTIVE, EMPTY, TaskState, WorkerState, wait_on

__all__ = ["Recovery"]

_MAX_EXITS = 1000      # remembered worker exits, for KilledWorkerError messages


class Recovery:
    """``tasks`` is the owning state: this uses its records (``tasks``, ``workers``,
    ``exits``, ``counts``, ``config``) and its task moves (``to``, ``send``, ``lose``,
    ``make_ready``, ``maybe_forget``, ``needed``), all public."""

    def __init__(self, tasks: Any, placement: Placement, actors: ActorRegistry):
        self.state = tasks
        self.placement = placement
        self.actors = actors

    def missing_data(self, ws: WorkerState, key: str, dep_key: str, holder: str) -> None:
        """``ws`` could not fetch ``dep_key`` from ``holder`` for task ``key``."""
        st = self.state
        dep = st.tasks.get(dep_key)
        gone = st.workers.get(holder)
        if dep is not None and gone is not None and gone in dep.who_has:
            # Unreachable or without the data: either way we stop counting on it there,
            # and tell it so, in case it still holds a copy nobody would free.
            dep.who_has.discard(gone)
            gone.has_what.discard(dep)
            gone.nbytes -= dep.nbytes
            st.send(gone, [Msg.FREE, [dep_key]])
        if dep is not None and dep.state == "memory" and not dep.who_has:
            self.data_lost(dep)
        ts = st.tasks.get(key)
        if ts is not None and ts.processing_on is ws:
            self.placement.unassign(ts)
            st.to(ts, "waiting")
            self.wait_for_inputs(ts)
            self.placement.fill(ws)

    def silent_workers(self, now: float, ttl: float) -> list[str]:
        """Workers with no heartbeat for ``ttl`` seconds (hung with the socket open)."""
        return [a for a, ws in self.state.workers.items() if now - ws.last_seen > ttl]

    def stop_assigning(self, address: str) -> None:
        """Send ``address`` no new work (it is retiring)."""
        ws = self.state.workers.get(address)
        if ws is not None:
            ws.retiring = True
            self.placement.touch(ws)

    def retire(self, address: str) -> list[list]:
        """Plan the move of data that lives only on ``address`` (retiring) and is still
        needed: ``[[target address, [[key, [address]], ...]], ...]``."""
        tasks, workers = self.state.tasks, self.state.workers
        ws = workers[address]
        ws.retiring = True
        self.placement.touch(ws)
        others = [w for w in workers.values() if not w.retiring and w is not ws]
        if not others:
            return []
        plan: dict[str, list] = {}
        for ts in ws.has_what:
            if len(ts.who_has) == 1 and self._needed_data(ts):
                target = min(others, key=lambda w: w.nbytes + sum(
                    tasks[k].nbytes for k, _ in plan.get(w.address, ()) if k in tasks))
                plan.setdefault(target.address, []).append([ts.key, [address]])
        return [[target, items] for target, items in plan.items()]

    def _needed_data(self, ts: TaskState) -> bool:
        return bool(ts.who_wants) or any(d.state in ACTIVE for d in ts.dependents) \
            or ts.scattered

    def add_replica(self, address: str, key: str) -> None:
        """``address`` now holds a copy of ``key`` too."""
        ws = self.state.workers.get(address)
        ts = self.state.tasks.get(key)
        if ws is None:
            return
        if ts is None or ts.state != "memory":
            self.state.send(ws, [Msg.FREE, [key]])
            return
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes

    def worker_exited(self, address: str, description: str,
                      running: list[str] | None = None) -> None:
        """A nanny reports how its worker ended (e.g. ``pid 41, exit code 3``) and which
        tasks it was running then (``None``: not known)."""
        exits, workers = self.state.exits, self.state.workers
        exits[address] = description
        while len(exits) > _MAX_EXITS:          # oldest first: dicts keep order
            del exits[next(iter(exits))]
        if address in workers:
            workers[address].exit = description
            self.remove_worker(address, description, running=running)

    def remove_worker(self, address: str, reason: str, graceful: bool = False,
                      running: list[str] | None = None) -> None:
        """``address`` is gone. ``graceful``: it said goodbye, so the tasks it was running
        do not count as having killed it. ``running``: the keys its executor threads
        were running when it died, as its nanny read them; only those are charged with
        the death (the tasks queued behind them are innocent)."""
        st = self.state
        ws = st.workers.pop(address, None)
        if ws is None:
            return
        self.placement.remove(ws)
        if not graceful:
            st.counts["workers_lost"] += 1
        ended = f"{address} ({st.exits.get(address) or ws.exit or reason})"
        limit = st.config.allowed_failures
        # First forget everything the worker held, so nothing below counts on it ...
        held = list(ws.has_what)
        for ts in held:
            ts.who_has.discard(ws)
        ws.has_what.clear()
        interrupted = sorted(ws.processing, key=lambda t: t.priority)
        charged = set() if graceful else _running_tasks(ws, interrupted, running)
        for ts in interrupted:
            self.placement.unassign(ts)
            if ts in charged:
                ts.failed_on.append(ended)
            st.to(ts, "waiting")
        # ... then recompute what was lost, reschedule what was interrupted, and
        # re-create the actors it hosted.
        self.actors.lost_with(ws)
        for ts in held:
            if ts.state == "memory" and not ts.who_has:
                self.data_lost(ts)
        for ts in interrupted:
            if ts.state != "waiting" or ts.processing_on is not None:
                continue
            if len(ts.failed_on) > limit:
                st.lose(ts, "killed", (
                    f"task {ts.key} was running on {len(ts.failed_on)} workers that died: "
                    f"{', '.join(ts.failed_on)}. It probably kills its worker itself (a "
                    f"crash, os._exit, running out of memory): fix the task, or raise "
                    f"allowed_failures (now {limit}) if the deaths were bad luck."))
            else:
                self.wait_for_inputs(ts)

    def data_lost(self, ts: TaskState) -> None:
        """The only copy of ``ts``'s result is gone: recompute it if anyone needs it.

        Clients that received the value itself with the completion still have it: for
        them nothing is recomputed now (the recipe is kept, in case a task needs it)."""
        st = self.state
        if not st.needed(ts) or (ts.who_wants <= ts.inline_to and not any(
                d.state in ACTIVE for d in ts.dependents)):
            st.to(ts, "released")
            st.maybe_forget(ts)
            return
        for dep in ts.dependents:
            if dep.state == "ready":           # queued here, not yet sent: wait again
                st.to(dep, "waiting")
            if dep.state == "waiting":
                wait_on(dep, ts)
        self.recompute(ts)

    def recompute(self, ts: TaskState) -> None:
        """Compute ``ts`` again from its recipe (its inputs first, if they are gone)."""
        if ts.scattered or ts.fn is None:
            self.state.lose(ts, "lost", f"the data of {ts.key} was scattered to a worker that "
                                   "died, and mpnet cannot recompute it: scatter it again")
            return
        self.state.to(ts, "waiting")
        self.wait_for_inputs(ts)

    def wait_for_inputs(self, ts: TaskState) -> None:
        """``ts`` is waiting: find which inputs it lacks, recomputing lost ones."""
        ts.waiting_on = EMPTY          # a set is made only for an input it lacks
        for dep in ts.dependencies:
            if dep.state == "memory" and dep.who_has:
                continue
            if dep.state in ("erred", "forgotten"):
                self.state.lose(ts, "lost",
                                f"input {dep.key} of {ts.key} is no longer available")
                return
            wait_on(ts, dep)
            if dep.state in ("released", "memory"):
                self.recompute(dep)
                if ts.state != "waiting":
                    return
        if not ts.waiting_on:
            self.state.make_ready(ts)


def _running_tasks(ws: WorkerState, interrupted: list[TaskState],
                   running: list[str] | None) -> set[TaskState]:
    """The tasks ``ws`` was running when it died. Its nanny read them from the worker's
    executor slots; without a nanny (no report), the best guess is the first
    ``nthreads`` in the order the worker starts them (priority, as sent)."""
    if running is None:
        return set(interrupted[:ws.nthreads])
    names = set(running)
    return {ts for ts in interrupted if running_key(ts.key) in names}
