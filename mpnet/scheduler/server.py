"""The scheduler's I/O layer: links in, state-machine calls, messages out.

::

    clients ──SUBMIT/RELEASE/CANCEL──►┐ the link's             ┌──COMPUTE/FREE──► workers
    workers ──TASK_FINISHED/FAILED───►├─ session ─► SchedulerState ─► outbox ─┤
    nannies ──WORKER_EXITED──────────►┘ (its role)             └──TASK_DONE──► clients

This module holds the lifecycle (start, close), plugins, the outbox and the waits
(:meth:`Scheduler.when`); each role's handlers live with its session, in
:mod:`.clients` and :mod:`.workers`. Everything here runs on one event-loop thread
(the scheduler's own, or the loop of the LocalCluster that embeds it). The only user
payloads the scheduler unpickles are the functions of ``run_on_scheduler`` and
scheduler plugins, which a token holder asks for explicitly.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from functools import partial
from typing import Any, Callable

from ..comm.addressing import address_scheme, outward_host, parse_address
from ..comm.auth import resolve_token
from ..comm.endpoints import Listener
from ..comm.eventloop import EventLoop
from ..comm import inproc
from ..comm.protocol import Msg
from ..comm.session import Sessions
from ..config import Config, make_config, tune_gc
from ..errors import ClusterClosedError, MpnetError
from ..lifecycle import SERVER_MOVES, Lifecycle, Status
from ..plugins import call_hook, plugin_name
from ..preload import load_preloads
from ..scheduler_file import remove_scheduler_file, write_scheduler_file
from ..versions import get_versions
from . import operations
from .clients import client_role, register_client
from .monitoring import Monitoring
from .state import SchedulerState, WorkerState
from .workers import register_nanny, register_worker

__all__ = ["Scheduler"]

log = logging.getLogger("mpnet.scheduler")


class Scheduler:
    """The scheduler: ``Scheduler(port=8786).start()`` returns once it is serving.

    ``host=None`` listens on every interface (as ``mpnet-scheduler`` does); LocalCluster
    passes ``127.0.0.1``. ``token=None`` finds one (``MPNET_TOKEN``, then the per-user
    token file, created if missing); ``auth=False`` (or ``token=False``) accepts anyone
    and says so.
    ``scheduler_file`` is written once serving and removed at close. ``preload`` names
    modules or ``.py`` files whose ``mpnet_setup(scheduler)`` runs at start
    (``preload_argv`` feeds their click options). ``idle_timeout`` (seconds) closes a
    scheduler that has had no client and no task for that long.
    """

    def __init__(self, host: str | None = None, port: int = 8786, *, token: str | None = None,
                 auth: bool = True, loop: EventLoop | None = None,
                 scheduler_file: str | None = None, preload: Any = None,
                 preload_argv: Any = (), plugins: Any = (), idle_timeout: float | None = None,
                 dashboard_address: str | None = None,
                 config: Config | None = None, **config_overrides: Any):
        self.config = make_config(config, **config_overrides)
        self.host, self.port = host, port
        self.scheduler_file = scheduler_file
        self.preloads = load_preloads(preload, preload_argv)
        self.plugins: dict[str, Any] = {}
        self.worker_plugins: dict[str, Any] = {}    # name → payload, for joining workers
        self.nanny_plugins: dict[str, Any] = {}
        self.idle_timeout = idle_timeout
        self.dashboard_address = dashboard_address
        self.dashboard_link: str | None = None      # set once the dashboard serves
        self._idle_since = time.monotonic()
        auth = auth and token is not False
        self.token = resolve_token(token, create=True) if auth else None
        if not auth:
            log.warning("scheduler started with --no-auth: anyone who can reach its port "
                        "can run code on this cluster")
        self.id = f"scheduler-{uuid.uuid4().hex[:12]}"
        self.state = SchedulerState(self.config)
        self._own_loop = loop is None
        self.loop = loop or EventLoop("mpnet-scheduler-loop")
        self.listener: Listener | None = None
        self.address = ""
        self._life = Lifecycle("scheduler", SERVER_MOVES)
        self._lock = threading.Lock()          # start and close, one at a time
        self._idle_closer: threading.Thread | None = None
        # (ready, then, deadline timer): checked after every event (see when())
        self._conditions: list[list] = []
        self.nannies: dict[str, Any] = {}      # nanny address → its NannySession
        self._inproc: set = set()        # server ends of in-process clients' links
        self.restarts: dict[str, int] = {}           # nanny address → worker restarts
        # Workers lost without a goodbye whose nanny has not reported the exit yet (its
        # report may come after lost_worker_grace on a loaded machine): still a crash.
        self.lost_unreported: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.monitoring = Monitoring(self)     # status, task stream, logs, dashboard
        # Each peer's link is bound to a session of its role when it registers; until
        # then only the registrations are served on it (see mpnet.comm.session).
        self.client_role = client_role(self.monitoring.handlers)
        self.sessions = Sessions("scheduler", {
            Msg.REGISTER_CLIENT: partial(register_client, self),
            Msg.REGISTER_WORKER: partial(register_worker, self),
            Msg.REGISTER_NANNY: partial(register_nanny, self),
        })
        for plugin in plugins:
            self.add_plugin(plugin)

    # --- lifecycle -----------------------------------------------------------------
    def start(self, address: str | None = None) -> "Scheduler":
        """Listen (on ``address`` such as ``'tcp://:8786'`` if given) and return."""
        with self._lock:
            if not self._life.move(Status.STARTING, only_from=(Status.CREATED,)):
                if self._life.is_in(Status.RUNNING):
                    return self
                raise ClusterClosedError(f"this Scheduler is {self.status}; create a new one")
        scheme = None
        if address is not None:
            self.host, self.port = parse_address(address, default_port=self.port)
            scheme = address_scheme(address) or None
        tune_gc(self.config)
        self.loop.start()
        host = "" if self.host is None else self.host
        try:
            self.listener = Listener(self.loop, host, self.port, config=self.config,
                                     token=self.token, role="scheduler",
                                     info={"id": self.id}, handler=self._dispatch,
                                     on_close=self._on_close, scheme=scheme)
        except (OSError, MpnetError):
            self._life.move(Status.FAILED)
            self.close()       # frees the loop; wait_closed() returns
            raise
        shown = host if host not in ("", "0.0.0.0") else outward_host()
        self.address = self.listener.address_at(shown)
        if not self._life.move(Status.RUNNING, only_from=(Status.STARTING,)):
            raise ClusterClosedError("the Scheduler was closed while it started")
        self.started = time.time()     # scheduler_info()["started"], as in dask
        log.info("Scheduler at: %s", self.address)
        try:
            self.monitoring.start()         # before the scheduler file: it names the dashboard
            for preload in self.preloads:
                preload.setup(self)
            self.loop.run_sync(self._start_plugins)
            if self.scheduler_file:
                write_scheduler_file(self.scheduler_file, self.identity())
        except BaseException:
            self.close()
            raise
        if self.idle_timeout:
            self.loop.call_soon_threadsafe(self._check_idle)
        self.loop.call_soon_threadsafe(self._check_heartbeats)
        return self

    def _check_heartbeats(self) -> None:
        if self.status != "running":
            return
        operations.check_heartbeats(self)
        self.loop.call_later(min(1.0, self.config.worker_ttl / 4), self._check_heartbeats)

    @property
    def workers(self) -> dict:
        """``{address: WorkerState}`` of the workers now registered (as in dask)."""
        return self.state.workers

    def identity(self) -> dict:
        """What the scheduler file holds."""
        return {"type": "Scheduler", "id": self.id, "address": self.address,
                "dashboard": self.dashboard_link, "pid": os.getpid(),
                "host": socket.gethostname(), "started": time.time(), "token": self.token}

    def _start_plugins(self) -> None:
        call_hook(self.plugins, "start", self)

    def add_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Install a :class:`~mpnet.SchedulerPlugin` (from any thread)."""
        name = name or plugin_name(plugin)

        def add() -> None:
            self.plugins[name] = plugin
            if hasattr(plugin, "transition"):
                self.state.on_transition = self._transition_hook
            if self.status == "running":
                call_hook({name: plugin}, "start", self)
        self.loop.run_sync(add) if self.loop.running else add()

    def _transition_hook(self, key: str, start: str, finish: str) -> None:
        call_hook(self.plugins, "transition", key, start, finish)

    def _check_idle(self) -> None:
        if self.status != "running":
            return
        if self.state.clients or self.state.tasks:
            self._idle_since = time.monotonic()
        elif time.monotonic() - self._idle_since > self.idle_timeout:
            log.info("scheduler idle for %ss: closing", self.idle_timeout)
            # Not on the loop: close() waits for the loop. Joined by wait_closed().
            self._idle_closer = threading.Thread(target=self.close,
                                                 name="mpnet-scheduler-idle-close")
            self._idle_closer.start()
            return
        self.loop.call_later(min(1.0, self.idle_timeout / 4), self._check_idle)

    def __enter__(self) -> "Scheduler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def status(self) -> Status:
        return self._life.state

    def close(self, timeout: float | None = None) -> None:
        """Tell workers and nannies to stop, drop every connection, stop the loop.
        A second caller waits (``timeout`` seconds, 5 by default) for the first."""
        with self._lock:
            started = self._life.is_in(Status.RUNNING)
            mine = self._life.move(Status.CLOSING, only_from=(
                Status.CREATED, Status.RUNNING, Status.FAILED))
        if not mine:
            self._life.wait_for(Status.CLOSED, timeout=timeout or 5)
            return
        self.monitoring.close()    # off the loop: the HTTP thread may be waiting on it
        if started:
            for preload in self.preloads:
                preload.teardown(self)
            try:
                self.loop.run_sync(self._close_on_loop, timeout=timeout or 5)
            except Exception as e:   # the loop is stuck or gone: still free what we own
                log.warning("scheduler close on its loop failed: %s", e)
            if self.scheduler_file:
                remove_scheduler_file(self.scheduler_file, self.id)
        if self._own_loop:
            self.loop.close()
        self._conditions.clear()
        self._life.move(Status.CLOSED)

    def _close_on_loop(self) -> None:
        call_hook(self.plugins, "close")
        for ws in self.state.workers.values():
            if ws.link is not None:
                ws.link.send([Msg.CLOSE_WORKER, "the scheduler is shutting down", ""])
        for conn in self.nannies.values():
            conn.send([Msg.CLOSE_WORKER, "the scheduler is shutting down", ""])
        for conn in [*self.listener.connections, *self._inproc]:
            conn.on_close = None
            conn.flush()
        self.listener.close()
        for link in list(self._inproc):
            link.close()
        self._inproc.clear()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the scheduler is closed; False if ``timeout`` seconds passed."""
        if not self._life.wait_for(Status.CLOSED, timeout=timeout):
            return False
        closer = self._idle_closer
        if closer is not None and closer is not threading.current_thread():
            closer.join(timeout)      # it ends right after the move to closed
        return True

    def connect_inproc(self, client_id: str, handler: Callable, on_close: Callable) -> Any:
        """Loop thread: the client end of a link for a client in this process
        (``Client(cluster)``), without socket or handshake (see :mod:`mpnet.comm.inproc`:
        only code holding this object can make one). Its messages go through the same
        dispatcher as a connection's."""
        if not self._life.is_in(Status.RUNNING):
            raise ClusterClosedError(f"the scheduler at {self.address} is "
                                     f"{self._life.state.value}")

        def closed(link: Any, exc: BaseException | None) -> None:
            self._inproc.discard(link)
            self._on_close(link, exc)
        server, client = inproc.pair(
            self.loop,
            server=dict(peer=f"inproc:{client_id}", peer_role="client",
                        peer_info={"id": client_id}, handler=self._dispatch, on_close=closed),
            client=dict(peer=self.address, peer_role="scheduler", peer_info={"id": self.id},
                        handler=handler, on_close=on_close))
        self._inproc.add(server)
        return client

    # --- dispatch ------------------------------------------------------------------
    # Every link (a TCP Connection or an in-process link) calls these two on the loop.
    def _dispatch(self, link: Any, msg: list) -> None:
        """One message from ``link``, served by its session's role (ProtocolError if it
        is not that role's: the link closes), then whatever it caused is sent."""
        self.sessions.dispatch(link, msg)
        self.flush()

    def _on_close(self, link: Any, exc: BaseException | None) -> None:
        self.sessions.closed(link, exc)
        self.flush()

    def when(self, ready: Callable[[], bool], then: Callable[[bool], None],
             timeout: float) -> None:
        """Call ``then(True)`` (loop thread) once ``ready()`` holds after an event (a
        message or a closed link), or ``then(False)`` after ``timeout`` seconds: waits
        for the cluster to change without polling it."""
        if ready():
            then(True)
            return
        entry: list = [ready, then, None]

        def expired() -> None:
            if entry in self._conditions:
                self._conditions.remove(entry)
                then(False)
                self.flush()
        entry[2] = self.loop.call_later(timeout, expired)
        self._conditions.append(entry)

    def _check_conditions(self) -> None:
        for entry in list(self._conditions):
            ready, then, timer = entry
            if entry in self._conditions and ready():
                self._conditions.remove(entry)
                timer.cancel()
                then(True)

    def flush(self) -> None:
        """Send what the state machine queued, after any event (loop thread); then run
        the waits (:meth:`when`) that this change may have satisfied."""
        for dest, msg in self.state.take_outbox():
            if dest.link is not None:
                dest.link.send(msg)
        if self._conditions:
            self._check_conditions()
            for dest, msg in self.state.take_outbox():
                if dest.link is not None:
                    dest.link.send(msg)

    def lose_worker(self, ws: WorkerState, reason: str) -> None:
        """``ws`` is gone without a goodbye (its link broke, or it went silent)."""
        if self.state.workers.get(ws.address) is ws:
            log.warning("lost worker %s: %s", ws.address, reason)
            if ws.nanny:
                self.lost_unreported[ws.address] = None
                while len(self.lost_unreported) > 1000:
                    self.lost_unreported.popitem(last=False)
            self.monitoring.worker_removed(ws.address, reason, ws.name)
            self.state.remove_worker(ws.address, reason)
            call_hook(self.plugins, "remove_worker", self, ws.address)
            self.flush()

    def when_all(self, futures: list[Future], then: Callable[[list], None]) -> None:
        """Call ``then([(ok, value), ...])`` on the loop once every future is done."""
        remaining = [len(futures)]
        results: list = [None] * len(futures)
        if not futures:
            then(results)
            return

        def done(i: int, fut: Future) -> None:
            exc = fut.exception()
            results[i] = (False, str(exc)) if exc else (True, fut.result())
            remaining[0] -= 1
            if remaining[0] == 0:
                then(results)
                self.flush()
        for i, fut in enumerate(futures):
            fut.add_done_callback(lambda f, i=i: done(i, f))

    def info(self) -> dict:
        """What ``client.scheduler_info()`` returns (loop thread)."""
        st = self.state
        workers = st.worker_info()
        for w in workers.values():
            w["restarts"] = self.restarts.get(w["nanny"], 0)
        return {"type": "Scheduler", "id": self.id, "address": self.address,
                "pid": os.getpid(), "started": getattr(self, "started", None),
                "workers": workers, "tasks": len(st.tasks),
                "ready": len(st.ready), "clients": len(st.clients), "counts": dict(st.counts),
                "versions": get_versions()}

    def __repr__(self) -> str:
        return f"<Scheduler {self.address or '(not started)'} {self.status}>"
