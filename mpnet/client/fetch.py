"""Large data directly between the client and the workers: results fetched, values put.

::

    user thread ── fetch(futures) ── group by worker, ≤ max_frame_bytes/2 a batch ──┐
                                                                                   ▼
    loop thread ── GET_DATA on a cached direct connection per worker ── reply ── values
    a worker died first: wait for the scheduler to say where the value is now (or
    that it failed), and fetch from there

    user thread ── put(keys, payloads, where) ── group by worker ───────────────────┐
    loop thread ── PUT_DATA on the same connections; the worker stores, tells the ◄─┘
                   scheduler (PUT_DONE), then answers: the keys are usable at once

The worker connections belong to the loop thread; user threads only wait on futures.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import time
from typing import Any, Callable

from ..comm.pool import Pool
from ..comm.protocol import Msg
from ..comm.serialize import Payload, loads
from ..errors import CommClosedError, FrameTooLargeError, MpnetError, WorkerLostError
from .actors import binding
from .futures import Future

__all__ = ["Fetcher", "DIRECT_PUT_BYTES", "is_large", "digest"]


#: a scatter of at least this many bytes (pickled, all values together) goes straight
#: to the workers; smaller ones ride one request through the scheduler (one round trip
#: instead of three)
DIRECT_PUT_BYTES = 1 << 20


_PLAIN = frozenset({int, float, str, bool, type(None), complex, Future})


def is_large(value: Any) -> bool:
    """A task argument to put on a worker directly: ``bytes``-like or anything with an
    ``nbytes`` (numpy arrays and alike), of DIRECT_PUT_BYTES or more. Cheap for the
    common small arguments: one set lookup."""
    t = type(value)
    if t in _PLAIN:
        return False
    if t is bytes or t is bytearray:
        return len(value) >= DIRECT_PUT_BYTES
    nbytes = getattr(value, "nbytes", None)
    return type(nbytes) is int and nbytes >= DIRECT_PUT_BYTES


def digest(payload: Payload) -> str:
    """``hash=True``'s key suffix: a digest of the value's pickled bytes."""
    h = hashlib.blake2b(payload.header, digest_size=16)
    for b in payload.buffers:
        h.update(b)
    return h.hexdigest()


def _batches(futures: list, limit: int) -> list[tuple[str, list]]:
    """Group fetches by worker, each group's values adding up to at most ``limit`` bytes
    (one reply is one frame, and a frame over max_frame_bytes would be refused)."""
    batches: list[tuple[str, list]] = []
    open_: dict[str, tuple[list, list]] = {}     # worker → (its batch, [bytes in it])
    for f in futures:
        remote = f._remote()
        worker, nbytes = remote.worker, remote.nbytes
        batch, size = open_.get(worker, (None, [0]))
        if batch is None or (batch and size[0] + nbytes > limit):
            batch, size = [], [0]
            open_[worker] = (batch, size)
            batches.append((worker, batch))
        batch.append(f)
        size[0] += nbytes
    return batches


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Fetcher:
    """``fetch(futures, timeout)`` for one client (``owner``: what handles bind to)."""

    def __init__(self, owner: Any, loop: Any, *, config: Any, token: Any, client_id: str,
                 dispatch: Callable):
        self.owner, self.loop, self.config = owner, loop, config
        # direct connections to workers (mpnet.comm.pool), loop thread only
        self._workers = Pool(loop, config=config, token=token, role="client",
                             info={"id": client_id}, handler=dispatch)

    def fetch(self, futures: list, timeout: float | None) -> list:
        """The values of ``futures`` (``timeout`` in seconds), fetched where needed.

        A worker may die (or drop a value) before we fetch: the scheduler then computes
        the value again and tells us where it is now, and we fetch it from there.
        """
        if self.loop.in_loop_thread():
            raise RuntimeError("result() of a large value cannot be fetched from a done-"
                               "callback (it runs on the client's loop); call it elsewhere")
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = [f for f in futures if f._remote() is not None]
        while pending:
            requests = [(w, fs, self.loop.run_sync(self._get_data, w, [f.key for f in fs]))
                        for w, fs in _batches(pending, self.config.max_frame_bytes // 2)]
            pending = []
            for worker, batch, request in requests:
                try:
                    got = dict(request.result(_remaining(deadline)))
                except (CommClosedError, OSError, TimeoutError):
                    got = {}
                for f in batch:
                    if f.key in got:
                        with binding(self.owner):
                            f._set_value(loads(got[f.key], what=f"result of {f.key}"))
                    elif f._wait_moved(worker, deadline):
                        if f._remote() is not None:
                            pending.append(f)
                    else:
                        raise WorkerLostError(
                            f"could not fetch {f.key} from worker {worker}, which probably "
                            f"died, and it was not computed again within {timeout}s")
        return [f._settled() for f in futures]

    def put(self, keys: list[str], payloads: list, where: list[list[str]],
            timeout: float | None = None) -> None:
        """Send each payload straight to the workers ``where`` names for it (PLACE's
        answer); return once every worker has stored its values and the scheduler knows
        (``timeout`` in seconds). WorkerLostError, naming the workers, if any failed."""
        limit = self.config.max_frame_bytes // 2
        batches: list[tuple[str, list]] = []
        open_: dict[str, tuple[list, list]] = {}     # worker → (its batch, [bytes in it])
        for key, payload, workers in zip(keys, payloads, where):
            for worker in workers:
                batch, size = open_.get(worker, (None, [0]))
                if batch is None or (batch and size[0] + payload.nbytes > limit):
                    batch, size = [], [0]
                    open_[worker] = (batch, size)
                    batches.append((worker, batch))
                batch.append([key, payload])
                size[0] += payload.nbytes
        deadline = None if timeout is None else time.monotonic() + timeout
        requests = [(w, self.loop.run_sync(self._workers.request, w, Msg.PUT_DATA, batch))
                    for w, batch in batches]
        failed = []
        for worker, request in requests:
            try:
                request.result(_remaining(deadline))
            except FrameTooLargeError:
                raise                   # says what is too large and which setting to raise
            except (MpnetError, OSError, TimeoutError) as e:
                failed.append(f"{worker} ({e})")
        if failed:
            raise WorkerLostError(
                f"scatter could not put data on {len(failed)} worker(s): "
                f"{'; '.join(failed)}. A worker probably died or left during the put; "
                "the values sent to it are not on the cluster: scatter them again")

    def _get_data(self, worker: str, keys: list[str]) -> cf.Future:
        """Loop thread: GET_DATA on the pooled direct connection to ``worker``."""
        return self._workers.request(worker, Msg.GET_DATA, keys)

    def close_on_loop(self) -> None:
        self._workers.close()
