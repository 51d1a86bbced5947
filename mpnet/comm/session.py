"""Peers as sessions: once a peer says who it is, its link is bound to a session of that
role, and only that role's messages are served on it.

::

    link ── [Msg, ...] ──► Sessions.dispatch(link, msg)
                              │ no session yet ──► the opening Role (registrations only):
                              │                    its handler(link, *fields) may bind one
                              └ session ───────► session.role: handler(session, *fields)
                                                 a message outside the role ──► ProtocolError:
                                                 that link closes (one log line), no handler runs
    link closed ──► Sessions.closed(link, exc) ──► session.on_close(exc)  (once)

A *link* is anything with ``send``, ``reply``, ``request``, ``close``, ``closed`` and
``peer``: a :class:`~mpnet.comm.connection.Connection`, or an in-process link that
quacks like one. A :class:`Session` offers the same six names (and ``peer_info``, what
the peer said of itself in the handshake), so handlers answer on it as on a link. Each
:class:`Role` is a :class:`~mpnet.comm.dispatch.Dispatcher`, built once per server
(field counts and field types checked there), shared by every session of that role.
All of it runs on the owning server's loop thread.

A server whose peers are known from the handshake alone (a worker's port: peer workers
fetching data, clients calling actors) binds in its ``on_open`` instead of in a
registration handler: ``sessions.bind(conn, ActorCallerSession(conn, CALLER))``.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable, Iterator

from ..errors import ProtocolError
from .dispatch import Dispatcher

__all__ = ["Role", "Session", "Sessions"]


class Role:
    """One kind of peer: its name and message table, ``{Msg: handler(session, *fields)}``."""

    __slots__ = ("name", "dispatch")

    def __init__(self, name: str, handlers: dict[int, Callable]):
        self.name = name
        self.dispatch = Dispatcher(name, handlers)

    def __repr__(self) -> str:
        return f"<Role {self.name}>"


class Session:
    """A peer of one role on one link. Subclasses add the record they serve (a client's
    or worker's state) and what happens when the link closes (:meth:`on_close`)."""

    __slots__ = ("link", "role")

    def __init__(self, link: Any, role: Role):
        self.link = link
        self.role = role

    # --- the link's interface, so handlers answer on the session ----------------------
    @property
    def peer(self) -> str:
        return self.link.peer

    @property
    def closed(self) -> bool:
        return self.link.closed

    @property
    def peer_info(self) -> dict:
        return getattr(self.link, "peer_info", {})

    def send(self, msg: list) -> None:
        self.link.send(msg)

    def reply(self, req_id: int, ok: bool, value: Any) -> None:
        self.link.reply(req_id, ok, value)

    def request(self, *msg: Any) -> Future:
        return self.link.request(*msg)

    def close(self, exc: BaseException | None = None) -> None:
        self.link.close(exc)

    # --- for subclasses ------------------------------------------------------------------
    def on_close(self, exc: BaseException | None) -> None:
        """The link closed (``exc``: why, if it broke). Called once, on the loop."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.role.name} {self.peer}>"


class Sessions:
    """A server's live sessions, by link, and the table for links not yet bound.

    ``opening`` serves a link that has no session yet: usually only the registrations,
    whose handlers (called as ``handler(link, *fields)``) call :meth:`bind`. ``unbound``
    says what such a link is, in the ProtocolError of a message ``opening`` lacks (a
    server whose links are never bound serves nothing: ``opening={}``).
    """

    __slots__ = ("server", "opening", "_by_link")

    def __init__(self, server: str, opening: dict[int, Callable], *,
                 unbound: str = "before registration"):
        self.server = server
        self.opening = Dispatcher(f"{server} ({unbound})", opening)
        self._by_link: dict[Any, Session] = {}

    def bind(self, link: Any, session: Session) -> Session:
        """From now on ``link`` is served by ``session``'s role."""
        if link in self._by_link:
            raise ProtocolError(f"{link.peer} registered already, as "
                                f"{self._by_link[link].role.name}")
        self._by_link[link] = session
        return session

    def get(self, link: Any) -> Session | None:
        return self._by_link.get(link)

    def dispatch(self, link: Any, msg: list) -> None:
        """Serve one message from ``link`` (loop thread); ProtocolError if not its role's."""
        session = self._by_link.get(link)
        if session is None:
            self.opening(link, msg)
        else:
            session.role.dispatch(session, msg)

    def closed(self, link: Any, exc: BaseException | None = None) -> None:
        """``link`` closed: its session (if any) ends, once."""
        session = self._by_link.pop(link, None)
        if session is not None:
            session.on_close(exc)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_link.values()))

    def __len__(self) -> int:
        return len(self._by_link)
