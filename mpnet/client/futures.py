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
from typing import Any, Iterable, Iterator, Protocol

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
    """Stands in for a result (in ``_result``) or an error (in ``_exception``) that is
    still pickled: ``decode(*args)`` makes it, on the thread that first asks."""

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
    """The result of a task (or scattered data) on the cluster, by its ``key``."""

    _recipe: bytes | None = None   # digest of fn and args, for a key the user chose

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
        if self.cancelled():
            return "cancelled"
        if not self.done():
            return "pending"
        return "error" if super().exception(0) is not None else "finished"

    def result(self, timeout: float | None = None) -> Any:
        """The task's value (``timeout`` in seconds); re-raises its exception."""
        self.exception(timeout)            # waits, and unpickles what came packed
        value = super().result(0)
        if isinstance(value, Remote):
            value = self.client._fetch([self], timeout)[0]
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            exc = super().exception(timeout)
        except cf.CancelledError:
            raise CancelledError(f"{self.key} was cancelled"
                                 + (f": {self._reason}" if self._reason else "")) from None
        if type(exc) is Packed or type(self._result) is Packed:
            exc = self._unpack()
        return exc

    def _unpack(self) -> BaseException | None:
        """Unpickle a packed result or error, here (the caller's thread); the error."""
        with _unpacking:
            with self._condition:
                value, exc = self._result, self._exception
            if type(exc) is Packed:
                made = exc.decode(*exc.args)
                with self._condition:
                    if self._exception is exc:
                        self._exception = made
            elif type(value) is Packed:
                try:
                    made, err = value.decode(*value.args), None
                except Exception as e:   # cannot be unpickled here: the future says so
                    made, err = None, e
                with self._condition:
                    if self._result is value:
                        self._result, self._exception = made, err
            return self._exception

    def add_done_callback(self, fn: Any) -> None:
        """As ``concurrent.futures``: ``fn(future)`` once done; at once on this thread if
        done already, else on the client's callback thread (never on its loop)."""
        runner = getattr(self.client, "_callbacks", None)
        if runner is None or self.done():
            super().add_done_callback(fn)
        else:
            super().add_done_callback(runner.wrap(fn))

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

    # --- set by the client's loop thread ---------------------------------------------
    def _needs_fetch(self) -> bool:
        return self.done() and not self.cancelled() and isinstance(self._result, Remote)

    def _set_value(self, value: Any) -> None:
        with self._condition:
            if self._state == cf._base.FINISHED and self._exception is None:
                self._result = value          # a fetched or recomputed value: keep it
                self._condition.notify_all()  # a fetch waiting for the new place wakes
                return
        _complete(cf.Future.set_result, self, value)

    def _set_error(self, exc: BaseException) -> None:
        with self._condition:
            if self._state == cf._base.FINISHED and isinstance(self._result, Remote):
                # Done, but its value was lost before we fetched it and cannot come back.
                self._result, self._exception = None, exc
                self._condition.notify_all()
                return
        _complete(cf.Future.set_exception, self, exc)

    def _set_lost(self, exc: BaseException) -> None:
        """Its data is gone from the cluster for good: fail it even if it is finished
        with a value held here (scattered data), since tasks can no longer use it."""
        with self._condition:
            if self._state == cf._base.FINISHED and self._exception is None:
                self._result, self._exception = None, exc
                self._condition.notify_all()
                return
        _complete(cf.Future.set_exception, self, exc)

    def _wait_moved(self, worker: str, deadline: float | None) -> bool:
        """After a failed fetch from ``worker``: wait (until ``deadline``) for the
        scheduler to say where the value is now, or that it failed. False on timeout."""
        with self._condition:
            while (isinstance(self._result, Remote) and self._result.worker == worker
                   and self._exception is None):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._condition.wait(0.5 if left is None else min(left, 0.5))
        return True

    def _set_cancelled(self, reason: str) -> None:
        """Loop thread only (so two cancellations never race)."""
        with self._condition:
            if self._state in (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED):
                return
            self._reason = reason
            if self._state == cf._base.FINISHED:
                # Cancelling a finished future releases it, as in dask.
                self._state = cf._base.PENDING
        if super().cancel():
            self.set_running_or_notify_cancel()


def _complete(setter: Any, fut: cf.Future, value: Any) -> None:
    """Complete ``fut`` unless it is done: the loop thread, a fetching thread and a
    closing thread may race to it, and the first one wins."""
    if not fut.done():
        try:
            setter(fut, value)
        except cf.InvalidStateError:
            pass


def wait(fs: Iterable[cf.Future], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> cf._base.DoneAndNotDoneFutures:
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
