"""The records the scheduler keeps: one per task, worker and client. Data only."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["TaskState", "WorkerState", "ClientState", "ACTIVE"]

#: states in which a task still needs its inputs
ACTIVE = frozenset({"waiting", "ready", "processing"})


class TaskState:
    __slots__ = ("key", "state", "fn", "args", "dependencies", "dependents", "waiting_on",
                 "who_has", "processing_on", "who_wants", "priority", "retries", "nbytes",
                 "exception", "traceback", "lost", "failed_on", "scattered", "resources",
                 "restrict", "inline_to", "group", "started", "ran_on", "__weakref__")

    def __init__(self, key: str, fn: Any, args: Any, priority: tuple, retries: int):
        self.key = key
        self.state = "waiting"
        self.fn, self.args = fn, args
        self.dependencies: set[TaskState] = set()
        self.dependents: set[TaskState] = set()
        self.waiting_on: set[TaskState] = set()
        self.who_has: set[WorkerState] = set()
        self.processing_on: WorkerState | None = None
        self.who_wants: set[ClientState] = set()
        self.priority = priority
        self.retries = retries
        self.nbytes = 0
        self.exception: Any = None
        self.traceback = ""
        self.lost = ""                     # "killed" / "lost" when the scheduler failed it
        self.failed_on: list[str] = []     # workers that died while running it
        self.scattered = False
        self.resources: dict | None = None     # e.g. {"GPU": 1}: held while it runs
        self.restrict: set | None = None       # worker addresses or names it may run on
        self.inline_to: frozenset = frozenset()  # clients that got the value itself
        self.group: Any = None                 # monitor.Group of its function name
        self.started = 0.0                     # time.time() it was sent to a worker
        self.ran_on = ""                       # that worker's address (task stream)

    def __repr__(self) -> str:
        return f"<Task {self.key} {self.state}>"


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
