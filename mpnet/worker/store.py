"""The worker's in-memory data: results it computed and inputs it fetched.

Each entry keeps the object, its serialized payload, or both, and makes the missing
one on first use: a result computed here is serialized once (to learn its size and to
send it); an input fetched from a peer is unpickled only when a task needs it.

A large value asked for by a peer on this host is copied once into a shared-memory
segment (:mod:`mpnet.comm.shm`), kept with its entry and sent by name from then on; the
segment is unlinked when the entry goes (pop, clear).
"""

from __future__ import annotations

import threading
from typing import Any

from ..comm import shm
from ..comm.serialize import SHM, Payload, dumps, loads

__all__ = ["DataStore"]

_MISSING = object()


class _Entry:
    __slots__ = ("value", "payload", "nbytes", "shared")

    def __init__(self, value: Any, payload: Payload | None, nbytes: int):
        self.value, self.payload, self.nbytes = value, payload, nbytes
        self.shared: tuple[Payload, str] | None = None   # (reference, segment name)


class DataStore:
    """Thread-safe enough for one writer (the loop) and many readers (executors)."""

    def __init__(self, oob_threshold: int):
        self._data: dict[str, _Entry] = {}
        self._oob = oob_threshold
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
        self._data[key] = _Entry(value, payload, nbytes)
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
            payload = entry.payload
            if payload.kind == SHM or sum(memoryview(b).nbytes
                                          for b in payload.buffers) < shm_min:
                return payload
            entry.shared = shm.export(payload)
        return entry.shared[0]

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


def _unshare(entry: _Entry) -> None:
    if entry.shared is not None:
        shm.unlink(entry.shared[1])
        entry.shared = None
