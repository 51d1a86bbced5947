"""Which task each executor thread is running, in memory that outlives the worker.

::

    nanny ── RawArray (shared memory, one slot per executor thread) ──► worker process
    executor thread i: slot[i] = key   ... runs the task ...   slot[i] = empty
    worker dies (os._exit, SIGKILL, out of memory) ── nanny reads the slots ──►
        WORKER_EXITED(..., running keys) ──► the scheduler charges the death to those
        tasks only; the ones queued behind them are rescheduled as innocent

A slot is written by its own thread with plain memory stores (no syscall, no lock: a
few hundred nanoseconds per task), the length last, so a reader never sees a key that
was half written as a whole one. Keys longer than a slot are stored as a digest
(:func:`mpnet.comm.protocol.running_key`), which the scheduler matches against the keys it knows.
"""

from __future__ import annotations

import struct
from typing import Any

from ..comm.protocol import RUNNING_KEY_BYTES, running_key

__all__ = ["SLOT_BYTES", "RunningSlots", "make_shared_slots"]

SLOT_BYTES = RUNNING_KEY_BYTES + 2
_LEN = struct.Struct("<H")


def make_shared_slots(ctx: Any, nthreads: int) -> Any:
    """Shared memory for ``nthreads`` slots, made by the nanny and handed to the child."""
    return ctx.RawArray("B", SLOT_BYTES * max(1, nthreads))


class RunningSlots:
    """Slots over a shared buffer (or a private one when there is no nanny to read it)."""

    def __init__(self, buffer: Any = None, nthreads: int = 1):
        if buffer is None:
            buffer = bytearray(SLOT_BYTES * max(1, nthreads))
        self._view = memoryview(buffer).cast("B")
        self.nslots = len(self._view) // SLOT_BYTES

    def set(self, index: int, key: str) -> None:
        data = running_key(key).encode()
        start = index * SLOT_BYTES
        self._view[start + _LEN.size:start + _LEN.size + len(data)] = data
        _LEN.pack_into(self._view, start, len(data))

    def clear(self, index: int) -> None:
        _LEN.pack_into(self._view, index * SLOT_BYTES, 0)

    def clear_all(self) -> None:
        for i in range(self.nslots):
            self.clear(i)

    def keys(self) -> list[str]:
        """The keys (or digests) of the tasks running now."""
        out = []
        for i in range(self.nslots):
            start = i * SLOT_BYTES
            (n,) = _LEN.unpack_from(self._view, start)
            if 0 < n <= SLOT_BYTES - _LEN.size:
                out.append(bytes(self._view[start + _LEN.size:start + _LEN.size + n])
                           .decode(errors="replace"))
        return out
