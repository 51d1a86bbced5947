"""What the scheduler remembers for people watching it: counts, events, the task stream.

::

    SchedulerState._to(ts, finish) ──► Monitor.transition: counts[group][start] -= 1,
                                        counts[group][finish] += 1; a task leaving
                                        "processing" adds one record to the task stream
    server (joins, exits, pauses) ───► Monitor.event(kind, text)   bounded ring
    server timer, every second ─────► Monitor.tick(now, workers)  rates, sparklines
    STATUS / /metrics / /api/status ─► read all of it (see :mod:`.snapshot`)

The counts are kept as tasks change state, so reading them costs the number of
function names, never the number of tasks. Each task carries its group (a
:class:`Group`, named after its function: the client makes keys as
``name-<client>-<n>``) and the time it started processing, in two slots of its
TaskState. Everything here runs on the scheduler's loop thread; no I/O, no locks.

Durations are measured here, from the moment the task is sent to a worker to the moment
its result (or error) arrives: they include a short wait in the worker's queue.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import deque
from typing import Any, Iterable

__all__ = ["Monitor", "Group", "group_name", "DURATION_BUCKETS", "STATES"]

#: the task states counted per group ("forgotten" counts every task ever dropped)
STATES = ("waiting", "ready", "processing", "memory", "erred", "released", "forgotten")
#: upper bounds (seconds) of the duration histogram's buckets (the last is +Inf)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
EVENTS_KEPT = 500
STREAM_KEPT = 10_000
HISTORY_KEPT = 60            # one sample a second: the sparklines show the last minute
MAX_GROUPS = 1000            # past this, new names count under OTHER
OTHER = "(other)"
_now = time.time
_bisect = bisect.bisect_left

# "-" then a client id, a counter or a map counter: where a generated key's name ends.
_ID = re.compile(r"-(?:[0-9a-f]{8,}|m?\d+)(?=-|$)")


def group_name(key: str) -> str:
    """The function name in a task key: ``inc-3f2a…-7`` → ``inc``, ``load-3`` → ``load``."""
    m = _ID.search(key)
    return key[:m.start()] if m and m.start() else key


class Group:
    """The tasks of one function name: how many are in each state, and how long they took."""

    __slots__ = ("name", "counts", "done", "erred", "buckets", "seconds", "rate", "_last_done")

    def __init__(self, name: str):
        self.name = name
        self.counts = dict.fromkeys(STATES, 0)
        self.done = 0                      # finished in memory, ever
        self.erred = 0                     # went to "erred", ever
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.seconds = 0.0                 # sum of durations, for the histogram
        self.rate = 0.0                    # tasks/s finished, over the last tick
        self._last_done = 0

    def describe(self) -> dict:
        c = self.counts
        total = sum(c.values())
        return {"name": self.name, **c, "total": total, "done": self.done,
                "erred_total": self.erred, "rate": round(self.rate, 2),
                "active": c["waiting"] + c["ready"] + c["processing"],
                "buckets": list(self.buckets), "seconds": self.seconds}


class Monitor:
    """Counts per function name, a ring of events and a ring of recent task runs."""

    def __init__(self, events: int = EVENTS_KEPT, stream: int = STREAM_KEPT):
        self.groups: dict[str, Group] = {}
        self.events: deque = deque(maxlen=events)
        self.stream: deque = deque(maxlen=stream)
        self.started = time.time()
        self.rate = 0.0                    # tasks/s, over the last tick
        self.history: dict[str, deque] = {}    # worker address → (cpu %, memory bytes)
        self._last = (time.monotonic(), 0)
        self._by_prefix: dict[str, Group] = {}
        self.actor_rates: dict[str, list] = {}   # actor key → [calls at last tick, calls/s]

    # --- the hot path: one call per task state change --------------------------------
    # Measured: about 1 us per task in all (benchmarks/bench_monitor.py); keep it lean.
    def transition(self, ts: Any, start: str, finish: str) -> None:
        group = ts.group or self._adopt(ts, start)
        counts = group.counts
        counts[start] -= 1
        counts[finish] += 1
        if finish == "processing":
            ts.started = _now()
            ts.ran_on = ts.processing_on.address
        elif start == "processing":
            # One run ended (in the one method, not a call more: this is per task).
            stop = _now()
            began = ts.started
            if finish == "memory":
                group.done += 1
                seconds = stop - began
                group.buckets[_bisect(DURATION_BUCKETS, seconds)] += 1
                group.seconds += seconds
            elif finish == "erred":
                group.erred += 1
            self.stream.append((group.name, ts.key, ts.ran_on, began, stop, finish))
        elif finish == "erred":
            group.erred += 1

    def _adopt(self, ts: Any, state: str) -> Group:
        """First sight of a task: file it under its function name, in its current state."""
        key = ts.key
        cut = key.rfind("-")
        # Keys of one map or one client differ only in a trailing counter: the part
        # before it names the group, and a dict look-up is cheaper than the regex.
        prefix = key[:cut] if cut > 0 and key[cut + 1:].isdigit() else None
        group = self._by_prefix.get(prefix) if prefix is not None else None
        if group is None:
            group = self._group(group_name(key))
            if prefix is not None:
                if len(self._by_prefix) >= 4096:
                    self._by_prefix.clear()
                self._by_prefix[prefix] = group
        ts.group = group
        group.counts[state] += 1
        return group

    def _group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                name = OTHER
                group = self.groups.get(name)
            if group is None:
                group = self.groups[name] = Group(name)
        return group

    def adopt(self, ts: Any) -> None:
        """Count a task that has not changed state yet (it waits for its inputs)."""
        if ts is not None and ts.group is None:
            self._adopt(ts, ts.state)

    # --- events ----------------------------------------------------------------------
    def event(self, kind: str, text: str, **fields: Any) -> None:
        """Remember something a person watching would want to know (bounded)."""
        self.events.append({"time": time.time(), "kind": kind, "text": text, **fields})

    # --- once a second ----------------------------------------------------------------
    def tick(self, workers: Iterable[Any], now: float | None = None) -> None:
        """Rates since the last tick, and one sparkline sample per worker."""
        now = time.monotonic() if now is None else now
        last_time, last_finished = self._last
        finished = self.finished
        elapsed = now - last_time
        if elapsed > 0:
            self.rate = (finished - last_finished) / elapsed
            for g in self.groups.values():
                g.rate = (g.done - g._last_done) / elapsed
                g._last_done = g.done
        self._last = (now, finished)
        alive = set()
        rates = {}
        for ws in workers:
            for key, (calls, _queued) in ws.metrics.get("actors", {}).items():
                last = self.actor_rates.get(key)
                rate = (calls - last[0]) / elapsed if last and elapsed > 0 else 0.0
                rates[key] = [calls, max(0.0, rate)]
            alive.add(ws.address)
            ring = self.history.get(ws.address)
            if ring is None:
                ring = self.history[ws.address] = deque(maxlen=HISTORY_KEPT)
            ring.append((ws.metrics.get("cpu", 0.0), ws.metrics.get("memory", 0)))
        for address in [a for a in self.history if a not in alive]:
            del self.history[address]
        self.actor_rates = rates

    # --- reading ----------------------------------------------------------------------
    @property
    def finished(self) -> int:
        """Every task run that finished in memory (summed over the groups)."""
        return sum(g.done for g in self.groups.values())

    def task_counts(self) -> dict:
        """``{state: number of tasks}`` over every group (forgotten ones not included)."""
        totals = dict.fromkeys(STATES, 0)
        for g in self.groups.values():
            for state, n in g.counts.items():
                totals[state] += n
        del totals["forgotten"]
        return totals

    def task_stream(self, since: float = 0.0, n: int | None = None) -> list[dict]:
        """The most recent task runs (oldest first) that stopped after ``since``."""
        records = [r for r in self.stream if r[4] > since] if since else list(self.stream)
        if n is not None:
            records = records[-n:] if n > 0 else []
        return [{"function": f, "key": k, "worker": w, "start": s, "stop": e, "status": st}
                for f, k, w, s, e, st in records]

    def recent_events(self, n: int | None = None) -> list[dict]:
        events = list(self.events)
        return events[-n:] if n else events
