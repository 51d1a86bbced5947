"""When to restart a worker that died: a small pure policy, tested without processes.

- The first unexpected exit is restarted at once.
- Exits that follow each other within ``quick`` seconds wait ``0.1 s``, then twice as
  long each time, up to ``max_delay``; a calm period resets the delay.
- More than ``max_restarts`` exits within ``window`` seconds: give up, so a worker that
  cannot live (a broken environment, a task that kills it) does not restart forever.
"""

from __future__ import annotations

import collections

__all__ = ["RestartPolicy"]


class RestartPolicy:
    def __init__(self, max_restarts: int = 10, window: float = 60.0, quick: float = 10.0,
                 first_delay: float = 0.1, max_delay: float = 5.0):
        self.max_restarts, self.window, self.quick = max_restarts, window, quick
        self.first_delay, self.max_delay = first_delay, max_delay
        self._exits: collections.deque[float] = collections.deque()
        self._delay = 0.0

    def exited(self, now: float) -> float | None:
        """An unexpected exit at ``now``: the delay before restarting, or None to give up."""
        quick = bool(self._exits) and now - self._exits[-1] < self.quick
        self._exits.append(now)
        while self._exits and now - self._exits[0] > self.window:
            self._exits.popleft()
        if len(self._exits) > self.max_restarts:
            return None
        self._delay = min(self.max_delay, self._delay * 2 or self.first_delay) if quick else 0.0
        return self._delay

    @property
    def recent(self) -> int:
        """Exits counted in the current window."""
        return len(self._exits)
