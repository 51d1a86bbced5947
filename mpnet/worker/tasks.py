"""Running tasks in a worker: accept, hand to the executor, report the outcome.

::

    loop thread: accept(COMPUTE) ──► (inputs fetched by Transfer) ──► run ──► executor
    executor thread: unpickle, run, pickle ──► ended.append(outcome)
                     ──► TASK_FINISHED / TASK_FAILED (or, for a task freed while it
                         ran, TASK_RELEASED) written to the scheduler's socket
                     ──► call_soon(drain): no wake-up, run at the loop's next turn
    loop thread: drain: store the result, free the inputs

Owns the table of tasks and the bookkeeping of which stored keys the scheduler placed
here (``owned``) and which fetched inputs local tasks still use (``borrowed``). Every
method runs on the loop thread except :meth:`TaskRunner._execute` (an executor thread).
The worker gives it a way to reach the scheduler (``send``; from any thread,
``send_direct`` writes on the connection of ``owner.scheduler``) and nothing else.

Ordering of a task's end (why the executor thread may send before the loop stores):
the outcome is appended to ``ended`` *before* the message leaves, and the worker calls
:meth:`TaskRunner.drain` before it serves any message. Whatever the scheduler or a peer
sends because of TASK_FINISHED (a FREE, a GET_DATA of the key, a dependent's COMPUTE,
a TRY_CANCEL) is read after the message left, so it finds the outcome applied. A FREE
that wins the race against the end (the loop freed the task while it ran) is seen by
``drain``: the value is dropped and TASK_RELEASED sent, as for any freed task (the
scheduler takes TASK_FINISHED of a freed task as its end too, and frees its slot then;
a second end is ignored). A task seen freed before its end is reported is released by
its executor thread at once (its slot must not wait for the loop's next turn).
Only the loop thread touches ``tasks``, ``owned``, ``borrowed`` and the store's keys.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

from ..comm.connection import Connection
from ..comm.protocol import Msg
from ..comm.serialize import Payload, dumps, dumps_exception, loads, loads_task_args
from ..context import set_thread_worker
from ..errors import FrameTooLargeError
from ..plugins import call_hook
from .executor import Executor
from .store import DataStore

__all__ = ["TaskRunner"]

_FN_CACHE_SIZE = 512


class _Task:
    __slots__ = ("key", "fn", "args", "deps", "priority", "missing", "gate", "stopped",
                 "claimed")

    def __init__(self, key: str, fn: Payload, args: Payload, deps: list[str], priority: list):
        self.key, self.fn, self.args, self.deps = key, fn, args, deps
        self.priority = priority
        self.missing: set[str] = set()
        # Whoever pops the one item first decides: the executor thread (it starts) or
        # the loop thread (it never will). list.pop is atomic: no lock on the hot path.
        self.gate = [True]
        self.stopped = False       # the loop thread took the gate
        # Handed to a free thread: it starts now, as in a stdlib pool, where a free
        # thread takes new work at once (the thread may not have popped the gate yet).
        self.claimed = False

    def stop(self) -> bool:
        """Loop thread: True if the task has not started and now never will."""
        if not self.stopped:
            try:
                self.gate.pop()
            except IndexError:     # an executor thread runs it (or ran it)
                return False
            self.stopped = True
        return True


class TaskRunner:
    """The tasks of one worker. ``owner`` is what ``get_worker()`` returns in a task;
    ``send(msg)`` reaches the scheduler (dropped while it is away); ``stopped`` is set
    when the worker stops serving; ``plugins`` hear each task's transitions."""

    def __init__(self, owner: Any, loop: Any, config: Any, store: DataStore,
                 executor: Executor, send: Callable[[list], None], plugins: dict,
                 stopped: threading.Event):
        self.owner, self.loop, self.config = owner, loop, config
        self.store, self.executor, self.send = store, executor, send
        #: outcomes sent by executor threads, not yet applied by the loop (see top)
        self.ended: collections.deque = collections.deque()
        self.plugins = plugins
        self.stopped = stopped
        self.tasks: dict[str, _Task] = {}
        self.owned: set[str] = set()          # keys the scheduler placed here
        self.borrowed: dict[str, int] = {}     # fetched inputs → tasks still using them
        self._functions: dict[bytes, Any] = {}

    def accept(self, key: str, fn: Payload, args: Payload, who_has: list,
               priority: list) -> _Task | None:
        """A COMPUTE: the new task, or None (known already, or the worker is stopping)."""
        if key in self.tasks or self.stopped.is_set():
            return None
        task = self.tasks[key] = _Task(key, fn, args, [dep for dep, _ in who_has], priority)
        self.transition(key, "released", "waiting")
        return task

    def run(self, task: _Task) -> None:
        """Its inputs are all here: give it to the executor."""
        self.transition(task.key, "waiting", "ready")
        task.claimed = self.executor.submit(lambda: self._execute(task), task.priority,
                                            task.key)

    def _function(self, fn: Payload) -> Any:
        func = self._functions.get(fn.header)
        if func is None:
            func = loads(fn, what="function")
            if len(self._functions) >= _FN_CACHE_SIZE:
                self._functions.clear()
            self._functions[fn.header] = func
        return func

    def _execute(self, task: _Task) -> None:
        """Executor thread: unpickle, run, pickle; hand the outcome to the loop."""
        if self.tasks.get(task.key) is not task or self.stopped.is_set():
            return
        try:
            task.gate.pop()
        except IndexError:         # cancelled before it started
            return
        set_thread_worker(self.owner)
        try:
            func = self._function(task.fn)
            args, kwargs = loads_task_args(task.args, {d: self.store.value(d) for d in task.deps})
            value = func(*args, **kwargs)
            payload = self.store.share(dumps(value, oob_threshold=self.config.oob_threshold,
                                             what=f"result of {task.key}"))
            if payload.nbytes > self.config.max_frame_bytes:
                # It could never leave this worker (for a client, a dependent elsewhere,
                # a retirement): fail now, clearly, rather than hang the fetch later.
                nbytes, value, payload = payload.nbytes, None, None
                raise FrameTooLargeError.for_size(f"the result of {task.key}", nbytes,
                                                  self.config.max_frame_bytes)
        except BaseException as e:   # the task's own failure, reported to its caller
            exc, tb = dumps_exception(e, oob_threshold=self.config.oob_threshold)
            self._ended(task, None, None, [Msg.TASK_FAILED, task.key, exc, tb])
            return
        nbytes = payload.nbytes
        inline = payload if nbytes <= self.config.inline_result_bytes else None
        self._ended(task, value, payload, [Msg.TASK_FINISHED, task.key, inline, nbytes])

    def _ended(self, task: _Task, value: Any, payload: Payload | None, msg: list) -> None:
        """Executor thread: record the outcome, then tell the scheduler (order: see top)."""
        if self.tasks.get(task.key) is not task:   # freed while it ran
            self.ended.append((task, None, None, None))
            if not self.stopped.is_set():
                self.send_direct([Msg.TASK_RELEASED, task.key])
        else:
            self.ended.append((task, value, payload, msg))
            self.send_direct(msg)
        # No wake-up byte (it was a thread hop per task): the loop drains at its next
        # turn, which any message to this worker or its heartbeat timer starts, and
        # before it serves any message (see the top). deque.append is thread-safe.
        self.loop.call_soon(self.drain)

    def send_direct(self, msg: list) -> None:
        """Any thread: to the scheduler, written by this thread when the link's
        connection allows it (Connection.send_direct), else through the loop."""
        link = getattr(self.owner, "scheduler", None)    # the worker's link, now
        conn = getattr(link, "conn", None)
        if conn is not None and conn.state == "open" and hasattr(conn, "send_direct"):
            conn.send_direct(msg)
        else:
            self.loop.call_soon_threadsafe(self.send, msg)

    def drain(self) -> None:
        """Loop thread: apply the outcomes the executor threads have sent."""
        ended = self.ended
        while ended:
            task, value, payload, msg = ended.popleft()
            if msg is None:                # freed, and released by its thread
                continue
            if msg[0] == Msg.TASK_FAILED:
                self._failed(task)
            else:
                self._finished(task, value, payload)

    def release_inputs(self, task: _Task) -> None:
        for dep in task.deps:
            n = self.borrowed.get(dep, 0) - 1
            if n > 0:
                self.borrowed[dep] = n
                continue
            self.borrowed.pop(dep, None)
            if dep not in self.owned:
                self.store.pop(dep)

    def _finished(self, task: _Task, value: Any, payload: Payload) -> None:
        if self.tasks.get(task.key) is not task:
            self.ended_freed(task)
            return
        del self.tasks[task.key]
        self.release_inputs(task)
        self.store.put(task.key, value, payload)
        self.owned.add(task.key)
        self.transition(task.key, "ready", "memory")

    def _failed(self, task: _Task) -> None:
        if self.tasks.get(task.key) is not task:
            self.ended_freed(task)
            return
        del self.tasks[task.key]
        self.release_inputs(task)
        self.transition(task.key, "ready", "error")

    def ended_freed(self, task: _Task) -> None:
        """A task the scheduler freed while it ran has ended: its thread is free."""
        if not self.stopped.is_set():
            self.send([Msg.TASK_RELEASED, task.key])

    def try_cancel(self, conn: Connection, req_id: int, keys: list) -> None:
        """TRY_CANCEL: which of ``keys`` had not started (and now never will)."""
        stopped = []
        for key in keys:
            task = self.tasks.get(key)
            # (a task a free thread was handed has started, for Future.cancel)
            if task is not None and not task.claimed and task.stop():
                stopped.append(key)
        conn.reply(req_id, True, stopped)

    def transition(self, key: str, start: str, finish: str) -> None:
        if self.plugins:
            call_hook(self.plugins, "transition", key, start, finish)

    def clear(self) -> None:
        self.tasks.clear()
        self.ended.clear()
