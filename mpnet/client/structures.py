"""Small helpers of the client: nested structures of futures, bound calls, and the
``concurrent.futures.Executor`` face of a client."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import inspect
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Protocol

from ..comm.serialize import loads, loads_exception
from ..lifecycle import Status
from .futures import Future

__all__ = ["ClientExecutor", "bind", "unwrap", "flatten", "rebuild"]


class Submitter(Protocol):
    """What the executor needs of a client."""

    loop: Any
    status: Status

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future: ...
    def _try_cancel(self, futures: list) -> set: ...


class ClientExecutor(cf.Executor):
    """``concurrent.futures.Executor`` over a client; its futures are mpnet futures.

    As the stdlib's executors, it keeps each submitted future until it is done (so work
    submitted and forgotten still runs), and nothing after: not the callable, not the
    result."""

    def __init__(self, client: Submitter, **submit_kwargs: Any):
        self.client = client
        self._kwargs = submit_kwargs
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        if self.client.status == Status.CLOSED:   # the Executor's contract: RuntimeError
            raise RuntimeError("cannot schedule new futures after shutdown: the client "
                               "is closed (at interpreter exit, or by close())")
        if _SUBMIT_OPTIONS.isdisjoint(kwargs):
            fut = self.client.submit(fn, *args, **kwargs, **self._kwargs)
        else:     # the callable's own keywords look like submit's options: bind them
            fut = self.client.submit(bind(fn, args, kwargs), **self._kwargs)
        with self._lock:
            self._pending.add(fut)
        # mpnet's own bookkeeping, not user code: it runs where the future completes
        # (a set discard), so a result is let go as soon as it is read
        cf.Future.add_done_callback(fut, self._done)
        return fut

    def _done(self, fut: cf.Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """As the stdlib's: results in order; each is let go once yielded, and what is
        left is cancelled if the iteration stops early."""
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [self.submit(fn, *args) for args in zip(*iterables)]

        def results() -> Iterator:
            futures.reverse()
            try:
                while futures:
                    left = None if deadline is None else deadline - time.monotonic()
                    yield futures.pop().result(left)
            finally:
                if futures and not self.client.loop.in_loop_thread():
                    self.client._try_cancel(futures)
        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """``cancel_futures=True`` cancels what has not started (running work goes on)."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures and pending:
            self.client._try_cancel(pending)
        if wait:
            cf.wait(pending)


_SUBMIT_OPTIONS = frozenset({"key", "retries", "priority", "resources", "workers", "actor",
                             "pure"})


def bind(fn: Callable, args: tuple, kwargs: dict) -> Callable:
    """``fn`` with its arguments, as one picklable callable."""
    bound = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
    try:
        inspect.signature(bound)
    except (TypeError, ValueError):
        # A builtin (int, len): no signature to look for mpnet_worker in, and none needed.
        bound = functools.partial(fn, *args, **kwargs)
        bound.__signature__ = inspect.Signature()
    return bound


def unwrap(reply: list) -> Any:
    ok, payload, tb = reply
    if ok:
        return loads(payload, what="result")
    raise loads_exception(payload, tb)


def flatten(obj: Any) -> list:
    if isinstance(obj, Future):
        return [obj]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in flatten(v)]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [x for v in obj for x in flatten(v)]
    return [obj]


def rebuild(obj: Any, values: dict, skip: bool) -> Any:
    if isinstance(obj, Future):
        return values[obj.key]
    if isinstance(obj, dict):
        return {k: rebuild(v, values, skip) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [rebuild(v, values, skip) for v in obj]
        if skip:
            out = [v for v in out if not isinstance(v, Future)]
        return type(obj)(out) if isinstance(obj, tuple) else out
    return obj

