"""A client's actors: ``actor``, ``get_actor``, ``list_actors``, ``kill_actor``, and the
references its handles hold.

``Client`` hands these calls here. This object owns the client's
:class:`~mpnet.client.actors.ActorCaller` (made on first use) and counts the handles it
gave out per actor, and the calls through them not yet answered; when both are gone it
tells the scheduler, which kills the actor unless it is ``lifetime="detached"`` or
another client holds it. Of the client it needs the session (``check_open``,
``request``, ``send``, and ``link`` on the loop thread), the loop, the config and token
(for the caller's direct connections), and the client itself only to hand to handles
and their results (what they call through).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import uuid
from typing import Any, Iterable

from ..comm.protocol import Msg
from ..comm.serialize import dumps, encode_args
from ..errors import CommClosedError
from ..lifecycle import Status
from .actors import ActorCaller, ActorHandle, resolve_futures, actor_methods, dead_error
from .futures import BaseFuture
from .keys import task_options
from .session import Session

__all__ = ["ClientActors", "ActorHandleFuture"]


class ActorHandleFuture(BaseFuture):
    """dask's ``submit(Cls, actor=True)``: a future of the handle. Passed to a task or
    an actor, it travels as the handle (once the actor is up)."""

    def __reduce__(self) -> Any:
        return self.result().__reduce__()


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} takes an actor name (a str), not {type(name).__name__} "
                        f"({name!r})")
    if not name:
        raise ValueError(f"{what} needs a non-empty actor name")
    return name


class ClientActors:
    """The actor side of one client (``client``: what its handles call through)."""

    def __init__(self, client: Any, session: Session, loop: Any, *, config: Any,
                 token: Any, client_id: str):
        self._client, self._session, self.loop = client, session, loop
        self.config, self._token, self._id = config, token, client_id
        self._caller: ActorCaller | None = None
        self._caller_lock = threading.Lock()     # only to make the caller once

    @property
    def actor_caller(self) -> ActorCaller:
        caller = self._caller
        if caller is None:
            with self._caller_lock:
                caller = self._caller
                if caller is None:
                    caller = self._caller = ActorCaller(
                        self.loop, self.config, self._token,
                        request=self._request_on_loop,
                        info={"id": self._id}, owner=self._client,
                        on_unreferenced=self._unreferenced)
        return caller

    def _request_on_loop(self, *msg: Any) -> cf.Future:
        """Loop thread: a request on the scheduler link; failed at once between links
        (while reconnecting), as on a closed link."""
        link = self._session.link
        if link is None:
            failed: cf.Future = cf.Future()
            failed.set_exception(CommClosedError("not connected to the scheduler "
                                                 "(reconnecting)"))
            return failed
        return link.request(*msg)

    def actor(self, cls: type, /, *args: Any, name: str | None = None, max_restarts: int = 0,
              max_task_retries: int = 0, max_concurrency: int = 1,
              resources: dict | None = None, workers: Iterable[str] | None = None,
              lifetime: str | None = None, get_if_exists: bool = False,
              **kwargs: Any) -> ActorHandle:
        """Create an actor: ``cls(*args, **kwargs)`` on a worker. Returns its handle at
        once; calls made before it is placed wait for it.

        ``max_restarts``: how often it is re-created (constructor run again) when its
        worker dies. ``max_task_retries``: how often a call in flight when that happens
        is sent again. ``max_concurrency``: threads running its calls (1 keeps calls in
        order). ``resources``/``workers`` restrict where it may live; it holds its
        resources while alive. ``lifetime="detached"`` keeps a named actor alive after
        its handles are gone, until killed.

        ``name`` must be free among live actors (ValueError otherwise), unless
        ``get_if_exists=True``: then the live actor of that name is returned (Ray's
        get-or-create; safe when clients race). Futures among the arguments are
        resolved first (this call waits for them).
        """
        self._session.check_open("actor")
        if not isinstance(cls, type):
            raise TypeError(f"actor() needs a class, not {type(cls).__name__}")
        if name is not None:
            _check_name(name, "actor(name=)")
        if get_if_exists and name is None:
            raise ValueError("get_if_exists=True needs a name=")
        if lifetime not in (None, "detached"):
            raise ValueError(f"lifetime must be None or 'detached', not {lifetime!r}")
        if lifetime == "detached" and name is None:
            raise ValueError("a detached actor needs a name= to be found again")
        resources, workers = task_options(resources, workers)
        for name_, value in (("max_restarts", max_restarts),
                             ("max_task_retries", max_task_retries),
                             ("max_concurrency", max_concurrency)):
            if not isinstance(value, int) or value < (1 if name_ == "max_concurrency" else 0):
                raise ValueError(f"{name_}= must be an integer of at least "
                                 f"{1 if name_ == 'max_concurrency' else 0}, not {value!r}")
        methods, _ = actor_methods(cls)
        key = f"{cls.__name__}-{uuid.uuid4().hex[:16]}"
        args, kwargs = resolve_futures(args, kwargs)
        args_payload, _ = encode_args(args, kwargs, oob_threshold=self.config.oob_threshold)
        if not hasattr(args_payload, "header"):       # plain lists: still one payload
            args_payload = dumps((args, kwargs), what="actor arguments")
        options = {"max_restarts": max_restarts, "max_concurrency": max_concurrency,
                   "resources": resources, "workers": workers,
                   "lifetime": lifetime, "methods": sorted(methods),
                   "cls_name": cls.__name__}
        cls_payload = dumps(cls, what="actor class")
        if name is not None:     # the scheduler checks the name, once, for every client
            info = self._session.request(Msg.CREATE_NAMED_ACTOR, key, name, cls_payload,
                                 args_payload, options, get_if_exists)
            if "refused" in info:
                raise ValueError(info["refused"])
            if not info["created"]:
                key, methods = info["key"], frozenset(info.get("methods") or ())
                self._hold_actor(key)
                return ActorHandle(key, name, info.get("cls_name") or cls.__name__, methods,
                                   max_task_retries, caller=self.actor_caller, owner=self)
        self._hold_actor(key)
        if name is None:
            self._session.send([Msg.CREATE_ACTOR, key, name, cls_payload, args_payload, options])
        return ActorHandle(key, name, cls.__name__, methods, max_task_retries,
                           caller=self.actor_caller, owner=self)

    def submit(self, cls: type, args: tuple, kwargs: dict, **options: Any) -> BaseFuture:
        """dask's form, ``submit(cls, *args, actor=True)``: a future of the handle."""
        handle = self.actor(cls, *args, **options, **kwargs)
        fut = ActorHandleFuture()

        def answered(reply: cf.Future) -> None:
            if reply.exception() is not None:
                fut.set_exception(reply.exception())
            elif reply.result()["status"] == "alive":
                fut.set_result(handle)
            else:
                fut.set_exception(dead_error(handle.key, reply.result()))
        self.loop.call_soon_threadsafe(
            lambda: self._request_on_loop(Msg.LOOKUP_ACTOR, handle.key)
            .add_done_callback(answered))
        return fut

    def get_actor(self, name: str, timeout: float | None = None) -> ActorHandle:
        """The handle of a named actor (waits while it is being placed). ValueError if
        no actor has that name."""
        self._session.check_open("get_actor")
        if not isinstance(name, str) or not name:
            raise ValueError(f"get_actor() needs the name of an actor, not {name!r}")
        info = self._session.request(Msg.LOOKUP_ACTOR, name, timeout=timeout)
        if info["key"] is None:
            raise ValueError(f"no actor is named {name!r} (list_actors() shows the live "
                             "ones)")
        if info["status"] != "alive":
            raise dead_error(name, info)
        key = info["key"]
        self._hold_actor(key)
        self._session.send([Msg.CREATE_ACTOR, key, None, None, None, {}])     # hold it too
        methods = frozenset(info.get("methods") or ())
        return ActorHandle(key, info.get("name"), info.get("cls_name") or "Actor", methods,
                           caller=self.actor_caller, owner=self)

    def list_actors(self) -> list[dict]:
        """Every live actor: key, name, status, address, restarts."""
        self._session.check_open("list_actors")
        return self._session.request(Msg.LIST_ACTORS)

    def kill_actor(self, handle: ActorHandle) -> bool:
        """Stop an actor now; its resources are freed and later calls fail."""
        self._session.check_open("kill_actor")
        return self._session.request(Msg.KILL_ACTOR, handle.key)

    # --- counting handles -------------------------------------------------------------
    # Counted on the loop thread only: __del__ may run in any thread, at any allocation,
    # even inside a lock that thread holds, so it must take none; it just queues.
    def _hold_actor(self, key: str) -> None:
        self.loop.call_soon_threadsafe(self._count, key, 1)

    def release_handle(self, key: str) -> None:
        """From ``ActorHandle.__del__``, any thread."""
        if self._session.status != Status.OPEN:
            return
        try:
            self.loop.call_soon_threadsafe(self._count, key, -1)
        except RuntimeError:   # interpreter shutting down
            pass

    def _count(self, key: str, change: int) -> None:
        self.actor_caller.count(key, change)

    def _unreferenced(self, key: str) -> None:
        """Loop thread: no handle and no unanswered call of this client holds it."""
        link = self._session.link
        if link is not None and not link.closed:
            link.send([Msg.RELEASE_ACTOR, key])

    def close_on_loop(self) -> None:
        """Loop thread: calls in flight fail; worker connections close."""
        if self._caller is not None:
            self._caller.close()
