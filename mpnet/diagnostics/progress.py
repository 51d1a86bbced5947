"""``mpnet.progress(futures)``: a live bar in the terminal until the futures are done.

::

    futures ── add_done_callback (any thread) ──► counters under a lock
    rich Live refresh thread ── pulls a fresh view every ``interval`` s ──► terminal

The bar counts finished, failed and cancelled futures; it blocks until all are done
(or ``timeout`` seconds) and leaves the final line on the screen, as dask's does.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress"]


class _Counts:
    def __init__(self, total: int):
        self.total = total
        self.done = self.erred = self.cancelled = 0
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        if total == 0:
            self.all_done.set()

    def finished(self, fut: cf.Future) -> None:
        with self.lock:
            self.done += 1
            if fut.cancelled():
                self.cancelled += 1
            elif fut.exception() is not None:
                self.erred += 1
            if self.done == self.total:
                self.all_done.set()

    def describe(self) -> str:
        extra = []
        if self.erred:
            extra.append(f"[red]{self.erred} failed[/red]")
        if self.cancelled:
            extra.append(f"[yellow]{self.cancelled} cancelled[/yellow]")
        return "tasks" + (" (" + ", ".join(extra) + ")" if extra else "")


def progress(futures: Iterable[cf.Future] | cf.Future, *, timeout: float | None = None,
             interval: float = 0.1, console: Console | None = None) -> dict:
    """Show a progress bar until every future is done; return the final counts.

    ``timeout`` (seconds) stops waiting (the bar stays where it was); ``interval`` is the
    refresh period in seconds; ``console`` lets a test capture the output.
    """
    if isinstance(futures, cf.Future):
        futures = [futures]
    futures = list(futures)
    counts = _Counts(len(futures))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, refresh_per_second=max(1.0, 1 / interval),
                  transient=False) as bar:
        task = bar.add_task(counts.describe(), total=counts.total)
        for fut in futures:
            fut.add_done_callback(counts.finished)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not counts.all_done.wait(interval):
            bar.update(task, completed=counts.done, description=counts.describe())
            if deadline is not None and time.monotonic() > deadline:
                break
        bar.update(task, completed=counts.done, description=counts.describe())
    return {"total": counts.total, "done": counts.done, "erred": counts.erred,
            "cancelled": counts.cancelled}
