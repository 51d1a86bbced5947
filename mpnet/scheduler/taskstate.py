"""The records the scheduler keeps: one per task, worker and client. Data only.

A scheduler holds one :class:`TaskState` per task it knows, a million of them at a time
if a client submits that many (benchmarks/bench_scale.py measures the bytes per task),
so this record is kept small: no container is made before it is needed where the state
machine allows it, and a function sent again and again (``map``) is kept once.
"""

from __future__ import annotations

import time
from typing import Any

from ..comm.serialize import Payload

__all__ = ["TaskState", "WorkerState", "ClientState", "ACTIVE", "EMPTY", "shared_function",
           "depend", "wait_on"]

#: states in which a task still needs its inputs
ACTIVE = frozenset({"waiting", "ready", "processing"})

# Since Python 3.10 every frozenset() is a new 216-byte object: share one. It stands for
# a set not made yet: the sets that most tasks never fill (a map's tasks have neither
# inputs nor dependents) start as it, and depend() / wait_on() make the real one on the
# first add. Reading them (iteration, `in`, len, truth) needs no change; an add, discard
# or clear must go through those helpers or check for it (a frozenset has none).
EMPTY: frozenset = frozenset()

#: (kind, header) -> the one Payload kept for that function (see shared_function)
_FUNCTIONS: dict[tuple, Payload] = {}
# At most 256 x 8 KiB = 2 MiB kept after their tasks are gone (a function that pickles
# larger, a closure holding data, is rarely mapped a million times: kept per task).
_FUNCTIONS_MAX = 256
_FUNCTION_BYTES_MAX = 8192


def shared_function(fn: Any) -> Any:
    """The one copy of a small function payload: every SUBMIT of ``map(f, ...)`` brings
    its own identical bytes of ``f`` (a few hundred bytes when pickled by value, more
    than the rest of the task's record), and a million queued tasks would keep a million
    copies. Payloads are opaque and never changed once decoded, so equal bytes may be
    one object. Only small payloads (no out-of-band buffers, 8 KiB at most) are shared;
    the table is bounded (cleared when full: the tasks keep their copies)."""
    if type(fn) is not Payload or fn.buffers or len(fn.header) > _FUNCTION_BYTES_MAX:
        return fn
    key = (fn.kind, fn.header)
    kept = _FUNCTIONS.get(key)
    if kept is None:
        if len(_FUNCTIONS) >= _FUNCTIONS_MAX:
            _FUNCTIONS.clear()
        kept = _FUNCTIONS[key] = fn
    return kept


class TaskState:
    __slots__ = ("key", "state", "fn", "args", "dependencies", "dependents", "waiting_on",
                 "who_has", "processing_on", "who_wants", "priority", "retries", "nbytes",
                 "exception", "traceback", "lost", "_failed_on", "scattered", "resources",
                 "restrict", "inline_to", "group", "started", "ran_on", "__weakref__")

    def __init__(self, key: str, fn: Any, args: Any, priority: tuple, retries: int):
        self.key = key
        self.state = "waiting"
        self.fn, self.args = shared_function(fn), args
        # Made on first use (depend(), wait_on()): 216 bytes and one more object for the
        # collector to walk, each, for every task of a map that never fills them.
        self.dependencies: set[TaskState] | frozenset = EMPTY
        self.dependents: set[TaskState] | frozenset = EMPTY
        self.waiting_on: set[TaskState] | frozenset = EMPTY
        self.who_has: set[WorkerState] = set()
        self.processing_on: WorkerState | None = None
        self.who_wants: set[ClientState] = set()
        self.priority = priority
        self.retries = retries
        self.nbytes = 0
        self.exception: Any = None
        self.traceback = ""
        self.lost = ""                     # "killed" / "lost" when the scheduler failed it
        self._failed_on: list[str] | None = None   # see failed_on
        self.scattered = False
        self.resources: dict | None = None     # e.g. {"GPU": 1}: held while it runs
        self.restrict: set | None = None       # worker addresses or names it may run on
        self.inline_to: frozenset = EMPTY      # clients that got the value itself
        self.group: Any = None                 # monitor.Group of its function name
        self.started = 0.0                     # time.time() it was sent to a worker
        self.ran_on = ""                       # that worker's address (task stream)

    @property
    def failed_on(self) -> list[str]:
        """The workers that died while running it (made on first use: few tasks ever
        see a worker die, and an empty list per task is 56 bytes a million times)."""
        if self._failed_on is None:
            self._failed_on = []
        return self._failed_on

    def __repr__(self) -> str:
        return f"<Task {self.key} {self.state}>"


def depend(ts: TaskState, dep: TaskState) -> None:
    """``ts`` takes ``dep``'s result as an input: both sides' sets, made on first use."""
    if ts.dependencies is EMPTY:
        ts.dependencies = set()
    ts.dependencies.add(dep)
    if dep.dependents is EMPTY:
        dep.dependents = set()
    dep.dependents.add(ts)


def wait_on(ts: TaskState, dep: TaskState) -> None:
    """``ts`` waits for ``dep``'s result (its waiting_on set made on first use)."""
    if ts.waiting_on is EMPTY:
        ts.waiting_on = set()
    ts.waiting_on.add(dep)


class WorkerState:
    __slots__ = ("address", "name", "nthreads", "pid", "nanny", "info", "processing",
                 "has_what", "nbytes", "metrics", "last_seen", "link", "exit", "paused",
                 "retiring", "resources", "used", "actors", "abandoned")

    def __init__(self, address: str, nthreads: int, name: str, pid: int, nanny: str | None,
                 info: dict):
        self.address, self.nthreads, self.name, self.pid = address, nthreads, name, pid
        self.nanny = nanny
        self.info = info
        self.processing: set[TaskState] = set()
        self.has_what: set[TaskState] = set()
        self.nbytes = 0
        self.metrics: dict = {}
        self.last_seen = time.monotonic()
        self.link: Any = None            # the I/O layer's handle (its connection)
        self.exit: str = ""              # how it ended, when its nanny told us
        self.paused = False              # memory pressure: send it nothing new
        self.retiring = False            # leaving: send it nothing new
        self.resources: dict = dict(info.get("resources") or {})   # what it declared
        self.used: dict = {}             # held by running tasks and live actors
        self.actors: set = set()         # keys of the actors it hosts
        #: (key, resources) of tasks freed while it may still run them: each holds its
        #: thread (and resources) until the worker says it ended (TASK_RELEASED)
        self.abandoned: list = []

    def __repr__(self) -> str:
        return f"<Worker {self.address} processing={len(self.processing)}>"


class ClientState:
    __slots__ = ("id", "wants", "link", "info")

    def __init__(self, client_id: str, info: dict):
        self.id = client_id
        self.info = info
        self.wants: set[TaskState] = set()
        self.link: Any = None
