"""Small helpers of the client: nested structures of futures, bound calls, and the
``concurrent.futures.Executor`` face of a client."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..comm.serialize import loads, loads_exception
from .futures import Future

if TYPE_CHECKING:
    from .client import Client

__all__ = ["ClientExecutor", "bind", "unwrap", "flatten", "rebuild"]


class ClientExecutor(cf.Executor):
    """``concurrent.futures.Executor`` over a client; its futures are mpnet futures."""

    def __init__(self, client: "Client", **submit_kwargs: Any):
        self.client = client
        self._kwargs = submit_kwargs
        self._futures: weakref.WeakSet[Future] = weakref.WeakSet()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        fut = self.client.submit(bind(fn, args, kwargs), **self._kwargs)
        self._futures.add(fut)
        return fut

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterable:
        futures = [self.submit(fn, *args) for args in zip(*iterables)]

        def results() -> Iterable:
            for f in futures:
                yield f.result(timeout)
        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        futures = list(self._futures)
        if cancel_futures:
            self.client.cancel([f for f in futures if not f.done()])
        if wait:
            cf.wait(futures)


def bind(fn: Callable, args: tuple, kwargs: dict) -> Callable:
    if not args and not kwargs:
        return fn
    bound = functools.partial(fn, *args, **kwargs)
    # keep the signature check of mpnet_worker / mpnet_scheduler working
    functools.update_wrapper(bound, fn)
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

