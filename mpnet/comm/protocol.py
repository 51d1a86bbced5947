"""The wire protocol, all of it: frames, the message table and the version.

Frame (every message after the handshake travels in one)::

    !II   body length, number of out-of-band buffers (n)
    !Q*n  length of each buffer; the top bit set: the receiver makes it a ``bytes`` object
    body  msgpack: a list of messages, everything queued for this peer in one loop turn
    buf0 … buf(n-1)   raw bytes, sent with sendmsg straight from the caller's memory

A message is a msgpack list ``[Msg, field, field, ...]`` (positional fields, in the order
the table below gives). A :class:`~mpnet.comm.serialize.Payload` inside a message is a
msgpack extension (code 1) holding its kind, its pickle header (or, when large, a
reference to one more buffer) and the indexes of its buffers in the frame. A payload of
kind ``SHM`` names a shared-memory segment of a worker on the same host instead
(:mod:`mpnet.comm.shm`, docs/data.md): the decoder maps it read-only as it decodes.

Handshake frames (see :mod:`mpnet.comm.auth`) use the same framing with no buffers, a
size limit of ``max_handshake_bytes`` and plain msgpack with no extension types: nothing
before authentication can create anything but lists, ints, strings and bytes.
"""

from __future__ import annotations

import enum
import hashlib
import mmap
import struct
from typing import Any

import msgpack

from ..errors import ProtocolError
from . import shm
from .serialize import RAW_BYTES, SHM, Payload, uninitialized_bytes

__all__ = ["PROTOCOL_VERSION", "Msg", "FrameEncoder", "FrameDecoder", "HEADER",
           "encode_handshake", "decode_handshake", "RUNNING_KEY_BYTES",
           "running_key"]

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!II")
BUFLEN = struct.Struct("!Q")
_PAYLOAD_EXT = 1
_PAYLOAD_HDR = struct.Struct("!BBII")    # kind, header-is-a-buffer flag, first index, count
_MAX_BUFFERS = 1 << 16
# Buffers from this size up are received into an anonymous private map instead of a
# bytearray: the kernel gives it memory page by page as the bytes are written, so a frame
# header alone (which may announce up to max_frame_bytes) costs nothing, and the large
# body needs no zero-filling first. Smaller buffers cost at most this much up front.
_MAP_MIN = 1 << 20
_MAP_PRIVATE = getattr(mmap, "MAP_PRIVATE", None)    # None on Windows: bytearray there
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)
# The top bit of a buffer's length says "received as bytes": the buffer of a top-level
# bytes payload, which then needs no copy to become the bytes the task gets.
_AS_BYTES = 1 << 63


class Msg(enum.IntEnum):
    """Every message type. Fields are listed as ``(field, ...)``; → marks the sender."""

    # replies to any request that carried a request id
    REPLY = 1                # → any: (req_id, ok: bool, value | error text)

    # client → scheduler
    REGISTER_CLIENT = 10     # (req_id, client_id, versions: dict)
    SUBMIT = 11              # (key, fn, args, deps, priority, retries, resources, workers)
    RELEASE = 12             # (keys,)
    CANCEL = 13              # (keys, reason)
    SCATTER = 14             # (req_id, [[key, payload]], workers | None)
    RUN = 15                 # (req_id, fn: Payload, workers | None)  also scheduler → worker
    RUN_ON_SCHEDULER = 16    # (req_id, fn: Payload)
    INFO = 17                # (req_id,)
    WHO_HAS = 18             # (req_id, keys)
    REGISTER_PLUGIN = 19     # (req_id, "scheduler" | "worker" | "nanny", name, payload)
    RESTART = 25             # (req_id, worker addresses | None = all, timeout)
    RETIRE_WORKERS = 26      # (req_id, worker addresses)  also worker → scheduler (lifetime)
    # monitoring (read-only): `mpnet status`, `mpnet top`, client.get_task_stream/get_*_logs
    STATUS = 27              # (req_id, options: dict) → REPLY(snapshot dict)
    TASK_STREAM = 28         # (req_id, since: float, n: int | None) → REPLY([record dict])
    GET_LOGS = 29            # (req_id, "scheduler" | "workers", n, workers | None)
    # the stdlib's Future.cancel(): only what has not started
    TRY_CANCEL = 24          # (req_id, keys) → REPLY(keys cancelled: only those not started)
                             #   also scheduler → worker: REPLY(keys it will now never start)

    # actors: any caller (client, worker) → scheduler
    CREATE_ACTOR = 70        # (key, name | None, cls: Payload, args: Payload, options: dict)
    LOOKUP_ACTOR = 71        # (req_id, key or name) → REPLY once placed: {status, address, …}
    RELEASE_ACTOR = 72       # (key,)  the caller dropped its last handle
    KILL_ACTOR = 73          # (req_id, key)
    LIST_ACTORS = 74         # (req_id,)
    # scheduler ↔ hosting worker
    HOST_ACTOR = 75          # (key, name, cls, args, options, restarted: int, checkpoint)
    DROP_ACTOR = 76          # (key, reason)
    ACTOR_STARTED = 77       # (key,)
    ACTOR_FAILED = 78        # (key, exception payload, traceback)
    ACTOR_CHECKPOINT = 79    # (key, payload)
    # caller → hosting worker, directly
    ACTOR_CALL = 80          # (call_id, key, method, args, kwargs, "call" | "getattr")
    ACTOR_RESULT = 81        # (call_id, ok, value, traceback)
    # caller → scheduler: create a named actor, answered (the name is checked there, once)
    CREATE_NAMED_ACTOR = 82  # (req_id, key, name, cls, args, options, get_if_exists)
                             #   → REPLY(the actor's description, "created": bool)
    ACTOR_STOPPED = 83       # hosting worker → scheduler: (key,) a dropped actor's threads
                             #   have ended: its resources are free

    # scheduler → client
    TASK_DONE = 20           # (key, payload | None, worker address, nbytes)
    TASK_ERRED = 21          # (key, exception payload, traceback text)
    TASK_CANCELLED = 22      # (key, reason)
    TASK_LOST = 23           # (key, "killed" | "lost", reason)

    # scheduler → worker
    COMPUTE = 30             # (key, fn, args, [[dep key, [worker address]]], priority)
    FREE = 31                # (keys,)
    STORE = 32               # (req_id, key, payload)
    CLOSE_WORKER = 33        # (reason, "" | "retired") also scheduler → nanny
    PLUGIN = 34              # (name, payload)          also scheduler → nanny: install
    PLUGIN_INSTALL = 35      # (req_id, name, payload)  the same, answered: REPLY(error text)
    ACQUIRE = 36             # (req_id, [[key, [holder addresses]]]) → REPLY(keys obtained)
    LOGS = 37                # (req_id, n) → REPLY([[time, level, logger, text]])  also → nanny

    # worker → scheduler
    REGISTER_WORKER = 40     # (req_id, info: dict)
    TASK_FINISHED = 41       # (key, payload | None, nbytes)
    TASK_FAILED = 42         # (key, exception payload, traceback text)
    MISSING_DATA = 43        # (key, dep key, worker address)
    HEARTBEAT = 44           # (metrics: dict)
    GOODBYE = 45             # (reason,)  a planned close: not a failure
    TASK_RELEASED = 46       # (key,) a task the scheduler freed has ended (or will never
                             #   start) here: its thread is free, nothing was kept

    # nanny → scheduler
    REGISTER_NANNY = 50      # (req_id, info: dict)
    WORKER_EXITED = 51       # (worker address, pid, exitcode, how, restarting: bool,
    #                          keys the worker was running | None = not known)
    RESTART_WORKER = 52      # scheduler → nanny: (reason,)

    # worker ↔ worker, client → worker
    GET_DATA = 60            # (req_id, keys)  → REPLY(req_id, True, [[key, payload]])
    # a large scatter goes straight to the worker (docs/data.md, "Direct put"):
    PUT_DATA = 61            # client → worker: (req_id, [[key, payload]]) → REPLY(None)
                             #   answered once the scheduler knows the worker holds them
    PUT_DONE = 62            # worker → scheduler: (req_id, client_id, [[key, nbytes]])
                             #   → REPLY(None), or an error: the worker drops the keys
    PLACE = 63               # client → scheduler: (req_id, [nbytes], workers | None,
                             #   broadcast) → REPLY([[worker address, ...] per value])


#: WORKER_EXITED names the tasks a dead worker was running by their keys, or, for a key
#: longer than this many bytes (UTF-8), by :func:`running_key`'s digest of it
RUNNING_KEY_BYTES = 254


def running_key(key: str) -> str:
    """How a running task's ``key`` travels in WORKER_EXITED: itself, or a digest."""
    data = key.encode()
    if len(data) <= RUNNING_KEY_BYTES:
        return key
    return "#blake2b:" + hashlib.blake2b(data, digest_size=16).hexdigest()


class FrameEncoder:
    """Encodes a batch of messages into the pieces of one frame (for ``sendmsg``)."""

    def __init__(self, oob_threshold: int):
        self._buffers: list = []
        self._as_bytes: set[int] = set()
        self._threshold = oob_threshold
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True,
                                      autoreset=True)

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, Payload):
            first = len(self._buffers)
            header = obj.header
            inline = len(header) < self._threshold
            if not inline:
                self._buffers.append(header)
                header = b""
            if obj.kind == RAW_BYTES:
                self._as_bytes.add(len(self._buffers))
            self._buffers.extend(obj.buffers)
            return msgpack.ExtType(_PAYLOAD_EXT, _PAYLOAD_HDR.pack(
                obj.kind, not inline, first, len(self._buffers) - first) + header)
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        raise TypeError(f"cannot send {type(obj).__name__} in a message")

    def encode(self, messages: list) -> list:
        """Return ``[prefix, body, *buffers]`` ready for ``socket.sendmsg``."""
        self._buffers = []
        body = self._packer.pack(messages)
        buffers = self._buffers
        self._buffers = []
        prefix = HEADER.pack(len(body), len(buffers))
        if buffers:
            flags, self._as_bytes = self._as_bytes, set()
            prefix += b"".join(BUFLEN.pack(memoryview(b).nbytes | (_AS_BYTES if i in flags
                                                                   else 0))
                               for i, b in enumerate(buffers))
        return [prefix, body, *buffers]


class FrameDecoder:
    """Incremental frame parser: feed it bytes, get lists of messages back.

    Large out-of-band buffers are received straight into their own buffer (see
    :meth:`direct_target`) instead of passing through the stream buffer; from
    ``_MAP_MIN`` bytes up that buffer is an anonymous map whose memory is taken only as
    the bytes arrive. Everything else grows with the bytes received: what a peer
    *announces* never makes this side allocate it.
    """

    def __init__(self, max_frame_bytes: int, direct_threshold: int = 1 << 16):
        self.max_frame_bytes = max_frame_bytes
        self._direct = direct_threshold
        self._buf = bytearray()
        self._lengths: list[int] | None = None   # buffer lengths of the current frame
        self._body_len = 0
        self._body: bytes | None = None
        self._bufs: list = []
        self._target: memoryview | None = None   # a large buffer being filled directly
        self._owner: Any = None                  # ... and the object it becomes
        self._filled = 0

    @property
    def mid_frame(self) -> bool:
        return bool(self._buf) or self._lengths is not None

    def direct_target(self) -> memoryview | None:
        """A memoryview to ``recv_into`` directly, when a large buffer is being read."""
        if self._target is None:
            return None
        return self._target[self._filled:]

    def direct_received(self, n: int) -> list:
        self._filled += n
        if self._filled == len(self._target):
            self._bufs.append(self._owner)
            self._target = self._owner = None
            return self._parse()
        return []

    def feed(self, data: bytes) -> list:
        self._buf += data
        return self._parse()

    # Parsing is a loop over "what is the next piece of this frame", so a frame may
    # arrive in any number of pieces and several frames may arrive in one.
    def _parse(self) -> list:
        out: list = []
        buf = self._buf
        while True:
            if self._lengths is None:
                if len(buf) < HEADER.size:
                    break
                body_len, nbufs = HEADER.unpack_from(buf)
                if nbufs > _MAX_BUFFERS:
                    raise ProtocolError(f"frame announces {nbufs} buffers")
                need = HEADER.size + BUFLEN.size * nbufs
                if len(buf) < need:
                    break
                lengths = [BUFLEN.unpack_from(buf, HEADER.size + BUFLEN.size * i)[0]
                           for i in range(nbufs)]
                total = body_len + sum(n & ~_AS_BYTES for n in lengths)
                if total > self.max_frame_bytes:
                    raise ProtocolError(f"frame of {total} bytes exceeds the limit of "
                                        f"{self.max_frame_bytes} (max_frame_bytes)")
                del buf[:need]
                self._lengths, self._body_len, self._body, self._bufs = lengths, body_len, None, []
            if self._body is None:
                if len(buf) < self._body_len:
                    break
                self._body = bytes(buf[:self._body_len])
                del buf[:self._body_len]
            while len(self._bufs) < len(self._lengths):
                n = self._lengths[len(self._bufs)]
                as_bytes = n & _AS_BYTES
                n &= ~_AS_BYTES
                if len(buf) >= n:
                    self._bufs.append(bytes(buf[:n]) if as_bytes else bytearray(buf[:n]))
                    del buf[:n]
                    continue
                if n >= self._direct:
                    owner, target = _receive_bytes(n) if as_bytes else _receive_buffer(n)
                    have = len(buf)
                    target[:have] = buf
                    del buf[:]
                    self._target, self._owner, self._filled = target, owner, have
                return out
            out.extend(self._decode_body(self._body, self._bufs))
            self._lengths = None
        return out

    @staticmethod
    def _decode_body(body: bytes, bufs: list) -> list:
        def ext_hook(code: int, data: bytes) -> Any:
            if code != _PAYLOAD_EXT or len(data) < _PAYLOAD_HDR.size:
                raise ProtocolError(f"unknown extension type {code}")
            kind, header_is_buf, first, count = _PAYLOAD_HDR.unpack_from(data)
            if first + count > len(bufs):
                raise ProtocolError("payload refers to buffers the frame does not have")
            mine = bufs[first:first + count]
            if header_is_buf:
                if not mine:
                    raise ProtocolError("payload header buffer missing")
                header = bytes(mine.pop(0))
            else:
                header = data[_PAYLOAD_HDR.size:]
            if kind == SHM:      # a same-host peer's segment: mapped now, read-only
                return _attach(header)
            return Payload(kind, header, mine)
        try:
            messages = msgpack.unpackb(body, ext_hook=ext_hook, raw=False,
                                       strict_map_key=False, use_list=True)
        except ProtocolError:
            raise
        except Exception as e:
            raise ProtocolError(f"malformed frame body: {type(e).__name__}: {e}") from None
        if not isinstance(messages, list):
            raise ProtocolError("a frame body must be a list of messages")
        for m in messages:
            if not isinstance(m, list) or not m or not isinstance(m[0], int):
                raise ProtocolError(f"malformed message {str(m)[:80]!r}")
        return messages


def _attach(ref: bytes) -> Payload:
    try:
        return shm.attach(ref)
    except (OSError, ValueError, TypeError, msgpack.UnpackException) as e:
        # Gone already (its key released, its producer dead) or not one of ours: the
        # connection drops, and the fetch fails like one from a dead peer.
        raise ProtocolError(f"cannot map the shared memory a peer named: {e}") from None


def _receive_buffer(n: int) -> tuple[bytearray | mmap.mmap, memoryview]:
    """A writable buffer of ``n`` bytes whose memory is committed as it is written, and
    a view to receive into."""
    if n < _MAP_MIN or _MAP_PRIVATE is None:
        buf: bytearray | mmap.mmap = bytearray(n)
        return buf, memoryview(buf)
    try:
        buf = mmap.mmap(-1, n, flags=_MAP_PRIVATE)
    except OSError as e:   # out of address space or over the overcommit limit
        raise ProtocolError(f"cannot map the {n} bytes a frame announces: {e}") from None
    if _MADV_HUGEPAGE is not None:
        # 2 MiB pages where the kernel allows: 512 times fewer page faults while the
        # bytes are written (measured: the faults of 4 KiB pages cost about a third of
        # a 100 MB receive)
        try:
            buf.madvise(_MADV_HUGEPAGE)
        except OSError:
            pass
    return buf, memoryview(buf)


def _receive_bytes(n: int) -> tuple[bytes | bytearray | mmap.mmap, memoryview]:
    """An uninitialised ``bytes`` of ``n`` bytes and a writable view to ``recv_into``:
    a large ``bytes`` payload then needs no copy out of a receive buffer (a copy of
    100 MB costs as much as receiving it). Outside CPython, a buffer (copied at unpickle)."""
    try:
        made = uninitialized_bytes(n)
    except MemoryError:
        raise ProtocolError(f"cannot allocate the {n} bytes a frame announces") from None
    return made if made is not None else _receive_buffer(n)


def encode_handshake(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body), 0) + body


def decode_handshake(buf: bytearray, limit: int) -> Any | None:
    """Pop one handshake frame from ``buf``; None if incomplete. Strict and small."""
    if len(buf) < HEADER.size:
        if len(buf) >= 4 and int.from_bytes(buf[:4], "big") > limit:
            raise ProtocolError("handshake frame too large")
        return None
    body_len, nbufs = HEADER.unpack_from(buf)
    if nbufs or body_len > limit:
        raise ProtocolError(f"bad handshake frame (length {body_len}, {nbufs} buffers)")
    if len(buf) < HEADER.size + body_len:
        return None
    body = bytes(buf[HEADER.size:HEADER.size + body_len])
    del buf[:HEADER.size + body_len]
    try:
        return msgpack.unpackb(body, raw=False, max_bin_len=limit, max_str_len=limit,
                               max_array_len=64, max_map_len=64, max_ext_len=0)
    except Exception as e:
        raise ProtocolError(f"malformed handshake: {type(e).__name__}: {e}") from None
