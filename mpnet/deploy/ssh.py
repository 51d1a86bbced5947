"""SSHCluster: a scheduler and workers on other machines, started over ssh with paramiko.

::

    this process                                   each host (over one ssh connection)
    ┌──────────────────────────────────────┐
    │ SSHCluster                           │  exec  python -m mpnet.deploy.ssh_remote
    │  mpnet-ssh-connect-<host> × hosts ───┼──────►  (the scheduler, on one host)
    │   (connect, authenticate, launch:    │  exec  python -m mpnet.deploy.ssh_remote
    │    all hosts at once: the ssh phase) │──────►  (nannies + worker processes)
    │  RemoteProcess per process: reader   │ stdin:  one JSON line with the token, then EOF
    │   threads, events, [host] output     │ stdout: MPNET-SSH {json} events
    └──────────────────────────────────────┘ stderr: log lines

Start-up: every host is connected and its remote process launched in parallel; while the
remote interpreters import, the scheduler's spec goes out; once its address comes back,
every worker host gets its spec (scheduler address, token, options) at once. Addresses
come back as JSON events, never scraped from logs. Close: EOF to every worker process,
then to the scheduler's (each closes gracefully and exits), then the channels and
connections close. A remote process whose ssh session ends for any other reason (this
process killed, the connection lost) sees the same EOF and exits the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import paramiko

from ..comm.auth import new_token
from ..config import make_config
from ..lifecycle import Lifecycle, Status
from .scheduler_file import remove_scheduler_file, write_scheduler_file
from .ssh_connect import (ConnectOptions, HostSpec, SSHError, close_quietly, connect,
                          parse_host)
from .ssh_session import RemoteProcess, remote_command

__all__ = ["SSHCluster", "SSHError", "StartTimes"]

log = logging.getLogger("mpnet.ssh")
remote_log = logging.getLogger("mpnet.ssh.remote")

_live: "weakref.WeakSet[SSHCluster]" = weakref.WeakSet()

KEEPALIVE_INTERVAL = 1.0     # seconds between keepalive lines to every remote process

_SCHEDULER_OPTIONS = {"port", "host", "interface", "idle_timeout"}
_WORKER_OPTIONS = {"nworkers", "n_workers", "nthreads", "memory_limit", "worker_port",
                   "nanny_port", "host", "interface", "death_timeout", "name", "resources"}


@dataclass(frozen=True)
class StartTimes:
    """Seconds from the start of :class:`SSHCluster` to each milestone."""
    ssh: float            # every host connected, authenticated, and its process launched
    scheduler: float      # the scheduler's address known
    total: float          # every worker registered


def _log_output(label: str, line: str) -> None:
    remote_log.info("[%s] %s", label, line)


def _as_hosts(hosts: Sequence[str | HostSpec]) -> list[HostSpec]:
    return [h if isinstance(h, HostSpec) else parse_host(h) for h in hosts]


def _check_keys(options: dict, known: set, what: str) -> dict:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
    return dict(options)


class SSHCluster:
    """``SSHCluster(["node1", "node2", "node3"])``: ready when it returns.

    As in dask, the scheduler runs on ``hosts[0]`` and workers on ``hosts[1:]``; with
    ``scheduler="node1"`` every host of ``hosts`` gets workers (``mpnet ssh``'s way).

    ``connect_options`` (a dict, or one per host in the order scheduler then workers):
    ``username``, ``port``, ``key_filename`` (or ``client_keys``), ``password``,
    ``known_hosts``, ``accept_new``, ``config_file``, ``timeout``.
    ``worker_options``: ``nworkers``, ``nthreads``, ``memory_limit``, ``worker_port``,
    ``nanny_port``, ``host``, ``interface``, ``death_timeout``, ``name``, ``resources``.
    ``scheduler_options``: ``port`` (8786), ``host``, ``interface``, ``idle_timeout``.
    ``remote_python`` defaults to this interpreter's path; ``remote_dir`` is where the
    remote processes start. ``allow_missing`` worker hosts may fail to start.
    ``output(label, line)`` receives every remote output line (default: the
    ``mpnet.ssh.remote`` logger). ``timeout`` bounds the start-up, in seconds.
    ``config`` holds :class:`~mpnet.config.Config` overrides for every remote process
    (e.g. ``{"worker_ttl": 5}``); they are checked here, not first on the hosts.
    """

    def __init__(self, hosts: Sequence[str | HostSpec],
                 connect_options: dict | list[dict] | None = None,
                 worker_options: dict | None = None, scheduler_options: dict | None = None,
                 remote_python: str | list[str] | None = None, *,
                 scheduler: str | HostSpec | None = None, remote_dir: str | None = None,
                 token: str | None = None, scheduler_file: str | None = None,
                 log_directory: str | None = None, allow_missing: int = 0,
                 output: Callable[[str, str], None] | None = None, timeout: float = 60.0,
                 config: dict | None = None):
        specs = _as_hosts(hosts)
        if scheduler is None:
            if not specs:
                raise ValueError("SSHCluster needs at least one host")
            self.scheduler_host, self.worker_hosts = specs[0], specs[1:]
        else:
            self.scheduler_host = _as_hosts([scheduler])[0]
            self.worker_hosts = specs
        everyone = [self.scheduler_host, *self.worker_hosts]
        self._connect = self._per_host(connect_options, len(everyone), "connect_options")
        self._connect = [ConnectOptions.from_dict(o) for o in self._connect]
        self._pythons = (list(remote_python) if isinstance(remote_python, (list, tuple))
                         else [remote_python or _default_python()] * len(everyone))
        if len(self._pythons) != len(everyone):
            raise ValueError(f"remote_python lists {len(self._pythons)} pythons for "
                             f"{len(everyone)} hosts")
        self.scheduler_options = _check_keys(scheduler_options or {}, _SCHEDULER_OPTIONS,
                                             "scheduler option(s)")
        self.worker_options = _check_keys(worker_options or {}, _WORKER_OPTIONS,
                                          "worker option(s)")
        if "n_workers" in self.worker_options:      # dask's spelling
            self.worker_options["nworkers"] = self.worker_options.pop("n_workers")
        self.remote_dir = remote_dir
        self.config = dict(config or {})
        make_config(**self.config)              # a typo fails here, not on every host
        self.token = token or new_token()
        self.scheduler_file = scheduler_file
        self.log_directory = Path(log_directory).expanduser() if log_directory else None
        self.allow_missing = allow_missing
        self._output = output or _log_output
        self.timeout = timeout
        self.scheduler_address = ""
        self.workers: list[dict] = []       # {"host", "address", "nanny", "pid"}
        self.failed: dict[str, str] = {}    # worker host → why it did not start
        self.times: StartTimes | None = None
        self._clients: list[paramiko.SSHClient] = []
        self._scheduler: RemoteProcess | None = None
        self._worker_procs: list[RemoteProcess] = []
        self._log_files: list[Any] = []
        self._lock = threading.Lock()
        self._life = Lifecycle("SSHCluster")
        self._life.move(Status.STARTING)
        self._stop_keepalive = threading.Event()
        self._keepalive: threading.Thread | None = None
        self._id = f"ssh-{os.getpid()}-{new_token()[:8]}"
        # from the start: a scheduler waiting for slow workers must not think us gone
        # daemon, joined by close(): a cluster the script forgot must not hang the
        # interpreter's exit before the atexit hook below closes it
        self._keepalive = threading.Thread(target=self._send_keepalives,
                                           name="mpnet-ssh-keepalive", daemon=True)
        self._keepalive.start()
        try:
            self._start()
        except BaseException:
            self._life.move(Status.FAILED, only_from=(Status.STARTING,))
            self.close()
            raise
        self._life.move(Status.RUNNING, only_from=(Status.STARTING,))
        _live.add(self)

    def _send_keepalives(self) -> None:
        while not self._stop_keepalive.wait(KEEPALIVE_INTERVAL):
            for proc in [self._scheduler, *self._worker_procs]:
                if proc is not None:
                    proc.keepalive()

    @staticmethod
    def _per_host(options: dict | list[dict] | None, n: int, what: str) -> list[dict]:
        if isinstance(options, (list, tuple)):
            if len(options) != n:
                raise ValueError(f"{what} lists {len(options)} dicts for {n} hosts")
            return [dict(o or {}) for o in options]
        return [dict(options or {}) for _ in range(n)]

    # --- start ----------------------------------------------------------------------

    def _start(self) -> None:
        t0 = time.monotonic()
        everyone = [self.scheduler_host, *self.worker_hosts]
        launched = self._launch_all(everyone)
        t_ssh = time.monotonic() - t0
        sched = launched[0]
        if isinstance(sched, SSHError):
            raise sched
        self._scheduler = sched
        deadline = t0 + self.timeout
        _check_versions(sched, sched.expect("hello", self._left(deadline)))
        sched.send({"role": "scheduler", "token": self.token, "config": self.config,
                    "silence_timeout": self._silence_timeout(),
                    "port": self.scheduler_options.get("port", 8786),
                    **{k: v for k, v in self.scheduler_options.items() if k != "port"}})
        self.scheduler_address = sched.expect("scheduler", self._left(deadline))["address"]
        sched.expect("ready", self._left(deadline))
        t_sched = time.monotonic() - t0
        self._start_workers(launched[1:], deadline)
        self.times = StartTimes(ssh=t_ssh, scheduler=t_sched, total=time.monotonic() - t0)
        if self.scheduler_file:
            write_scheduler_file(self.scheduler_file, dict(
                address=self.scheduler_address, dashboard=None, id=self._id, pid=os.getpid(),
                host=str(self.scheduler_host), started=time.time(), token=self.token))
        log.info("cluster up: 1 scheduler, %d workers on %d hosts in %.2f s (ssh phase "
                 "%.2f s)", len(self.workers), len({w["host"] for w in self.workers}),
                 self.times.total, self.times.ssh)

    def _silence_timeout(self) -> float:
        """Seconds without a keepalive after which a remote process stops: the workers'
        death timeout, as for a lost scheduler."""
        return (self.worker_options.get("death_timeout")
                or make_config(**self.config).death_timeout)

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.1, deadline - time.monotonic())

    def _launch_all(self, hosts: list[HostSpec]) -> list[RemoteProcess | SSHError]:
        """Connect to every host, then launch every remote process: each step on all hosts
        at once, one thread per host (``mpnet-ssh-connect-<host>``) or process.

        Launching only once every host is connected keeps the remote interpreters'
        start-up (CPU-bound) from slowing the connections still being made. A host that
        appears twice (the scheduler's host also running workers) shares one connection.
        """
        distinct = list(dict.fromkeys(hosts))
        options = {spec: self._connect[hosts.index(spec)] for spec in distinct}
        clients: dict[HostSpec, paramiko.SSHClient | SSHError] = {}

        def connect_one(spec: HostSpec) -> None:
            try:
                client = connect(spec, options[spec])
            except SSHError as e:
                clients[spec] = e
                return
            except Exception as e:              # a paramiko surprise: still one line
                clients[spec] = SSHError(f"{spec}: {type(e).__name__}: {e}")
                return
            with self._lock:
                self._clients.append(client)
            clients[spec] = client

        results: list[RemoteProcess | SSHError | None] = [None] * len(hosts)

        def launch_one(i: int) -> None:
            spec, role = hosts[i], "scheduler" if i == 0 else "workers"
            client = clients[spec]
            if isinstance(client, SSHError):
                results[i] = client
                return
            try:
                results[i] = RemoteProcess(
                    client, f"{spec} {role}", remote_command(self._pythons[i], self.remote_dir),
                    output=self._output, log_file=self._open_log(spec, role),
                    python=self._pythons[i])
            except SSHError as e:
                results[i] = e

        _in_threads([(f"mpnet-ssh-connect-{spec}", connect_one, spec) for spec in distinct])
        _in_threads([(f"mpnet-ssh-launch-{i}", launch_one, i) for i in range(len(hosts))])
        return results  # type: ignore[return-value]

    def _open_log(self, spec: HostSpec, role: str) -> Any:
        if self.log_directory is None:
            return None
        self.log_directory.mkdir(parents=True, exist_ok=True)
        f = open(self.log_directory / f"{spec.host}-{role}.log", "a")
        with self._lock:
            self._log_files.append(f)
        return f

    def _start_workers(self, launched: list, deadline: float) -> None:
        spec = {"role": "workers", "token": self.token, "scheduler": self.scheduler_address,
                "config": self.config, "silence_timeout": self._silence_timeout(),
                "log_level": logging.getLogger("mpnet").getEffectiveLevel() or logging.INFO,
                **self.worker_options}
        live: list[tuple[HostSpec, RemoteProcess]] = []
        for host, proc in zip(self.worker_hosts, launched):
            if isinstance(proc, SSHError):
                self.failed[str(host)] = str(proc)
                continue
            self._worker_procs.append(proc)
            try:
                _check_versions(proc, proc.expect("hello", self._left(deadline)))
                proc.send(spec)
                live.append((host, proc))
            except SSHError as e:
                self.failed[str(host)] = str(e)
        for host, proc in live:
            try:
                while (event := proc.next_event(self._left(deadline), "workers"))[
                        "event"] == "worker":
                    self.workers.append({"host": str(host), **event})
                if event["event"] != "ready":
                    raise SSHError(f"{host}: unexpected event {event['event']!r}")
            except SSHError as e:
                self.failed[str(host)] = str(e)
        if len(self.failed) > self.allow_missing:
            reasons = list(self.failed.values())
            more = f" (and {len(reasons) - 1} more host(s) failed)" if len(reasons) > 1 else ""
            raise SSHError(reasons[0] + more)
        for why in self.failed.values():
            log.warning("started without a host: %s", why)

    # --- the running cluster --------------------------------------------------------

    @property
    def status(self) -> Status:
        return self._life.state

    @property
    def hosts(self) -> list[str]:
        return [str(self.scheduler_host), *map(str, self.worker_hosts)]

    def scheduler_alive(self) -> bool:
        """False once the scheduler's remote process ended (killed, host lost)."""
        return (self._scheduler is not None
                and self._scheduler.exit_status(timeout=0) is None
                and not self._scheduler.channel.closed)

    def get_logs(self) -> dict[str, str]:
        """Every remote process's output so far, by ``"host role"``."""
        procs = [p for p in [self._scheduler, *self._worker_procs] if p is not None]
        return {p.label: p.logs() for p in procs}

    def __repr__(self) -> str:
        return (f"<SSHCluster {self.scheduler_address or '-'} workers={len(self.workers)} "
                f"hosts={len(self.hosts)} {self.status}>")

    def __enter__(self) -> "SSHCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- close ----------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop every remote process (workers first), then the connections. Idempotent.

        Each remote process gets EOF and closes gracefully; whatever has not exited after
        ``timeout`` seconds is cut off by closing its channel, which ends it the same way.
        """
        if not self._life.move(Status.CLOSING, only_from=(Status.STARTING, Status.RUNNING,
                                                          Status.FAILED)):
            self._life.wait_for(Status.CLOSED, timeout=timeout)   # another close() runs
            return
        self._stop_keepalive.set()
        if self._keepalive is not None:
            self._keepalive.join()
        deadline = time.monotonic() + timeout
        try:
            self._stop(self._worker_procs, deadline - timeout / 3)
            if self._scheduler is not None:
                self._stop([self._scheduler], deadline)
        finally:
            for proc in [*self._worker_procs, self._scheduler]:
                if proc is not None:
                    proc.close(max(0.5, deadline - time.monotonic()))
            for client in self._clients:
                close_quietly(client)
            for f in self._log_files:
                with contextlib.suppress(OSError):
                    f.close()
            if self.scheduler_file and self.scheduler_address:
                remove_scheduler_file(self.scheduler_file, self._id)
            self._life.move(Status.CLOSED)
            _live.discard(self)

    @staticmethod
    def _stop(procs: list[RemoteProcess], deadline: float) -> None:
        for proc in procs:
            proc.stop()
        for proc in procs:
            proc.exit_status(max(0.0, deadline - time.monotonic()))



def _check_versions(proc: RemoteProcess, hello: dict) -> None:
    """Warn when a host runs another mpnet or Python: pickled functions may not load."""
    import platform
    from .. import __version__
    here = (__version__, ".".join(platform.python_version_tuple()[:2]))
    there = (hello.get("mpnet"), ".".join(str(hello.get("python", "")).split(".")[:2]))
    if here != there:
        log.warning("%s runs mpnet %s on Python %s, this side mpnet %s on Python %s: tasks "
                    "may fail to unpickle; give --remote-python", proc.label, *there, *here)


@atexit.register
def _close_forgotten_clusters() -> None:
    for cluster in list(_live):
        cluster.close()


def _in_threads(calls: list[tuple[str, Callable, Any]]) -> None:
    """Run each ``fn(arg)`` in a named thread of its own; return when all are done."""
    threads = [threading.Thread(target=fn, args=(arg,), name=name) for name, fn, arg in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _default_python() -> str:
    import sys
    return sys.executable
