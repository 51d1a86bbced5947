"""A link's requests waiting for their REPLY: one table, shared by every kind of link.

::

    request(*msg) ── [type, req_id, *fields] ──► peer ── REPLY(req_id, ok, value) ──►
    answer(msg): the request's future gets the value, or the error the peer named

A TCP ``Connection`` and an in-process link both keep one; closing the link fails every
request still waiting (``fail_all``), and a request whose message could not be sent
fails alone (``fail``). Loop thread only, as the link that owns it.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future
from typing import Callable

from ..errors import CommClosedError, FrameTooLargeError, MpnetError

__all__ = ["Requests", "TOO_LARGE"]

#: The prefix of a REPLY's error text that stands for a FrameTooLargeError.
TOO_LARGE = "FrameTooLargeError: "


class Requests:
    __slots__ = ("_pending", "_ids")

    def __init__(self) -> None:
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, req_id: object) -> bool:
        return req_id in self._pending

    def new(self, send: Callable[[list], None], msg: tuple, is_open: bool,
            peer: str) -> Future:
        """Send ``[type, req_id, *fields]`` with ``send``; the future gets the answer."""
        fut: Future = Future()
        if not is_open:
            fut.set_exception(CommClosedError(f"link to {peer} is closed"))
            return fut
        req_id = next(self._ids)
        self._pending[req_id] = fut
        send([msg[0], req_id, *msg[1:]])
        return fut

    def answer(self, msg: list, peer: str) -> None:
        """A REPLY ``[REPLY, req_id, ok, value]`` arrived."""
        fut = self._pending.pop(msg[1], None)
        if fut is None:
            return
        value = msg[3]
        if msg[2]:
            fut.set_result(value)
        elif type(value) is str and value.startswith(TOO_LARGE):
            fut.set_exception(FrameTooLargeError(f"{peer}: {value[len(TOO_LARGE):]}"))
        else:
            fut.set_exception(value if isinstance(value, BaseException)
                              else MpnetError(f"{peer}: {value}"))

    def fail(self, req_id: int, err: BaseException) -> None:
        self._pending.pop(req_id).set_exception(err)

    def fail_all(self, err: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)

