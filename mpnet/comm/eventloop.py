"""One selector loop per process, in one named thread that owns every socket.

::

    other threads ── call_soon_threadsafe(fn) ──► ready deque ──┐
                      (one byte on the wake-up socketpair)      │
    sockets ── selector.select(timeout until next timer) ──► callbacks ──► handlers
    timers  ── call_later(delay, fn) ──► heap ───────────────────┘
                                          end of each turn: flush every connection
                                          that queued messages (one frame each)

Nothing polls: the loop sleeps in ``select`` until a socket is ready, a timer is due
or another thread writes the wake-up byte. Other threads never touch a socket.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

__all__ = ["EventLoop", "TimerHandle"]

log = logging.getLogger("mpnet.loop")


class TimerHandle:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable, args: tuple):
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        # Drop what the callback holds now: a cancelled timer stays in the heap until
        # its time, and must not keep a closed connection's buffers alive till then.
        self.cancelled = True
        self.fn, self.args = _noop, ()


def _noop(*args: Any) -> None:
    pass


class EventLoop:
    """A ``selectors`` loop running in its own thread. ``close()`` is idempotent."""

    def __init__(self, name: str = "mpnet-loop"):
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        self._wake_pending = False
        self._ready: collections.deque = collections.deque()
        self._timers: list = []
        self._seq = itertools.count()
        self._dirty: list = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._lock = threading.Lock()
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> "EventLoop":
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop thread (waiting up to ``timeout`` seconds) and free its sockets.

        Idempotent. From the loop thread itself it only asks the loop to stop.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            self._free()
            return
        self.call_soon_threadsafe(self._set_stopping)
        if not self.in_loop_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("loop thread %s did not stop within %.1fs", self.name, timeout)

    def _free(self) -> None:
        # The loop owns every socket registered with it. One that nobody closed by now
        # (a connection still in its handshake when its owner gave up: a dial whose
        # caller stopped waiting) would otherwise be left open for the GC to find.
        # Only sockets: a bare descriptor that an owner registered (a nanny's pipe and
        # process sentinel) stays that owner's to close.
        for key in list(self._selector.get_map().values()):
            if key.fileobj is not self._wake_r and isinstance(key.fileobj, socket.socket):
                try:
                    key.fileobj.close()
                except OSError:
                    pass
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _set_stopping(self) -> None:
        self._stopping = True

    # --- scheduling callbacks ------------------------------------------------------
    def call_soon(self, fn: Callable, *args: Any) -> None:
        """From the loop thread: run ``fn`` in this turn's ready queue."""
        self._ready.append((fn, args))

    def call_soon_threadsafe(self, fn: Callable, *args: Any) -> None:
        """From any thread. The wake-up byte is written only when none is pending."""
        self._ready.append((fn, args))
        if not self._wake_pending and not self.in_loop_thread():
            self._wake_pending = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass   # already full of wake-ups, or closing: the loop will see the queue

    def call_later(self, delay: float, fn: Callable, *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` on the loop after ``delay`` seconds (from any thread)."""
        handle = TimerHandle(time.monotonic() + delay, fn, args)
        if self.in_loop_thread():
            heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        else:
            self.call_soon_threadsafe(self._push_timer, handle)
        return handle

    def _push_timer(self, handle: TimerHandle) -> None:
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))

    def run_sync(self, fn: Callable, *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` on the loop and return its result (or raise its error)."""
        if self.in_loop_thread() or not self.running:
            return fn(*args)
        fut: Future = Future()

        def call() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # handed to the waiting thread, which re-raises
                fut.set_exception(e)
        self.call_soon_threadsafe(call)
        return fut.result(timeout)

    # --- sockets -------------------------------------------------------------------
    def register(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        self._selector.register(sock, events, callback)

    def modify(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        self._selector.modify(sock, events, callback)

    def unregister(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def mark_dirty(self, conn: Any) -> None:
        """``conn.flush()`` will run at the end of this turn (batching)."""
        self._dirty.append(conn)

    # --- the loop ------------------------------------------------------------------
    def _drain_wakeup(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._wake_pending = False

    # Each phase of a turn is its own method on purpose: a local variable of a loop
    # that never returns (the last callback, its arguments, a selector key) would keep
    # whatever it last pointed at alive until the next callback of the same kind, such
    # as a released 400 MB result or a dropped connection's buffer.
    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        select = self._selector.select
        ready = self._ready
        timers = self._timers
        while not self._stopping:
            if ready or self._dirty:
                timeout = 0.0
            elif timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            else:
                timeout = None
            self._run_events(select(timeout))
            if timers:
                self._run_timers()
            if ready:
                self._run_ready()
            if self._dirty:
                self._flush_dirty()
        self._finish()

    def _run_events(self, events: list) -> None:
        for key, mask in events:
            self._guard(key.data, mask)

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            handle = heapq.heappop(timers)[2]
            if not handle.cancelled:
                fn, args = handle.fn, handle.args
                handle.fn, handle.args = _noop, ()
                self._guard(fn, *args)

    def _run_ready(self) -> None:
        ready = self._ready
        for _ in range(len(ready)):
            fn, args = ready.popleft()
            self._guard(fn, *args)

    def _flush_dirty(self) -> None:
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            for conn in dirty:
                self._guard(conn.flush)

    def _finish(self) -> None:
        # Run what was queued before the stop (close requests, final replies) once more.
        while self._ready:
            fn, args = self._ready.popleft()
            self._guard(fn, *args)
        for conn in self._dirty:
            self._guard(conn.flush)
        self._dirty = []
        self._free()

    def _guard(self, fn: Callable, *args: Any) -> None:
        # The loop serves every connection of the process: a bug in one handler must
        # not stop it. Handlers catch their own expected errors; this logs the rest.
        try:
            fn(*args)
        except Exception:
            log.exception("error in %s callback %r", self.name, fn)
