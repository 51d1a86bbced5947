"""The worker's in-memory data: results it computed and inputs it fetched.

Each entry keeps the object, its serialized payload, or both, and makes the missing
one on first use: a result computed here is serialized once (to learn its size and to
send it); an input fetched from a peer is unpickled only when a task needs it.
"""

from __future__ import annotations

import threading
from typing import Any

from ..comm.serialize import Payload, dumps, loads

__all__ = ["DataStore"]

_MISSING = object()


class _Entry:
    __slots__ = ("value", "payload", "nbytes")

    def __init__(self, value: Any, payload: Payload | None, nbytes: int):
        self.value, self.payload, self.nbytes = value, payload, nbytes


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
        self._data[key] = _Entry(value, payload, nbytes)
        self.nbytes += nbytes

    def value(self, key: str) -> Any:
        entry = self._data[key]
        if entry.value is _MISSING:
            with self._lock:
                if entry.value is _MISSING:
                    entry.value = loads(entry.payload, what=f"value of {key}")
        return entry.value

    def payload(self, key: str) -> Payload:
        entry = self._data[key]
        if entry.payload is None:
            entry.payload = dumps(entry.value, oob_threshold=self._oob, what=f"value of {key}")
        return entry.payload

    def pop(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes

    def clear(self) -> None:
        self._data.clear()
        self.nbytes = 0
