"""The worker's executor: ``nthreads`` named threads running tasks off one queue.

::

    loop thread ── submit(priority, job) ──► PriorityQueue ──► mpnet-worker-exec-N ── job() ──┐
    loop thread ◄──────────── call_soon_threadsafe(on_done, ...) ◄────────────────┘

A job unpickles its function and arguments, runs, and pickles its result on the
executor thread, so the loop thread never spends time on user objects.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Callable

from .running import RunningSlots

__all__ = ["Executor"]


class _Last:
    """Sorts after every priority: stop sentinels come after the queued jobs."""

    def __lt__(self, other: Any) -> bool:
        return False

    def __gt__(self, other: Any) -> bool:
        return True


_LAST = _Last()


class Executor:
    def __init__(self, nthreads: int, name: str = "mpnet-worker-exec",
                 running: RunningSlots | None = None):
        self.nthreads = nthreads
        #: slot i names the task thread i runs, for the nanny to read if we die
        self.running = running or RunningSlots(None, nthreads)
        # (priority, arrival, job): the scheduler's order among tasks queued here
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._arrival = itertools.count()
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}",
                                          daemon=True)
                         for i in range(nthreads)]
        self.executing = 0
        self._lock = threading.Lock()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()

    def submit(self, job: Callable[[], None], priority: Any = 0, key: str = "") -> bool:
        """Queue ``job`` (the task ``key``); lower ``priority`` values (as the scheduler
        sends them) run first. True if a thread was free to take it at once."""
        free = self.executing + self._queue.qsize() < self.nthreads
        self._queue.put((priority, next(self._arrival), job, key))
        return free

    def set_paused(self, paused: bool) -> None:
        """While paused (memory pressure), threads start no new job."""
        (self._unpaused.clear if paused else self._unpaused.set)()

    def _work(self, index: int) -> None:
        running = self.running
        while True:
            _, _, job, key = self._queue.get()
            if job is None:
                return
            self._unpaused.wait()
            with self._lock:
                self.executing += 1
            if key:
                running.set(index, key)
            try:
                job()
            finally:
                if key:
                    running.clear(index)
                job = None   # not kept alive while this thread waits for the next one
                with self._lock:
                    self.executing -= 1

    def close(self, timeout: float = 5.0) -> list[str]:
        """Stop taking jobs and join the threads; return names of threads still busy.

        A task stuck in user code cannot be interrupted from Python: its thread is a
        daemon, so the process can still exit; the caller decides whether to wait.
        """
        self._unpaused.set()
        for _ in self._threads:
            self._queue.put((_LAST, next(self._arrival), None, ""))
        if not self._started:
            return []
        stuck = []
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                stuck.append(t.name)
        return stuck
