"""The worker's in-memory data: results it computed and inputs it fetched.

Each entry keeps the object, its serialized payload, or both, and makes the missing
one on first use: a result computed here is serialized once (to learn its size and to
send it); an input fetched from a peer is unpickled only when a task needs it.

A large result is copied into a shared-memory segment (:mod:`mpnet.comm.shm`) on the
executor thread that made it (:meth:`DataStore.share`), other large values when a peer
on this host first asks for them; peers on this host get the segment's name, others
the bytes. The segment goes when its entry goes (pop, clear, or a result never stored).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..comm import shm
from ..comm.serialize import Payload, dumps, loads

__all__ = ["DataStore"]

log = logging.getLogger("mpnet.worker")

_MISSING = object()


class _Entry:
    __slots__ = ("value", "payload", "nbytes", "shared")

    def __init__(self, value: Any, payload: Payload | None, nbytes: int):
        self.value, self.payload, self.nbytes = value, payload, nbytes
        self.shared: shm.Segment | None = None     # its copy in shared memory


class _Shared(Payload):
    """A result's payload and the segment that holds a copy of its buffers."""

    __slots__ = ("segment",)

    def __init__(self, payload: Payload, segment: shm.Segment):
        super().__init__(payload.kind, payload.header, payload.buffers)
        self.segment = segment


class DataStore:
    """Thread-safe enough for one writer (the loop) and many readers (executors).

    ``shm_min``: results whose buffers hold this many bytes or more go into shared
    memory as they are made (0: never; see :func:`mpnet.comm.shm.local_threshold`).
    """

    def __init__(self, oob_threshold: int, shm_min: int = 0):
        self._data: dict[str, _Entry] = {}
        self._oob = oob_threshold
        self._shm_min = shm_min
        self._lock = threading.Lock()
        self.nbytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        return list(self._data)

    def put(self, key: str, value: Any = _MISSING, payload: Payload | None = None) -> None:
        nbytes = payload.nbytes if payload is not None else 0
        old = self._data.get(key)
        if old is not None:
            self.nbytes -= old.nbytes
            _unshare(old)
        entry = self._data[key] = _Entry(value, payload, nbytes)
        if type(payload) is _Shared:
            entry.shared = payload.segment
        self.nbytes += nbytes

    def value(self, key: str) -> Any:
        entry = self._data[key]
        if entry.value is _MISSING:
            with self._lock:
                if entry.value is _MISSING:
                    entry.value = loads(entry.payload, what=f"value of {key}")
        return entry.value

    def payload(self, key: str, *, shm_min: int = 0) -> Payload:
        """The value serialized; with ``shm_min`` > 0 (a peer on this host asks), a
        reference to a shared-memory copy when its buffers hold ``shm_min`` bytes or more."""
        entry = self._data[key]
        if entry.payload is None:
            entry.payload = dumps(entry.value, oob_threshold=self._oob, what=f"value of {key}")
        if shm_min <= 0 or not entry.payload.buffers:
            return entry.payload
        if entry.shared is None:
            if _buffer_bytes(entry.payload) < shm_min:
                return entry.payload
            try:
                entry.shared = shm.export(entry.payload)
            except OSError as e:      # /dev/shm full: this peer gets the bytes
                log.warning("cannot put %s in shared memory: %s", key, e)
                return entry.payload
        return entry.shared.ref

    def share(self, payload: Payload) -> Payload:
        """Executor thread: ``payload`` of a new result, with a shared-memory copy of
        its buffers if they are large (the copy is made here, off the loop thread)."""
        if self._shm_min <= 0 or not payload.buffers or _buffer_bytes(payload) < self._shm_min:
            return payload
        try:
            return _Shared(payload, shm.export(payload))
        except OSError as e:      # /dev/shm full: peers get the bytes over TCP
            log.warning("cannot put a result in shared memory: %s", e)
            return payload

    def pop(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
            _unshare(entry)

    def clear(self) -> None:
        entries = list(self._data.values())
        self._data.clear()
        self.nbytes = 0
        for entry in entries:
            _unshare(entry)


def _buffer_bytes(payload: Payload) -> int:
    return sum(memoryview(b).nbytes for b in payload.buffers)


def _unshare(entry: _Entry) -> None:
    if entry.shared is not None:
        entry.shared.close()
        entry.shared = None
