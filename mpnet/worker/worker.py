"""A worker: the server around its parts, and its lifecycle.

::

    scheduler ──COMPUTE──► loop thread ──► TaskRunner ──(inputs here?)──► executor threads
                              │              │ no: Transfer fetches them (GET_DATA)   │
    peers, clients ◄─GET_DATA─┤ Transfer     │                                         │
    scheduler ◄─TASK_FINISHED (result inline when small) ◄── the executor thread ─────┘
    callers ◄──ACTOR_RESULT── ActorHost (one mailbox and thread(s) per actor)

The loop thread owns every socket; executor and actor threads unpickle, run, pickle and
write their answers (``Connection.send_direct``). This module wires TaskRunner, Transfer
and ActorHost to the sockets (start, stop, route each message to its part) and keeps the
scheduler link; the parts reach the worker only through what they are given.

Threads (docs/design.md, "Threads"): the loop (unless it shares one), the executor's,
each actor's, one per RUN request (runs.py); :meth:`Worker.close` joins them all.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import Future
from typing import Any

import psutil

from ..comm import shm
from ..comm.addressing import address_scheme, advertised_host, parse_address
from ..comm.auth import resolve_server_token
from ..comm.connection import Connection
from ..comm.endpoints import Listener, listen_on_any
from ..comm.eventloop import EventLoop
from ..comm.link import Link
from ..comm.pool import Pool
from ..comm.protocol import Msg
from ..comm.serialize import Payload, loads
from ..comm.session import Role
from ..config import Config, make_config
from ..diagnostics import logring
from ..errors import ClusterClosedError
from ..lifecycle import Lifecycle, Status, server_moves
from ..plugins import call_hook, plugin_name
from ..preload import load_preloads
from ..versions import get_versions
from .actors import ActorHost
from .clients import TaskClients
from .executor import Executor
from .peers import PeerPort
from .running import RunningSlots
from .runs import RunRequests
from .store import DataStore
from .tasks import TaskRunner
from .transfer import Transfer

__all__ = ["Worker", "WORKER_MOVES"]

log = logging.getLogger("mpnet.worker")

S = Status

#: A worker starts once; it may lose its scheduler and find it again; it closes from
#: any state (FAILED: start() raised, and close() frees what it made).
WORKER_MOVES = server_moves({S.RUNNING: {S.RECONNECTING},
                             S.RECONNECTING: {S.RUNNING, S.CLOSING}})


class Worker:
    """``Worker('tcp://host:8786', nthreads=2).start()`` returns once registered.

    ``host=None`` listens on loopback when the scheduler is on loopback, otherwise on
    every interface; ``port`` may be a list of ports to try (a range). The worker tells
    others to reach it at ``contact_address`` (default: the address it listens on).
    ``nanny`` is the id of the supervising nanny, if any. ``preload`` modules run their
    ``mpnet_setup(worker)`` after it listens and before it registers.

    Supervision: above ``memory_pause_fraction`` of ``memory_limit`` (bytes, 0 = none)
    it starts no new task until memory falls back. If the scheduler goes away it tries
    to reach it again for ``death_timeout`` seconds and registers anew, keeping none of
    its old data; then it gives up and stops. After ``lifetime`` seconds (plus up to
    ``lifetime_stagger``) it retires: its results move to other workers, then it leaves
    (and its nanny starts a fresh one if ``lifetime_restart``).
    """

    def __init__(self, scheduler_address: str, *, nthreads: int = 1, name: str | None = None,
                 host: str | None = None, port: int | list[int] = 0,
                 contact_address: str | None = None, token: str | None = None,
                 nanny: str | None = None, resources: dict | None = None,
                 memory_limit: int = 0, local_directory: str | None = None,
                 preload: Any = None, preload_argv: Any = (), plugins: Any = (),
                 lifetime: float | None = None, lifetime_stagger: float = 0.0,
                 lifetime_restart: bool = False, loop: EventLoop | None = None,
                 running: Any = None,
                 config: Config | None = None, **config_overrides: Any):
        self.config = make_config(config, **config_overrides)
        self.scheduler_address = scheduler_address
        self.lifetime = lifetime
        self.lifetime_stagger = lifetime_stagger
        self.lifetime_restart = lifetime_restart
        #: called as on_leave(reason) just before a planned exit ("retired",
        #: "lifetime-restart", "scheduler-gone"); the nanny's process sets it
        self.on_leave: Any = None
        self.paused = False
        sched_host, _ = parse_address(scheduler_address)
        if host is None:
            host = "127.0.0.1" if sched_host in ("127.0.0.1", "localhost", "") else ""
        self.host, self.port = host, port
        self.contact_address = contact_address
        self.local_directory = local_directory
        self.preloads = load_preloads(preload, preload_argv)
        self.plugins: dict[str, Any] = {}
        for plugin in plugins:
            self.plugins[plugin_name(plugin)] = plugin
        self.nthreads = max(1, int(nthreads))
        self.name = name
        self.token = resolve_server_token(token, "worker")
        self.nanny = nanny
        self.resources = dict(resources or {})
        self.memory_limit = memory_limit
        self._own_loop = loop is None
        self.loop = loop or EventLoop("mpnet-worker-loop")
        self.store = DataStore(self.config.oob_threshold, shm.local_threshold(self.config))
        self.executor = Executor(self.nthreads, running=RunningSlots(running, self.nthreads)
                                 if running is not None else None)
        self.address = ""
        self.listener: Listener | None = None
        self.scheduler: Link | None = None
        self._stopped = threading.Event()       # the loop side has shut down
        self._closed = threading.Event()        # everything is joined and freed
        self.runner = TaskRunner(self, self.loop, self.config, self.store, self.executor,
                                 self._send_scheduler, self.plugins, self._stopped)
        self.transfer = Transfer(self, self.runner, loop=self.loop, config=self.config,
                                 token=self.token)
        self.actor_host = ActorHost(self, self.loop, self._send_scheduler,
                                    lambda: self.address)
        # The same tables as the parts' (the reconnect path clears them all).
        self.tasks = self.runner.tasks
        self._owned, self._borrowed = self.runner.owned, self.runner.borrowed
        self._fetching = self.transfer._fetching
        self.runs = RunRequests(self, self.loop)
        self._heartbeat_timer = None
        self._retiring_for_lifetime = False
        self._stop_reason = ""
        self._life = Lifecycle("worker", WORKER_MOVES)
        self._lock = threading.Lock()          # guards the flags below, never held long
        self._torn_down = False                 # preloads and plugins torn down
        self._joining = False                   # one close() joins the threads
        self._process = psutil.Process()
        # What the scheduler may order, on its link alone. Every handler is a method that
        # names the message's fields: the Role checks each message's field count and
        # fields before it runs (a malformed one closes the link: ProtocolError).
        self.orders = Role("worker", {
            Msg.COMPUTE: self._compute,
            Msg.TRY_CANCEL: self.runner.try_cancel,
            Msg.HOST_ACTOR: self._host_actor,
            Msg.DROP_ACTOR: self._drop_actor,
            Msg.CLOSE_WORKER: self._close_requested,
            Msg.PLUGIN: self._plugin,
            Msg.PLUGIN_INSTALL: self._plugin_install,
            Msg.LOGS: self._logs,
            **self.transfer.handlers(),         # FREE, STORE, ACQUIRE
            **self.runs.handlers(),             # RUN
        })
        # Peers (other workers, clients, actor callers) reach us through the listener, each
        # bound by its handshake role to a session that serves only what it may ask; our
        # own dials to peers serve nothing. Orders come on self.scheduler alone.
        self.peers = PeerPort(self.transfer._get_data, self.actor_host.call,
                              self.transfer.put_data)
        self.clients = TaskClients(scheduler_address, self.token, self.loop, self.config,
                                   request=lambda *msg: self.scheduler.request(*msg),
                                   address=lambda: self.address)

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> "Worker":
        if not self._life.move(S.STARTING, only_from=(S.CREATED,)):
            raise ClusterClosedError(f"this Worker is {self.status}; create a new one")
        logring.install()      # its recent lines answer `mpnet logs`
        self.loop.start()
        self.executor.start()   # the scheduler may send work as soon as we register
        try:
            self.listener = listen_on_any(self.port, lambda port: Listener(
                self.loop, self.host, port, config=self.config, token=self.token,
                role="worker", info={}, handler=self._dispatch_peer,
                on_open=self.peers.opened, on_close=self.peers.closed,
                scheme=address_scheme(self.scheduler_address) or None))
            shown = advertised_host(self.host, self.scheduler_address)
            self.address = self.contact_address or self.listener.address_at(shown)
            self.name = self.name or self.address
            log.info("Start worker at: %s", self.address)
            if self.local_directory:
                os.makedirs(self.local_directory, exist_ok=True)
            for preload in self.preloads:
                preload.setup(self)
            for plugin in self.plugins.values():
                self._setup_plugin(plugin)
            self.transfer.open(Pool(self.loop, config=self.config, token=self.token,
                                    role="worker",
                                    info={"address": self.address, **shm.advertise(self.config)},
                                    handler=self.peers.dispatch))
            self.scheduler = Link(
                self.loop, self.scheduler_address, config=self.config, token=self.token,
                role="worker", info={"address": self.address}, handler=self._dispatch,
                register=self._register, name=f"worker {self.address}",
                on_lost=self._scheduler_lost, on_restored=self._scheduler_back,
                on_gave_up=self._scheduler_gone)
            self.scheduler.open()
        except BaseException:
            self._life.move(S.FAILED, only_from=(S.STARTING,))
            self.close()        # frees what start() made; wait_closed() returns
            raise
        if not self._life.move(S.RUNNING, only_from=(S.STARTING,)):
            return self          # closed while starting: close() frees the rest
        self.loop.call_soon_threadsafe(self._heartbeat)
        if self.memory_limit:
            self.loop.call_soon_threadsafe(self._watch_memory)
        if self.lifetime:
            lifetime = self.lifetime + random.uniform(0, self.lifetime_stagger or 0)
            self.loop.call_later(lifetime, self._lifetime_over)
        log.info("Registered to: %s", self.scheduler_address)
        return self

    def _register(self, conn: Connection) -> Future:
        return conn.request(Msg.REGISTER_WORKER, {
            "address": self.address, "nthreads": self.nthreads, "name": self.name,
            "pid": os.getpid(), "nanny": self.nanny, "resources": self.resources,
            "memory_limit": self.memory_limit, "versions": get_versions()})

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def status(self) -> Status:
        return self._life.state

    # The link's callbacks below read and set the status as a plain word; a set goes
    # through the table, and loses quietly to a close() that came first.
    @property
    def _status(self) -> Status:
        return self._life.state

    @_status.setter
    def _status(self, value: str) -> None:
        self._life.move(Status(value), only_from=(S.STARTING, S.RUNNING, S.RECONNECTING))

    def close(self, timeout: float | None = None, *, wait_for_tasks: bool = True) -> None:
        """Leave the scheduler, stop the executor, free sockets and threads. Idempotent;
        bounded by ``timeout`` seconds (``config.close_timeout`` by default).

        ``wait_for_tasks=False`` does not wait for tasks still running in user code
        (their results are dropped anyway): a worker process about to exit uses it.
        """
        timeout = self.config.close_timeout if timeout is None else timeout
        if self._life.move(S.CLOSED, only_from=(S.CREATED,)):
            self._stopped.set()
            self._closed.set()
            return
        self._life.move(S.CLOSING, only_from=(S.STARTING, S.RUNNING, S.RECONNECTING,
                                              S.FAILED))
        with self._lock:
            first, self._torn_down = not self._torn_down, True
        if first:
            for preload in self.preloads:
                preload.teardown(self)
            call_hook(self.plugins, "teardown", self)
            self.clients.close_client()
        if not self._stopped.is_set():
            try:
                self.loop.run_sync(self._shutdown_on_loop, timeout=timeout)
            except Exception as e:
                log.warning("worker %s: shutdown on its loop failed: %s", self.address, e)
        if self.loop.in_loop_thread():
            return                       # a later close() from another thread joins
        with self._lock:
            joiner, self._joining = not self._joining, True
        if not joiner:                   # another thread joins: wait for it, bounded
            self._closed.wait(timeout)
            return
        self._join(timeout, wait_for_tasks)
        self._life.move(S.CLOSED)
        self._closed.set()

    def _join(self, timeout: float, wait_for_tasks: bool) -> None:
        deadline = time.monotonic() + timeout
        stuck = self.executor.close(timeout=max(0.1, deadline - time.monotonic())
                                    if wait_for_tasks else 0.05)
        self.actor_host.close(max(0.05, deadline - time.monotonic()) if wait_for_tasks
                              else 0.05)
        if stuck:
            log.warning("worker %s: tasks still running in %s at close", self.address, stuck)
        self.runs.join(deadline)
        if self._own_loop:
            self.loop.close(max(0.1, deadline - time.monotonic()))

    def _shutdown_on_loop(self) -> None:
        """Close every socket (loop thread). Safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        self.transfer.close()
        self.clients.close_on_loop()
        if self.scheduler is not None:
            self.scheduler.close(farewell=[Msg.GOODBYE, self._stop_reason or "closed"])
        if self.listener is not None:
            self.listener.close()
        self.tasks.clear()
        self.store.clear()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the worker has stopped serving (closed, or its scheduler left)."""
        return self._stopped.wait(timeout)

    def stop_serving(self, reason: str) -> None:
        """Loop thread: stop taking work and close every socket (``close()`` then joins)."""
        self._life.move(S.CLOSING, only_from=(S.RUNNING, S.STARTING, S.RECONNECTING))
        log.info("worker %s stopping: %s", self.address, reason)
        self._stop_reason = reason
        self._shutdown_on_loop()

    def _leave(self, reason: str) -> None:
        if self.on_leave is not None:
            self.on_leave(reason)

    # The link (mpnet.comm.link) reconnects and registers again; these say what the
    # worker does meanwhile (loop thread).
    def _scheduler_lost(self, exc: BaseException | None) -> None:
        if self._status != "running":
            return
        log.warning("worker %s lost its scheduler %s (%s); trying to reach it again for "
                    "%.0fs", self.address, self.scheduler_address, exc or "closed",
                    self.config.death_timeout)
        self._status = "reconnecting"
        # Whatever it held belongs to a scheduler that is gone: keep nothing.
        self.tasks.clear()
        self.store.clear()
        self._owned.clear()
        self._borrowed.clear()
        self._fetching.clear()

    def _scheduler_back(self, answer: object) -> None:
        if self._status != "reconnecting":
            return
        self._status = "running"
        log.info("worker %s registered again to %s", self.address, self.scheduler_address)
        self._heartbeat()

    def _scheduler_gone(self, error: BaseException) -> None:
        if self._status in ("closing", "closed"):
            return
        log.error("worker %s: could not reach its scheduler again (%s); stopping",
                  self.address, error)
        self._leave("scheduler-gone")
        self.stop_serving("the scheduler is gone")

    def _close_requested(self, conn: Connection, reason: str, leave: str = "") -> None:
        if leave == "retired":
            self._leave("lifetime-restart" if self._retiring_for_lifetime and
                        self.lifetime_restart else "retired")
        self.stop_serving(reason)

    def _lifetime_over(self) -> None:
        if self._status != "running":
            return
        log.info("worker %s reached its lifetime; retiring", self.address)
        self._retiring_for_lifetime = True
        self.scheduler.request(Msg.RETIRE_WORKERS, [self.address])

    # --- memory --------------------------------------------------------------------
    def _watch_memory(self) -> None:
        if self._status not in ("running", "reconnecting"):
            return
        try:
            rss = self._process.memory_info().rss
        except psutil.Error:
            rss = 0
        paused = rss > self.memory_limit * self.config.memory_pause_fraction
        if paused != self.paused:
            self.paused = paused
            log.warning("worker %s %s: it uses %.0f MiB of its %.0f MiB limit", self.address,
                        "pauses (no new tasks)" if paused else "resumes", rss / 2**20,
                        self.memory_limit / 2**20)
            self.executor.set_paused(paused)
            if self.scheduler is not None:
                self.scheduler.send([Msg.HEARTBEAT, self.metrics()])
        self.loop.call_later(self.config.memory_interval, self._watch_memory)

    # --- dispatch ------------------------------------------------------------------
    def _dispatch(self, conn: Connection, msg: list) -> None:
        self.runner.drain()       # tasks that ended first (tasks.py: ordering)
        self.orders.dispatch(conn, msg)

    def _dispatch_peer(self, conn: Connection, msg: list) -> None:
        self.runner.drain()
        self.peers.dispatch(conn, msg)

    def _send_scheduler(self, msg: list) -> None:
        if self.scheduler is not None:
            self.scheduler.send(msg)

    def _logs(self, conn: Connection, req_id: int, n: int) -> None:
        conn.reply(req_id, True, logring.lines(n))

    # --- computing -----------------------------------------------------------------
    def _compute(self, conn: Connection, key: str, fn: Payload, args: Payload,
                 who_has: list, priority: list) -> None:
        task = self.runner.accept(key, fn, args, who_has, priority)
        if task is None:
            return
        self.transfer.fetch_inputs(task, who_has)
        if not task.missing and key in self.tasks:
            self.runner.run(task)

    # --- actors ---------------------------------------------------------------------
    def _host_actor(self, conn: Connection, key: str, name: str | None, cls: Payload,
                    args: Payload, options: dict, restarted: int, checkpoint: Any) -> None:
        self.actor_host.host(key, name, cls, args, options, restarted, checkpoint)

    def _drop_actor(self, conn: Connection, key: str, reason: str) -> None:
        self.actor_host.drop(key, reason)

    # --- clients and actor handles in tasks ------------------------------------------
    @property
    def actor_calls(self) -> dict[str, int]:
        """Actor key → calls received here (sent with each heartbeat)."""
        return self.actor_host.calls

    def actor_caller(self) -> Any:
        """The caller that tasks and actors here use for actor handles (made on use)."""
        return self.clients.actor_caller()

    def get_client(self) -> Any:
        """A Client on this worker's cluster, for tasks that submit work or make actors
        (made on first use, on this worker's loop)."""
        return self.clients.client()

    # --- plugins -------------------------------------------------------------------
    def _setup_plugin(self, plugin: Any) -> None:
        setup = getattr(plugin, "setup", None)
        if setup is not None:
            setup(self)

    def add_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Install a :class:`~mpnet.WorkerPlugin` here (runs its ``setup(worker)``)."""
        self.plugins[name or plugin_name(plugin)] = plugin
        self._setup_plugin(plugin)

    def _plugin(self, conn: Connection, name: str, payload: Payload) -> str:
        try:
            self.add_plugin(loads(payload, what=f"worker plugin {name}"), name)
        except Exception as e:   # reported to whoever registered it, the worker goes on
            log.exception("worker %s: plugin %r failed to install", self.address, name)
            return f"{self.address}: plugin {name!r} failed: {type(e).__name__}: {e}"
        return ""

    def _plugin_install(self, conn: Connection, req_id: int, name: str,
                        payload: Payload) -> None:
        conn.reply(req_id, True, self._plugin(conn, name, payload))

    # --- heartbeat -----------------------------------------------------------------
    def _heartbeat(self) -> None:
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        if self._status != "running" or self.scheduler is None:
            return
        self.scheduler.send([Msg.HEARTBEAT, self.metrics()])
        self._heartbeat_timer = self.loop.call_later(self.config.heartbeat_interval,
                                                     self._heartbeat)

    def metrics(self) -> dict:
        try:
            rss = self._process.memory_info().rss
            cpu = self._process.cpu_percent()
        except psutil.Error:
            rss, cpu = 0, 0.0
        metrics = {"memory": rss, "cpu": cpu, "paused": self.paused,
                   "executing": self.executor.executing,
                   "ready": len(self.tasks), "stored": len(self.store),
                   "nbytes": self.store.nbytes, "time": time.time()}
        if self.actor_host.actors:     # for `mpnet top`
            metrics["actors"] = self.actor_host.statistics()
        return metrics

    def __repr__(self) -> str:
        return f"<Worker {self.address or '(not started)'} {self.status}>"
