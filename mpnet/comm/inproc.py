"""An in-process link: two endpoints that talk like a :class:`Connection`, with no socket.

::

    client end                                  server end (the scheduler's)
    send(msg) ── queued, loop.mark_dirty ──┐    ┌── send(msg) (TASK_DONE, REPLY...)
                 end of the loop turn:     │    │
                 flush() ── detach ──► _deliver ─► handler(server_end, msg)
    handler(client_end, msg) ◄─ _deliver ◄─ flush() ◄┘
    close() ── the other end closes too, at once (its owner hears of it first)

Both ends live on one event loop (the :class:`~mpnet.LocalCluster`'s, which its
``Client(cluster)`` shares): every method runs on the loop thread, except those whose
name ends in ``_threadsafe``. Messages are batched per loop turn like a connection's
frames and handed over as Python objects: no msgpack, no pickling, no syscall. What a
message carries is *detached* on its way (lists and dicts copied, tuples made lists, as
msgpack would), so neither side holds the other's mutable objects; payload buffers that
are not ``bytes`` (a user's array or bytearray pickled out of band) are copied from the
client, while the scheduler's payloads (received bytes nobody writes to) pass as they are.

**Who can reach it.** There is no address and no handshake: a link is made only by
code holding the :class:`~mpnet.Scheduler` object (``Scheduler.connect_inproc``),
which lives in this process, so holding it already is holding the token. A client's
:class:`~mpnet.comm.link.Link` gets its endpoints from :func:`dialer` instead of
dialing, and registers, loses and re-makes them as it does connections.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any, Callable

from ..errors import AuthenticationError, CommClosedError, MpnetError, ProtocolError
from .eventloop import EventLoop
from .protocol import Msg
from .serialize import Payload
from .requests import Requests

__all__ = ["Endpoint", "pair", "dialer"]

log = logging.getLogger("mpnet.comm")

_AS_IS = frozenset({str, int, float, bool, type(None), bytes})


def _payload_from_client(p: Payload) -> Payload:
    """A client's payload may point into the user's objects (out-of-band buffers):
    the scheduler keeps payloads for retries, so it gets its own copy of those."""
    for b in p.buffers:
        if type(b) is not bytes:
            return Payload(p.kind, p.header, [bytes(b) for b in p.buffers])
    return p


def _payload_from_server(p: Payload) -> Payload:
    return p          # bytes the scheduler received from a worker: nobody writes to them


def _detacher(payload: Callable[[Payload], Payload]) -> Callable[[Any], Any]:
    """What msgpack would make of a value (exact builtin types, lists for tuples, new
    containers), with ``payload`` for :class:`Payload` objects."""
    def detach(v: Any) -> Any:
        t = type(v)
        if t in _AS_IS:
            return v
        if t is list or t is tuple:
            return [detach(x) for x in v]
        if t is dict:
            return {detach(k): detach(x) for k, x in v.items()}
        if t is Payload:
            return payload(v)
        if isinstance(v, BaseException):     # a REPLY's local error (never from a peer)
            return v
        for base in (bool, int, float, str, bytes):   # IntEnum, str subclasses...
            if isinstance(v, base):
                return base(v)
        if isinstance(v, (bytearray, memoryview)):
            return bytes(v)
        raise TypeError(f"cannot send an object of type {t.__module__}.{t.__qualname__}")
    return detach


def _message_detacher(payload: Callable[[Payload], Payload]) -> Callable[[list], list]:
    detach = _detacher(payload)
    as_is = _AS_IS

    # The hot messages (SUBMIT, TASK_DONE, RELEASE) are flat lists of strings, numbers
    # and payloads: checked field by field here, without a call per field.
    def message(msg: list) -> list:
        out = [int(msg[0])]
        for v in msg[1:]:
            t = type(v)
            out.append(v if t in as_is else payload(v) if t is Payload else detach(v))
        return out
    return message


from_client = _message_detacher(_payload_from_client)
from_server = _message_detacher(_payload_from_server)


class Endpoint:
    """One end of an in-process link: the parts of :class:`Connection`'s interface that
    its owners use (``send``, ``request``, ``reply``, ``flush``, ``close``, ``closed``,
    ``state``, ``peer``, ``peer_role``, ``peer_info``, ``owner_data``, ``on_close``,
    ``on_too_large``)."""

    def __init__(self, loop: EventLoop, *, peer: str, peer_role: str, peer_info: dict,
                 handler: Callable[[Any, list], None],
                 on_close: Callable[[Any, BaseException | None], None] | None,
                 detach: Callable[[list], list]):
        self.loop = loop
        self.peer = peer
        self.peer_role = peer_role
        self.peer_info = peer_info
        self.handler = handler
        self.on_close = on_close
        self.on_too_large: Callable | None = None   # nothing is too large without frames
        self.owner_data: Any = None
        self.state = "open"
        self._detach = detach            # applied to what this end sends
        self._other: Endpoint | None = None
        self._out: list = []
        self._requests = Requests()        # requests waiting for their REPLY

    def __repr__(self) -> str:
        return f"<Endpoint {self.peer_role} {self.peer} {self.state}>"

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    # --- sending -------------------------------------------------------------------
    def send(self, msg: list) -> None:
        """Queue one message; it is handed over at the end of this loop turn."""
        if self.state != "open":
            return
        if not self._out:
            self.loop.mark_dirty(self)
        self._out.append(msg)

    def send_threadsafe(self, msg: list) -> None:
        self.loop.call_soon_threadsafe(self.send, msg)

    def request(self, *msg: Any) -> Future:
        """Send ``[type, req_id, *fields]``; the future gets the REPLY's value."""
        return self._requests.new(self.send, msg, self.state == "open", self.peer)

    def reply(self, req_id: int, ok: bool, value: Any) -> None:
        self.send([Msg.REPLY, req_id, ok, value])

    def flush(self) -> None:
        """Hand this turn's messages to the other end's handler (called by the loop)."""
        if not self._out or self.state == "closed":
            return
        messages, self._out = self._out, []
        try:
            messages = [self._detach(m) for m in messages]
        except TypeError as e:   # where a connection's encoder would have failed
            log.error("cannot send a message to %s: %s", self.peer, e)
            self.close(ProtocolError(f"cannot encode message: {e}"))
            return
        other = self._other
        if other is not None and other.state == "open":
            other._deliver(messages)

    # --- receiving -----------------------------------------------------------------
    def _deliver(self, messages: list) -> None:
        for msg in messages:
            if self.state == "closed":
                return
            try:
                if msg[0] == Msg.REPLY:
                    self._on_reply(msg)
                else:
                    self.handler(self, msg)
            except (ProtocolError, AuthenticationError) as e:
                log.warning("dropped in-process link %s: %s", self.peer, e)
                self.close(e)
                return
            except Exception:
                # A bug in one handler must not lose the other messages of the batch.
                log.exception("error handling message %s from %s", msg[0], self.peer)

    def _on_reply(self, msg: list) -> None:
        self._requests.answer(msg, self.peer)

    # --- closing -------------------------------------------------------------------
    def close(self, exc: BaseException | None = None) -> None:
        """Close this end and the other (whose ``on_close`` runs first). Pending
        requests fail with ``CommClosedError``. Idempotent."""
        if self.state == "closed":
            return
        self.state = "closed"
        self._out = []
        err = exc if isinstance(exc, CommClosedError) else CommClosedError(
            f"link to {self.peer} closed" + (f": {exc}" if exc else ""))
        self._requests.fail_all(err)
        # The other end closes first, at once: its owner forgets this link (the
        # scheduler drops the client) before ours may make a new one (a client links
        # again under the same id, which must not be dropped by the old link's end).
        other, self._other = self._other, None
        if other is not None:
            other._other = None
            other.close(CommClosedError(f"{self.peer_role} at {self.peer} closed the link"))
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self, exc)

    def close_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self.close)


def pair(loop: EventLoop, *, server: dict, client: dict) -> tuple[Endpoint, Endpoint]:
    """Two joined endpoints on ``loop``: (the server's end, the client's end).

    ``server`` and ``client`` hold each end's ``peer`` (how it names the other side),
    ``peer_role``, ``peer_info``, ``handler(endpoint, msg)`` and ``on_close``."""
    s = Endpoint(loop, detach=from_server, **server)
    c = Endpoint(loop, detach=from_client, **client)
    s._other, c._other = c, s
    return s, c


def dialer(server: Any, client_id: str) -> Callable[..., Future]:
    """For :class:`~mpnet.comm.link.Link` (``dial=``): instead of dialing, ask ``server``
    (a Scheduler of this process, on its loop thread) for a new link. The future fails
    at once when the server is closed: there is nothing to wait for."""
    def dial(*, handler: Callable, on_close: Callable, **ignored: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(server.connect_inproc(client_id, handler, on_close))
        except MpnetError as e:       # closed: ClusterClosedError
            fut.set_exception(e)
        return fut
    return dial
