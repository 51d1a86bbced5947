"""The client and the actor caller that tasks and actors on one worker use.

``get_client()`` and actor handles inside a task reach the cluster through these,
made on first use, on the worker's own loop (no second loop, no extra thread). Their
classes come from :mod:`mpnet.context` (provided by the client package), so the worker
layer imports nothing above it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ..comm.auth import token_arg
from ..context import made_by

__all__ = ["TaskClients"]


class _ClusterView:
    """What ``Client(...)`` takes to join a cluster on a loop that is already running."""

    def __init__(self, scheduler_address: str, token: str | None, loop: Any, config: Any):
        self.scheduler_address, self.token = scheduler_address, token
        self.loop, self.config = loop, config


class TaskClients:
    """``request(*msg)`` asks the scheduler (for the actor caller); ``address()`` is
    the worker's, named to the actors it calls."""

    def __init__(self, scheduler_address: str, token: str | None, loop: Any, config: Any,
                 request: Callable[..., Any], address: Callable[[], str]):
        self._view = _ClusterView(scheduler_address, token, loop, config)
        self._request, self._address = request, address
        self._client: Any = None
        self._caller: Any = None
        self._lock = threading.Lock()      # guards the two fields; never held to connect

    def client(self) -> Any:
        """A Client of the cluster. It connects outside the lock: a slow connect must
        not hold up close() or other tasks; two tasks racing here may both connect,
        and the second client made is closed."""
        loop = self._view.loop
        if loop.in_loop_thread():
            raise RuntimeError("get_client() cannot run on the worker's loop thread (it "
                               "would wait on itself): call it from a task or an actor")
        with self._lock:
            client = self._client
        if client is not None and client.status != "closed":
            return client
        made = made_by("client")(self._view, token=token_arg(self._view.token),
                                 config=self._view.config, default=False)
        with self._lock:
            if self._client is None or self._client.status == "closed":
                self._client, made = made, None
            client = self._client
        if made is not None:
            made.close()
        return client

    def actor_caller(self) -> Any:
        """The caller for actor handles used here (made on first use)."""
        with self._lock:
            if self._caller is None:
                view = self._view
                self._caller = made_by("actor_caller")(
                    view.loop, view.config, view.token, request=self._request,
                    info={"address": self._address()})
            return self._caller

    def close_client(self) -> None:
        """Any thread but the loop's: close the client (it talks through the loop)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def close_on_loop(self) -> None:
        """Loop thread: close the actor caller's connections."""
        with self._lock:
            caller = self._caller
        if caller is not None:
            caller.close()
