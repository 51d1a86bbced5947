"""The client's callback thread: users' done-callbacks run here, never on a loop.

::

    loop thread (a TASK_DONE: future completed) ── wrap(fn)(future) ── queue ──┐
    mpnet-client-callbacks ◄──────────────────────────────────────────────────┘
        fn(future), one at a time, in completion order; an exception is logged

The client's loop is, in a :class:`~mpnet.LocalCluster`, the scheduler's: a callback that
sleeps, blocks or unpickles a large result there would stall the whole cluster. The
thread starts with its client and is joined by ``close()``; callbacks whose future
completes after that run on the thread that completes it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from typing import Any, Callable

__all__ = ["CallbackThread"]

# The logger concurrent.futures reports a failed callback on: the same record here.
log = logging.getLogger("concurrent.futures")


class CallbackThread:
    """One named thread running done-callbacks for one client."""

    def __init__(self, name: str = "mpnet-client-callbacks"):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()     # guards _thread and _closed with each put
        self._thread: threading.Thread | None = None
        self._closed = False

    def wrap(self, fn: Callable[[Any], Any]) -> Callable[[Any], None]:
        """What to register with ``cf.Future.add_done_callback`` in place of ``fn``."""
        return functools.partial(self._enqueue, fn)

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=self.name,
                                                daemon=True)
                self._thread.start()

    def _enqueue(self, fn: Callable[[Any], Any], future: Any) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put((fn, future))
                return
        _call(fn, future)            # closed: on the thread that completed the future

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            _call(*item)
            item = None              # not kept alive while waiting for the next one

    def drain(self, timeout: float | None = None) -> None:
        """Wait until the callbacks queued so far have run (``Future.cancel()`` promises
        its callbacks have run when it returns). Not from a callback itself: there it
        returns at once, and those queued run after the current one."""
        with self._lock:
            thread = self._thread
            if thread is None or thread is threading.current_thread():
                return
            done = threading.Event()
            self._queue.put((_set_event, done))
        done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop (``timeout`` seconds at most). Idempotent."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("a done-callback still runs after %.1fs (in %s); leaving it",
                            timeout, thread.name)


def _set_event(event: threading.Event) -> None:
    event.set()


def _call(fn: Callable[[Any], Any], future: Any) -> None:
    try:
        fn(future)
    except Exception:     # as concurrent.futures: the user's callback, logged
        log.exception("exception calling callback for %r", future)
