"""The client's cluster-wide operations: restarts, retirement, plugins, versions.

Mixed into :class:`~mpnet.Client`; each is one request to the scheduler, which does the
choreography (see :mod:`mpnet.scheduler.operations`).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..comm.protocol import Msg
from ..comm.serialize import dumps
from ..errors import VersionMismatchError
from ..versions import format_mismatches, get_versions, mismatches

__all__ = ["OperationsMixin"]


class OperationsMixin:
    def restart(self, timeout: float = 60.0) -> None:
        """Restart every worker through its nanny and cancel every future (their
        results would be gone); return once as many workers are back (``timeout`` s)."""
        self._check_open("restart")

        def cancel_all() -> None:
            for fut in self._session.snapshot():
                fut._set_cancelled("the cluster was restarted (client.restart())")
        self.loop.run_sync(cancel_all)
        self._request_op(Msg.RESTART, None, timeout, timeout=timeout + 5)

    def restart_workers(self, workers: Iterable[str], timeout: float = 60.0) -> dict:
        """Restart the named workers (addresses or names); their tasks move elsewhere.
        Returns ``{address: "OK"}`` per worker restarted (a worker without a nanny
        cannot be: it says so instead)."""
        self._check_open("restart_workers")
        chosen = self._workers_named(workers)
        self._request_op(Msg.RESTART, list(workers), timeout, timeout=timeout + 5)
        return {a: "OK" if info.get("nanny") else "not restarted: it has no nanny"
                for a, info in chosen.items()}

    def retire_workers(self, workers: Iterable[str], timeout: float = 60.0) -> dict:
        """Move the results the named workers hold to other workers, then close them
        (their nannies do not restart them). Returns ``{address: info}`` of the workers
        retired, as dask does."""
        self._check_open("retire_workers")
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
            return self._request(*msg, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"{Msg(msg[0]).name.lower()} did not finish within "
                               f"{timeout}s") from None

    def register_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Install a scheduler, worker or nanny plugin on the cluster.

        Worker and nanny plugins go to every current worker (nanny) and to every one
        that joins later. Raises if it failed to install somewhere, naming where.
        """
        from ..plugins import NannyPlugin, SchedulerPlugin, WorkerPlugin, plugin_name
        self._check_open("register_plugin")
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
        failures = self._request(Msg.REGISTER_PLUGIN, kind, name or plugin_name(plugin),
                                 payload)
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

