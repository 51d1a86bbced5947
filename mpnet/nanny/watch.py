"""The nanny's watchdog: is its worker process hung, or over its memory limit?

Loop thread, every ``min(memory_interval, ping_interval)`` seconds: a ping over the
pipe every ``ping_interval``, answered by a pong (``WorkerProcess.last_pong``); no
answer for ``ping_timeout`` means the worker hangs. Its RSS above
``memory_terminate_fraction`` of ``memory_limit`` means it leaks; RSS is read with
psutil on the nanny's work thread, never on the loop. Either way the watchdog calls
``kill(reason)`` once; the nanny kills, reports and restarts.
"""

from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["Watchdog"]


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class Watchdog:
    """``process()`` is the worker process now (or None); ``supervising()`` says
    whether to go on; ``work`` runs blocking reads off the loop."""

    def __init__(self, loop: Any, config: Any, memory_limit: int, work: Any,
                 process: Callable[[], Any], supervising: Callable[[], bool],
                 kill: Callable[[str], None]):
        self.loop, self.config, self.memory_limit, self.work = loop, config, memory_limit, work
        self._process, self._supervising, self._kill = process, supervising, kill
        self.every = min(config.memory_interval, config.ping_interval)
        self.killing = False            # kill() was called for the current process
        self._timer: Any = None
        self._last_ping = 0.0

    def start(self) -> None:
        """Loop thread (idempotent): watch the current process, a new one after a kill."""
        self.killing = False
        if self._timer is None:
            self._timer = self.loop.call_later(self.every, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _tick(self) -> None:
        self._timer = None
        if not self._supervising():
            return
        proc, cfg = self._process(), self.config
        if proc is not None and proc.address and not self.killing and proc.is_alive():
            now = time.monotonic()
            if self.memory_limit:
                self.work.submit(proc.rss, then=lambda rss, _: self._check_memory(proc, rss))
            if now - proc.last_pong > cfg.ping_timeout:
                self._kill_once(f"hung: it did not answer its nanny for "
                                f"{cfg.ping_timeout:.1f}s")
            elif now - self._last_ping >= cfg.ping_interval:
                self._last_ping = now
                proc.ping()
        self._timer = self.loop.call_later(self.every, self._tick)

    def _check_memory(self, proc: Any, rss: int | None) -> None:
        if (proc is self._process() and rss and not self.killing and proc.is_alive()
                and self._supervising()
                and rss > self.memory_limit * self.config.memory_terminate_fraction):
            self._kill_once(f"killed for memory: it used {_mib(rss)} of its "
                            f"{_mib(self.memory_limit)} limit")

    def _kill_once(self, reason: str) -> None:
        self.killing = True
        self._kill(reason)
