"""Lifecycles: one small state enum and guarded transitions, shared by every server.

Each role (scheduler, worker, nanny, client session, clusters) declares the moves it
allows as a table ``{state: {next states}}`` and holds one :class:`Lifecycle`. Moves
happen under the lifecycle's own lock, so two threads racing to close see exactly one
winner (``move(..., only_from=...)`` returns False to the loser); a move the table does
not allow is a bug and raises :class:`~mpnet.errors.LifecycleError` naming both states.
Waiters block on a condition (``wait_for``), never on a sleep-poll.

``Status`` is a ``str`` enum: ``worker.status == "running"`` keeps working for users
and logs print the plain word.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Iterable, Mapping

from .errors import LifecycleError

__all__ = ["Status", "Lifecycle", "SERVER_MOVES", "server_moves"]


class Status(str, enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    CONNECTING = "connecting"
    RUNNING = "running"
    OPEN = "open"                   # a client session that is connected
    RECONNECTING = "reconnecting"
    RESTARTING = "restarting"
    DISCONNECTED = "disconnected"   # gave up reconnecting; only close() is left
    FAILED = "failed"               # start() raised; close() still frees what it made
    CLOSING = "closing"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


S = Status

# The moves of a plain server (scheduler, clusters): start once, close from anywhere.
SERVER_MOVES: Mapping[Status, frozenset] = {
    S.CREATED: frozenset({S.STARTING, S.CLOSING, S.CLOSED}),
    S.STARTING: frozenset({S.RUNNING, S.FAILED, S.CLOSING}),
    S.RUNNING: frozenset({S.CLOSING}),
    S.FAILED: frozenset({S.CLOSING, S.CLOSED}),
    S.CLOSING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
}


def server_moves(extra: Mapping[Status, Iterable[Status]]) -> dict[Status, frozenset]:
    """A server's table with ``extra`` moves added to :data:`SERVER_MOVES` (a worker
    that reconnects, a nanny that restarts its worker)."""
    table = {state: set(nxt) for state, nxt in SERVER_MOVES.items()}
    for state, nxt in extra.items():
        table.setdefault(state, set()).update(nxt)
    return {state: frozenset(nxt) for state, nxt in table.items()}


class Lifecycle:
    """The state of one object, moved only along its table's edges.

    ``move(to)`` raises on a move the table forbids; ``move(to, only_from=...)`` is the
    race-safe form: it moves only from one of those states and says whether it did.
    """

    __slots__ = ("owner", "_moves", "_state", "_cond")

    def __init__(self, owner: str, moves: Mapping[Status, Iterable[Status]] = SERVER_MOVES,
                 start: Status = S.CREATED):
        self.owner = owner
        self._moves = {state: frozenset(nxt) for state, nxt in moves.items()}
        self._state = start
        self._cond = threading.Condition(threading.Lock())

    @property
    def state(self) -> Status:
        return self._state

    def is_in(self, *states: Status) -> bool:
        return self._state in states

    def move(self, to: Status, *, only_from: Iterable[Status] | None = None) -> bool:
        with self._cond:
            now = self._state
            if now is to:
                return False
            if only_from is not None and now not in only_from:
                return False
            if to not in self._moves.get(now, ()):
                if only_from is not None:
                    return False
                raise LifecycleError(f"{self.owner}: cannot go from {now.value!r} to "
                                     f"{to.value!r}")
            self._state = to
            self._cond.notify_all()
            return True

    def wait_for(self, *states: Status, timeout: float | None = None) -> bool:
        """Block until the state is one of ``states``; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._state not in states:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def __repr__(self) -> str:
        return f"<Lifecycle {self.owner} {self._state.value}>"
