"""A worker: runs tasks on ``nthreads`` threads, keeps results, serves them to peers.

::

    scheduler ──COMPUTE──► loop thread ──(inputs here?)──► executor threads ── run ──┐
                              │  no: GET_DATA to the peer that holds them            │
    peers, clients ◄─GET_DATA─┤                                                      │
    scheduler ◄─TASK_FINISHED (result inline when small) ◄── call_soon_threadsafe ───┘

The loop thread owns every socket; executor threads only unpickle, run and pickle.
"""

from __future__ import annotations

import inspect
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
from ..comm.auth import resolve_server_token, token_arg
from ..comm.connection import Connection
from ..comm.endpoints import Listener, listen_on_any
from ..comm.eventloop import EventLoop
from ..comm.link import Link
from ..comm.pool import Pool
from ..comm.dispatch import Dispatcher
from ..comm.protocol import Msg
from ..comm.serialize import Payload, dumps, dumps_exception, loads, loads_task_args
from ..config import Config, make_config
from ..diagnostics import logring
from ..errors import ClusterClosedError, FrameTooLargeError
from ..plugins import call_hook, plugin_name
from ..preload import load_preloads
from ..versions import get_versions
from . import context
from .actors import ActorHost
from .executor import Executor
from .running import RunningSlots
from .store import DataStore
from .transfer import Transfer

__all__ = ["Worker"]

log = logging.getLogger("mpnet.worker")

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


class Worker(Transfer):
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
        self.tasks: dict[str, _Task] = {}
        self.executor = Executor(self.nthreads, running=RunningSlots(running, self.nthreads)
                                 if running is not None else None)
        self.address = ""
        self.listener: Listener | None = None
        self.scheduler: Link | None = None
        self._owned: set[str] = set()          # keys the scheduler placed here
        self._borrowed: dict[str, int] = {}     # fetched inputs → tasks still using them
        self._fetching: dict[str, list[str]] = {}
        self._peers: Pool | None = None         # made in start(), once we have an address
        self._functions: dict[bytes, Any] = {}
        self._run_threads: set[threading.Thread] = set()
        self._heartbeat_timer = None
        self._retiring_for_lifetime = False
        self._stop_reason = ""
        self._status = "created"
        self._lock = threading.Lock()
        self._stopped = threading.Event()       # the loop side has shut down
        self._closed = threading.Event()        # everything is joined and freed
        self._process = psutil.Process()
        self._handlers = Dispatcher("worker", {
            Msg.COMPUTE: self._compute,
            Msg.FREE: self._free,
            Msg.STORE: self._store,
            Msg.RUN: self._run,
            Msg.CLOSE_WORKER: self._close_requested,
            Msg.GET_DATA: self._get_data,
            Msg.PLUGIN: self._plugin,
            Msg.PLUGIN_INSTALL: self._plugin_install,
            Msg.ACQUIRE: self._acquire,
            Msg.TRY_CANCEL: self._try_cancel,
            Msg.HOST_ACTOR: lambda conn, *a: self.actor_host.host(*a),
            Msg.DROP_ACTOR: lambda conn, key, reason: self.actor_host.drop(key, reason),
            Msg.ACTOR_CALL: self.actor_host_call,
            Msg.LOGS: lambda conn, req_id, n: conn.reply(req_id, True, logring.lines(n)),
        })
        # Peers (other workers, clients, actor callers) reach us through the listener, and
        # answer on our own fetch connections: there only what a peer may ask is served.
        # Orders (COMPUTE, FREE, CLOSE_WORKER, PLUGIN...) come on self.scheduler alone.
        self._peer_handlers = Dispatcher("worker (from a peer)", {
            Msg.GET_DATA: self._get_data,
            Msg.ACTOR_CALL: self.actor_host_call,
        })
        self.actor_host = ActorHost(self)
        self._actor_caller: Any = None
        self.actor_calls: dict[str, int] = {}     # actor key → calls received (heartbeat)
        self._client: Any = None

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> "Worker":
        with self._lock:
            if self._status != "created":
                raise ClusterClosedError(f"this Worker is {self._status}; create a new one")
            self._status = "starting"
        logring.install()      # its recent lines answer `mpnet logs`
        self.loop.start()
        self.executor.start()   # the scheduler may send work as soon as we register
        try:
            self.listener = listen_on_any(self.port, lambda port: Listener(
                self.loop, self.host, port, config=self.config, token=self.token,
                role="worker", info={}, handler=self._dispatch_peer,
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
            self._peers = Pool(self.loop, config=self.config, token=self.token,
                               role="worker",
                               info={"address": self.address, **shm.advertise(self.config)},
                               handler=self._dispatch_peer)
            self.scheduler = Link(
                self.loop, self.scheduler_address, config=self.config, token=self.token,
                role="worker", info={"address": self.address}, handler=self._dispatch,
                register=self._register, name=f"worker {self.address}",
                on_lost=self._scheduler_lost, on_restored=self._scheduler_back,
                on_gave_up=self._scheduler_gone)
            self.scheduler.open()
        except BaseException:
            self._status = "running"   # so close() frees what start() made
            self.close()
            raise
        self._status = "running"
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
    def status(self) -> str:
        return self._status

    def close(self, timeout: float | None = None, *, wait_for_tasks: bool = True) -> None:
        """Leave the scheduler, stop the executor, free sockets and threads. Idempotent;
        bounded by ``timeout`` seconds (``config.close_timeout`` by default).

        ``wait_for_tasks=False`` does not wait for tasks still running in user code
        (their results are dropped anyway): a worker process about to exit uses it.
        """
        timeout = self.config.close_timeout if timeout is None else timeout
        with self._lock:
            if self._status in ("closed", "created"):
                self._status = "closed"
                self._closed.set()
                return
            first = self._status != "closing"
            self._status = "closing"
        if first:
            for preload in self.preloads:
                preload.teardown(self)
            call_hook(self.plugins, "teardown", self)
            if self._client is not None:
                self._client.close()
        if first and not self._stopped.is_set():
            try:
                self.loop.run_sync(self._shutdown_on_loop, timeout=timeout)
            except Exception as e:
                log.warning("worker %s: shutdown on its loop failed: %s", self.address, e)
        if self.loop.in_loop_thread():
            return                       # a later close() from another thread joins
        deadline = time.monotonic() + timeout
        stuck = self.executor.close(timeout=max(0.1, deadline - time.monotonic())
                                    if wait_for_tasks else 0.05)
        self.actor_host.close(max(0.05, deadline - time.monotonic()) if wait_for_tasks
                              else 0.05)
        if stuck:
            log.warning("worker %s: tasks still running in %s at close", self.address, stuck)
        for t in list(self._run_threads):
            t.join(max(0.1, deadline - time.monotonic()))
        if self._own_loop:
            self.loop.close(max(0.1, deadline - time.monotonic()))
        self._status = "closed"
        self._closed.set()

    def _shutdown_on_loop(self) -> None:
        """Close every socket (loop thread). Safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        if self._peers is not None:
            self._peers.close()
        if self._actor_caller is not None:
            self._actor_caller.close()
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
        if self._status in ("running", "starting", "reconnecting"):
            self._status = "closing"
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
        self._handlers(conn, msg)

    def _dispatch_peer(self, conn: Connection, msg: list) -> None:
        self._peer_handlers(conn, msg)

    # --- computing -----------------------------------------------------------------
    def _compute(self, conn: Connection, key: str, fn: Payload, args: Payload,
                 who_has: list, priority: list) -> None:
        if key in self.tasks or self._stopped.is_set():
            return
        task = self.tasks[key] = _Task(key, fn, args, [dep for dep, _ in who_has], priority)
        self._transition(key, "released", "waiting")
        by_holder: dict[str, list[str]] = {}
        for dep, holders in who_has:
            if dep in self.store:
                self._borrowed[dep] = self._borrowed.get(dep, 0) + 1
                continue
            task.missing.add(dep)
            waiting = self._fetching.get(dep)
            if waiting is not None:
                waiting.append(key)
                continue
            self._fetching[dep] = [key]
            if not holders:
                self._fetch_failed([dep], "(nobody)")
                continue
            by_holder.setdefault(holders[0], []).append(dep)
        for holder, deps in by_holder.items():
            self._fetch(holder, deps)
        if not task.missing and key in self.tasks:
            self._run_task(task)

    def _run_task(self, task: _Task) -> None:
        self._transition(task.key, "waiting", "ready")
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
        if self.tasks.get(task.key) is not task or self._stopped.is_set():
            return
        try:
            task.gate.pop()
        except IndexError:         # cancelled before it started
            return
        context.set_thread_worker(self)
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
            self.loop.call_soon_threadsafe(self._failed, task, exc, tb)
            return
        self.loop.call_soon_threadsafe(self._finished, task, value, payload)

    def _release_inputs(self, task: _Task) -> None:
        for dep in task.deps:
            n = self._borrowed.get(dep, 0) - 1
            if n > 0:
                self._borrowed[dep] = n
                continue
            self._borrowed.pop(dep, None)
            if dep not in self._owned:
                self.store.pop(dep)

    def _finished(self, task: _Task, value: Any, payload: Payload) -> None:
        if self.tasks.get(task.key) is not task:
            self._ended_freed(task)
            return
        del self.tasks[task.key]
        self._release_inputs(task)
        self.store.put(task.key, value, payload)
        self._owned.add(task.key)
        nbytes = payload.nbytes
        inline = payload if nbytes <= self.config.inline_result_bytes else None
        self.scheduler.send([Msg.TASK_FINISHED, task.key, inline, nbytes])
        self._transition(task.key, "ready", "memory")

    def _failed(self, task: _Task, exc: Payload, tb: str) -> None:
        if self.tasks.get(task.key) is not task:
            self._ended_freed(task)
            return
        del self.tasks[task.key]
        self._release_inputs(task)
        self.scheduler.send([Msg.TASK_FAILED, task.key, exc, tb])
        self._transition(task.key, "ready", "error")

    def _ended_freed(self, task: _Task) -> None:
        """A task the scheduler freed while it ran has ended: its thread is free."""
        if self.scheduler is not None and not self._stopped.is_set():
            self.scheduler.send([Msg.TASK_RELEASED, task.key])

    def _try_cancel(self, conn: Connection, req_id: int, keys: list) -> None:
        """Which of ``keys`` had not started (and now never will)."""
        stopped = []
        for key in keys:
            task = self.tasks.get(key)
            # (a task a free thread was handed has started, for Future.cancel)
            if task is not None and not task.claimed and task.stop():
                stopped.append(key)
        conn.reply(req_id, True, stopped)

    # --- run -----------------------------------------------------------------------
    def _run(self, conn: Connection, req_id: int, fn: Payload) -> None:
        def call() -> None:
            try:
                func = loads(fn, what="function")
                kwargs = {}
                params = inspect.signature(func).parameters
                for name in ("mpnet_worker", "dask_worker"):
                    if name in params:
                        kwargs[name] = self
                result = [True, dumps(func(**kwargs), what="result"), ""]
            except BaseException as e:   # the user's function: its error goes back
                payload, tb = dumps_exception(e)
                result = [False, payload, tb]
            self.loop.call_soon_threadsafe(conn.reply, req_id, True, result)
            self._run_threads.discard(threading.current_thread())
        t = threading.Thread(target=call, name="mpnet-worker-run", daemon=True)
        self._run_threads.add(t)
        t.start()

    # --- actors ----------------------------------------------------------------------
    def actor_host_call(self, conn: Connection, call_id: int, key: str, method: str,
                        args: Any, kwargs: Any, kind: str) -> None:
        self.actor_calls[key] = self.actor_calls.get(key, 0) + 1
        self.actor_host.call(conn, call_id, key, method, args, kwargs, kind)

    def actor_caller(self) -> Any:
        """The caller that tasks and actors here use for actor handles (made on use)."""
        if self._actor_caller is None:
            from ..client.actors import ActorCaller
            self._actor_caller = ActorCaller(
                self.loop, self.config, self.token,
                request=lambda *msg: self.scheduler.request(*msg),
                info={"address": self.address})
        return self._actor_caller

    def get_client(self) -> Any:
        """A Client on this worker's cluster, for tasks that submit work or make actors."""
        with self._lock:
            if self._client is None or self._client.status == "closed":
                from ..client.client import Client
                self._client = Client(self.scheduler_address, token=token_arg(self.token),
                                      config=self.config, default=False)
            return self._client

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

    def _transition(self, key: str, start: str, finish: str) -> None:
        if self.plugins:
            call_hook(self.plugins, "transition", key, start, finish)

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
        hosted = self.actor_host.actors
        if hosted:     # for `mpnet top`: calls so far and calls waiting, per actor
            metrics["actors"] = {key: [self.actor_calls.get(key, 0), a.mailbox.qsize()]
                                 for key, a in hosted.items()}
        return metrics

    def __repr__(self) -> str:
        return f"<Worker {self.address or '(not started)'} {self._status}>"

