"""Who may ask what of a worker on its own port: a session per peer, by handshake role.

::

    peer dials the worker's port ── handshake (role) ──► PeerPort.opened(conn)
        "worker" ──► PeerWorkerSession    serves GET_DATA     (a task's inputs)
        "client" ──► FetchingClientSession serves GET_DATA    (large results),
                                           PUT_DATA (a large scatter, docs/data.md)
        "caller" ──► ActorCallerSession   serves ACTOR_CALL   (actors hosted here)
        any other ──► refused at once: ProtocolError, one log line, the connection closes
    each message ──► Sessions.dispatch ──► its session's Role, or ProtocolError (that
                                           connection closes; no handler runs)

Orders (COMPUTE, FREE, CLOSE_WORKER, ...) come only on the worker's link to its scheduler
(worker.py); nothing here reaches them. The worker's own dials to other workers (its
transfer pool) share these :class:`Sessions` but are never bound: a peer may only REPLY
on them. Loop thread only; the roles are built once per worker (their handlers are the
worker parts' bound methods).
"""

from __future__ import annotations

from typing import Any, Callable

from ..comm.protocol import Msg
from ..comm.session import Role, Session, Sessions
from ..errors import ProtocolError

__all__ = ["PeerPort", "PeerWorkerSession", "FetchingClientSession", "ActorCallerSession"]


class PeerWorkerSession(Session):
    """Another worker, fetching the inputs of its tasks from here."""

    __slots__ = ()


class FetchingClientSession(Session):
    """A client fetching results too large to travel through the scheduler."""

    __slots__ = ()


class ActorCallerSession(Session):
    """A client, task or actor calling actors hosted here (answered on this session)."""

    __slots__ = ()


class PeerPort:
    """A worker's port: the handshake role picks the session; ``get_data(session,
    req_id, keys)``, ``put_data(session, req_id, items)`` (clients only) and
    ``actor_call(session, call_id, ...)`` answer on the session."""

    def __init__(self, get_data: Callable, actor_call: Callable,
                 put_data: Callable | None = None):
        self.sessions = Sessions("worker", {}, unbound="on its own dial to a peer")
        self._kinds: dict[str, tuple[type, Role]] = {
            "worker": (PeerWorkerSession, Role("peer worker", {Msg.GET_DATA: get_data})),
            "client": (FetchingClientSession, Role("client", {
                Msg.GET_DATA: get_data, **({Msg.PUT_DATA: put_data} if put_data else {})})),
            "caller": (ActorCallerSession, Role("actor caller",
                                                {Msg.ACTOR_CALL: actor_call})),
        }
        self.dispatch = self.sessions.dispatch
        self.closed = self.sessions.closed

    def opened(self, conn: Any) -> None:
        """A peer finished its handshake (the listener's ``on_open``): bind it, or
        refuse it (the ProtocolError closes the connection with one log line)."""
        kind = self._kinds.get(conn.peer_role)
        if kind is None:
            raise ProtocolError(
                f"a peer with role {conn.peer_role!r} has nothing to ask of a worker on "
                f"its port (it serves other workers, clients fetching results and actor "
                f"callers; orders come on the worker's link to its scheduler)")
        cls, role = kind
        self.sessions.bind(conn, cls(conn, role))
