"""Futures for tasks: ``concurrent.futures.Future`` with a key and a client.

A future is done when its task is done. A small result arrived with the completion
and is there at once; a large one stays on its worker until ``result()`` (or
``gather``) fetches it directly. ``concurrent.futures.wait`` / ``as_completed`` work on
these futures unchanged; so does ``await``.

Dropping the last reference to a future tells the scheduler the client no longer
wants its key (batched, from whatever thread the garbage collector runs on).

No user code runs on the client's loop (in a LocalCluster, the scheduler's): a result or
error arrives :class:`Packed` and is unpickled by the first ``result()`` or
``exception()`` (the caller's thread), and done-callbacks added before the future
finished run on the client's callback thread (``mpnet.client.callbacks``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, Protocol

from ..errors import CancelledError

__all__ = ["BaseFuture", "Future", "Packed", "wait", "as_completed", "FIRST_COMPLETED",
           "FIRST_EXCEPTION", "ALL_COMPLETED"]

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED


class Owner(Protocol):
    """What a future needs of the client that made it (and all it may call)."""

    def _fetch(self, futures: list, timeout: float | None) -> list: ...
    def _release(self, key: str) -> None: ...
    def _try_cancel(self, futures: list) -> set: ...


class Remote:
    """Stands in for a result that is still on ``worker`` (``nbytes`` large)."""

    __slots__ = ("worker", "nbytes")

    def __init__(self, worker: str, nbytes: int):
        self.worker, self.nbytes = worker, nbytes


class Packed:
    """Stands in for a result or an error that is still pickled: ``decode(*args)`` makes
    it, on the thread that first asks (see ``Future._unpack``)."""

    __slots__ = ("decode", "args")

    def __init__(self, decode: Any, *args: Any):
        self.decode, self.args = decode, args


# One at a time: two threads asking for one result get the same object (and pickle
# holds the GIL for most of its work anyway). User threads only: the loop never takes it.
_unpacking = threading.Lock()


class BaseFuture(cf.Future):
    """What every mpnet future adds to ``concurrent.futures.Future``: ``await``."""

    def __await__(self):
        return self._wait_async().__await__()

    async def _wait_async(self) -> Any:
        loop = asyncio.get_running_loop()
        if not self.done():
            waiter = loop.create_future()

            def wake(_: cf.Future) -> None:
                loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))
            cf.Future.add_done_callback(self, wake)    # no user code: runs where it ends
            await waiter
        if self._needs_fetch():
            return await loop.run_in_executor(None, self.result)
        return self.result()

    def _needs_fetch(self) -> bool:
        return False


class Future(BaseFuture):
    """The result of a task (or scattered data) on the cluster, by its ``key``.

    **Two outcomes, one rule.** The ``concurrent.futures.Future`` underneath is completed
    once, through its public methods only (``set_result``, ``set_exception``,
    ``cancel``): ``concurrent.futures.wait`` and ``as_completed`` read its private fields,
    and so see a plain future. mpnet's outcome may change after that, which a stdlib
    future's cannot: a large value (a :class:`Remote`) is fetched or moves to another
    worker, a value is lost with its worker, a finished future is cancelled (dask's
    rule). Such a change goes to ``_amended`` (``(value, exception)`` or ``_CANCELLED``),
    which wins over what the stdlib future holds. Changes are made, and waited for, under
    one module-wide condition: they are rare, and a lock of its own would cost every
    future an allocation.
    """

    _recipe: bytes | None = None   # digest of fn and args, for a key the user chose
    _amended: Any = None           # the outcome since its first completion, if changed

    def __init__(self, key: str, client: Owner):
        super().__init__()
        self.key = key
        self.client = client
        self._reason = ""
        self.worker = ""           # where the result lives, once done

    # Futures inside task arguments become dependencies (see comm.serialize).
    def __mpnet_dep__(self) -> str:
        return self.key

    def __reduce__(self):
        raise TypeError(f"a Future ({self.key}) can travel only inside a task's arguments, "
                        "where it is replaced by its result; pass its .key otherwise")

    def __repr__(self) -> str:
        return f"<mpnet.Future {self.key} {self.status}>"

    @property
    def status(self) -> str:
        """``pending``, ``finished``, ``error`` or ``cancelled`` (dask's names)."""
        if not self.done():
            return "pending"
        now = self._now()
        if now is _CANCELLED:
            return "cancelled"
        return "error" if now[1] is not None else "finished"

    def cancelled(self) -> bool:
        return self._amended is _CANCELLED or super().cancelled()

    def result(self, timeout: float | None = None) -> Any:
        """The task's value (``timeout`` in seconds); re-raises its exception."""
        try:
            value = super().result(timeout)
        except cf.CancelledError:
            raise self._cancelled_error() from None
        except BaseException:
            if not self.done():
                raise        # the wait timed out (or was interrupted)
            if self._amended is None and type(super().exception(0)) is not Packed:
                raise        # the task's own exception
            value = _PACKED_ERROR
        if self._amended is not None or type(value) is Packed or value is _PACKED_ERROR:
            value = self._settled()
        if isinstance(value, Remote):
            value = self.client._fetch([self], timeout)[0]
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            exc = super().exception(timeout)
        except cf.CancelledError:
            raise self._cancelled_error() from None
        if self._amended is None and type(exc) is not Packed and (
                exc is not None or type(super().result(0)) is not Packed):
            return exc       # the common case: as it came
        now = self._unpack()
        if now is _CANCELLED:
            raise self._cancelled_error()
        return now[1]

    def traceback(self, timeout: float | None = None) -> str | None:
        """The text of the remote traceback of a failed task (None if it did not fail).

        dask returns a traceback object; the frames of another process cannot be made
        into one here, so this is their text (also the ``__cause__`` of the exception)."""
        exc = self.exception(timeout)
        if exc is None:
            return None
        cause = exc.__cause__
        return getattr(cause, "tb", None) or "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__))

    def cancel(self) -> bool:
        """The stdlib's cancel: True if the task had not started (it never will; the
        future is cancelled at once), False if it is running or done. It asks the
        cluster (one round trip). ``client.cancel(futures)`` abandons running work too.
        """
        if self.cancelled():
            return True
        if self.done():
            return False
        return self.key in self.client._try_cancel([self])

    def running(self) -> bool:
        """False: whether a task has started is known on its worker only (asking would
        cost a message per task); :meth:`cancel` asks when it matters. Not the stdlib's,
        whose futures are RUNNING from start to end."""
        return super().running()

    def set_result(self, result: Any) -> None:
        raise RuntimeError(f"the cluster sets the result of {self.key}; a future of a "
                           "task cannot be completed by hand (make a "
                           "concurrent.futures.Future for that)")

    def set_exception(self, exception: BaseException | None) -> None:
        raise RuntimeError(f"the cluster sets the exception of {self.key}; a future of a "
                           "task cannot be failed by hand (client.cancel() drops it)")

    def release(self) -> None:
        """Tell the cluster this client no longer needs the result."""
        self.client._release(self.key)

    def __del__(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client._release(self.key)

    # --- reading the outcome ---------------------------------------------------------
    def _cancelled_error(self) -> CancelledError:
        return CancelledError(f"{self.key} was cancelled"
                              + (f": {self._reason}" if self._reason else ""))

    def _unpack(self) -> Any:
        """The outcome as :meth:`_now` gives it, with a packed result or error unpickled
        here (the caller's thread), once: what it makes becomes the future's outcome; a
        result that cannot be unpickled here fails its future with the reason. A value
        delivered again (recomputed after a loss) may come packed too."""
        with _unpacking:
            while True:
                before = self._amended
                now = self._now()
                if now is _CANCELLED or (type(now[0]) is not Packed and
                                         type(now[1]) is not Packed):
                    return now
                value, exc = now
                if type(exc) is Packed:
                    outcome: tuple = (None, exc.decode(*exc.args))
                else:
                    try:
                        outcome = (value.decode(*value.args), None)
                    except Exception as e:
                        outcome = (None, e)
                with _changed:
                    if self._amended is before:     # (else changed meanwhile: again)
                        self._amended = outcome
                        _changed.notify_all()

    def add_done_callback(self, fn: Any) -> None:
        """As ``concurrent.futures``: ``fn(future)`` once done; at once on this thread if
        done already, else on the client's callback thread (never on its loop)."""
        runner = getattr(self.client, "_callbacks", None)
        if runner is None or self.done():
            super().add_done_callback(fn)
        else:
            super().add_done_callback(runner.wrap(fn))

    def _now(self) -> Any:
        """A done future's outcome, ``(value, exception)``, or ``_CANCELLED``. (Raises
        nothing: a failed future's exception is not raised to be read.)"""
        amended = self._amended
        if amended is not None:
            return amended
        try:
            exc = super().exception(0)
        except cf.CancelledError:
            return _CANCELLED
        return (None, exc) if exc is not None else (super().result(0), None)

    def _settled(self) -> Any:
        """A done future's value as it is now (a :class:`Remote` if not fetched);
        raises its exception, or CancelledError."""
        now = self._unpack()                # (a user's thread: result, gather)
        if now is _CANCELLED:
            raise self._cancelled_error()
        if now[1] is not None:
            raise now[1]
        return now[0]

    # --- the client package's side: set by its loop thread, read by its fetcher -----
    def _remote(self) -> Remote | None:
        """Where a done future's value still is, if on a worker."""
        now = self._now() if self.done() else _CANCELLED
        if now is not _CANCELLED and now[1] is None and isinstance(now[0], Remote):
            return now[0]
        return None

    def _needs_fetch(self) -> bool:
        return self._remote() is not None

    def _set_value(self, value: Any) -> None:
        """Its value; for a finished future a new one (fetched, or recomputed elsewhere),
        unless it failed or was cancelled meanwhile."""
        if not _complete(cf.Future.set_result, self, value):
            self._amend(lambda v, e: e is None, (value, None))

    def _set_error(self, exc: BaseException) -> None:
        """Its exception; for a finished future only if its value was not fetched yet
        (it was lost before we could, and cannot come back)."""
        if not _complete(cf.Future.set_exception, self, exc):
            self._amend(lambda v, e: e is None and isinstance(v, Remote), (None, exc))

    def _set_lost(self, exc: BaseException) -> None:
        """Its data is gone from the cluster for good: fail it even if it is finished
        with a value held here (scattered data), since tasks can no longer use it."""
        if not _complete(cf.Future.set_exception, self, exc):
            self._amend(lambda v, e: e is None, (None, exc))

    def _set_cancelled(self, reason: str) -> None:
        """Loop thread only (so two cancellations never race). Cancelling a finished
        future releases it, as in dask."""
        if self.cancelled():
            return
        self._reason = reason
        if cf.Future.cancel(self):
            self.set_running_or_notify_cancel()
        else:
            self._amend(lambda v, e: True, _CANCELLED)

    def _amend(self, allowed: Callable[[Any, Any], bool], outcome: Any) -> None:
        """Change a done future's outcome to ``outcome`` if ``allowed(value, exception)``
        of the present one. Most calls change nothing (failing futures that failed
        already, when a client closes): they are answered without the lock."""
        now = self._now()
        if now is _CANCELLED or not allowed(*now):
            return
        with _changed:
            now = self._now()           # again: another thread may have changed it
            if now is not _CANCELLED and allowed(*now):
                self._amended = outcome
                _changed.notify_all()

    def _wait_moved(self, worker: str, deadline: float | None) -> bool:
        """After a failed fetch from ``worker``: wait (until ``deadline``) for the
        scheduler to say where the value is now, or that it failed. False on timeout."""
        def moved() -> bool:
            remote = self._remote()
            return remote is None or remote.worker != worker
        with _changed:
            return _changed.wait_for(moved, None if deadline is None
                                     else max(0.0, deadline - time.monotonic()))


# A done future's outcome once cancelled after it finished (see Future).
_CANCELLED = object()
# In Future.result: the stdlib future holds a packed error (read by _settled).
_PACKED_ERROR = object()
# Guards and announces every change of a finished future's outcome (see Future).
_changed = threading.Condition(threading.Lock())


def _complete(setter: Any, fut: cf.Future, value: Any) -> bool:
    """Complete ``fut`` unless it is done: the loop thread, a fetching thread and a
    closing thread may race to it, and the first one wins. False for the others."""
    if fut.done():
        return False
    try:
        setter(fut, value)
    except cf.InvalidStateError:
        return False
    return True


def wait(fs: Iterable[cf.Future], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> tuple[set, set]:
    """``concurrent.futures.wait`` for mpnet futures (also accepts dask's names)."""
    return cf.wait(list(fs), timeout=timeout, return_when=return_when)


class as_completed(Iterator):
    """Yield futures as they finish; ``add()`` more while iterating.

    ``with_results=True`` yields ``(future, result)`` pairs (fetching large results);
    a failed future raises there, or with ``raise_errors=False`` yields
    ``(future, exception)``. ``timeout`` (seconds) bounds the whole iteration, as in
    ``concurrent.futures``: past it, ``TimeoutError("N (of M) futures unfinished")``.
    A future given twice to the constructor is yielded once (the stdlib's rule); each
    ``add()`` yields it once more (dask's). ``batches()`` yields lists of what is done.
    """

    def __init__(self, fs: Iterable[cf.Future] = (), *, with_results: bool = False,
                 raise_errors: bool = True, timeout: float | None = None):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._total = 0
        # keeps unfinished futures (and so their tasks) alive: future → times added
        self._held: dict[cf.Future, int] = {}
        self._lock = threading.Lock()
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._deadline = None if timeout is None else timeout + _now()
        for f in dict.fromkeys(fs):            # once each, in the order given
            self.add(f)

    def add(self, future: cf.Future) -> None:
        with self._lock:
            self._pending += 1
            self._total += 1
            self._held[future] = self._held.get(future, 0) + 1
        # no user code: runs on whichever thread completes the future (never blocks)
        cf.Future.add_done_callback(future, self._queue.put)

    def update(self, futures: Iterable[cf.Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        return self._pending

    def is_empty(self) -> bool:
        return self._pending == 0

    def __iter__(self) -> "as_completed":
        return self

    def __next__(self) -> Any:
        return self._next(block=True)

    def _next(self, block: bool) -> Any:
        with self._lock:
            if self._pending == 0:
                raise StopIteration
        timeout = None if self._deadline is None else max(0.0, self._deadline - _now())
        try:
            future = self._queue.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            if not block:
                raise
            raise TimeoutError(f"{self._pending} (of {self._total}) futures unfinished") from None
        with self._lock:
            self._pending -= 1
            left = self._held.pop(future, 1) - 1
            if left:
                self._held[future] = left
        if self.with_results:
            if not self.raise_errors and not future.cancelled() and future.exception():
                return future, future.exception()
            return future, future.result()
        return future

    def next_batch(self, block: bool = True) -> list:
        """What is done now (waiting for at least one if ``block``)."""
        batch = [self._next(block)] if block else []
        while True:
            try:
                batch.append(self._next(block=False))
            except (queue.Empty, StopIteration):
                return batch

    def batches(self) -> Iterator[list]:
        """Yield lists of finished futures: all that are done at each step (dask's)."""
        while not self.is_empty():
            yield self.next_batch(block=True)


_now = time.monotonic
