"""Where connections come from: :class:`Listener` accepts, :func:`connect` dials.

::

    Listener ── accept ── (tls: wrap, server side) ──► Connection(server=True) ─┐
    connect(address) ── non-blocking connect, retried with backoff while refused ─┤
                     ── (tls: wrap, client side) ──► Connection(server=False) ────┴─► the
                        handshake (mpnet.comm.auth), then the owner's handler

Both run on the loop thread; :func:`connect_sync` lets another thread wait for a dial.
Apart from :mod:`.connection` so that :mod:`.tls` (whose ``TLSConnection`` is a
``Connection``) and the plain path never import each other in a circle.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from concurrent.futures import Future
from typing import Any, Callable

from ..config import Config
from ..errors import (AuthenticationError, CommClosedError, ConnectTimeoutError, MpnetError,
                      ProtocolError)
from . import tls
from .addressing import address_scheme, format_address, parse_address
from .connection import Connection
from .eventloop import EventLoop

__all__ = ["Listener", "connect", "connect_sync", "listen_on_any", "WAITING_NOTICE"]

log = logging.getLogger("mpnet.comm")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# accept() failures that mean "out of descriptors or kernel memory": the listener stays
# readable, so retrying at once would spin; pause accepting instead (seconds)
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 0.25
_ACCEPT_LOG_EVERY = 10.0
#: Seconds of refused connects before ``connect(on_waiting=)`` says it is still trying.
WAITING_NOTICE = 1.0


def _configure(sock: socket.socket) -> None:
    sock.setblocking(False)
    # Messages are small and latency matters; batching is ours to do, not Nagle's.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Listener:
    """Accepts connections on the loop and starts each one's server-side handshake.

    ``scheme`` is "tcp", "tls" or None (TLS if ``config`` names a certificate). With
    TLS every accepted socket is wrapped by the server context of :mod:`mpnet.comm.tls`
    (which raises :class:`~mpnet.errors.TLSError` here, at once, for bad files).

    When ``accept`` fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
    ENOMEM) the listener stops reading for ``_ACCEPT_PAUSE`` seconds, logs at most
    once per ``_ACCEPT_LOG_EVERY`` seconds, and keeps serving its open connections.
    """

    def __init__(self, loop: EventLoop, host: str, port: int, *, config: Config,
                 token: str | None, role: str, info: dict,
                 handler: Callable[[Connection, list], None],
                 on_open: Callable[[Connection], None] | None = None,
                 on_close: Callable[[Connection, BaseException | None], None] | None = None,
                 scheme: str | None = None):
        self.loop = loop
        self._tls = tls.listen_context(config, scheme)
        self.scheme = "tcp" if self._tls is None else "tls"
        self._conn_class = Connection if self._tls is None else tls.TLSConnection
        self._kw = dict(config=config, token=token, role=role, info=info, handler=handler,
                        on_open=on_open, on_close=on_close)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            reason = "it is already in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise OSError(e.errno, f"cannot listen on {format_address(host or '0.0.0.0', port)}: "
                                   f"{reason}") from None
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]
        self.connections: set[Connection] = set()
        self._closed = False
        self._resume_timer: Any = None
        self._accept_failures = 0
        self._next_accept_log = 0.0
        loop.run_sync(loop.register, self.sock, _READ, self._on_accept)

    def address_at(self, host: str) -> str:
        """This listener's address as others should dial it, on ``host``."""
        return format_address(host, self.port, self.scheme)

    def _on_accept(self, mask: int) -> None:
        for _ in range(64):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _ACCEPT_EXHAUSTED:
                    self._pause_accepting(e)
                else:
                    log.warning("accept failed: %s", e)
                return
            _configure(sock)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_side=True,
                                                 do_handshake_on_connect=False)
                except OSError as e:   # the peer reset it already
                    log.debug("TLS wrap of a connection from %s failed: %s", addr, e)
                    sock.close()
                    continue
            conn = self._conn_class(self.loop, sock, server=True,
                                    peer=format_address(*addr[:2], self.scheme), **self._kw)
            self.connections.add(conn)
            user_close = conn.on_close

            def forget(c: Connection, exc: BaseException | None, _user=user_close) -> None:
                self.connections.discard(c)
                if _user is not None:
                    _user(c, exc)
            conn.on_close = forget
            conn.on_fail = lambda exc, c=conn: self.connections.discard(c)

    def _pause_accepting(self, exc: OSError) -> None:
        # The pending connection stays in the backlog and the socket stays readable:
        # stop listening to it for a moment, or the loop spins (and logs) at full speed.
        self._accept_failures += 1
        now = time.monotonic()
        if now >= self._next_accept_log:
            log.error("cannot accept connections on port %d: %s (%d time(s) in the last "
                      "%.0fs); pausing accepts %.2fs at a time, open connections are still "
                      "served. Raise the limit (ulimit -n) or close connections.",
                      self.port, exc.strerror or exc, self._accept_failures,
                      _ACCEPT_LOG_EVERY, _ACCEPT_PAUSE)
            self._accept_failures = 0
            self._next_accept_log = now + _ACCEPT_LOG_EVERY
        self.loop.unregister(self.sock)
        self._resume_timer = self.loop.call_later(_ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume_timer = None
        if not self._closed:
            self.loop.register(self.sock, _READ, self._on_accept)

    def close(self) -> None:
        """Stop accepting and close every accepted connection (loop thread)."""
        if self._closed:
            return
        self._closed = True
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        self.loop.unregister(self.sock)
        self.sock.close()
        for conn in list(self.connections):
            conn.close()


def listen_on_any(ports: int | list[int], make: Callable[[int], Listener]) -> Listener:
    """``make(port)`` for the first port of ``ports`` that is free (a range's ports)."""
    candidates = [ports] if isinstance(ports, int) else list(ports)
    last: OSError | None = None
    for port in candidates:
        try:
            return make(port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            last = e
    if len(candidates) > 1:
        raise OSError(errno.EADDRINUSE, f"every port of {candidates[0]}:{candidates[-1]} is "
                                        "in use")
    raise last


def connect(loop: EventLoop, address: str, *, config: Config, token: str | None, role: str,
            info: dict, handler: Callable[[Connection, list], None],
            on_close: Callable[[Connection, BaseException | None], None] | None = None,
            timeout: float | None = None,
            on_waiting: Callable[[str], None] | None = None,
            retry_impostors: bool = False) -> Future:
    """Dial ``address`` from the loop; the future gets the open :class:`Connection`.

    While nothing listens there (connection refused) it retries with backoff until
    ``timeout`` seconds (``config.connect_timeout`` by default) have passed, then fails
    with :class:`ConnectTimeoutError` naming the address. A wrong token fails at once
    with :class:`AuthenticationError`. ``on_waiting(text)`` is called once, on the loop
    thread, when it has been retrying for :data:`WAITING_NOTICE` seconds: a line that
    says nothing answers yet and for how long it keeps trying. ``retry_impostors``
    (reconnects): a server that fails the token handshake is treated like one that is
    not there yet, and tried again until ``timeout``: after a scheduler dies, whoever
    binds its port first must not be able to make its workers give up on it.
    ``future.cancel()`` stops the dialing (a link closed while it reconnects): no
    further attempt is made, and a connection that opens anyway is closed.
    """
    timeout = config.connect_timeout if timeout is None else timeout
    result: Future = Future()
    started = time.monotonic()
    deadline = started + timeout
    host, port = parse_address(address)
    host = host or "127.0.0.1"
    try:
        context = tls.dial_context(config, address_scheme(address), address)
    except MpnetError as e:
        result.set_exception(e)
        return result
    peer = format_address(host, port, "tcp" if context is None else "tls")
    conn_class = Connection if context is None else tls.TLSConnection
    state = {"delay": 0.01, "last": "no attempt"}

    def give_up(exc: BaseException) -> None:
        if not result.done():
            result.set_exception(exc)

    def retry(reason: str) -> None:
        if result.done():      # cancelled: the caller stopped waiting
            return
        state["last"] = reason
        now = time.monotonic()
        if now + state["delay"] > deadline:
            give_up(ConnectTimeoutError(
                f"could not connect to {peer} within {timeout}s ({reason}): is a scheduler "
                "or worker running there? Check the address and the firewall."))
            return
        if on_waiting is not None and now - started >= WAITING_NOTICE and \
                not state.get("noticed"):
            state["noticed"] = True
            what = "nothing is listening at" if reason == "ECONNREFUSED" else \
                f"no answer ({reason}) from"
            on_waiting(f"{what} {peer} yet: still trying for {deadline - now:.0f} s")
        loop.call_later(state["delay"], attempt)
        state["delay"] = min(state["delay"] * 2, 0.5)

    def attempt() -> None:
        if result.done():
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            give_up(ConnectTimeoutError(f"cannot resolve the host of {peer}: {e}"))
            return
        family, _, _, _, sockaddr = infos[0]
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:   # out of descriptors: try again later, as for a refusal
            retry(e.strerror or str(e))
            return
        _configure(sock)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            retry(errno.errorcode.get(code, str(code)))
            return

        def on_connected(mask: int) -> None:
            unanswered.cancel()
            loop.unregister(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if result.done():
                sock.close()
                return
            if err:
                sock.close()
                retry(errno.errorcode.get(err, str(err)))
                return
            if context is not None:
                # No server_hostname: the cluster's CA vouches for its members, whatever
                # address they are reached at (see mpnet.comm.tls).
                try:
                    start_handshake(context.wrap_socket(sock, do_handshake_on_connect=False))
                except OSError as e:
                    sock.close()
                    retry(str(e))
                return
            start_handshake(sock)

        def no_answer() -> None:
            # A SYN nobody answers (a full accept queue, a host that drops it) would
            # keep the socket pending for the kernel's two minutes: the deadline wins.
            loop.unregister(sock)
            sock.close()
            if not result.done():
                give_up(ConnectTimeoutError(f"could not connect to {peer} within "
                                            f"{timeout}s: nothing answered"))
        loop.register(sock, _WRITE, on_connected)
        unanswered = loop.call_later(max(0.0, deadline - time.monotonic()), no_answer)

    def start_handshake(sock: socket.socket) -> None:
        def opened(conn: Connection) -> None:
            conn.on_fail = None
            if not result.done():
                result.set_result(conn)
            else:
                conn.close()

        def failed(exc: BaseException) -> None:
            again = isinstance(exc, CommClosedError) or (
                retry_impostors and isinstance(exc, (AuthenticationError, ProtocolError)))
            if again and time.monotonic() < deadline:
                retry(str(exc))   # a listener not serving yet, or not ours (reconnects)
                return
            give_up(exc)
        conn_class(loop, sock, server=False, config=config, token=token, role=role,
                   info=info, peer=peer, handler=handler, on_open=opened,
                   on_close=on_close, on_fail=failed)

    loop.call_soon_threadsafe(attempt) if not loop.in_loop_thread() else attempt()
    return result


def connect_sync(loop: EventLoop, address: str, *, timeout: float | None = None,
                 **kw: Any) -> Connection:
    """:func:`connect` for other threads: block until open or failed."""
    config = kw["config"]
    timeout = config.connect_timeout if timeout is None else timeout
    fut = connect(loop, address, timeout=timeout, **kw)
    try:
        return fut.result(timeout + config.handshake_timeout + 1)
    except ConnectTimeoutError:
        raise
    except TimeoutError:
        raise ConnectTimeoutError(f"could not connect to {address} within {timeout}s") from None
