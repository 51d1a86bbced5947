"""``mpnet.progress(futures)``: live bars in the terminal until the futures are done.

::

    futures ── add_done_callback (any thread) ──► counters under a lock
    the drawing thread (the caller's, or ``mpnet-progress`` with ``wait=False``)
        ── every ``interval`` s ──► rich Progress: one bar per function name, time left

The bars count finished, failed and cancelled futures, one line per function name (from
the task keys; a single line when there is one name), with the time left estimated from
the recent rate. ``wait=True`` blocks until all are done (or ``timeout`` seconds) and
leaves the final lines on the screen, as dask's does; ``wait=False`` draws from a
background thread and returns a :class:`ProgressHandle` at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Iterable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ..scheduler.monitor import group_name

__all__ = ["progress", "ProgressHandle"]


class _Counts:
    def __init__(self, name: str, total: int):
        self.name = name
        self.total = total
        self.done = self.erred = self.cancelled = 0

    def describe(self) -> str:
        extra = []
        if self.erred:
            extra.append(f"[red]{self.erred} failed[/red]")
        if self.cancelled:
            extra.append(f"[yellow]{self.cancelled} cancelled[/yellow]")
        return self.name + (" (" + ", ".join(extra) + ")" if extra else "")


class _Tally:
    """Counts per function name and over all, fed by done-callbacks on any thread."""

    def __init__(self, futures: list[cf.Future]):
        names = [_name(f) for f in futures]
        distinct = list(dict.fromkeys(names))
        self.total = _Counts("tasks", len(futures))
        self.groups = {n: _Counts(n, names.count(n)) for n in distinct} \
            if len(distinct) > 1 else {}
        self._names = dict(zip(map(id, futures), names))
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        if not futures:
            self.all_done.set()

    def finished(self, fut: cf.Future) -> None:
        counts = [self.total]
        group = self.groups.get(self._names.get(id(fut), ""))
        if group is not None:
            counts.append(group)
        with self.lock:
            for c in counts:
                c.done += 1
                if fut.cancelled():
                    c.cancelled += 1
                elif fut.exception() is not None:
                    c.erred += 1
            if self.total.done == self.total.total:
                self.all_done.set()

    def as_dict(self) -> dict:
        t = self.total
        out = {"total": t.total, "done": t.done, "erred": t.erred, "cancelled": t.cancelled}
        if self.groups:
            out["by_function"] = {n: {"total": c.total, "done": c.done, "erred": c.erred,
                                      "cancelled": c.cancelled}
                                  for n, c in self.groups.items()}
        return out


def _name(fut: cf.Future) -> str:
    key = getattr(fut, "key", None)
    return group_name(key) if isinstance(key, str) else "tasks"


class ProgressHandle:
    """What ``progress(..., wait=False)`` returns: the bars draw from a background thread
    until every future is done, ``timeout`` passes, or :meth:`close`."""

    def __init__(self, tally: _Tally, thread: threading.Thread, stop: threading.Event):
        self._tally, self._thread, self._stop = tally, thread, stop

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the bars are finished (``timeout`` seconds at most); the counts."""
        self._thread.join(timeout)
        return self.counts

    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def counts(self) -> dict:
        with self._tally.lock:
            return self._tally.as_dict()

    def close(self) -> dict:
        """Stop drawing now (the futures are not touched) and join the thread."""
        self._stop.set()
        self._thread.join()
        return self.counts


def _draw(tally: _Tally, console: Console | None, interval: float,
          deadline: float | None, stop: threading.Event) -> None:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console, auto_refresh=False, transient=False) as bar:
        rows = [(bar.add_task(c.describe(), total=c.total), c)
                for c in (*tally.groups.values(), tally.total)]

        def update() -> None:
            with tally.lock:
                for task, c in rows:
                    bar.update(task, completed=c.done, description=c.describe())
            bar.refresh()
        while not tally.all_done.wait(interval) and not stop.is_set():
            update()
            if deadline is not None and time.monotonic() > deadline:
                break
        update()


def progress(futures: Iterable[cf.Future] | cf.Future, *, timeout: float | None = None,
             interval: float = 0.1, console: Console | None = None,
             wait: bool = True) -> dict | ProgressHandle:
    """Show progress bars until every future is done; return the final counts.

    ``timeout`` (seconds) stops waiting (the bars stay where they were); ``interval`` is
    the refresh period in seconds; ``console`` lets a test capture the output.
    ``wait=False`` returns a :class:`ProgressHandle` at once and draws from a background
    thread (``handle.wait()`` gives the counts). With more than one function name among
    the futures, the counts gain ``"by_function"``.
    """
    if isinstance(futures, cf.Future):
        futures = [futures]
    futures = list(futures)
    tally = _Tally(futures)
    for fut in futures:
        fut.add_done_callback(tally.finished)
    deadline = None if timeout is None else time.monotonic() + timeout
    stop = threading.Event()
    if wait:
        _draw(tally, console, interval, deadline, stop)
        with tally.lock:
            return tally.as_dict()
    thread = threading.Thread(target=_draw, args=(tally, console, interval, deadline, stop),
                              name="mpnet-progress", daemon=True)
    thread.start()
    return ProgressHandle(tally, thread, stop)
