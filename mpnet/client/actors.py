"""Calling actors: handles, their futures, and the per-process caller behind them.

::

    handle.incr(5) ── any thread ──► ActorCaller.call
        address and connection known, no call in flight, nothing of this actor on its
        way through the loop ─► the calling thread writes ACTOR_CALL itself
        (Connection.send_direct)
        else ─► loop thread: address known?  yes ─► ACTOR_CALL on a direct connection
                                             no  ─► LOOKUP_ACTOR to the scheduler
                         (answered once the actor is up), then every call queued for
                         it, in order
    ACTOR_RESULT ─► loop thread: the call's ActorFuture gets the value still pickled;
                    the caller's thread unpickles it (result, or the remote exception)

One ActorCaller serves a process side: a Client, or a Worker whose tasks and actors use
handles. A client's caller also counts its references to each actor, handles and
calls not yet answered alike (Ray's rule: a pending call keeps its actor alive); when
the count of an actor falls to zero it tells the scheduler, which may then kill it.
The lock rule is in :class:`ActorCaller`'s docstring. When the hosting worker dies, calls in flight fail with ``ActorDiedError``
(saying they may have run) unless ``max_task_retries`` lets them be sent again; later
calls wait for the scheduler to re-create the actor and go to the new instance.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import logging
import threading
from typing import Any, Callable

from .. import context
from ..comm.connection import Connection
from ..comm.pool import Pool
from ..comm.protocol import Msg
from ..comm.session import Role
from ..comm.serialize import Payload, decode_value, encode_args, loads_exception
from ..errors import ActorDiedError
from .futures import BaseFuture, Future, Packed
from .structures import flatten, rebuild

# Which client is unpickling on this thread: handles that arrive inside results bind
# to the client that fetched them (see ``binding``).
_binding = threading.local()

__all__ = ["ActorHandle", "ActorFuture", "ActorCaller", "actor_methods", "resolve_futures",
           "binding", "dead_error"]

log = logging.getLogger("mpnet.actors")


class ActorFuture(BaseFuture):
    """The result of one actor call: a ``concurrent.futures.Future``, awaitable.

    Its value or error arrives :class:`~mpnet.client.futures.Packed` and is unpickled by
    the first ``result()`` or ``exception()``, on the caller's thread; done-callbacks
    added before it finished run on the client's callback thread (as a task future's):
    no user code runs on the client's loop, which in a LocalCluster is the scheduler's.
    """

    _unpacked: Any = None       # (value, exception) once unpickled

    def __init__(self, key: str, method: str, callbacks: Any = None):
        super().__init__()
        self.key, self.method = key, method
        self._callbacks = callbacks

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<mpnet.ActorFuture {self.key}.{self.method} {state}>"

    def result(self, timeout: float | None = None) -> Any:
        try:
            value = super().result(timeout)
        except BaseException:
            if not self.done() or self.cancelled():
                raise
            packed = cf.Future.exception(self, 0)
            if type(packed) is not Packed:
                raise
            value = packed        # raised below, out of this handler (keeps __cause__)
        if type(value) is Packed and value is cf.Future.exception(self, 0):
            raise self._unpack(value, failed=True)[1]
        if type(value) is Packed:
            value, exc = self._unpack(value, failed=False)
            if exc is not None:
                raise exc
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        exc = super().exception(timeout)
        if type(exc) is Packed:
            return self._unpack(exc, failed=True)[1]
        if exc is None:
            value = cf.Future.result(self, 0)
            if type(value) is Packed:
                return self._unpack(value, failed=False)[1]
        return exc

    def _unpack(self, packed: Packed, *, failed: bool) -> tuple:
        """Unpickle here, once: ``(value, exception)``."""
        with _unpacking:
            if self._unpacked is None:
                try:
                    made = packed.decode(*packed.args)
                    self._unpacked = (None, made) if failed else (made, None)
                except Exception as e:   # the result cannot be unpickled here
                    self._unpacked = (None, e)
            return self._unpacked

    def add_done_callback(self, fn: Any) -> None:
        """As ``concurrent.futures``: at once if done, else on the client's callback
        thread (a worker's caller has none: where the call is answered)."""
        runner = self._callbacks
        if runner is None or self.done():
            super().add_done_callback(fn)
        else:
            super().add_done_callback(runner.wrap(fn))


_unpacking = threading.Lock()     # one unpickling at a time: both askers get one object


def _decode_result(value: Any, owner: Any) -> Any:
    with binding(owner):
        return decode_value(value)


def actor_methods(cls: type) -> tuple[frozenset, bool]:
    """Public callables of ``cls`` and whether any is ``async``."""
    import inspect
    names = frozenset(n for n in dir(cls) if not n.startswith("_") and
                      callable(getattr(cls, n, None)))
    is_async = any(inspect.iscoroutinefunction(getattr(cls, n)) for n in names)
    return names, is_async


class _Call:
    __slots__ = ("future", "key", "method", "args", "kwargs", "kind", "retries", "counted",
                 "unsent")

    def __init__(self, future: ActorFuture, key: str, method: str, args: Any, kwargs: Any,
                 kind: str, retries: int):
        self.future, self.key, self.method = future, key, method
        self.args, self.kwargs, self.kind, self.retries = args, kwargs, kind, retries
        self.counted = False      # it holds a reference to its actor until answered
        self.unsent = False       # it counts in ActorCaller._unsent until written


class ActorCaller:
    """Connections to hosting workers and the calls in flight.

    Lock rule: ``_lock`` (re-entrant) guards all the state below (references, where each
    actor lives, calls queued, in flight and not yet written, the ready connections).
    The loop thread takes it in each of its entry points; a caller's thread takes it in
    :meth:`call` to decide whether it may write its ACTOR_CALL itself: only when the
    actor's address and an open connection to it are known and no earlier call of that
    actor is still on its way through the loop (``_unsent``), so calls to one actor
    leave in the order they were made. Futures are completed under it (no user code:
    their callbacks go to the callback thread, their values stay pickled).
    """

    def __init__(self, loop: Any, config: Any, token: str | None,
                 request: Callable[..., cf.Future], info: dict, owner: Any = None,
                 on_unreferenced: Callable[[str], None] | None = None):
        self.loop, self.config, self.token = loop, config, token
        self._request = request            # loop thread: scheduler request → future
        self._info = info
        self.owner = owner                 # the Client this caller serves, if any
        self._callbacks = getattr(owner, "_callbacks", None)
        self._on_unreferenced = on_unreferenced
        self._lock = threading.RLock()
        self._refs: dict[str, int] = {}    # actor key → handles + calls not answered
        self._where: dict[str, str] = {}   # actor key → hosting worker address
        self._queued: dict[str, collections.deque] = {}    # waiting for an address
        self._unsent: dict[str, int] = {}  # actor key → calls not yet written
        self._ready: dict[str, Connection] = {}   # address → its open connection
        self._closed = False
        # direct connections to hosting workers; a close means the host probably died
        self._role = Role("actor caller", {Msg.ACTOR_RESULT: self._on_result})
        self._conns = Pool(loop, config=config, token=token, role="caller", info=info,
                           handler=self._role.dispatch,
                           on_close=lambda address, conn, exc: self._worker_gone(address))
        self._inflight: dict[int, tuple[_Call, str]] = {}  # call id → (call, address)
        self._ids = itertools.count(1)

    # any thread -------------------------------------------------------------------------
    def call(self, key: str, method: str, args: tuple, kwargs: dict, *, kind: str = "call",
             retries: int = 0) -> ActorFuture:
        fut = ActorFuture(key, method, self._callbacks)
        a, k = encode_args(args, kwargs, oob_threshold=self.config.oob_threshold)
        call = _Call(fut, key, method, a, k, kind, retries)
        if self.loop.in_loop_thread():
            self._accept(call)
            return fut
        with self._lock:
            conn = None
            # Only while no call is in flight: a call made alone (latency) is written
            # here; a burst of calls goes through the loop, which batches them into
            # few frames (throughput).
            if not self._inflight and not self._unsent.get(key) and not self._closed:
                address = self._where.get(key)
                conn = self._ready.get(address) if address is not None else None
            if conn is not None and conn.state == "open":
                self._count_call(call)
                call_id = next(self._ids)
                self._inflight[call_id] = (call, address)
                # (written under the lock: a later call of this actor follows it)
                conn.send_direct([Msg.ACTOR_CALL, call_id, key, method, a, k, kind])
                return fut
            self._mark_unsent(call)
        self.loop.call_soon_threadsafe(self._accept, call)
        return fut

    # loop thread (under _lock) ----------------------------------------------------------
    def count(self, key: str, change: int) -> None:
        """A handle was made (+1) or dropped (-1) in this process."""
        with self._lock:
            n = self._refs.get(key, 0) + change
            if n > 0:
                self._refs[key] = n
                return
            self._refs.pop(key, None)
            if self._on_unreferenced is not None:
                self._on_unreferenced(key)

    def _count_call(self, call: _Call) -> None:
        if call.key in self._refs:       # an actor this process holds: the call holds it too
            self._refs[call.key] += 1
            call.counted = True

    def _mark_unsent(self, call: _Call) -> None:
        if not call.unsent:
            call.unsent = True
            self._unsent[call.key] = self._unsent.get(call.key, 0) + 1

    def _mark_sent(self, call: _Call) -> None:
        if call.unsent:
            call.unsent = False
            n = self._unsent.get(call.key, 0) - 1
            if n > 0:
                self._unsent[call.key] = n
            else:
                self._unsent.pop(call.key, None)

    def _accept(self, call: _Call) -> None:
        with self._lock:
            self._count_call(call)
            self._dispatch(call)

    def _answered(self, call: _Call) -> None:
        self._mark_sent(call)
        if call.counted:
            call.counted = False
            self.count(call.key, -1)

    def _dispatch(self, call: _Call) -> None:
        self._mark_unsent(call)
        queued = self._queued.get(call.key)
        if queued is not None:            # keep order behind calls waiting for a lookup
            queued.append(call)
            return
        address = self._where.get(call.key)
        if address is None:
            self._queued[call.key] = collections.deque([call])
            self._lookup(call.key)
            return
        self._send(address, call)

    def _lookup(self, key: str) -> None:
        def answered(fut: cf.Future) -> None:
            with self._lock:
                queued = self._queued.pop(key, collections.deque())
                if fut.exception() is not None:
                    self._fail_all(queued, ActorDiedError(
                        f"could not find actor {key}: {fut.exception()}"))
                    return
                info = fut.result()
                if info["status"] != "alive":
                    self._fail_all(queued, dead_error(key, info))
                    return
                self._where[key] = info["address"]
                for call in queued:
                    self._send(info["address"], call)
        self._request(Msg.LOOKUP_ACTOR, key).add_done_callback(answered)

    def _send(self, address: str, call: _Call) -> None:
        conn_fut = self._conns.get(address)
        call_id = next(self._ids)
        self._inflight[call_id] = (call, address)
        if conn_fut.done():
            self._write(conn_fut, call_id, call, address)
        else:
            conn_fut.add_done_callback(lambda f: self._write(f, call_id, call, address))

    def _write(self, conn_fut: cf.Future, call_id: int, call: _Call, address: str) -> None:
        with self._lock:
            self._mark_sent(call)
            if conn_fut.exception() is not None:
                self._inflight.pop(call_id, None)
                # Its host did not answer (or the pool is closed): ask the scheduler where
                # the actor is now, rather than dial the same address again at once.
                self._retry_or_fail(call, self._where.pop(call.key, "?"), sent=False)
                return
            conn = conn_fut.result()
            if conn.state == "open" and not self._closed:
                self._ready[address] = conn
            conn.send([Msg.ACTOR_CALL, call_id, call.key, call.method, call.args,
                       call.kwargs, call.kind])

    def _on_result(self, conn: Connection, call_id: int, ok: bool, value: Any,
                   tb: str) -> None:
        """ACTOR_RESULT (checked by the role): the value stays pickled until read."""
        with self._lock:
            entry = self._inflight.pop(call_id, None)
            if entry is None:
                return
            call = entry[0]
            if ok:
                call.future.set_result(Packed(_decode_result, value, self.owner)
                                       if isinstance(value, Payload) else value)
            elif value is None:                  # the actor is not there (moved, killed)
                self._where.pop(call.key, None)
                self._retry_or_fail(call, entry[1], sent=False)
                return
            else:
                call.future.set_exception(Packed(loads_exception, value, tb))
            self._answered(call)

    def _worker_gone(self, address: str) -> None:
        """The connection to a hosting worker closed: it probably died."""
        with self._lock:
            self._ready.pop(address, None)
            for key in [k for k, a in self._where.items() if a == address]:
                del self._where[key]
            lost = [(cid, c) for cid, (c, a) in self._inflight.items() if a == address]
            for call_id, call in sorted(lost, key=lambda item: item[0]):
                del self._inflight[call_id]
                self._retry_or_fail(call, address, sent=True)

    def _retry_or_fail(self, call: _Call, address: str, *, sent: bool) -> None:
        if not sent or call.retries > 0:
            if sent:
                call.retries -= 1
            self._dispatch(call)          # waits for the actor to be placed again
            return
        call.future.set_exception(ActorDiedError(
            f"the worker {address} hosting actor {call.key} died while {call.method}() "
            "was in flight: the call may or may not have run. Set max_task_retries to "
            "send such calls again; later calls go to the restarted actor, if any."))
        self._answered(call)

    def _fail_all(self, calls: Any, exc: BaseException) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(exc)
            self._answered(call)

    def close(self) -> None:
        """Loop thread: drop worker connections; calls in flight fail."""
        with self._lock:
            self._closed = True
            self._on_unreferenced = None      # closing: the scheduler forgets us anyway
            self._ready.clear()
            self._conns.close()
            for call, _ in self._inflight.values():
                if not call.future.done():
                    call.future.set_exception(ActorDiedError("the caller was closed"))
            self._inflight.clear()
            for queued in self._queued.values():
                self._fail_all(queued, ActorDiedError("the caller was closed"))
            self._queued.clear()


def resolve_futures(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Futures among the arguments (inside lists, tuples, dicts too) become their values
    first: the call is sent once they are done (this blocks the caller until then)."""
    futures = [f for f in flatten([args, kwargs]) if isinstance(f, Future)]
    if not futures:
        return args, kwargs
    values = {f.key: f.result() for f in futures}
    return tuple(rebuild(list(args), values, False)), rebuild(kwargs, values, False)


class binding:
    """``with binding(client):`` handles unpickled in the block bind to ``client``."""

    __slots__ = ("client", "before")

    def __init__(self, client: Any):
        self.client = client

    def __enter__(self) -> None:
        self.before = getattr(_binding, "client", None)
        _binding.client = self.client

    def __exit__(self, *exc: Any) -> None:
        _binding.client = self.before


def _rebuild(key: str, name: str | None, cls_name: str, methods: frozenset,
             retries: int) -> "ActorHandle":
    """Unpickling a handle: it borrows the reference of whoever sent it, and calls
    through the client that fetched it (or, in a task or actor, its worker)."""
    handle = ActorHandle(key, name, cls_name, methods, retries)
    handle._via = getattr(_binding, "client", None)
    return handle


def dead_error(key: str, info: dict) -> BaseException:
    """The error for calls to a dead actor: its constructor's own, or ActorDiedError."""
    if info.get("error"):
        payload, tb = info["error"]
        return loads_exception(payload, tb)
    return ActorDiedError(info.get("reason") or f"actor {key} is dead")


class ActorHandle:
    """A reference to an actor: ``handle.method(*args)`` returns an :class:`ActorFuture`.

    Reading a plain attribute (``handle.n``) returns its value (blocking). Handles can be
    passed to tasks and to other actors and used there. ``kill()`` stops the actor.
    """

    def __init__(self, key: str, name: str | None, cls_name: str, methods: frozenset,
                 max_task_retries: int = 0, caller: Any = None, owner: Any = None):
        self._key, self._name, self._cls_name = key, name, cls_name
        self._methods, self._retries = methods, max_task_retries
        self._caller = caller          # resolved lazily in other processes
        # What counts this handle's reference (a client's actors: ``release_handle``),
        # and what it calls and kills through (``actor_caller``, ``kill_actor``): the
        # same object for a handle made here, the fetching client for one unpickled.
        self._owner = owner
        self._via = owner

    @property
    def key(self) -> str:
        return self._key

    @property
    def name(self) -> str | None:
        return self._name

    def __repr__(self) -> str:
        label = f" {self._name!r}" if self._name else ""
        return f"<ActorHandle {self._cls_name}{label} {self._key}>"

    def _get_caller(self) -> "ActorCaller":
        if self._caller is None:
            if self._via is not None:
                self._caller = self._via.actor_caller
            else:
                self._caller = context.current_caller()
        return self._caller

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._methods))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._methods:
            def method(*args: Any, **kwargs: Any) -> ActorFuture:
                args, kwargs = resolve_futures(args, kwargs)
                return self._get_caller().call(self._key, name, args, kwargs,
                                               retries=self._retries)
            method.__name__ = name
            return method
        return self._get_caller().call(self._key, name, (), {}, kind="getattr").result()

    def kill(self) -> None:
        """Stop the actor now (its resources are freed; later calls fail)."""
        if self._via is None:
            context.current_client().kill_actor(self)
        else:
            self._via.kill_actor(self)

    def __reduce__(self) -> Any:
        return (_rebuild, (self._key, self._name, self._cls_name, self._methods,
                           self._retries))

    def __del__(self) -> None:
        owner = self._owner
        if owner is not None:
            owner.release_handle(self._key)
