"""One reconnecting link to a server (a scheduler): dial, handshake, register, and again
after a loss, until it is back or its time is up.

::

    open()/start() ── endpoints.connect ── handshake ── register(conn) ──► OPEN
                                                                           │ the
    send/request ── OPEN: on the connection; else queued (bounded) ◄──┐   │ connection
                                                                       │   ▼ drops
    RECONNECTING ── on_lost(exc) ── dial again (retry_impostors) ── register(conn)
        │  refused or dropped again: back off, dial again while time is left
        ├── registered: queued messages go out in order ── on_restored(answer) ── OPEN
        └── ``retry_for`` (death_timeout) spent ── DISCONNECTED: what was queued fails
            with LinkLostError ── on_gave_up(error)

Every method runs on the loop thread unless its name ends in ``_threadsafe`` or says
otherwise (``open``, ``start``, the properties). The callbacks run on the loop thread,
after the link's own state has moved, so whatever they do (even raise) leaves the link
consistent. ``conn`` is the last connection that registered: the loop thread alone
replaces it, and a connection still registering is never shown, so nothing the owner
sends can overtake the REGISTER.

A message never disappears: while the link is connecting or reconnecting ``send``
queues it (``config.link_queue_limit`` at most; one more raises) and ``request`` gives a
future that is answered after the reconnect; once the link has given up, ``send``
raises :class:`~mpnet.errors.LinkLostError` and ``request`` fails with it (after the
owner's own ``close()`` a late ``send`` is only logged at debug: the owner is done).
Requests already sent on a connection that dropped fail with ``CommClosedError`` (their
answer is gone with it), as on any connection.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from concurrent.futures import Future
from typing import Any, Callable

from ..config import Config
from ..errors import ConnectTimeoutError, LinkLostError
from ..lifecycle import Lifecycle, Status
from .addressing import parse_address
from .connection import Connection
from .endpoints import connect
from .eventloop import EventLoop

__all__ = ["Link", "LINK_MOVES"]

log = logging.getLogger("mpnet.comm")

S = Status
LINK_MOVES = {
    S.CREATED: {S.CONNECTING, S.CLOSED},
    S.CONNECTING: {S.OPEN, S.FAILED, S.CLOSED},
    S.OPEN: {S.RECONNECTING, S.CLOSED},
    S.RECONNECTING: {S.OPEN, S.DISCONNECTED, S.CLOSED},
    S.FAILED: {S.CLOSED},
    S.DISCONNECTED: {S.CLOSED},
    S.CLOSED: set(),
}
_UP = (S.CONNECTING, S.OPEN, S.RECONNECTING)      # a send is queued, not refused
# Backoff between registrations refused or dropped during a reconnect (seconds); the
# dial itself backs off inside endpoints.connect.
_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0


def _noop(*args: Any) -> None:
    pass


class Link:
    """A link to ``address`` for ``role``, registered by ``register(conn)``.

    ``register(conn)`` sends the role's REGISTER on a fresh connection and returns the
    future of its answer (a refusal fails it). ``handler(conn, msg)`` gets every
    message. ``on_lost(exc)``, ``on_restored(answer)`` and ``on_gave_up(error)`` tell
    the owner of a loss, a registration after one, and the end of trying. After a loss
    the link tries for ``retry_for`` seconds (``config.death_timeout`` by default).
    ``name`` says whose link it is in messages ("worker tcp://...").
    """

    def __init__(self, loop: EventLoop, address: str, *, config: Config, token: str | None,
                 role: str, info: dict, handler: Callable[[Connection, list], None],
                 register: Callable[[Connection], Future], name: str = "",
                 on_lost: Callable[[BaseException | None], None] = _noop,
                 on_restored: Callable[[Any], None] = _noop,
                 on_gave_up: Callable[[LinkLostError], None] = _noop,
                 on_too_large: Callable | None = None, retry_for: float | None = None,
                 dial: Callable[..., Future] | None = None):
        self.loop, self.address, self.config = loop, address, config
        # How a connection is made: endpoints.connect, or for a client in the process
        # of its scheduler, mpnet.comm.inproc.dialer (the same keywords, a future).
        self._connect = dial or functools.partial(connect, loop, address)
        self._dial_kw = dict(config=config, token=token, role=role, info=info,
                             handler=handler, on_close=self._closed)
        self._register = register
        self.name = name or role
        self.on_lost, self.on_restored, self.on_gave_up = on_lost, on_restored, on_gave_up
        self._on_too_large = on_too_large
        self.retry_for = config.death_timeout if retry_for is None else retry_for
        self._life = Lifecycle(f"link of {self.name} to {address}", LINK_MOVES)
        self._conn: Connection | None = None        # the last one that registered
        self._trying: Connection | None = None      # open, registering
        self._dial: Future | None = None
        self._queue: collections.deque = collections.deque()   # (msg, future or None)
        self._timer: Any = None
        self._deadline = 0.0
        self._delay = _FIRST_DELAY
        self._last: BaseException | None = None
        self.reconnects = 0

    def __repr__(self) -> str:
        return f"<Link {self.name} → {self.address} {self._life.state.value}>"

    # --- state (any thread) ----------------------------------------------------------
    @property
    def status(self) -> Status:
        return self._life.state

    @property
    def conn(self) -> Connection | None:
        """The last connection that registered (closed while reconnecting), or None."""
        return self._conn

    @property
    def is_open(self) -> bool:
        conn = self._conn
        return conn is not None and conn.state == "open" and self._life.state is S.OPEN

    @property
    def closed(self) -> bool:
        """Down for good: closed, failed to start or gave up (sends raise)."""
        return self._life.state not in _UP and self._life.state is not S.CREATED

    def wait_for(self, *states: Status, timeout: float | None = None) -> bool:
        """Block (not on the loop thread) until the link is in one of ``states``."""
        return self._life.wait_for(*states, timeout=timeout)

    # --- the first connection ---------------------------------------------------------
    def start(self, timeout: float | None = None,
              on_waiting: Callable[[str], None] | None = None) -> Future:
        """Dial and register (any thread); the future gets the registration's answer.

        ``timeout`` (seconds, ``config.connect_timeout`` by default) bounds the dial;
        the first connection fails at once on a wrong token (no impostor retry: the
        user should hear of a wrong address or token now, not after death_timeout)."""
        parse_address(self.address)       # a malformed address: ValueError, here and now
        self._life.move(S.CONNECTING)
        result: Future = Future()

        def dial() -> None:
            if self._life.state is not S.CONNECTING:
                result.set_exception(self._down_error("was closed while connecting"))
                return
            try:
                self._dial = self._connect(timeout=timeout, on_waiting=on_waiting,
                                           **self._dial_kw)
            except Exception as e:   # handed to the waiting thread, which raises it
                self._life.move(S.FAILED, only_from=(S.CONNECTING,))
                result.set_exception(e)
                return
            self._dial.add_done_callback(lambda f: self._first_dialed(f, result))
        if self.loop.in_loop_thread():
            dial()
        else:
            self.loop.call_soon_threadsafe(dial)
        return result

    def open(self, timeout: float | None = None,
             on_waiting: Callable[[str], None] | None = None) -> Any:
        """:meth:`start` for another thread: block until registered; its answer.

        The registration must answer within ``config.connect_timeout`` seconds more."""
        cfg = self.config
        dial_for = cfg.connect_timeout if timeout is None else timeout
        fut = self.start(timeout, on_waiting)
        try:
            return fut.result(dial_for + cfg.handshake_timeout + cfg.connect_timeout + 1)
        except TimeoutError:
            if fut.done():     # its own error (a ConnectTimeoutError of the dial), or
                return fut.result()      # an answer that came just now
            self.close_threadsafe()
            raise ConnectTimeoutError(
                f"{self.name}: {self.address} accepted the connection but did not answer "
                f"the registration within {cfg.connect_timeout}s: is it an mpnet "
                "scheduler, and is it overloaded?") from None

    def _first_dialed(self, dial: Future, result: Future) -> None:
        self._dial = None
        if dial.cancelled() or self._life.state is not S.CONNECTING:
            if not dial.cancelled() and dial.exception() is None:
                dial.result().close()
            result.set_exception(self._down_error("was closed while connecting"))
            return
        if dial.exception() is not None:
            self._life.move(S.FAILED, only_from=(S.CONNECTING,))
            self._fail_queue(self._down_error(f"could not connect: {dial.exception()}"))
            result.set_exception(dial.exception())
            return

        def registered(conn: Connection, error: BaseException | None, answer: Any) -> None:
            if error is None and self._life.move(S.OPEN, only_from=(S.CONNECTING,)):
                self._conn = conn
                self._flush_queue()
                result.set_result(answer)
                return
            conn.close()
            if error is None:
                error = self._down_error("was closed while registering")
            elif self._life.move(S.FAILED, only_from=(S.CONNECTING,)):
                self._fail_queue(self._down_error(f"registration failed: {error}"))
            result.set_exception(error)
        self._registering(dial.result(), registered)

    # --- registering (either time) ---------------------------------------------------
    def _registering(self, conn: Connection,
                     then: Callable[[Connection, BaseException | None, Any], None]) -> None:
        """``then(conn, error, answer)`` once ``register(conn)`` is answered. Meanwhile
        ``conn`` is ``_trying``: close() closes it, which fails the registration."""
        self._trying = conn
        if self._on_too_large is not None:
            conn.on_too_large = self._on_too_large
        try:
            reply = self._register(conn)
        except Exception as e:   # the owner's register raised: a failed registration
            self._trying = None
            then(conn, e, None)
            return

        def answered(fut: Future) -> None:
            if self._trying is conn:
                self._trying = None
            error = fut.exception()
            then(conn, error, None if error is not None else fut.result())
        # (answered on the loop thread: the REPLY, or the connection's close, sets it)
        reply.add_done_callback(answered)

    # --- losing it and getting it back -------------------------------------------------
    def _closed(self, conn: Connection, exc: BaseException | None) -> None:
        """A connection's on_close (loop thread)."""
        if conn is not self._conn or not self._life.move(S.RECONNECTING, only_from=(S.OPEN,)):
            return     # one being registered (its registration fails), or we closed it
        self._deadline = time.monotonic() + self.retry_for
        self._delay = _FIRST_DELAY
        self._last = exc
        log.debug("%s lost its link to %s (%s); reconnecting for %.0fs", self.name,
                  self.address, exc or "closed", self.retry_for)
        try:
            self.on_lost(exc)      # first: the owner drops what the loss made stale
        finally:
            self._redial()

    def _redial(self) -> None:
        self._timer = None
        if self._life.state is not S.RECONNECTING:
            return
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._give_up()
            return
        self._dial = self._connect(timeout=left, retry_impostors=True, **self._dial_kw)
        self._dial.add_done_callback(self._redialed)

    def _redialed(self, dial: Future) -> None:
        self._dial = None
        if dial.cancelled():
            return
        if self._life.state is not S.RECONNECTING:
            if dial.exception() is None:
                dial.result().close()
            return
        if dial.exception() is not None:     # (it retried until the deadline)
            self._last = dial.exception()
            self._give_up()
            return
        self._registering(dial.result(), self._reregistered)

    def _reregistered(self, conn: Connection, error: BaseException | None,
                      answer: Any) -> None:
        if self._life.state is not S.RECONNECTING:      # closed meanwhile
            conn.close()
            return
        if error is not None:
            conn.close()
            # Refused (the scheduler still holds our old registration) or dropped
            # again: try anew after a pause, while there is time.
            self._last = error
            log.debug("%s: registering again at %s failed (%s); retrying in %.1fs",
                      self.name, self.address, error, self._delay)
            if time.monotonic() + self._delay >= self._deadline:
                self._give_up()
                return
            self._timer = self.loop.call_later(self._delay, self._redial)
            self._delay = min(self._delay * 2, _MAX_DELAY)
            return
        self._conn = conn
        self._life.move(S.OPEN, only_from=(S.RECONNECTING,))
        self.reconnects += 1
        self._flush_queue()
        self.on_restored(answer)

    def _give_up(self) -> None:
        if not self._life.move(S.DISCONNECTED, only_from=(S.RECONNECTING,)):
            return
        n = len(self._queue)
        error = LinkLostError(
            f"{self.name} lost its connection to {self.address} and could not connect "
            f"and register again within {self.retry_for:.0f}s (last: "
            f"{self._last or 'closed'}); {n} message(s) queued for it and the requests "
            "waiting on it are lost. Check that the scheduler runs at that address (or "
            "raise death_timeout), then start this " + self._dial_kw["role"] + " again.")
        self._fail_queue(error)
        self.on_gave_up(error)

    # --- sending ---------------------------------------------------------------------
    def send(self, msg: list) -> None:
        """Send ``msg``; queued while (re)connecting. Raises LinkLostError when it gave
        up or failed, or when the queue is full. After the owner's own ``close()`` it
        is dropped with a debug line: the owner said it had nothing more to send, and a
        thread still ending then (an actor's) must not fail for it."""
        conn = self._conn
        if conn is not None and conn.state == "open":
            conn.send(msg)
        elif self._life.state is S.CLOSED:
            log.debug("%s: not sent, the link to %s is closed: %s", self.name,
                      self.address, msg[0])
        else:
            self._enqueue(msg, None)

    def send_threadsafe(self, msg: list) -> None:
        self.loop.call_soon_threadsafe(self.send, msg)

    def request(self, *msg: Any) -> Future:
        """``[type, req_id, *fields]``; the future gets the REPLY's value. While
        (re)connecting it is sent after the registration."""
        conn = self._conn
        if conn is not None and conn.state == "open":
            return conn.request(*msg)
        fut: Future = Future()
        try:
            self._enqueue(msg, fut)
        except LinkLostError as e:
            fut.set_exception(e)
        return fut

    def flush(self) -> None:
        if self._conn is not None:
            self._conn.flush()

    def _enqueue(self, msg: Any, fut: Future | None) -> None:
        state = self._life.state
        if state not in _UP:
            raise self._down_error("is down" if state is S.DISCONNECTED else
                                   f"is {state.value}")
        if len(self._queue) >= self.config.link_queue_limit:
            raise LinkLostError(
                f"{self.name}: {len(self._queue)} messages already wait for the link to "
                f"{self.address} to come back (link_queue_limit); this one is refused. "
                "Wait for the reconnect before sending more.")
        self._queue.append((msg, fut))

    def _flush_queue(self) -> None:
        conn, queue = self._conn, self._queue
        while queue and conn.state == "open":
            msg, fut = queue.popleft()
            if fut is None:
                conn.send(msg)
            elif fut.set_running_or_notify_cancel():
                conn.request(*msg).add_done_callback(lambda r, fut=fut: _chain(r, fut))

    def _fail_queue(self, error: BaseException) -> None:
        queue, self._queue = self._queue, collections.deque()
        lost = 0
        for msg, fut in queue:
            if fut is None:
                lost += 1
            elif not fut.done():
                fut.set_exception(error)
        if lost:
            log.warning("%s: %d message(s) queued for %s were not sent: %s", self.name,
                        lost, self.address, error)

    def _down_error(self, what: str) -> LinkLostError:
        return LinkLostError(f"the link of {self.name} to {self.address} {what}: nothing "
                             "more can be sent on it; create a new " +
                             self._dial_kw["role"] + " to talk to that scheduler again")

    # --- closing ---------------------------------------------------------------------
    def close(self, farewell: list | None = None) -> None:
        """Close for good (loop thread; idempotent): ``farewell`` (a GOODBYE) goes out
        first if the link is open; a reconnect in progress stops; what is queued fails
        with LinkLostError. No callback runs."""
        if not self._life.move(S.CLOSED, only_from=tuple(s for s in S if s is not S.CLOSED)):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dial is not None:
            self._dial.cancel()
            self._dial = None
        trying, self._trying = self._trying, None
        if trying is not None:
            trying.close()
        conn = self._conn
        if conn is not None and conn.state != "closed":
            if farewell is not None and conn.state == "open":
                conn.send(farewell)
            conn.flush()
            conn.close()
        self._fail_queue(self._down_error("was closed"))

    def close_threadsafe(self, farewell: list | None = None) -> None:
        if self.loop.in_loop_thread() or not self.loop.running:
            self.close(farewell)
        else:
            self.loop.call_soon_threadsafe(self.close, farewell)


def _chain(reply: Future, fut: Future) -> None:
    error = reply.exception()
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(reply.result())
