"""The scheduler's I/O layer: sockets in, state-machine calls, messages out.

::

    clients ──SUBMIT/RELEASE/CANCEL──►┐                       ┌──COMPUTE/FREE──► workers
    workers ──TASK_FINISHED/FAILED───►├─ handler ─► SchedulerState ─► outbox ─┤
    nannies ──WORKER_EXITED──────────►┘    (loop thread only)  └──TASK_DONE──► clients

Everything here runs on one event-loop thread (the scheduler's own, or the loop of the
LocalCluster that embeds it). The only user payloads unpickled here are the functions
of ``run_on_scheduler``, which a token holder asks for explicitly.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Callable

from ..comm.addressing import address_scheme, outward_host, parse_address
from ..comm.auth import resolve_token
from ..comm.connection import Connection
from ..comm.endpoints import Listener
from ..comm.eventloop import EventLoop
from ..comm.dispatch import Dispatcher
from ..comm.protocol import Msg
from ..comm.serialize import dumps, dumps_exception, loads
from ..config import Config, make_config, tune_gc
from ..deploy.scheduler_file import remove_scheduler_file, write_scheduler_file
from ..errors import ClusterClosedError, MpnetError, ProtocolError
from ..plugins import call_hook, plugin_name
from ..preload import load_preloads
from ..versions import format_mismatches, get_versions, mismatches
from . import operations
from .monitoring import Monitoring
from .state import ClientState, SchedulerState, WorkerState

__all__ = ["Scheduler"]

log = logging.getLogger("mpnet.scheduler")


class _NannyLink(str):
    """The owner record of a nanny's connection: its address."""


_ROLE_NAMES = {ClientState: "a client", WorkerState: "a worker", _NannyLink: "a nanny"}
_HOLDERS = (ClientState, WorkerState)      # actor handles live in clients and in tasks
_SENDERS: dict[int, tuple[type, ...]] = {
    **{m: (ClientState,) for m in (Msg.SUBMIT, Msg.RELEASE, Msg.CANCEL, Msg.SCATTER,
                                   Msg.TRY_CANCEL)},
    **{m: (WorkerState,) for m in (Msg.TASK_FINISHED, Msg.TASK_FAILED, Msg.MISSING_DATA,
                                   Msg.HEARTBEAT, Msg.ACTOR_STARTED, Msg.ACTOR_FAILED,
                                   Msg.ACTOR_CHECKPOINT, Msg.TASK_RELEASED,
                                   Msg.ACTOR_STOPPED)},
    **{m: _HOLDERS for m in (Msg.CREATE_ACTOR, Msg.LOOKUP_ACTOR, Msg.RELEASE_ACTOR,
                             Msg.CREATE_NAMED_ACTOR)},
    Msg.WORKER_EXITED: (_NannyLink,),
}
_REGISTRATIONS = frozenset({Msg.REGISTER_CLIENT, Msg.REGISTER_WORKER, Msg.REGISTER_NANNY})


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
        self._status = "created"
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.nannies: dict[str, Connection] = {}     # nanny address → connection
        self.restarts: dict[str, int] = {}           # nanny address → worker restarts
        self.monitoring = Monitoring(self)     # status, task stream, logs, dashboard
        self._handlers = Dispatcher("scheduler", {
            Msg.REGISTER_CLIENT: self._register_client,
            Msg.SUBMIT: self._submit,
            Msg.RELEASE: self._release,
            Msg.CANCEL: self._cancel,
            Msg.TRY_CANCEL: self._try_cancel,
            Msg.TASK_RELEASED: self._task_released,
            Msg.SCATTER: self._scatter,
            Msg.RUN: self._run,
            Msg.RUN_ON_SCHEDULER: self._run_on_scheduler,
            Msg.INFO: self._info,
            Msg.WHO_HAS: self._who_has,
            Msg.REGISTER_WORKER: self._register_worker,
            Msg.TASK_FINISHED: self._task_finished,
            Msg.TASK_FAILED: self._task_failed,
            Msg.MISSING_DATA: self._missing_data,
            Msg.HEARTBEAT: self._heartbeat,
            Msg.GOODBYE: self._goodbye,
            Msg.REGISTER_NANNY: self._register_nanny,
            Msg.WORKER_EXITED: self._worker_exited,
            Msg.REGISTER_PLUGIN: self._register_plugin,
            Msg.RESTART: self._restart,
            Msg.RETIRE_WORKERS: self._retire_workers,
            Msg.CREATE_ACTOR: self._create_actor,
            Msg.LOOKUP_ACTOR: self._lookup_actor,
            Msg.RELEASE_ACTOR: self._release_actor,
            Msg.KILL_ACTOR: self._kill_actor,
            Msg.LIST_ACTORS: self._list_actors,
            Msg.ACTOR_STARTED: self._actor_started,
            Msg.ACTOR_FAILED: self._actor_failed,
            Msg.ACTOR_CHECKPOINT: self._actor_checkpoint,
            Msg.CREATE_NAMED_ACTOR: self._create_named_actor,
            Msg.ACTOR_STOPPED: self._actor_stopped,
            **self.monitoring.handlers,
        })
        for plugin in plugins:
            self.add_plugin(plugin)

    # --- lifecycle -----------------------------------------------------------------
    def start(self, address: str | None = None) -> "Scheduler":
        """Listen (on ``address`` such as ``'tcp://:8786'`` if given) and return."""
        with self._lock:
            if self._status != "created":
                if self._status == "running":
                    return self
                raise ClusterClosedError("this Scheduler was closed; create a new one")
            self._status = "starting"
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
            self._status = "closed"
            if self._own_loop:
                self.loop.close()
            raise
        shown = host if host not in ("", "0.0.0.0") else outward_host()
        self.address = self.listener.address_at(shown)
        self._status = "running"
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
        if self._status != "running":
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
            if self._status == "running":
                call_hook({name: plugin}, "start", self)
        self.loop.run_sync(add) if self.loop.running else add()

    def _transition_hook(self, key: str, start: str, finish: str) -> None:
        call_hook(self.plugins, "transition", key, start, finish)

    def _check_idle(self) -> None:
        if self._status != "running":
            return
        if self.state.clients or self.state.tasks:
            self._idle_since = time.monotonic()
        elif time.monotonic() - self._idle_since > self.idle_timeout:
            log.info("scheduler idle for %ss: closing", self.idle_timeout)
            threading.Thread(target=self.close, name="mpnet-scheduler-idle-close").start()
            return
        self.loop.call_later(min(1.0, self.idle_timeout / 4), self._check_idle)

    def __enter__(self) -> "Scheduler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def status(self) -> str:
        return self._status

    def close(self, timeout: float | None = None) -> None:
        """Tell workers and nannies to stop, drop every connection, stop the loop."""
        with self._lock:
            if self._status in ("closing", "closed"):
                return
            started = self._status == "running"
            self._status = "closing"
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
        self._status = "closed"
        self._closed.set()

    def _close_on_loop(self) -> None:
        call_hook(self.plugins, "close")
        for ws in self.state.workers.values():
            if ws.link is not None:
                ws.link.send([Msg.CLOSE_WORKER, "the scheduler is shutting down", ""])
        for conn in self.nannies.values():
            conn.send([Msg.CLOSE_WORKER, "the scheduler is shutting down", ""])
        for conn in list(self.listener.connections):
            conn.on_close = None
            conn.flush()
        self.listener.close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the scheduler is closed; False if ``timeout`` seconds passed."""
        return self._closed.wait(timeout)

    # --- dispatch ------------------------------------------------------------------
    def _dispatch(self, conn: Connection, msg: list) -> None:
        # Who may send what: a message from a peer that has not registered as the role
        # it belongs to (a SUBMIT before REGISTER_CLIENT, a TASK_FINISHED from a
        # client) closes that connection before it reaches the state machine.
        need = _SENDERS.get(msg[0])
        if need is None:
            if msg[0] in _REGISTRATIONS and conn.owner_data is not None:
                raise ProtocolError(f"{Msg(msg[0]).name} from {conn.peer}, which has "
                                    "registered already")
        elif not isinstance(conn.owner_data, need):
            raise ProtocolError(
                f"{Msg(msg[0]).name} from {conn.peer}, which has not registered as "
                f"{' or '.join(_ROLE_NAMES[t] for t in need)}")
        self._handlers(conn, msg)
        self._send_outbox()

    def _send_outbox(self) -> None:
        for dest, msg in self.state.take_outbox():
            if dest.link is not None:
                dest.link.send(msg)

    def _on_close(self, conn: Connection, exc: BaseException | None) -> None:
        owner = conn.owner_data
        if isinstance(owner, ClientState):
            self.state.remove_client(owner.id)
            self.monitoring.client_changed(owner.id, joined=False)
            call_hook(self.plugins, "remove_client", self, owner.id)
        elif isinstance(owner, WorkerState):
            owner.link = None
            if owner.address in self.state.workers:
                reason = f"its connection closed ({exc})" if exc else "it closed"
                if owner.nanny and self._status == "running":
                    # Its nanny usually reports the exit code within a millisecond.
                    self.loop.call_later(self.config.lost_worker_grace, self._lost,
                                         owner.address, reason)
                else:
                    self._lost(owner.address, reason)
        elif isinstance(owner, str):
            self.nannies.pop(owner, None)
        self._send_outbox()

    def _lost(self, address: str, reason: str) -> None:
        if address in self.state.workers:
            log.warning("lost worker %s: %s", address, reason)
            self.monitoring.worker_removed(address, reason, self.state.workers[address].name)
            self.state.remove_worker(address, reason)
            call_hook(self.plugins, "remove_worker", self, address)
            self._send_outbox()

    # --- clients -------------------------------------------------------------------
    def _register_client(self, conn: Connection, req_id: int, client_id: str,
                         versions: dict) -> None:
        cs = self.state.add_client(client_id, {"versions": versions}, link=conn)
        conn.owner_data = cs
        self.monitoring.client_changed(client_id, joined=True)
        call_hook(self.plugins, "add_client", self, client_id)
        everyone = {"scheduler": get_versions(), "client": versions,
                    **{a: w.info.get("versions", {}) for a, w in self.state.workers.items()}}
        table = format_mismatches(mismatches(everyone))
        conn.reply(req_id, True, {"id": self.id, "address": self.address,
                                  "version_mismatch": table})

    def _submit(self, conn: Connection, key: str, fn: Any, args: Any, deps: list,
                priority: int, retries: int, resources: dict | None = None,
                workers: list | None = None) -> None:
        self.state.submit(conn.owner_data, key, fn, args, deps, priority, retries,
                          resources, workers)
        self.state.monitor.adopt(self.state.tasks.get(key))   # counted even while waiting

    # --- actors ----------------------------------------------------------------------
    # Holders and lookups may come from clients or from workers (handles used in tasks);
    # the state machine answers whichever record the connection belongs to.
    def _create_actor(self, conn: Connection, key: str, name: str | None, cls: Any,
                      args: Any, options: dict) -> None:
        if (cls is None) != (args is None):
            # The class travels with its arguments (a new actor) or neither does (one
            # more handle): half of it would reach the worker as a HOST_ACTOR it must
            # refuse, and the worker would lose its scheduler link over it.
            raise ProtocolError(f"CREATE_ACTOR from {conn.peer} carries a class without "
                                "its arguments, or arguments without a class")
        self.state.create_actor(conn.owner_data, key, name, cls, args, options)

    def _create_named_actor(self, conn: Connection, req_id: int, key: str, name: str,
                            cls: Any, args: Any, options: dict, get_if_exists: bool) -> None:
        conn.reply(req_id, True, self.state.create_named_actor(
            conn.owner_data, key, name, cls, args, options, get_if_exists))

    def _actor_stopped(self, conn: Connection, key: str) -> None:
        self.state.actor_stopped(conn.owner_data, key)

    def _lookup_actor(self, conn: Connection, req_id: int, key_or_name: str) -> None:
        self.state.lookup_actor(conn.owner_data, req_id, key_or_name)

    def _release_actor(self, conn: Connection, key: str) -> None:
        self.state.release_actor(conn.owner_data, key)

    def _kill_actor(self, conn: Connection, req_id: int, key: str) -> None:
        conn.reply(req_id, True, self.state.kill_actor(key, "killed by a client"))

    def _list_actors(self, conn: Connection, req_id: int) -> None:
        conn.reply(req_id, True, self.state.list_actors())

    def _actor_started(self, conn: Connection, key: str) -> None:
        self.state.actor_started(conn.owner_data, key)

    def _actor_failed(self, conn: Connection, key: str, exc: Any, tb: str) -> None:
        self.state.actor_failed(conn.owner_data, key, exc, tb)

    def _actor_checkpoint(self, conn: Connection, key: str, payload: Any) -> None:
        self.state.actor_checkpoint(key, payload)

    def _release(self, conn: Connection, keys: list) -> None:
        self.state.release(conn.owner_data, keys)

    def _cancel(self, conn: Connection, keys: list, reason: str) -> None:
        self.state.cancel(keys, reason, conn.owner_data)

    def _try_cancel(self, conn: Connection, req_id: int, keys: list) -> None:
        """``Future.cancel()``: what has not started. Tasks sent to a worker are cancelled
        only once that worker confirms it had not started them (and now never will)."""
        cs, reason = conn.owner_data, "cancelled before it started (Future.cancel())"
        done, ask = self.state.try_cancel(cs, keys, reason)
        workers = [ws for ws in ask if ws.link is not None]
        if not workers:
            conn.reply(req_id, True, done)
            return

        def answered(results: list) -> None:
            live = cs if self.state.clients.get(cs.id) is cs else None
            for ws, (ok, stopped) in zip(workers, results):
                if ok:
                    done.extend(self.state.cancel_unstarted(live, ws, stopped, reason))
            conn.reply(req_id, True, done)
        self._when_all([ws.link.request(Msg.TRY_CANCEL, ask[ws]) for ws in workers], answered)

    def _task_released(self, conn: Connection, key: str) -> None:
        self.state.task_released(conn.owner_data, key)

    def _scatter(self, conn: Connection, req_id: int, items: list, workers: list | None) -> None:
        try:
            placed = self.state.scatter(conn.owner_data, [(k, p.nbytes) for k, p in items],
                                        workers)
        except RuntimeError as e:
            conn.reply(req_id, False, str(e))
            return
        acks = [placed[key].link.request(Msg.STORE, key, payload) for key, payload in items]
        self._when_all(acks, lambda results: conn.reply(
            req_id, True, {key: placed[key].address for key, _ in items}))

    def _when_all(self, futures: list[Future], then: Callable[[list], None]) -> None:
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
                self._send_outbox()
        for i, fut in enumerate(futures):
            fut.add_done_callback(lambda f, i=i: done(i, f))

    def _run(self, conn: Connection, req_id: int, fn: Any, workers: list | None) -> None:
        targets = [ws for ws in self.state.workers.values() if ws.link is not None and (
            workers is None or ws.address in workers or ws.name in workers)]
        futures = [ws.link.request(Msg.RUN, fn) for ws in targets]
        self._when_all(futures, lambda results: conn.reply(req_id, True, [
            [ws.address, ok, value] for ws, (ok, value) in zip(targets, results)]))

    def _run_on_scheduler(self, conn: Connection, req_id: int, fn: Any) -> None:
        # Explicitly asked for by a token holder: the one place a payload is unpickled.
        try:
            func = loads(fn, what="function")
            kwargs = {}
            params = inspect.signature(func).parameters
            for name in ("mpnet_scheduler", "dask_scheduler"):
                if name in params:
                    kwargs[name] = self
            result = dumps(func(**kwargs), oob_threshold=self.config.oob_threshold,
                           what="result")
            conn.reply(req_id, True, [True, result, ""])
        except Exception as e:   # the user's function: its error goes back to the caller
            payload, tb = dumps_exception(e)
            conn.reply(req_id, True, [False, payload, tb])

    def _info(self, conn: Connection, req_id: int) -> None:
        conn.reply(req_id, True, self.info())

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

    def _who_has(self, conn: Connection, req_id: int, keys: list) -> None:
        tasks = self.state.tasks
        conn.reply(req_id, True, {k: [w.address for w in tasks[k].who_has]
                                  for k in keys if k in tasks})

    # --- workers and nannies --------------------------------------------------------
    def _register_worker(self, conn: Connection, req_id: int, info: dict) -> None:
        address = info["address"]
        if address in self.state.workers:
            conn.reply(req_id, False, f"a worker at {address} is already registered")
            return
        ws = self.state.add_worker(address, nthreads=info.get("nthreads", 1),
                                   name=info.get("name", ""), pid=info.get("pid", 0),
                                   nanny=info.get("nanny"),
                                   info={"versions": info.get("versions", {}),
                                         "resources": info.get("resources", {}),
                                         "memory_limit": info.get("memory_limit", 0)},
                                   link=conn)
        conn.owner_data = ws
        conn.on_too_large = self._too_large_for_worker
        for name, payload in self.worker_plugins.items():   # before any task reaches it
            conn.send([Msg.PLUGIN, name, payload])
        conn.reply(req_id, True, {"id": self.id, "address": self.address})
        log.info("registered worker %s (%s, %d threads)", address, ws.name, ws.nthreads)
        self.monitoring.worker_added(ws)
        call_hook(self.plugins, "add_worker", self, address)
        table = format_mismatches(mismatches({"scheduler": get_versions(),
                                              address: info.get("versions", {})}))
        if table:
            log.warning("worker %s runs different software than the scheduler:\n%s",
                        address, table)

    def _too_large_for_worker(self, conn: Connection, msg: list, err: Exception) -> None:
        """A COMPUTE or HOST_ACTOR over max_frame_bytes (its payloads fit in the SUBMIT,
        not with what the scheduler adds): fail that task or actor with the error rather
        than leave it waiting for an answer from a worker that never got it."""
        ws = conn.owner_data
        if not isinstance(ws, WorkerState):
            return
        exc, tb = dumps_exception(err)
        if msg[0] == Msg.COMPUTE:
            self.state.task_failed(ws, msg[1], exc, tb)
        elif msg[0] == Msg.HOST_ACTOR:
            self.state.actor_failed(ws, msg[1], exc, tb)
        self._send_outbox()

    def _task_finished(self, conn: Connection, key: str, payload: Any, nbytes: int) -> None:
        self.state.task_finished(conn.owner_data, key, payload, nbytes)

    def _task_failed(self, conn: Connection, key: str, exc: Any, tb: str) -> None:
        self.state.task_failed(conn.owner_data, key, exc, tb)

    def _missing_data(self, conn: Connection, key: str, dep: str, holder: str) -> None:
        self.state.missing_data(conn.owner_data, key, dep, holder)

    def _goodbye(self, conn: Connection, reason: str) -> None:
        ws = conn.owner_data
        if isinstance(ws, WorkerState) and ws.address in self.state.workers:
            log.info("worker %s left: %s", ws.address, reason)
            self.monitoring.worker_removed(ws.address, reason, ws.name)
            conn.owner_data = None          # its closing connection is no news now
            self.state.remove_worker(ws.address, reason, graceful=True)
            call_hook(self.plugins, "remove_worker", self, ws.address)

    def _heartbeat(self, conn: Connection, metrics: dict) -> None:
        ws = conn.owner_data
        paused = getattr(ws, "paused", False)
        self.state.heartbeat(ws, metrics)
        if getattr(ws, "paused", False) != paused:
            self.monitoring.worker_paused(ws)

    def _register_nanny(self, conn: Connection, req_id: int, info: dict) -> None:
        conn.owner_data = _NannyLink(info["address"])
        self.nannies[info["address"]] = conn
        for name, payload in self.nanny_plugins.items():
            conn.send([Msg.PLUGIN, name, payload])
        conn.reply(req_id, True, {"id": self.id})

    def _worker_exited(self, conn: Connection, address: str, pid: int, code: int | None,
                       how: str, restarting: bool, running: list | None = None) -> None:
        description = f"pid {pid}, {how}"
        ws = self.state.workers.get(address)
        # Gone already (it said GOODBYE) or retiring: a planned exit, not news to warn of.
        planned = ws is None or ws.retiring
        log.log(logging.INFO if planned else logging.WARNING, "worker %s exited: %s",
                address, description)
        self.monitoring.worker_exited(conn.owner_data, address, description, restarting)
        if restarting and isinstance(conn.owner_data, str):
            self.restarts[conn.owner_data] = self.restarts.get(conn.owner_data, 0) + 1
        was_there = address in self.state.workers
        self.state.worker_exited(address, description, running)   # removes it
        if was_there:
            call_hook(self.plugins, "remove_worker", self, address)

    def _restart(self, conn: Connection, req_id: int, addresses: list | None,
                 timeout: float) -> None:
        operations.restart(self, addresses, timeout,
                           lambda ok, text: conn.reply(req_id, ok, text))

    def _retire_workers(self, conn: Connection, req_id: int, addresses: list) -> None:
        operations.retire(self, addresses, self.config.close_timeout * 10,
                          lambda ok, text: conn.reply(req_id, ok, text))

    def _register_plugin(self, conn: Connection, req_id: int, kind: str, name: str,
                         payload: Any) -> None:
        """``client.register_plugin``: install now everywhere, and on every later join."""
        if kind == "scheduler":
            try:   # explicitly asked for by a token holder, as run_on_scheduler
                self.add_plugin(loads(payload, what="scheduler plugin"), name)
            except Exception as e:
                conn.reply(req_id, False, f"scheduler plugin {name!r}: {e}")
                return
            conn.reply(req_id, True, None)
            return
        if kind == "worker":
            self.worker_plugins[name] = payload
            targets = [ws.link for ws in self.state.workers.values() if ws.link is not None]
        else:
            self.nanny_plugins[name] = payload
            targets = list(self.nannies.values())
        acks = [link.request(Msg.PLUGIN_INSTALL, name, payload) for link in targets]
        self._when_all(acks, lambda results: conn.reply(req_id, True, [
            value for ok, value in results if not ok or value]))

    def __repr__(self) -> str:
        return f"<Scheduler {self.address or '(not started)'} {self._status}>"
