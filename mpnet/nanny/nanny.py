"""The nanny: starts a worker process, reports its exits, restarts it when it dies.

::

    Nanny (in LocalCluster's or mpnet-worker's process, on its event loop)
      ├── connection to the scheduler: REGISTER_NANNY, WORKER_EXITED(address, pid, code)
      └── WorkerProcess: spawn → "started" → … → sentinel → exit code → restart?

Blocking work (spawning the process, joining it, psutil reads) runs on the nanny's own
thread, ``mpnet-nanny-work`` (blocking.py): the loop may be LocalCluster's, which also
serves the scheduler. On the loop thread, the sentinel says the worker died and the
watchdog (watch.py) that it hangs or leaks (killed). Each exit is logged and reported
to the scheduler with its pid, exit code or signal and the reason. Restarts follow
:class:`~.policy.RestartPolicy` (at once, then backing off, then giving up). A stop
asked for (``close()``, the scheduler shutting down, retirement) is never restarted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

from ..comm.addressing import address_scheme, advertised_host, parse_address
from ..comm.auth import resolve_server_token, token_arg
from ..comm.connection import Connection
from ..comm.endpoints import Listener, listen_on_any
from ..comm.eventloop import EventLoop
from ..comm.link import Link
from ..comm.protocol import Msg
from ..comm.session import Role, Sessions
from ..config import Config, make_config
from ..diagnostics import logring
from ..comm.serialize import loads
from ..errors import ClusterClosedError, MpnetError
from ..lifecycle import Lifecycle, Status, server_moves
from ..plugins import call_hook, plugin_name
from ..preload import load_preloads
from .blocking import BlockingWork
from .policy import RestartPolicy
from .watch import Watchdog
from .process import WorkerProcess, child_env, describe_exit

__all__ = ["Nanny", "close_all", "NANNY_MOVES"]

log = logging.getLogger("mpnet.nanny")

S = Status

#: RUNNING: supervising (its worker process is starting or serving); RESTARTING: the
#: worker is being replaced on purpose; CLOSING: no restart any more.
NANNY_MOVES = server_moves({S.RUNNING: {S.RESTARTING},
                            S.RESTARTING: {S.RUNNING, S.CLOSING}})
_SUPERVISING = (S.RUNNING, S.RESTARTING)


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
                 gpus: Any = None, lifetime: float | None = None,
                 lifetime_stagger: float = 0.0, lifetime_restart: bool = False,
                 loop: EventLoop | None = None,
                 config: Config | None = None, **config_overrides: Any):
        self.config = make_config(config, **config_overrides)
        self.scheduler_address = scheduler_address
        self.token = resolve_server_token(token, "nanny")
        self.env, resources = child_env(env, gpus, nthreads, resources)
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
                                  contact_address=contact_address, token=token_arg(self.token),
                                  nanny=self.id, resources=resources,
                                  memory_limit=memory_limit, local_directory=local_directory,
                                  preload=preload, preload_argv=list(preload_argv),
                                  lifetime=lifetime, lifetime_stagger=lifetime_stagger,
                                  lifetime_restart=lifetime_restart,
                                  config=self.config,
                                  log_level=logging.getLogger("mpnet").getEffectiveLevel())
        self._own_loop = loop is None
        self.loop = loop or EventLoop("mpnet-nanny-loop")
        self.scheduler: Link | None = None
        self.listener: Listener | None = None
        self.process: WorkerProcess | None = None
        self.worker_address = ""
        self.restarts = 0
        self.memory_limit = memory_limit
        self._policy = RestartPolicy(self.config.max_restarts, self.config.restart_window)
        self._kill_reason = ""
        self._closer: threading.Thread | None = None
        self._finishing = False
        self._failure_reported = False
        self._started: Future = Future()
        self._life = Lifecycle("nanny", NANNY_MOVES)
        self._lock = threading.Lock()       # guards _finishing and _closer
        self._closed = threading.Event()
        self._restart_timer = None
        self._spawning = False              # a spawn is on the work thread (loop's flag)
        self._work = BlockingWork(self.loop, "mpnet-nanny-work")
        self._watchdog = Watchdog(self.loop, self.config, memory_limit, self._work,
                                  process=lambda: self.process,
                                  supervising=lambda: self._life.is_in(*_SUPERVISING),
                                  kill=self._kill)
        # Its orders come only on its link to the scheduler, each handler a method naming
        # the message's fields (checked before it runs). Nobody has anything to tell a
        # nanny on its own port: no session is ever bound there, so nothing is served.
        self.orders = Role("nanny", {
            Msg.CLOSE_WORKER: self._close_requested,
            Msg.RESTART_WORKER: self._restart_requested,
            Msg.PLUGIN: self._plugin,
            Msg.PLUGIN_INSTALL: self._plugin_install,
            Msg.LOGS: self._logs,
        })
        self.peers = Sessions("nanny", {}, unbound="on its own port")
        logring.install()      # its recent lines answer `mpnet logs` (why a worker died)

    # --- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float | None = None) -> "Nanny":
        """Spawn the worker and return once it is registered with the scheduler."""
        self.start_nowait()
        self.wait_started(timeout)
        return self

    def start_nowait(self) -> None:
        """Spawn the worker without waiting (LocalCluster starts many at once)."""
        if not self._life.move(S.STARTING, only_from=(S.CREATED,)):
            raise ClusterClosedError(f"this Nanny is {self.status}; create a new one")
        self.loop.start()
        try:
            self.listener = listen_on_any(self.port, lambda port: Listener(
                self.loop, self.host, port, config=self.config, token=self.token,
                role="nanny", info={}, handler=self.peers.dispatch,
                scheme=address_scheme(self.scheduler_address) or None))
            self.address = self.listener.address_at(
                advertised_host(self.host, self.scheduler_address))
            self.id = self.address
            self.worker_kwargs["nanny"] = self.address
            for preload in self.preloads:
                preload.setup(self)
            for plugin in self.plugins.values():
                getattr(plugin, "setup", lambda n: None)(self)
            self.scheduler = Link(
                self.loop, self.scheduler_address, config=self.config, token=self.token,
                role="nanny", info={"address": self.address}, handler=self.orders.dispatch,
                register=lambda conn: conn.request(Msg.REGISTER_NANNY,
                                                   {"address": self.address}),
                name=self.id, on_lost=self._scheduler_lost,
                on_restored=self._scheduler_back, on_gave_up=self._scheduler_gone)
            self.scheduler.open()
            # supervising from the spawn on: a worker that dies while starting is seen
            if not self._life.move(S.RUNNING, only_from=(S.STARTING,)):
                raise ClusterClosedError(f"{self.id} was closed while starting")
            self.loop.run_sync(self._spawn)
        except BaseException:
            self._life.move(S.FAILED, only_from=(S.STARTING,))
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
    def status(self) -> Status:
        return self._life.state

    @property
    def _status(self) -> Status:      # read by the reconnect methods below
        return self._life.state

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def begin_close(self) -> None:
        """Ask the worker to stop (no restart after this). Returns at once."""
        if not self._life.move(S.CLOSING, only_from=(S.STARTING, S.RUNNING, S.RESTARTING,
                                                     S.FAILED)):
            return
        try:
            self.loop.run_sync(self._begin_close_on_loop, timeout=2)
        except Exception as e:
            log.warning("%s: asking its worker to close failed: %s", self.id, e)

    def _begin_close_on_loop(self) -> None:
        self._watchdog.stop()
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        if self.process is not None:
            self.process.ask_to_close()

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker by escalation (ask, SIGTERM, SIGKILL) within ``timeout`` s."""
        timeout = self.config.close_timeout if timeout is None else timeout
        self.finish_close(time.monotonic() + timeout)

    def finish_close(self, deadline: float) -> None:
        """Second half of close: wait for the worker (escalating) and free everything.
        One thread does it; any other waits for it until ``deadline``."""
        self.begin_close()
        if self._life.move(S.CLOSED, only_from=(S.CREATED,)):
            self._closed.set()
            return
        with self._lock:
            busy, self._finishing = self._finishing, True
        if busy:
            self.wait_closed(max(0.1, deadline - time.monotonic()))
            return
        # A spawn or reap under way finishes first: then the process is ours to stop.
        self._work.close(max(0.1, deadline - time.monotonic()))
        if self.process is not None:
            self.process.ask_to_close()     # (again: it may have been spawned since)
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
        self._life.move(S.CLOSED)
        self._closed.set()
        self._join_closer(deadline)

    def _drop_connections(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        if self.listener is not None:
            self.listener.close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until closed (``timeout`` seconds); a closer thread is joined too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._closed.wait(timeout) and self._join_closer(deadline)

    def _join_closer(self, deadline: float | None) -> bool:
        closer = self._closer
        if closer is None or closer is threading.current_thread():
            return True
        closer.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not closer.is_alive()

    # --- the worker process: spawn, watch, restart -----------------------------------
    def _spawn(self) -> None:
        self.process = WorkerProcess(self.loop, self.worker_kwargs,
                                     start_method=self.config.start_method,
                                     on_started=self._worker_started,
                                     on_failed=self._worker_failed,
                                     on_exit=self._worker_exited, env=self.env)
        self._kill_reason = ""
        self._spawning = True
        proc = self.process
        self._work.submit(proc.spawn, then=lambda _, exc: self._spawned(proc, exc))

    def _spawned(self, proc: WorkerProcess, exc: BaseException | None) -> None:
        """Loop thread: the spawn of ``proc`` is done (or failed with ``exc``)."""
        self._spawning = False
        if exc is not None:
            self._worker_failed(f"could not start a worker process: {type(exc).__name__}: "
                                f"{exc}")
            self._close_in_background()
            return
        if not self._life.is_in(*_SUPERVISING) or proc is not self.process:
            return                  # closing: finish_close() stops it
        proc.watch()
        self._watchdog.start()

    def _kill(self, reason: str) -> None:
        self._kill_reason = reason
        log.warning("%s: worker %s (pid %s) %s; restarting", self.id, self.worker_address,
                    self.process.pid, reason)
        self.process.kill()

    def _worker_started(self, address: str) -> None:
        self.worker_address = address
        log.debug("%s: worker %s started (pid %s)", self.id, address, self.process.pid)
        self._life.move(S.RUNNING, only_from=(S.RESTARTING,))
        if not self._started.done():
            self._started.set_result(address)

    def _worker_failed(self, text: str) -> None:
        self._failure_reported = True
        log.error("%s: worker failed to start:\n%s", self.id, text)
        if not self._started.done():
            lines = text.strip().splitlines() or ["unknown error"]
            where = " (its traceback is in the log above)" if len(lines) > 1 else ""
            self._started.set_exception(MpnetError(
                f"worker failed to start: {lines[-1]}{where}"))
            # a worker that cannot start is not restarted
            self._life.move(S.CLOSING, only_from=_SUPERVISING)

    def _worker_exited(self) -> None:
        """Loop thread: the worker process is gone; reap it on the work thread, unless
        it is reaped at once (usual: report without delay, callers look it up soon)."""
        if self._life.is_in(*_SUPERVISING):
            proc = self.process
            code = proc.exit_code_now()
            if code is not None:
                self._reaped(proc, code)
            else:
                self._work.submit(proc.reap, then=lambda code, _: self._reaped(proc, code))

    def _reaped(self, proc: WorkerProcess, code: int | None) -> None:
        """Loop thread: the worker process is reaped. Report it; restart it or not."""
        if not self._life.is_in(*_SUPERVISING) or proc is not self.process:
            return            # a stop we asked for: finish_close() reaps and reports
        pid, address = proc.pid, self.worker_address
        leaving = proc.leaving
        planned = self._life.is_in(S.RESTARTING) or leaving == "lifetime-restart"
        why = self._kill_reason or (f"it left: {leaving}" if leaving else
                                    "stopped to restart" if planned else "it crashed")
        how = f"{describe_exit(code)}; {why}"
        running = proc.running_keys()
        proc.release()
        self.worker_address = ""
        if not self._started.done():
            hint = ("" if self._failure_reported else
                    ". If the script that starts the cluster does so at import time, put "
                    "that code under 'if __name__ == \"__main__\":' (worker processes "
                    "import the script)")
            self._started.set_exception(MpnetError(
                f"the worker process (pid {pid}) died while starting: {how}{hint}"))
            self._life.move(S.CLOSING, only_from=_SUPERVISING)
            return
        if leaving in ("scheduler-gone", "retired") and not planned:
            self._report_exit(address, pid, code, how, restarting=False, running=running)
            log.info("%s: worker %s (pid %s) left: %s", self.id, address, pid, leaving)
            # Closing from now on, not once the closer thread runs: a restart asked
            # meanwhile (client.restart() just after a retirement) must not respawn it.
            if self._life.move(S.CLOSING, only_from=_SUPERVISING):
                self._begin_close_on_loop()
            self._close_in_background()
            return
        if planned:
            self._life.move(S.RESTARTING, only_from=(S.RUNNING,))
            self._report_exit(address, pid, code, how + " as asked", restarting=True, running=running)
            self._restart()
            return
        delay = self._policy.exited(time.monotonic())
        if delay is None:
            how += (f"; it died {self._policy.recent} times within "
                    f"{self.config.restart_window:.0f}s, so its nanny gave up restarting it")
            log.error("%s: worker %s (pid %s) died: %s", self.id, address, pid, how)
            self._report_exit(address, pid, code, how, restarting=False, running=running)
            self._close_in_background()
            return
        log.warning("%s: worker %s (pid %s) died: %s; restarting in %.1fs", self.id,
                    address or "(not yet started)", pid, how, delay)
        self._report_exit(address, pid, code, how, restarting=True, running=running)
        self._restart_timer = self.loop.call_later(delay, self._restart)

    def _report_exit(self, address: str, pid: int | None, code: int | None, how: str,
                     restarting: bool, running: list[str] | None = None) -> None:
        """Tell the scheduler; ``running`` names the tasks the worker was running when it
        died (None: not known), so only they are charged with its death."""
        if self.scheduler is not None and not self.scheduler.closed and address:
            self.scheduler.send([Msg.WORKER_EXITED, address, pid, code, how, restarting,
                                 running])

    def _restart(self) -> None:
        if not self._life.is_in(*_SUPERVISING):
            return
        self.restarts += 1
        self._spawn()

    def restart_worker(self, reason: str = "asked") -> None:
        """Restart the worker process now (loop thread): stop it by escalation, then
        start a new one. Not counted as a crash."""
        if not self._life.is_in(*_SUPERVISING):
            return
        if self._spawning:        # a fresh process is starting already
            log.info("%s: not restarting a worker that is starting (%s)", self.id, reason)
            return
        log.info("%s: restarting worker %s: %s", self.id, self.worker_address, reason)
        self._life.move(S.RESTARTING, only_from=(S.RUNNING,))
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        if self.process is not None and self.process.is_alive():
            self.process.stop_soon(grace=self.config.close_timeout / 3)
        else:
            self._restart()

    def _close_in_background(self) -> None:
        """Close from a thread of our own: close() blocks, and we are on the loop. One
        such thread at most; wait_closed() and close() join it."""
        with self._lock:
            if self._closer is not None or self._life.is_in(S.CLOSED):
                return
            t = self._closer = threading.Thread(target=self.close, daemon=True,
                                                name="mpnet-nanny-closer")
        t.start()

    # --- scheduler -----------------------------------------------------------------
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

    def _close_requested(self, conn: Connection, reason: str, leave: str = "") -> None:
        log.info("%s asked to close: %s", self.id, reason)
        self._close_in_background()

    def _restart_requested(self, conn: Connection, reason: str) -> None:
        self.restart_worker(reason)

    def _logs(self, conn: Connection, req_id: int, n: int) -> None:
        conn.reply(req_id, True, logring.lines(n))

    # The link (mpnet.comm.link) reconnects and registers again; the nanny only says so
    # (loop thread). Exit reports sent meanwhile wait in the link for the reconnect.
    def _scheduler_lost(self, exc: BaseException | None) -> None:
        if self._status in ("running", "restarting"):
            log.warning("%s lost its scheduler (%s); trying to reach it again for %.0fs",
                        self.id, exc or "closed", self.config.death_timeout)

    def _scheduler_back(self, answer: object) -> None:
        log.info("%s: reconnected to the scheduler at %s", self.id, self.scheduler_address)

    def _scheduler_gone(self, error: BaseException) -> None:
        if self._status not in ("running", "restarting"):
            return
        log.error("%s: the scheduler at %s did not come back within %.0fs (%s); "
                  "stopping", self.id, self.scheduler_address, self.config.death_timeout,
                  error)
        self._close_in_background()

    def __repr__(self) -> str:
        return f"<Nanny {self.id} worker={self.worker_address or '-'} {self.status}>"


def close_all(services: list, timeout: float) -> None:
    """Close nannies and workers in parallel under one deadline (``timeout`` seconds):
    ask every nanny's worker to stop first, then wait for each, escalating."""
    deadline = time.monotonic() + timeout
    nannies = [s for s in services if isinstance(s, Nanny)]
    for nanny in nannies:
        nanny.begin_close()
    for nanny in nannies:
        nanny.finish_close(deadline)
    for service in services:
        if not isinstance(service, Nanny):
            service.close(max(0.1, deadline - time.monotonic()))
