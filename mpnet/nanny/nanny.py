"""The nanny: starts a worker process, reports its exits, restarts it when it dies.

::

    Nanny (in LocalCluster's or mpnet-worker's process, on its event loop)
      ├── connection to the scheduler: REGISTER_NANNY, WORKER_EXITED(address, pid, code)
      └── WorkerProcess: spawn → "started" → … → sentinel → exit code → restart?

Restart policy: an unexpected exit is restarted at once, then after a delay doubling
from ``0.1 s`` up to ``5 s`` when exits come quickly one after another (within 10 s).
A stop that was asked for (``close()``, the scheduler shutting down) is never restarted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

from ..comm.addressing import format_address, outward_host, parse_address
from ..comm.auth import resolve_token
from ..comm.connection import Connection, Listener, connect_sync, listen_on_any
from ..comm.eventloop import EventLoop
from ..comm.protocol import Msg, check_handlers
from ..config import Config, make_config
from ..comm.serialize import loads
from ..errors import ClusterClosedError, MpnetError, ProtocolError
from ..plugins import call_hook, plugin_name
from ..preload import load_preloads
from .process import WorkerProcess, describe_exit

__all__ = ["Nanny"]

log = logging.getLogger("mpnet.nanny")

_QUICK_EXIT = 10.0      # exits closer together than this back off
_MAX_DELAY = 5.0


class Nanny:
    """``Nanny('tcp://host:8786', nthreads=2).start()`` returns once its worker serves.

    The nanny listens on ``port`` (a port or a list to try) for the scheduler's
    commands; ``worker_port`` is passed to its worker. ``preload`` / ``preload_argv``
    run in the worker process; ``preload_nanny`` / ``preload_nanny_argv`` here.
    """

    def __init__(self, scheduler_address: str, *, nthreads: int = 1, name: str | None = None,
                 host: str | None = None, port: int | list[int] = 0,
                 worker_port: int | list[int] = 0, contact_address: str | None = None,
                 token: str | None = None, resources: dict | None = None,
                 memory_limit: int = 0, local_directory: str | None = None,
                 preload: Any = None, preload_argv: Any = (), preload_nanny: Any = None,
                 preload_nanny_argv: Any = (), plugins: Any = (), env: dict | None = None,
                 loop: EventLoop | None = None, config: Config | None = None,
                 **config_overrides: Any):
        self.config = make_config(config, **config_overrides)
        self.scheduler_address = scheduler_address
        self.token = resolve_token(token)
        sched_host, _ = parse_address(scheduler_address)
        self.host = host if host is not None else (
            "127.0.0.1" if sched_host in ("127.0.0.1", "localhost", "") else "")
        self.port = port
        self.id = f"nanny-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.address = ""
        self.preloads = load_preloads(preload_nanny, preload_nanny_argv)
        self.plugins: dict[str, Any] = {plugin_name(p): p for p in plugins}
        self.worker_kwargs = dict(scheduler_address=scheduler_address, nthreads=nthreads,
                                  name=name, host=host, port=worker_port,
                                  contact_address=contact_address, token=self.token,
                                  nanny=self.id, resources=resources,
                                  memory_limit=memory_limit, local_directory=local_directory,
                                  preload=preload, preload_argv=list(preload_argv),
                                  config=self.config,
                                  log_level=logging.getLogger("mpnet").getEffectiveLevel())
        self.env = env or {}
        self._own_loop = loop is None
        self.loop = loop or EventLoop("mpnet-nanny-loop")
        self.scheduler: Connection | None = None
        self.listener: Listener | None = None
        self.process: WorkerProcess | None = None
        self.worker_address = ""
        self.restarts = 0
        self._last_exit = 0.0
        self._delay = 0.0
        self._started: Future = Future()
        self._status = "created"
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._restart_timer = None
        self._handlers = check_handlers("nanny", {
            Msg.CLOSE_WORKER: self._close_requested,
            Msg.PLUGIN: self._plugin,
            Msg.PLUGIN_INSTALL: self._plugin_install,
        })

    # --- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float | None = None) -> "Nanny":
        """Spawn the worker and return once it is registered with the scheduler."""
        self.start_nowait()
        self.wait_started(timeout)
        return self

    def start_nowait(self) -> None:
        """Spawn the worker without waiting (LocalCluster starts many at once)."""
        with self._lock:
            if self._status != "created":
                raise ClusterClosedError(f"this Nanny is {self._status}; create a new one")
            self._status = "running"
        self.loop.start()
        try:
            self.listener = listen_on_any(self.port, lambda port: Listener(
                self.loop, self.host, port, config=self.config, token=self.token,
                role="nanny", info={}, handler=self._dispatch))
            self.address = format_address(self.host or outward_host(), self.listener.port)
            self.id = self.address
            self.worker_kwargs["nanny"] = self.address
            for preload in self.preloads:
                preload.setup(self)
            for plugin in self.plugins.values():
                getattr(plugin, "setup", lambda n: None)(self)
            self.scheduler = connect_sync(
                self.loop, self.scheduler_address, config=self.config, token=self.token,
                role="nanny", info={"address": self.address}, handler=self._dispatch,
                on_close=self._scheduler_closed)
            self.loop.run_sync(self.scheduler.request, Msg.REGISTER_NANNY,
                               {"address": self.address}).result(self.config.connect_timeout)
            self.loop.run_sync(self._spawn)
        except BaseException:
            self.close()
            raise

    def wait_started(self, timeout: float | None = None) -> None:
        """Block until the first worker process has registered (``timeout`` seconds)."""
        timeout = 60.0 if timeout is None else timeout
        try:
            self._started.result(timeout)
        except TimeoutError:
            self.close()
            raise TimeoutError(f"the worker process of {self.id} did not start within "
                               f"{timeout}s") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Nanny":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def status(self) -> str:
        return self._status

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def begin_close(self) -> None:
        """Ask the worker to stop (no restart after this). Returns at once."""
        with self._lock:
            if self._status in ("closing", "closed", "created"):
                return
            self._status = "closing"
        try:
            self.loop.run_sync(self._begin_close_on_loop, timeout=2)
        except Exception as e:
            log.warning("%s: asking its worker to close failed: %s", self.id, e)

    def _begin_close_on_loop(self) -> None:
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        if self.process is not None:
            self.process.ask_to_close()

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker by escalation (ask, SIGTERM, SIGKILL) within ``timeout`` s."""
        timeout = self.config.close_timeout if timeout is None else timeout
        self.finish_close(time.monotonic() + timeout)

    def finish_close(self, deadline: float) -> None:
        self.begin_close()
        with self._lock:
            if self._status == "closed":
                return
            if self._status == "created":
                self._status = "closed"
                return
        if self.process is not None:
            self.process.stop(deadline)
            self.process.release()
        for preload in self.preloads:
            preload.teardown(self)
        call_hook(self.plugins, "teardown", self)
        try:
            self.loop.run_sync(self._drop_connections, timeout=2)
        except Exception:   # the loop is already stopped: its sockets are closed
            pass
        if self._own_loop:
            self.loop.close()
        if not self._started.done():
            self._started.set_exception(ClusterClosedError(f"{self.id} was closed"))
        self._status = "closed"
        self._closed.set()

    def _drop_connections(self) -> None:
        if self.scheduler is not None:
            self.scheduler.on_close = None
            self.scheduler.flush()
            self.scheduler.close()
        if self.listener is not None:
            self.listener.close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    # --- the worker process ---------------------------------------------------------
    def _spawn(self) -> None:
        self.process = WorkerProcess(self.loop, self.worker_kwargs,
                                     start_method=self.config.start_method,
                                     on_started=self._worker_started,
                                     on_failed=self._worker_failed,
                                     on_exit=self._worker_exited, env=self.env)
        self.process.start()

    def _worker_started(self, address: str) -> None:
        self.worker_address = address
        log.debug("%s: worker %s started (pid %s)", self.id, address, self.process.pid)
        if not self._started.done():
            self._started.set_result(address)

    def _worker_failed(self, text: str) -> None:
        log.error("%s: worker failed to start: %s", self.id, text)
        if not self._started.done():
            self._started.set_exception(MpnetError(f"worker failed to start: {text}"))
            self._status = "closing"   # a worker that cannot start is not restarted

    def _worker_exited(self) -> None:
        if self._status != "running":
            return            # a stop we asked for: finish_close() reaps and reports
        pid = self.process.pid
        code = self.process.reap()
        how = describe_exit(code)
        if self.scheduler is not None and self.worker_address:
            self.scheduler.send([Msg.WORKER_EXITED, self.worker_address, pid, code,
                                 how + ", unexpectedly"])
        self.process.release()
        log.warning("%s: worker %s (pid %s) died: %s; restarting", self.id,
                    self.worker_address or "(not yet started)", pid, how)
        if not self._started.done():
            self._started.set_exception(MpnetError(
                f"the worker process (pid {pid}) died while starting: {how}"))
            self._status = "closing"
            return
        now = time.monotonic()
        quick = now - self._last_exit < _QUICK_EXIT
        self._delay = min(_MAX_DELAY, self._delay * 2 or 0.1) if quick else 0.0
        self._last_exit = now
        self.worker_address = ""
        self._restart_timer = self.loop.call_later(self._delay, self._restart)

    def _restart(self) -> None:
        if self._status != "running":
            return
        self.restarts += 1
        self._spawn()

    # --- scheduler -----------------------------------------------------------------
    def _dispatch(self, conn: Connection, msg: list) -> None:
        handler = self._handlers.get(msg[0])
        if handler is None:
            raise ProtocolError(f"a nanny has no handler for message type {msg[0]}")
        handler(conn, *msg[1:])

    def _plugin(self, conn: Connection, name: str, payload: Any) -> str:
        try:
            plugin = loads(payload, what=f"nanny plugin {name}")
            self.plugins[name] = plugin
            getattr(plugin, "setup", lambda n: None)(self)
        except Exception as e:   # reported to whoever registered it; the nanny goes on
            log.exception("%s: plugin %r failed to install", self.id, name)
            return f"{self.id}: plugin {name!r} failed: {type(e).__name__}: {e}"
        return ""

    def _plugin_install(self, conn: Connection, req_id: int, name: str, payload: Any) -> None:
        conn.reply(req_id, True, self._plugin(conn, name, payload))

    def _close_requested(self, conn: Connection, reason: str) -> None:
        log.info("%s asked to close: %s", self.id, reason)
        self._status = "closing"
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        if self.process is not None:
            self.process.ask_to_close()

    def _scheduler_closed(self, conn: Connection, exc: BaseException | None) -> None:
        if self._status == "running":
            log.warning("%s lost its scheduler: %s", self.id, exc)
            self._close_requested(conn, "the scheduler is gone")

    def __repr__(self) -> str:
        return f"<Nanny {self.id} worker={self.worker_address or '-'} {self._status}>"
