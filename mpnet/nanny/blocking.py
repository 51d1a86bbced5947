"""The nanny's blocking work, kept off its event loop.

::

    loop thread ── submit(fn, *args, then=cb) ──► mpnet-nanny-work thread: fn(*args)
    loop thread ◄── call_soon_threadsafe(cb, result, exc) ◄──┘

Spawning a worker process (fork/exec, writing its start-up data down a pipe), joining
one that exited and reading its memory with psutil all block for an unknown time. The
loop they would block also serves the scheduler when it runs inside LocalCluster, so a
nanny does them, in order, on one thread of its own. The thread starts on first use
and is joined by :meth:`BlockingWork.close` (the nanny's close).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

__all__ = ["BlockingWork"]

log = logging.getLogger("mpnet.nanny")

_STOP = None


class BlockingWork:
    """One named thread doing one job at a time for its owner."""

    def __init__(self, loop: Any, name: str):
        self._loop, self.name = loop, name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any,
               then: Callable[[Any, BaseException | None], None] | None = None) -> bool:
        """Run ``fn(*args)`` on the thread; call ``then(result, exception)`` on the loop
        thread after. Jobs run in the order submitted. False (and nothing runs) once
        closed: its owner is closing and does the rest itself."""
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name,
                                                daemon=True)
                self._thread.start()
            self._jobs.put((fn, args, then))
        return True

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, then = job
            result, exc = None, None
            try:
                result = fn(*args)
            except Exception as e:     # handed to the caller's callback, on its loop
                exc = e
            if then is not None:
                self._loop.call_soon_threadsafe(then, result, exc)
            elif exc is not None:
                log.error("%s: %s failed: %s", self.name, getattr(fn, "__name__", fn), exc)

    def close(self, timeout: float | None = None) -> bool:
        """Finish the jobs already submitted, then stop; join the thread (``timeout``
        seconds). True when the thread is gone. Idempotent; not from the thread itself."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._jobs.put(_STOP)
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()
