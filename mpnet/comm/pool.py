"""One pool of direct connections to peers (other workers, actors' hosts), by address.

::

    get(address) ── open connection there? ──► its future (done)
                 ── a dial in flight?       ──► the same future (one dial per address)
                 ── else endpoints.connect(timeout=config.peer_connect_timeout)
    a dial that failed, or a connection that closed, leaves the pool at once: the next
    get() dials afresh (and the owner's on_close(address, conn, exc) hears of the close)

Loop thread only. Every user of peer connections (a worker fetching inputs, a client
fetching results, an actor caller) holds one pool for its role: the handshake names
the role, and the peer binds the connection to that role's handlers.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable

from ..config import Config
from ..errors import CommClosedError
from .connection import Connection
from .endpoints import connect
from .eventloop import EventLoop

__all__ = ["Pool"]


class Pool:
    """Connections for ``role`` (with ``info`` in the handshake); messages from the
    peers go to ``handler(conn, msg)``. Dials give up after
    ``config.peer_connect_timeout`` seconds."""

    def __init__(self, loop: EventLoop, *, config: Config, token: str | None, role: str,
                 info: dict, handler: Callable[[Connection, list], None],
                 on_close: Callable[[str, Connection, BaseException | None], None] | None = None):
        self.loop, self.config = loop, config
        self._kw = dict(config=config, token=token, role=role, info=info, handler=handler)
        self._on_close = on_close
        self._conns: dict[str, Future] = {}      # address → dial, or its open connection
        self._closed = False

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, address: str) -> bool:
        return address in self._conns

    def get(self, address: str) -> Future:
        """The future of an open connection to ``address`` (shared while dialing)."""
        fut = self._conns.get(address)
        if fut is not None:
            return fut
        if self._closed:
            fut = Future()
            fut.set_exception(CommClosedError(f"the connection pool is closed: not "
                                              f"dialing {address}"))
            return fut
        fut = self._conns[address] = connect(
            self.loop, address, timeout=self.config.peer_connect_timeout,
            on_close=lambda conn, exc: self._lost(address, conn, exc), **self._kw)
        fut.add_done_callback(lambda f: self._dialed(address, f))
        return fut

    def request(self, address: str, *msg: Any) -> Future:
        """``request(*msg)`` on the connection to ``address``: the future of its answer
        (or of the dial's error)."""
        result: Future = Future()

        def connected(dial: Future) -> None:
            if dial.cancelled() or dial.exception() is not None:
                result.set_exception(dial.exception() if not dial.cancelled() else
                                     CommClosedError(f"dial to {address} cancelled"))
                return
            dial.result().request(*msg).add_done_callback(lambda r: _chain(r, result))
        self.get(address).add_done_callback(connected)
        return result

    def _dialed(self, address: str, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            if self._conns.get(address) is fut:
                del self._conns[address]
        elif self._closed:          # it opened after close(): nobody wants it
            fut.result().close()

    def _lost(self, address: str, conn: Connection, exc: BaseException | None) -> None:
        fut = self._conns.get(address)
        if fut is not None and fut.done() and not fut.cancelled() and \
                fut.exception() is None and fut.result() is conn:
            del self._conns[address]
        if self._on_close is not None and not self._closed:
            self._on_close(address, conn, exc)

    def discard(self, address: str) -> None:
        """Close the connection to ``address`` (if any); the next get() dials again."""
        fut = self._conns.pop(address, None)
        if fut is not None:
            self._shut(fut)

    def close(self) -> None:
        """Close every connection and stop every dial (idempotent). ``on_close`` is not
        called for these: the owner is the one closing."""
        self._closed = True
        conns, self._conns = self._conns, {}
        for fut in conns.values():
            self._shut(fut)

    @staticmethod
    def _shut(fut: Future) -> None:
        if not fut.done():
            # Failed rather than cancelled: whoever waits on it reads an error, not a
            # CancelledError from exception(); endpoints.connect stops dialing.
            fut.set_exception(CommClosedError("the connection pool was closed while "
                                              "dialing"))
        elif not fut.cancelled() and fut.exception() is None:
            fut.result().close()


def _chain(reply: Future, result: Future) -> None:
    if reply.exception() is not None:
        result.set_exception(reply.exception())
    else:
        result.set_result(reply.result())
