"""A client's cluster-wide operations: run a function everywhere, restarts, retirement,
plugins, versions, the scheduler's view of the cluster.

Each is one request to the scheduler, which does the choreography (see
:mod:`mpnet.scheduler.operations`). ``Client`` hands these calls here; this object needs
only the client's session (``check_open``, ``request``, and ``snapshot`` of the futures,
which a restart cancels) and its loop.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ..comm.protocol import Msg
from ..comm.serialize import dumps
from ..errors import VersionMismatchError, WorkerLostError
from ..versions import format_mismatches, get_versions, mismatches
from .session import Session
from .structures import bind, unwrap

__all__ = ["Operations"]


class Operations:
    """The cluster-wide calls of one client, through its ``session``."""

    def __init__(self, session: Session, loop: Any):
        self._session, self._loop = session, loop

    # --- running functions everywhere -------------------------------------------------
    def run(self, fn: Callable, /, *args: Any, workers: Iterable[str] | None = None,
            timeout: float | None = None, **kwargs: Any) -> dict:
        """Call ``fn(*args, **kwargs)`` once on every worker: ``{address: result}``.

        ``fn`` may take ``mpnet_worker`` (or ``dask_worker``) to get the Worker object.
        """
        self._session.check_open("run")
        payload = dumps(bind(fn, args, kwargs), what="function")
        if isinstance(workers, str):
            workers = [workers]
        replies = self._session.request(Msg.RUN, payload,
                                        None if workers is None else list(workers),
                                        timeout=timeout)
        out = {}
        for address, ok, value in replies:
            if not ok:
                raise WorkerLostError(f"worker {address} did not answer run(): {value}")
            out[address] = unwrap(value)
        return out

    def run_on_scheduler(self, fn: Callable, /, *args: Any, timeout: float | None = None,
                         **kwargs: Any) -> Any:
        """Call ``fn`` in the scheduler's process (it may take ``mpnet_scheduler``)."""
        self._session.check_open("run_on_scheduler")
        payload = dumps(bind(fn, args, kwargs), what="function")
        return unwrap(self._session.request(Msg.RUN_ON_SCHEDULER, payload, timeout=timeout))

    def scheduler_info(self, timeout: float | None = None) -> dict:
        """``{"id", "address", "started" (a ``time.time()``), "workers": {address:
        details}, ...}`` as in dask."""
        self._session.check_open("scheduler_info")
        return self._session.request(Msg.INFO, timeout=timeout)

    # --- restarts and retirement -------------------------------------------------------
    def restart(self, timeout: float = 60.0) -> None:
        """Restart every worker through its nanny and cancel every future (their
        results would be gone); return once as many workers are back (``timeout`` s)."""
        self._session.check_open("restart")

        def cancel_all() -> None:
            for fut in self._session.snapshot():
                fut._set_cancelled("the cluster was restarted (client.restart())")
        self._loop.run_sync(cancel_all)
        self._request_op(Msg.RESTART, None, timeout, timeout=timeout + 5)

    def restart_workers(self, workers: Iterable[str], timeout: float = 60.0) -> dict:
        """Restart the named workers (addresses or names); their tasks move elsewhere.
        Returns ``{address: "OK"}`` per worker restarted (a worker without a nanny
        cannot be: it says so instead)."""
        self._session.check_open("restart_workers")
        chosen = self._workers_named(workers)
        self._request_op(Msg.RESTART, list(workers), timeout, timeout=timeout + 5)
        return {a: "OK" if info.get("nanny") else "not restarted: it has no nanny"
                for a, info in chosen.items()}

    def retire_workers(self, workers: Iterable[str], timeout: float = 60.0) -> dict:
        """Move the results the named workers hold to other workers, then close them
        (their nannies do not restart them). Returns ``{address: info}`` of the workers
        retired, as dask does."""
        self._session.check_open("retire_workers")
        chosen = self._workers_named(workers)
        self._request_op(Msg.RETIRE_WORKERS, list(chosen), timeout=timeout)
        return chosen

    def _workers_named(self, workers: Iterable[str]) -> dict:
        if isinstance(workers, str):
            raise TypeError("workers must be a list of addresses or names, not one string")
        names = set(workers)
        return {a: info for a, info in self.scheduler_info()["workers"].items()
                if a in names or info.get("name") in names}

    def _request_op(self, *msg: Any, timeout: float) -> str:
        try:
            return self._session.request(*msg, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"{Msg(msg[0]).name.lower()} did not finish within "
                               f"{timeout}s") from None

    # --- plugins and versions ----------------------------------------------------------
    def register_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Install a scheduler, worker or nanny plugin on the cluster.

        Worker and nanny plugins go to every current worker (nanny) and to every one
        that joins later. Raises if it failed to install somewhere, naming where.
        """
        from ..plugins import NannyPlugin, SchedulerPlugin, WorkerPlugin, plugin_name
        self._session.check_open("register_plugin")
        if isinstance(plugin, SchedulerPlugin):
            kind = "scheduler"
        elif isinstance(plugin, NannyPlugin):
            kind = "nanny"
        elif isinstance(plugin, WorkerPlugin) or hasattr(plugin, "setup"):
            kind = "worker"
        else:
            raise TypeError(f"{type(plugin).__name__} is not a SchedulerPlugin, WorkerPlugin "
                            "or NannyPlugin")
        payload = dumps(plugin, what="plugin")
        failures = self._session.request(Msg.REGISTER_PLUGIN, kind,
                                         name or plugin_name(plugin), payload)
        if failures:
            raise RuntimeError("plugin failed to install:\n" + "\n".join(map(str, failures)))

    def get_versions(self, check: bool = False, packages: Iterable[str] = ()) -> dict:
        """Versions of Python, mpnet and key packages on client, scheduler and workers.

        ``check=True`` raises :class:`~mpnet.VersionMismatchError` with a table of the
        differences (dask only warns). ``packages`` adds packages to compare.
        """
        packages = tuple(packages)
        result = {"client": get_versions(packages),
                  "scheduler": self.run_on_scheduler(get_versions, packages),
                  "workers": self.run(get_versions, packages)}
        if check:
            table = format_mismatches(mismatches({"client": result["client"],
                                                  "scheduler": result["scheduler"],
                                                  **result["workers"]}))
            if table:
                raise VersionMismatchError("client, scheduler and workers run different "
                                           "software; install the same versions:\n" + table)
        return result
