"""RUN requests: a user's function called once on a worker (``client.run``).

Each request runs in a thread of its own, ``mpnet-worker-run`` (a function may block
for long: it must hold up neither the loop nor the executor's task threads), and hands
its answer back to the loop thread. The threads are kept until they end and joined by
:meth:`RunRequests.join` at the worker's close.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any

from ..comm.connection import Connection
from ..comm.protocol import Msg
from ..comm.serialize import Payload, dumps, dumps_exception, loads

__all__ = ["RunRequests"]


class RunRequests:
    """``owner`` is passed to functions that ask for ``mpnet_worker``/``dask_worker``."""

    def __init__(self, owner: Any, loop: Any):
        self.owner, self.loop = owner, loop
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def handlers(self) -> dict:
        return {Msg.RUN: self.run}

    def run(self, conn: Connection, req_id: int, fn: Payload) -> None:
        """Loop thread: start the call in its own thread; it replies when done."""
        t = threading.Thread(target=self._call, args=(conn, req_id, fn),
                             name="mpnet-worker-run", daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def _call(self, conn: Connection, req_id: int, fn: Payload) -> None:
        try:
            func = loads(fn, what="function")
            kwargs = {}
            params = inspect.signature(func).parameters
            for name in ("mpnet_worker", "dask_worker"):
                if name in params:
                    kwargs[name] = self.owner
            result = [True, dumps(func(**kwargs), what="result"), ""]
        except BaseException as e:   # the user's function: its error goes back
            payload, tb = dumps_exception(e)
            result = [False, payload, tb]
        self.loop.call_soon_threadsafe(conn.reply, req_id, True, result)

    def join(self, deadline: float) -> None:
        """Join every RUN thread, each until ``deadline`` (``time.monotonic()``)."""
        with self._lock:
            threads, self._threads = list(self._threads), set()
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
