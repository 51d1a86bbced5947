"""Plugins: user objects with hooks that a scheduler, worker or nanny calls.

Register one from a preload (``service.add_plugin(p)``), by constructor argument
(``Scheduler(plugins=[p])``), or with ``client.register_plugin(p)``, which installs a
worker or nanny plugin on every current worker (nanny) and on every one that joins
later. A hook that raises is logged with the plugin's name; the service goes on.
Every hook is optional: subclass and override what you need.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["SchedulerPlugin", "WorkerPlugin", "NannyPlugin", "call_hook", "plugin_name"]

log = logging.getLogger("mpnet.plugins")


class SchedulerPlugin:
    """Hooks run on the scheduler's loop thread: keep them quick."""

    name: str | None = None

    def start(self, scheduler: Any) -> None: ...
    def close(self) -> None: ...
    def add_worker(self, scheduler: Any, worker: str) -> None: ...
    def remove_worker(self, scheduler: Any, worker: str) -> None: ...
    def add_client(self, scheduler: Any, client: str) -> None: ...
    def remove_client(self, scheduler: Any, client: str) -> None: ...
    def transition(self, key: str, start: str, finish: str) -> None: ...


class WorkerPlugin:
    """Hooks run in the worker process (``transition`` on its loop thread)."""

    name: str | None = None

    def setup(self, worker: Any) -> None: ...
    def teardown(self, worker: Any) -> None: ...
    def transition(self, key: str, start: str, finish: str) -> None: ...


class NannyPlugin:
    """Hooks run in the nanny's process; ``setup`` again for each new worker process."""

    name: str | None = None

    def setup(self, nanny: Any) -> None: ...
    def teardown(self, nanny: Any) -> None: ...


def plugin_name(plugin: Any) -> str:
    return getattr(plugin, "name", None) or type(plugin).__name__


def call_hook(plugins: dict[str, Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on every plugin that has it, logging (not raising) failures."""
    for name, plugin in list(plugins.items()):
        fn = getattr(plugin, hook, None)
        if fn is None:
            continue
        try:
            fn(*args)
        except Exception:   # a plugin must never take its service down
            log.exception("plugin %r failed in %s()", name, hook)
