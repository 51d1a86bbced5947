"""Authenticated, batched, length-prefixed connections, owned by one event loop.

A :class:`Connection` lives in two phases:

1. **handshake** — only small plain-msgpack frames are read (:mod:`mpnet.comm.auth`);
   a peer that sends anything else, too much, or too slowly is dropped.
2. **open** — frames of messages. :meth:`Connection.send` queues a message; at the end
   of the loop turn everything queued goes out as one frame (one ``sendmsg``). Each
   received batch goes to the owner's ``handler(conn, message)``; ``REPLY`` messages
   resolve the futures that :meth:`Connection.request` handed out.

All methods run on the loop thread unless their name ends in ``_threadsafe``, and
:meth:`Connection.send_direct`, which any thread may call: from a thread other than the
loop's, when nothing is waiting to go out, that thread writes the frame itself (one
``sendmsg``, no wake-up of the loop); otherwise the message joins the loop's batch.

Lock rule: ``_wlock`` guards the outgoing side (``_out``, ``_wbuf``, the socket's writes
and its close), held only around list operations and a non-blocking ``sendmsg``, by the
loop too. A direct write happens only when ``_out`` and ``_wbuf`` are empty; its unsent
rest goes to ``_wbuf`` ahead of anything later, so order is kept.
:func:`mpnet.comm.endpoints.connect` dials (retrying while nothing listens yet) and
:class:`mpnet.comm.endpoints.Listener` accepts.
For ``tls://`` addresses both hand the socket to :mod:`mpnet.comm.tls`, whose
``TLSConnection`` runs the TLS handshake first; the plain path never looks at TLS.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from concurrent.futures import Future
from typing import Any, Callable

from ..config import Config
from ..errors import (AuthenticationError, CommClosedError, FrameTooLargeError,
                      ProtocolError)
from .auth import Handshake
from .eventloop import EventLoop
from .protocol import FrameDecoder, FrameEncoder, Msg, decode_handshake, encode_handshake
from .serialize import dumps_exception
from .requests import TOO_LARGE, Requests

__all__ = ["Connection"]

log = logging.getLogger("mpnet.comm")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_RECV_SIZE = 256 * 1024
_IOV_MAX = 512
_DIRECT_READS = 64
# Starts the error text of a REPLY whose value was over max_frame_bytes: the asker raises
# FrameTooLargeError (and may ask for less), not a generic error.
# One encoder per thread for direct sends (an encoder keeps state while it encodes).
_encoders = threading.local()


def _thread_encoder(oob_threshold: int) -> FrameEncoder:
    cache = _encoders.__dict__.setdefault("by_threshold", {})
    enc = cache.get(oob_threshold)
    return enc if enc is not None else cache.setdefault(oob_threshold,
                                                        FrameEncoder(oob_threshold))


class Connection:
    """One socket, its handshake, its outgoing batch and its pending requests."""

    #: whether a thread other than the loop's may write to the socket itself
    #: (TLS may not: an SSL object must not read and write in two threads at once)
    direct_writes = True

    def __init__(self, loop: EventLoop, sock: socket.socket, *, server: bool, config: Config,
                 token: str | None, role: str, info: dict, peer: str,
                 handler: Callable[["Connection", list], None],
                 on_open: Callable[["Connection"], None] | None = None,
                 on_close: Callable[["Connection", BaseException | None], None] | None = None,
                 on_fail: Callable[[BaseException], None] | None = None):
        self.loop = loop
        self.sock = sock
        self.config = config
        self.peer = peer                  # "tcp://host:port" of the other end
        self.handler = handler
        self.on_open = on_open
        self.on_close = on_close
        self.on_fail = on_fail            # the handshake failed (dialing side)
        self.state = "handshake"
        self.peer_role = ""
        self.peer_info: dict = {}
        self.owner_data: Any = None       # whatever the owner attaches (worker state...)
        # The owner's say on a message over max_frame_bytes that nobody waits on by id
        # (a scheduler's COMPUTE): ``on_too_large(conn, msg, error)`` on the loop.
        self.on_too_large: Callable[["Connection", list, FrameTooLargeError], None] | None = None
        self._hs = Handshake(server=server, token=token, role=role, info=info, address=peer)
        self._hsbuf = bytearray()
        self._decoder = FrameDecoder(config.max_frame_bytes, config.oob_threshold)
        self._encoder = FrameEncoder(config.oob_threshold)
        self._out: list = []
        self._wbuf: list[memoryview] = []
        self._wlock = threading.Lock()    # see "Lock rule" above
        self._close_when_flushed = False
        self._requests = Requests()        # requests waiting for their REPLY
        self._progress = 0
        self._stall_timer = None
        self._received_any = False
        loop.register(sock, _READ, self._on_event)
        self._hs_timer = loop.call_later(config.handshake_timeout, self._handshake_timeout)
        self._begin()

    def __repr__(self) -> str:
        return f"<Connection {self.peer_role or '?'} {self.peer} {self.state}>"

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def _begin(self) -> None:
        """Start the token handshake: the server speaks first (TLS first runs its own)."""
        if self._hs.server:
            self._send_raw(b"".join(encode_handshake(f) for f in self._hs.start()))

    # --- sending -------------------------------------------------------------------
    def send(self, msg: list) -> None:
        """Queue one message; it leaves with this turn's frame."""
        if self.state != "open":
            return
        if not self._out:
            self.loop.mark_dirty(self)
        self._out.append(msg)

    def send_threadsafe(self, msg: list) -> None:
        self.loop.call_soon_threadsafe(self.send, msg)

    def send_direct(self, msg: list) -> None:
        """Any thread: send ``msg``, in order with what was sent before. On the loop
        thread this is :meth:`send` (batched). From another thread, when nothing is
        queued or half-written, the frame is written here with one ``sendmsg``; what
        the kernel does not take goes to the loop (which arms EVENT_WRITE). Otherwise
        (or for a frame over ``max_frame_bytes``, which the loop splits) the message
        joins the loop's next batch. Dropped, as by :meth:`send`, unless open."""
        if self.loop.in_loop_thread():
            return self.send(msg)
        pieces = None
        if self.direct_writes and not self._out and not self._wbuf:   # (a hint only)
            try:
                pieces = _thread_encoder(self.config.oob_threshold).encode([msg])
            except Exception:      # the loop's path reports it and closes
                pass
            if pieces is not None and (len(pieces) > _IOV_MAX or sum(
                    memoryview(p).nbytes for p in pieces) > self.config.max_frame_bytes):
                pieces = None
        with self._wlock:
            if self.state != "open":
                return
            if pieces is None or self._out or self._wbuf:
                first = not self._out
                self._out.append(msg)       # (before the flush is asked for: it may run now)
                if first:
                    self.loop.call_soon_threadsafe(self.loop.mark_dirty, self)
                return
            try:
                self._keep_unsent(pieces, self.sock.sendmsg(pieces))
            except (BlockingIOError, InterruptedError):
                self._keep_unsent(pieces, 0)
            except OSError as e:
                return self.loop.call_soon_threadsafe(self.close, CommClosedError(
                    f"connection to {self.peer} broke: {e}"))
            if not self._wbuf:
                return
        self.loop.call_soon_threadsafe(self._arm_write)

    def _keep_unsent(self, pieces: list, sent: int) -> None:
        """Under ``_wlock``: what ``sendmsg`` did not take of ``pieces`` waits in _wbuf."""
        total = 0
        for p in pieces:
            view = memoryview(p).cast("B")
            if sent >= total + view.nbytes:
                total += view.nbytes
                continue
            self._wbuf.append(view[max(0, sent - total):])
            total += view.nbytes

    def _arm_write(self) -> None:   # a direct write left bytes in _wbuf: the loop sends them
        if self.state != "closed" and self._wbuf:
            self.loop.modify(self.sock, _READ | _WRITE, self._on_event)

    def request(self, *msg: Any) -> Future:
        """Send ``[type, req_id, *fields]``; the future gets the REPLY's value."""
        return self._requests.new(self.send, msg, self.state == "open", self.peer)

    def reply(self, req_id: int, ok: bool, value: Any) -> None:
        self.send([Msg.REPLY, req_id, ok, value])

    def flush(self) -> None:
        if not self._out or self.state == "closed":
            return
        with self._wlock:
            messages, self._out = self._out, []
        try:
            pieces = self._encoder.encode(messages)
        except Exception as e:
            log.error("cannot encode a message for %s: %s", self.peer, e)
            self.close(ProtocolError(f"cannot encode message: {e}"))
            return
        if sum(memoryview(p).nbytes for p in pieces) > self.config.max_frame_bytes:
            pieces = self._split(messages)
        self._write(pieces)

    def _split(self, messages: list) -> list:
        """The batch is over ``max_frame_bytes``, which the peer would refuse: send each
        message as its own frame, and in place of any single message that is still too
        large, an error for whoever waits on it (never a frame the peer drops)."""
        pieces: list = []
        limit = self.config.max_frame_bytes
        for msg in messages:
            frame = self._encoder.encode([msg])
            size = sum(memoryview(p).nbytes for p in frame)
            if size <= limit:
                pieces.extend(frame)
                continue
            err = FrameTooLargeError.for_size(f"a {Msg(msg[0]).name} message to {self.peer}",
                                              size, limit)
            log.error("%s", err)
            pieces.extend(self._too_large(msg, err))
        return pieces

    def _too_large(self, msg: list, err: FrameTooLargeError) -> list:
        """Whoever waits on ``msg``, which cannot be sent, gets ``err`` instead: the frame
        pieces to send in its place (if any). An answer that never came would hang them."""
        kind = msg[0]
        if kind == Msg.REPLY:                  # the asker gets the error instead
            return self._encoder.encode([[Msg.REPLY, msg[1], False, TOO_LARGE + str(err)]])
        if kind == Msg.ACTOR_RESULT:           # the caller's call fails with it
            exc, tb = dumps_exception(err)
            return self._encoder.encode([[Msg.ACTOR_RESULT, msg[1], False, exc, tb]])
        if kind == Msg.ACTOR_CALL:             # answer our own caller, as the host would
            exc, tb = dumps_exception(err)
            self.loop.call_soon(self._deliver, [[Msg.ACTOR_RESULT, msg[1], False, exc, tb]])
        elif len(msg) > 1 and type(msg[1]) is int and msg[1] in self._requests:
            self._requests.fail(msg[1], err)
        elif self.on_too_large is not None:
            self.on_too_large(self, msg, err)
        return []

    def _send_raw(self, data: bytes) -> None:
        self._write([data])

    def _write(self, pieces: list) -> None:
        error = None
        with self._wlock:
            if self._wbuf:
                # (armed already, or a direct write's _arm_write is on its way)
                self._wbuf.extend(memoryview(p).cast("B") for p in pieces)
                return
            try:
                sent = self.sock.sendmsg(pieces) if len(pieces) <= _IOV_MAX else 0
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                error = e
            else:
                self._keep_unsent(pieces, sent)
        if error is not None:
            self.close(CommClosedError(f"connection to {self.peer} broke: {error}"))
            return
        if self._wbuf:
            self.loop.modify(self.sock, _READ | _WRITE, self._on_event)
        elif self._close_when_flushed:
            self.close()

    def _on_writable(self) -> None:
        error = None
        with self._wlock:
            while self._wbuf:
                try:
                    sent = self.sock.sendmsg(self._wbuf[:_IOV_MAX])
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    error = e
                    break
                while sent and self._wbuf:
                    head = self._wbuf[0]
                    if sent >= head.nbytes:
                        sent -= head.nbytes
                        self._wbuf.pop(0)
                    else:
                        self._wbuf[0] = head[sent:]
                        sent = 0
        if error is not None:
            self.close(CommClosedError(f"connection to {self.peer} broke: {error}"))
            return
        self.loop.modify(self.sock, _READ, self._on_event)
        if self._close_when_flushed:
            self.close()

    # --- receiving -----------------------------------------------------------------
    def _on_event(self, mask: int) -> None:
        if mask & _WRITE and self.state != "closed":
            self._on_writable()
        if mask & _READ and self.state != "closed":
            try:
                self._on_readable()
            except (ProtocolError, AuthenticationError) as e:
                self._protocol_failure(e)

    def _on_readable(self) -> None:
        # A large buffer is read straight into its place, and on while the socket has
        # more (up to _DIRECT_READS reads, so other sockets are not starved): a return
        # to select() for every 64 KiB the kernel hands over costs more than the copy.
        for _ in range(_DIRECT_READS):
            target = self._decoder.direct_target() if self.state == "open" else None
            try:
                if target is not None:
                    n = self.sock.recv_into(target)
                    data = None
                else:
                    data = self.sock.recv(_RECV_SIZE)
                    n = len(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.close(CommClosedError(f"connection to {self.peer} broke: {e}"))
                return
            self._received(n, data)
            if target is None or self.state != "open":
                return

    def _received(self, n: int, data: bytes | None) -> None:
        """``n`` bytes arrived: ``data``, or into the decoder's direct target if None."""
        if n == 0:
            self.close(CommClosedError(f"{self.peer_role or 'peer'} at {self.peer} "
                                       "closed the connection" + self._silence_hint()))
            return
        self._progress += 1
        if self.state == "handshake":
            self._received_any = True
            self._hsbuf += data
            self._advance_handshake()
            return
        messages = (self._decoder.direct_received(n) if data is None
                    else self._decoder.feed(data))
        if self._decoder.mid_frame and self._stall_timer is None:
            self._arm_stall_timer()
        self._deliver(messages)

    def _deliver(self, messages: list) -> None:
        for msg in messages:
            if self.state == "closed":
                return
            if msg[0] == Msg.REPLY:
                self._on_reply(msg)
                continue
            try:
                self.handler(self, msg)
            except (ProtocolError, AuthenticationError):
                raise
            except Exception:
                # A bug in one handler must not lose the other messages of the frame.
                log.exception("error handling message %s from %s", msg[0], self.peer)

    def _on_reply(self, msg: list) -> None:
        if len(msg) != 4 or type(msg[1]) is not int or type(msg[2]) is not bool:
            raise ProtocolError("malformed REPLY")   # (an unhashable id would raise below)
        self._requests.answer(msg, self.peer)

    def _arm_stall_timer(self) -> None:
        mark = self._progress

        def check() -> None:
            self._stall_timer = None
            if self.state == "closed" or not self._decoder.mid_frame:
                return
            if self._progress == mark:
                self._protocol_failure(ProtocolError(
                    f"no progress on a half-received frame for "
                    f"{self.config.frame_stall_timeout}s"))
            else:
                self._arm_stall_timer()
        self._stall_timer = self.loop.call_later(self.config.frame_stall_timeout, check)

    # --- handshake -----------------------------------------------------------------
    def _advance_handshake(self) -> None:
        limit = self.config.max_handshake_bytes
        if self._hs.server and self._hsbuf[:2] == b"\x16\x03":
            # A TLS ClientHello (record type 22, version 3.x) where mpnet's answer belongs.
            raise ProtocolError(f"{self.peer} speaks TLS to a plain tcp:// server: connect "
                                "to its tcp:// address, or start the server with TLS "
                                "certificates (docs/security-tls.md)")
        while self.state == "handshake":
            frame = decode_handshake(self._hsbuf, limit)
            if frame is None:
                return
            try:
                replies, done = self._hs.receive(frame)
            except AuthenticationError as e:
                if self._hs.server:   # tell the peer why before hanging up
                    self._send_raw(encode_handshake(["refused", "wrong or missing token"]))
                raise e
            if replies:
                self._send_raw(b"".join(encode_handshake(r) for r in replies))
            if done:
                self._opened()
        if self._hsbuf:   # bytes after the handshake belong to the first real frame
            leftover, self._hsbuf = bytes(self._hsbuf), bytearray()
            self._deliver(self._decoder.feed(leftover))

    def _opened(self) -> None:
        self.state = "open"
        self._hs_timer.cancel()
        self.peer_role = self._hs.peer_role
        self.peer_info = self._hs.peer_info
        if self.on_open is not None:
            self.on_open(self)

    def _handshake_timeout(self) -> None:
        if self.state == "handshake":
            self._protocol_failure(ProtocolError(
                f"no handshake from {self.peer} within {self.config.handshake_timeout}s"
                + self._silence_hint()))

    def _silence_hint(self) -> str:
        # A TLS server waits for a ClientHello that a plain client never sends: both
        # sides see only silence, so say what it probably means.
        if (self.state == "handshake" and not self._hs.server and not self._received_any
                and self.peer.startswith("tcp://")):
            return (" before sending any handshake; if it serves TLS, connect to "
                    f"tls://{self.peer.partition('://')[2]} with --tls-ca-file")
        return ""

    def _protocol_failure(self, exc: BaseException) -> None:
        if self._hs.server:
            log.warning("dropped connection from %s: %s", self.peer, exc)
        if self.state == "handshake" and self.on_fail is not None:
            on_fail, self.on_fail = self.on_fail, None
            on_fail(exc)
        if not self._wbuf:
            self.close(exc)
            return
        # A refusal is still on its way out: stop reading, close once it is sent.
        self._close_when_flushed = True
        self.loop.modify(self.sock, _WRITE, self._on_event)

    # --- closing -------------------------------------------------------------------
    def close(self, exc: BaseException | None = None) -> None:
        """Close now (loop thread). Pending requests fail with ``CommClosedError``."""
        if self.state == "closed":
            return
        was_open = self.state == "open"
        self.state = "closed"
        self._hs_timer.cancel()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self.loop.unregister(self.sock)
        with self._wlock:     # no direct write into a closed (or reused) descriptor
            try:
                self.sock.close()
            except OSError:
                pass
            # A closed connection may stay referenced a while (by its owner's records, a
            # pending callback): what it was sending or receiving must not stay with it.
            self._out, self._wbuf, self._hsbuf = [], [], bytearray()
        self._decoder = FrameDecoder(self.config.max_frame_bytes, self.config.oob_threshold)
        err = exc if isinstance(exc, CommClosedError) else CommClosedError(
            f"connection to {self.peer} closed" + (f": {exc}" if exc else ""))
        self._requests.fail_all(err)
        if not was_open and self.on_fail is not None:
            on_fail, self.on_fail = self.on_fail, None
            on_fail(exc if exc is not None else err)
        if was_open and self.on_close is not None:
            self.on_close(self, exc)

    def close_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self.close)
