"""A role's message table: each message to its one handler, checked on arrival.

::

    Connection ── [Msg, field, ...] ──► Dispatcher ── field count (the handler's own
    parameters) and each field (mpnet.comm.fields) ── ok ──► handler(conn, *fields)
                                                     └─ wrong ──► ProtocolError: that
                                                        connection closes, no handler runs
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ..errors import ProtocolError
from .fields import FIELDS, check_fields
from .protocol import Msg

__all__ = ["Dispatcher"]


class Dispatcher:
    """A role's message table: one handler per :class:`Msg`, checked when it is built.

    Each message's field count is checked against its handler's parameters, and each
    field against :data:`mpnet.comm.fields.FIELDS` (type and range), before the handler
    runs: a peer that sends a wrong message gets a ProtocolError (its connection closes)
    instead of a TypeError deep in a handler or a bad value parked in a state machine.
    A type the role does not handle is a ProtocolError too, never a silent ``None``.
    """

    def __init__(self, role: str, handlers: dict[int, Callable], *, with_conn: bool = True):
        self.role = role
        self.with_conn = with_conn
        self._table: dict[int, tuple[Callable, int, float, Any]] = {}
        for msg_type, fn in handlers.items():
            Msg(msg_type)
            self._table[int(msg_type)] = (fn, *_arity(fn, skip=1 if with_conn else 0),
                                          FIELDS.get(int(msg_type)))

    def __call__(self, conn: Any, msg: list) -> None:
        entry = self._table.get(msg[0])
        if entry is None:
            raise ProtocolError(f"a {self.role} has no handler for message type "
                                f"{msg[0]}{_name(msg[0])}")
        fn, low, high, checks = entry
        if not low <= len(msg) - 1 <= high:
            raise ProtocolError(f"malformed {Msg(msg[0]).name} message: {len(msg) - 1} "
                                f"fields where a {self.role} expects {low} to {high}")
        if checks is not None:
            for check, value in zip(checks, msg[1:]):
                if not check(value):
                    check_fields(msg, checks)        # raises, naming the field
        if self.with_conn:
            fn(conn, *msg[1:])
        else:
            fn(*msg[1:])


def _name(msg_type: Any) -> str:
    """`` (NAME)`` if the type is a known one (it came from a peer: it may be anything)."""
    try:
        return f" ({Msg(msg_type).name})"
    except (ValueError, TypeError):
        return ""


def _arity(fn: Callable, skip: int) -> tuple[int, float]:
    """(fewest, most) positional arguments ``fn`` takes after the first ``skip``."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    low = high = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return low, float("inf")
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            if p.default is p.empty:
                low += 1
    return low, high
