"""What a client knows about the tasks it submits: their keys, a digest of what they
compute, the pickled functions it reuses, and its exit hook.

- A key the user chooses must be a non-empty ``str``; reused for another computation
  while the first is alive, it is an error (:func:`recipe` tells them apart), never a
  silent hand-out of a result computed from other arguments.
- Functions and classes are pickled once per client and the payload kept while they
  live, through weak references: the cache never keeps a callable, or what it holds,
  alive. Other callables (partials, bound methods, instances) are pickled at each call:
  they are usually new objects each time, and may compare equal while differing.
- At interpreter exit, before ``atexit`` handlers (multiprocessing's kills child
  processes), open clients let the work still wanted finish, as the stdlib's executors
  do, then close; a LocalCluster's own hook, registered earlier, runs after.
"""

from __future__ import annotations

import hashlib
import threading
import types
import weakref
from typing import Any, Callable

from ..comm.serialize import Payload, dumps

__all__ = ["check_key", "task_options", "recipe", "FunctionCache", "track_for_exit",
           "untrack"]

_CACHEABLE = (types.FunctionType, type)


def check_key(key: Any) -> str:
    if type(key) is not str:
        raise TypeError(f"key= must be a str, not {type(key).__name__} ({key!r}); tuple keys "
                        "such as ('x', 0, 1) are not supported: use a string like 'x-0-1'")
    if not key:
        raise ValueError("key= must be a non-empty string")
    return key


def task_options(resources: Any, workers: Any, priority: Any = 0,
                 retries: Any = 0) -> tuple[dict | None, list | None]:
    """Check what submit/actor take, here and now: a wrong type sent on would fail at
    the scheduler, far from the caller, and the future would wait forever."""
    if resources is not None:
        if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                for k, v in resources.items()):
            raise TypeError(f"resources= must be a dict of names to amounts, like "
                            f"{{'GPU': 1}}, not {resources!r}")
    if workers is not None:
        workers = [workers] if isinstance(workers, str) else list(workers)
        if not all(isinstance(w, str) for w in workers):
            raise TypeError(f"workers= must be worker addresses or names, not {workers!r}")
    for name, value in (("priority", priority), ("retries", retries)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}= must be an integer, not {value!r}")
    if retries < 0:
        raise ValueError(f"retries= must be 0 or more, not {retries}")
    return resources or None, workers or None


def recipe(fn: Payload, args: Payload) -> bytes:
    """A digest of what a task computes (its function and arguments, buffers too)."""
    h = hashlib.blake2b(digest_size=16)
    for payload in (fn, args):
        h.update(payload.header)
        for buf in payload.buffers:
            h.update(buf)
    return h.digest()


class FunctionCache:
    """``payload(fn)``: ``fn`` pickled, once while it lives. A plain dict of
    ``id(fn) → (weak reference, payload)``: 3x cheaper to read than a WeakKeyDictionary."""

    def __init__(self, oob_threshold: int):
        self._oob = oob_threshold
        self._cache: dict[int, tuple[weakref.ref, Payload]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def payload(self, fn: Callable) -> Payload:
        entry = self._cache.get(id(fn))
        if entry is not None and entry[0]() is fn:
            return entry[1]
        payload = dumps(fn, oob_threshold=self._oob, what="function")
        if isinstance(fn, _CACHEABLE):
            cache, key = self._cache, id(fn)

            def dropped(ref: weakref.ref) -> None:     # (holds the dict, not the client)
                if cache.get(key, (None,))[0] is ref:
                    del cache[key]
            try:
                cache[key] = (weakref.ref(fn, dropped), payload)
            except TypeError:   # not weakly referable (a builtin): pickling it is cheap
                pass
        return payload


_open: "weakref.WeakSet[Any]" = weakref.WeakSet()
_hooked: list = []


def _finish_at_exit() -> None:
    for client in list(_open):
        client._finish_at_exit()


def track_for_exit(client: Any) -> None:
    """``client`` is open: finish and close it at interpreter exit if nobody does."""
    if not _hooked:
        _hooked.append(True)
        try:
            threading._register_atexit(_finish_at_exit)
        except RuntimeError:      # the interpreter is already shutting down
            pass
    _open.add(client)


def untrack(client: Any) -> None:
    _open.discard(client)
