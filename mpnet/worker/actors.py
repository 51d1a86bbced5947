"""Hosting actors in a worker: one mailbox per actor, calls answered directly.

::

    caller ──ACTOR_CALL──► worker loop ──► mailbox (queue) ──► actor thread(s)
    caller ◄──────────────ACTOR_RESULT (written by the actor's thread) ◄──┘

The actor's thread writes its answer to the caller's socket itself
(``Connection.send_direct``: no hop through the loop) when no other call waits in the
mailbox; under a burst of calls the loop batches the answers into few frames. ``_Hosted.lock`` guards the calls
still to be answered (``pending``): whoever removes a call from it answers it, the
actor's thread with the result or the loop (``drop``) with ActorDiedError, never both.

- ``max_concurrency=1`` (default): one thread, ``mpnet-actor-<name>``, runs the calls in
  the order they arrived, so one caller's calls run in the order it made them.
- ``max_concurrency=N``: N threads share the mailbox.
- A class with ``async def`` methods gets an asyncio loop in its own thread; every call
  runs there (coroutines concurrently, up to ``max_concurrency`` at once).

The constructor runs in the actor's thread too, with :func:`get_actor_context` telling
it whether this is a restart and handing it the last checkpoint it saved.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..comm.protocol import Msg
from ..comm.serialize import Payload, decode_args, dumps, dumps_exception, encode_value, loads
from ..errors import ActorDiedError
from ..context import set_thread_worker

if TYPE_CHECKING:
    from ..comm.connection import Connection

__all__ = ["ActorHost", "ActorContext", "get_actor_context"]

log = logging.getLogger("mpnet.actors")

_local = threading.local()
_STOP = object()


class ActorContext:
    """What an actor can learn about itself: ``mpnet.get_actor_context()``.

    ``restarted`` counts how many times it was re-created after its worker died;
    ``checkpoint(state)`` saves a state (at the scheduler) that a re-created instance
    receives in ``__mpnet_restore__(state)``, after its ``__init__``.
    """

    def __init__(self, host: "ActorHost", key: str, name: str | None, restarted: int):
        self._host, self.key, self.name, self.restarted = host, key, name, restarted

    @property
    def worker(self) -> Any:
        """The :class:`~mpnet.Worker` hosting this actor."""
        return self._host.owner

    def checkpoint(self, state: Any) -> None:
        payload = dumps(state, what="actor checkpoint")
        self._host.loop.call_soon_threadsafe(
            self._host.send_scheduler, [Msg.ACTOR_CHECKPOINT, self.key, payload])


def get_actor_context() -> ActorContext:
    """The context of the actor whose code is running (in ``__init__`` or a method)."""
    ctx = getattr(_local, "actor", None)
    if ctx is None:
        raise RuntimeError("get_actor_context() works only inside an actor's methods")
    return ctx


class _Hosted:
    """One actor instance, its mailbox and its threads (or its asyncio loop)."""

    def __init__(self, host: "ActorHost", key: str, name: str | None, cls: type, args: tuple,
                 kwargs: dict, max_concurrency: int, restarted: int, checkpoint: Any):
        self.host, self.key = host, key
        self.context = ActorContext(host, key, name, restarted)
        self.mailbox: queue.SimpleQueue = queue.SimpleQueue()
        #: calls accepted and not yet answered, (connection, call id) → True
        self.pending: dict[tuple, bool] = {}
        self.lock = threading.Lock()      # guards pending (see the top of the module)
        self.running = 0                  # its threads still alive (loop thread's count)
        self.dropped = False
        self.instance: Any = None
        self.is_async = any(inspect.iscoroutinefunction(getattr(cls, n, None))
                            for n in dir(cls) if not n.startswith("__"))
        self.aloop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None
        label = name or key
        nthreads = 1 if self.is_async else max(1, max_concurrency)
        self.threads = [threading.Thread(target=self._run, name=f"mpnet-actor-{label}-{i}",
                                         daemon=True) for i in range(nthreads)]
        self._max_concurrency = max(1, max_concurrency)
        self._construct = (cls, args, kwargs, checkpoint)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _build(self) -> None:
        cls, args, kwargs, checkpoint = self._construct
        self._construct = None
        _local.actor = self.context
        try:
            self.instance = cls(*args, **kwargs)
            if checkpoint is not None and hasattr(self.instance, "__mpnet_restore__"):
                self.instance.__mpnet_restore__(loads(checkpoint, what="actor checkpoint"))
        except BaseException as e:   # reported to the scheduler: the actor is dead
            exc, tb = dumps_exception(e)
            self.host.started(self.key, exc, tb)
            return
        self.host.started(self.key, None, "")

    def _run(self) -> None:
        try:
            self._serve_mailbox()
        finally:       # the scheduler frees a killed actor's resources only now
            self.host.loop.call_soon_threadsafe(self.host.thread_ended, self)

    def _serve_mailbox(self) -> None:
        _local.actor = self.context
        set_thread_worker(self.host.owner)    # handles used by the actor call from here
        if self.threads[0] is threading.current_thread():
            if self.is_async:
                self._run_async()
                return
            self._build()
        while True:
            item = self.mailbox.get()
            if item is _STOP:
                self.mailbox.put(_STOP)     # let the other threads see it too
                return
            self._call(*item)

    def _invoke(self, method: str, args: Any, kwargs: Any, kind: str) -> Any:
        """Read the attribute or call the method (which may return an awaitable)."""
        if self.instance is None:
            raise ActorDiedError(f"actor {self.key} failed to start")
        if kind == "getattr":
            return getattr(self.instance, method)
        a, k = decode_args(args, kwargs)
        return getattr(self.instance, method)(*a, **k)

    def _call(self, reply: Callable, method: str, args: Any, kwargs: Any, kind: str) -> None:
        try:
            reply(True, encode_value(self._invoke(method, args, kwargs, kind)), "")
        except BaseException as e:   # the method's error goes back to its caller
            exc, tb = dumps_exception(e)
            reply(False, exc, tb)

    # --- async actors ----------------------------------------------------------------
    def _run_async(self) -> None:
        self.aloop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.aloop)
        # As in Ray, an async actor overlaps its calls: up to 1000 unless told otherwise.
        limit = 1000 if self._max_concurrency == 1 else self._max_concurrency
        self._semaphore = asyncio.Semaphore(limit)
        self._build()
        try:
            self.aloop.run_until_complete(self._serve())
        finally:
            self.aloop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set = set()
        while True:
            item = await self._next()
            if item is _STOP:
                break
            task = loop.create_task(self._call_async(*item))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()

    async def _next(self) -> Any:
        while True:
            try:
                return self.mailbox.get_nowait()
            except queue.Empty:
                self._wake = asyncio.get_running_loop().create_future()
                try:
                    return self.mailbox.get_nowait()
                except queue.Empty:
                    await self._wake

    def notify(self) -> None:
        """Another thread put something in the mailbox of an async actor."""
        if self.aloop is not None:
            def wake() -> None:
                fut = getattr(self, "_wake", None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            try:
                self.aloop.call_soon_threadsafe(wake)
            except RuntimeError:   # loop closed: the actor is stopping
                pass

    async def _call_async(self, reply: Callable, method: str, args: Any, kwargs: Any,
                          kind: str) -> None:
        async with self._semaphore:
            try:
                value = self._invoke(method, args, kwargs, kind)
                if inspect.isawaitable(value):
                    value = await value
                reply(True, encode_value(value), "")
            except BaseException as e:   # the method's error goes back to its caller
                exc, tb = dumps_exception(e)
                reply(False, exc, tb)

    def stop(self) -> None:
        while True:           # calls still queued are not run (they are answered)
            try:
                self.mailbox.get_nowait()
            except queue.Empty:
                break
        self.mailbox.put(_STOP)
        self.notify()


def _answer(hosted: "_Hosted", token: tuple, msg: list) -> None:
    """Any thread: send a call's answer, unless a kill answered it already."""
    with hosted.lock:
        if hosted.pending.pop(token, None) is None:
            return
    conn = token[0]
    send = getattr(conn, "send_direct", None)
    if send is not None and hosted.mailbox.empty():
        send(msg)
    else:        # more calls wait (the loop batches their answers), or a loop-only link
        hosted.host.loop.call_soon_threadsafe(conn.send, msg)


class ActorHost:
    """The actors living in one worker. Loop-thread methods unless noted.

    ``owner`` is what ``get_worker()`` returns in an actor's methods; ``send_scheduler``
    reaches the scheduler; ``address()`` names the worker in error messages.
    """

    def __init__(self, owner: Any, loop: Any, send_scheduler: Callable[[list], None],
                 address: Callable[[], str]):
        self.owner, self.loop = owner, loop
        self.send_scheduler = send_scheduler
        self._address = address
        self.actors: dict[str, _Hosted] = {}
        self.calls: dict[str, int] = {}         # actor key → calls received (heartbeat)
        self._dropped: list[_Hosted] = []      # stopped, their threads joined at close

    def handlers(self) -> dict:
        """The messages this component answers."""
        return {Msg.HOST_ACTOR: self._host_msg, Msg.DROP_ACTOR: self._drop_msg,
                Msg.ACTOR_CALL: self.call}

    def _host_msg(self, conn: "Connection", *args: Any) -> None:
        self.host(*args)

    def _drop_msg(self, conn: "Connection", key: str, reason: str) -> None:
        self.drop(key, reason)

    def statistics(self) -> dict:
        """For `mpnet top`: calls so far and calls waiting, per actor."""
        return {key: [self.calls.get(key, 0), a.mailbox.qsize()]
                for key, a in self.actors.items()}

    def host(self, key: str, name: str | None, cls: Payload, args: Payload, options: dict,
             restarted: int, checkpoint: Any) -> None:
        if key in self.actors:
            return
        try:
            klass = loads(cls, what="actor class")
            a, k = decode_args(args, None)
        except Exception as e:   # e.g. the class cannot be imported here
            exc, tb = dumps_exception(e)
            self.send_scheduler([Msg.ACTOR_FAILED, key, exc, tb])
            return
        hosted = self.actors[key] = _Hosted(self, key, name, klass, a, k,
                                            options.get("max_concurrency", 1), restarted,
                                            checkpoint)
        hosted.running = len(hosted.threads)
        hosted.start()

    def started(self, key: str, exc: Any, tb: str) -> None:
        """Actor thread: its constructor finished (or raised)."""
        def report() -> None:
            if exc is None:
                self.send_scheduler([Msg.ACTOR_STARTED, key])
            else:
                hosted = self.actors.pop(key, None)
                if hosted is not None:
                    hosted.stop()
                self.send_scheduler([Msg.ACTOR_FAILED, key, exc, tb])
        self.loop.call_soon_threadsafe(report)

    def call(self, conn: "Connection", call_id: int, key: str, method: str, args: Any,
             kwargs: Any, kind: str) -> None:
        self.calls[key] = self.calls.get(key, 0) + 1
        hosted = self.actors.get(key)
        if hosted is None:
            conn.send([Msg.ACTOR_RESULT, call_id, False, None,
                       f"actor {key} does not live on {self._address()} (any more)"])
            return
        token = (conn, call_id)
        with hosted.lock:
            hosted.pending[token] = True

        def reply(ok: bool, value: Any, tb: str) -> None:
            _answer(hosted, token, [Msg.ACTOR_RESULT, call_id, ok, value, tb])
        hosted.mailbox.put((reply, method, args, kwargs, kind))
        if hosted.is_async:
            hosted.notify()

    def drop(self, key: str, reason: str) -> None:
        """Stop an actor (killed, released): every call queued or running is answered
        now with ActorDiedError; a running method cannot be interrupted, so its thread
        goes on, and the scheduler holds the actor's resources until it ends."""
        hosted = self.actors.pop(key, None)
        if hosted is not None:
            log.info("actor %s dropped: %s", key, reason)
            hosted.dropped = True
            hosted.stop()
            with hosted.lock:
                pending, hosted.pending = list(hosted.pending), {}
            if pending:
                exc, tb = dumps_exception(ActorDiedError(
                    f"actor {key} was stopped ({reason}) before this call finished: it may "
                    "have run in part, or not at all"))
                for conn, call_id in pending:
                    conn.send([Msg.ACTOR_RESULT, call_id, False, exc, tb])
            self._dropped.append(hosted)
            if not hosted.running:
                self.send_scheduler([Msg.ACTOR_STOPPED, key])

    def thread_ended(self, hosted: _Hosted) -> None:
        """Loop thread: one of an actor's threads has returned."""
        hosted.running -= 1
        if not hosted.running and hosted.dropped:
            self.send_scheduler([Msg.ACTOR_STOPPED, hosted.key])

    def close(self, timeout: float) -> None:
        """Stop every actor; wait up to ``timeout`` seconds for their threads."""
        hosted = list(self.actors.values()) + self._dropped
        self.actors.clear()
        for h in hosted:
            h.stop()
        for h in hosted:
            for t in h.threads:
                t.join(timeout)
