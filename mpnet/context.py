"""Who is calling: the worker running the current task or actor, or the process's client.

Handles and ``get_client()`` used inside tasks and actors need the worker they run on
(for its token, its loop and its connections); code in a user's script needs the
client it made. Executor and actor threads record their worker in a thread-local; a
:class:`~mpnet.Client` registers itself as its process's default when created.

This module sits below both ``worker`` and ``client`` and imports neither. A worker
still has to make a client (``get_client()`` in a task) and an actor caller (handles
used in a task): the client package provides those constructors here when it is
imported (``provide``), and the worker asks for them (``made_by``). The arrows keep
pointing down: worker → context ← client.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

__all__ = ["get_worker", "get_client", "current_caller", "current_client",
           "set_thread_worker", "set_default_client", "provide", "made_by"]

_local = threading.local()
_default_client: "weakref.ref | None" = None
_factories: dict[str, Callable[..., Any]] = {}


def provide(what: str, factory: Callable[..., Any]) -> None:
    """Called by the client package at import: ``"client"`` → the Client class,
    ``"actor_caller"`` → the ActorCaller class."""
    _factories[what] = factory


def made_by(what: str) -> Callable[..., Any]:
    """The constructor provided for ``what`` (importing mpnet provides them all)."""
    try:
        return _factories[what]
    except KeyError:
        raise RuntimeError(f"no {what} constructor: import mpnet (not only mpnet.worker) "
                           "in this process") from None


def set_thread_worker(worker: Any) -> None:
    _local.worker = worker


def set_default_client(client: Any) -> None:
    global _default_client
    _default_client = weakref.ref(client) if client is not None else None


def _thread_worker() -> Any:
    return getattr(_local, "worker", None)


def get_worker() -> Any:
    """The :class:`~mpnet.Worker` running the current task or actor method."""
    worker = _thread_worker()
    if worker is None:
        raise ValueError("get_worker() works only inside a task or an actor on a worker")
    return worker


def _default() -> Any:
    client = _default_client() if _default_client is not None else None
    if client is not None and client.status in ("open", "reconnecting"):
        return client
    return None


def get_client() -> Any:
    """A client of the current cluster: inside a task or actor, one connected through
    its worker (made on first use); elsewhere the last ``Client`` this process made."""
    worker = _thread_worker()
    if worker is not None:
        return worker.get_client()
    client = _default()
    if client is None:
        raise ValueError("no client: create mpnet.Client(...) first")
    return client


current_client = get_client


def current_caller() -> Any:
    """The actor caller of this thread's worker, or of the default client."""
    worker = _thread_worker()
    if worker is not None:
        return worker.actor_caller()
    client = _default()
    if client is None:
        raise ValueError("an actor handle needs a client here: create mpnet.Client(...)")
    return client.actor_caller
