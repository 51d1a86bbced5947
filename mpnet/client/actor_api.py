"""The client's actor methods: ``actor``, ``get_actor``, ``list_actors``, ``kill_actor``.

Mixed into :class:`~mpnet.Client`. A client counts the handles it gave out per actor;
when the last one is dropped it tells the scheduler, which kills the actor unless it is
``lifetime="detached"`` or another client holds it.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import uuid
from typing import Any, Iterable

from ..comm.protocol import Msg
from ..comm.serialize import dumps, encode_args

from .actors import ActorCaller, ActorHandle, actor_methods, dead_error
from .futures import BaseFuture

__all__ = ["ActorMixin"]


class ActorMixin:
    """Actor methods of :class:`~mpnet.Client` (uses its loop, config and scheduler)."""

    _actor_lock = threading.Lock()     # only to make the caller once

    @property
    def actor_caller(self) -> ActorCaller:
        caller = self.__dict__.get("_caller")
        if caller is None:
            with self._actor_lock:
                caller = self.__dict__.get("_caller")
                if caller is None:
                    caller = self.__dict__["_caller"] = ActorCaller(
                        self.loop, self.config, self.token,
                        request=lambda *msg: self.scheduler.request(*msg),
                        info={"id": self.id})
        return caller

    def actor(self, cls: type, /, *args: Any, name: str | None = None, max_restarts: int = 0,
              max_task_retries: int = 0, max_concurrency: int = 1,
              resources: dict | None = None, workers: Iterable[str] | None = None,
              lifetime: str | None = None, **kwargs: Any) -> ActorHandle:
        """Create an actor: ``cls(*args, **kwargs)`` on a worker. Returns its handle at
        once; calls made before it is placed wait for it.

        ``max_restarts``: how often it is re-created (constructor run again) when its
        worker dies. ``max_task_retries``: how often a call in flight when that happens
        is sent again. ``max_concurrency``: threads running its calls (1 keeps calls in
        order). ``resources``/``workers`` restrict where it may live; it holds its
        resources while alive. ``lifetime="detached"`` keeps a named actor alive after
        its handles are gone, until killed.
        """
        self._check_open("actor")
        if not isinstance(cls, type):
            raise TypeError(f"actor() needs a class, not {type(cls).__name__}")
        if lifetime not in (None, "detached"):
            raise ValueError(f"lifetime must be None or 'detached', not {lifetime!r}")
        if lifetime == "detached" and name is None:
            raise ValueError("a detached actor needs a name= to be found again")
        from .client import task_options
        resources, workers = task_options(resources, workers)
        for name_, value in (("max_restarts", max_restarts),
                             ("max_task_retries", max_task_retries),
                             ("max_concurrency", max_concurrency)):
            if not isinstance(value, int) or value < (1 if name_ == "max_concurrency" else 0):
                raise ValueError(f"{name_}= must be an integer of at least "
                                 f"{1 if name_ == 'max_concurrency' else 0}, not {value!r}")
        methods, _ = actor_methods(cls)
        key = f"{cls.__name__}-{uuid.uuid4().hex[:16]}"
        args_payload, _ = encode_args(args, kwargs, oob_threshold=self.config.oob_threshold)
        if not hasattr(args_payload, "header"):       # plain lists: still one payload
            args_payload = dumps((args, kwargs), what="actor arguments")
        options = {"max_restarts": max_restarts, "max_concurrency": max_concurrency,
                   "resources": resources, "workers": workers,
                   "lifetime": lifetime, "methods": sorted(methods),
                   "cls_name": cls.__name__}
        self._hold_actor(key)
        self._send([Msg.CREATE_ACTOR, key, name, dumps(cls, what="actor class"),
                    args_payload, options])
        return ActorHandle(key, name, cls.__name__, methods, max_task_retries,
                           caller=self.actor_caller, owner=self)

    def _submit_actor(self, cls: type, args: tuple, kwargs: dict, **options: Any) -> BaseFuture:
        """dask's form, ``submit(cls, *args, actor=True)``: a future of the handle."""
        handle = self.actor(cls, *args, **options, **kwargs)
        fut = BaseFuture()

        def answered(reply: cf.Future) -> None:
            if reply.exception() is not None:
                fut.set_exception(reply.exception())
            elif reply.result()["status"] == "alive":
                fut.set_result(handle)
            else:
                fut.set_exception(dead_error(handle.key, reply.result()))
        self.loop.call_soon_threadsafe(
            lambda: self.scheduler.request(Msg.LOOKUP_ACTOR, handle.key)
            .add_done_callback(answered))
        return fut

    def get_actor(self, name: str, timeout: float | None = None) -> ActorHandle:
        """The handle of a named actor (waits while it is being placed)."""
        self._check_open("get_actor")
        info = self._request(Msg.LOOKUP_ACTOR, name, timeout=timeout)
        if info["status"] != "alive":
            raise dead_error(name, info)
        key = info["key"]
        self._hold_actor(key)
        self._send([Msg.CREATE_ACTOR, key, None, None, None, {}])     # hold it too
        methods = frozenset(info.get("methods") or ())
        return ActorHandle(key, info.get("name"), info.get("cls_name") or "Actor", methods,
                           caller=self.actor_caller, owner=self)

    def list_actors(self) -> list[dict]:
        """Every live actor: key, name, status, address, restarts."""
        self._check_open("list_actors")
        return self._request(Msg.LIST_ACTORS)

    def kill_actor(self, handle: ActorHandle) -> bool:
        """Stop an actor now; its resources are freed and later calls fail."""
        self._check_open("kill_actor")
        return self._request(Msg.KILL_ACTOR, handle.key)

    # --- counting handles -------------------------------------------------------------
    # Counted on the loop thread only: __del__ may run in any thread, at any allocation,
    # even inside a lock that thread holds, so it must take none; it just queues.
    def _hold_actor(self, key: str) -> None:
        self.loop.call_soon_threadsafe(self._count_actor_handle, key, 1)

    def _release_actor_handle(self, key: str) -> None:
        """From ``ActorHandle.__del__``, any thread."""
        if self.status != "open":
            return
        try:
            self.loop.call_soon_threadsafe(self._count_actor_handle, key, -1)
        except RuntimeError:   # interpreter shutting down
            pass

    def _count_actor_handle(self, key: str, change: int) -> None:
        refs = self.__dict__.setdefault("_actor_refs", {})
        refs[key] = refs.get(key, 0) + change
        if refs[key] <= 0:
            del refs[key]
            if not self.scheduler.closed:
                self.scheduler.send([Msg.RELEASE_ACTOR, key])



