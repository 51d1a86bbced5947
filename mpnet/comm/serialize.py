"""Turning user objects into opaque payloads and back.

A :class:`Payload` is what travels for every user object (a function, arguments, a
result, an exception): a pickle stream plus the out-of-band buffers that pickle
protocol 5 handed us (numpy arrays and other ``PickleBuffer`` users), or, for a
top-level ``bytes``/``bytearray``/``memoryview``, the raw buffer itself. The wire layer
(:mod:`mpnet.comm.protocol`) sends the buffers after the message body without copying
them, and the scheduler relays payloads without ever looking inside.

Futures inside arguments become *dependencies*: the pickler records their keys and
writes a persistent reference instead; the worker's unpickler puts the values back.
"""

from __future__ import annotations

import ctypes
import io
import pickle
import sys
import traceback
from typing import Any, Callable, Iterable

import cloudpickle

from ..errors import RemoteTraceback, SerializationError

__all__ = ["Payload", "dumps", "loads", "dumps_task_args", "loads_task_args",
           "dumps_exception", "loads_exception", "encode_value", "decode_value",
           "encode_args", "decode_args", "uninitialized_bytes"]

PICKLE = 0       # header is a pickle stream, buffers are its out-of-band buffers
RAW_BYTES = 1    # buffers[0] is the object itself (bytes)
RAW_BYTEARRAY = 2
SHM = 3          # header names a shared-memory segment (mpnet.comm.shm), no buffers
EMPTY = b""


class Payload:
    """Serialized user data: opaque bytes to everyone but the two ends."""

    __slots__ = ("kind", "header", "buffers")

    def __init__(self, kind: int, header: bytes, buffers: list):
        self.kind = kind
        self.header = header
        self.buffers = buffers

    @property
    def nbytes(self) -> int:
        return len(self.header) + sum(memoryview(b).nbytes for b in self.buffers)

    def __repr__(self) -> str:
        return f"<Payload kind={self.kind} {self.nbytes} bytes, {len(self.buffers)} buffers>"


def _describe(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _buffer_callback(threshold: int, out: list) -> Callable[[pickle.PickleBuffer], bool]:
    def callback(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < threshold:
            return True          # small: keep it in the pickle stream
        out.append(view)
        return False
    return callback


def dumps(obj: Any, *, oob_threshold: int = 64 * 1024, what: str = "object") -> Payload:
    """Serialize ``obj``; raises :class:`SerializationError` naming its type."""
    if type(obj) is bytes and len(obj) >= oob_threshold:
        return Payload(RAW_BYTES, EMPTY, [obj])
    if type(obj) is bytearray and len(obj) >= oob_threshold:
        return Payload(RAW_BYTEARRAY, EMPTY, [obj])
    buffers: list = []
    try:
        header = cloudpickle.dumps(obj, protocol=5,
                                   buffer_callback=_buffer_callback(oob_threshold, buffers))
    except Exception as e:
        raise SerializationError(
            f"could not pickle the {what} of type {_describe(obj)}: {type(e).__name__}: {e}. "
            "Objects sent to workers must be picklable by cloudpickle; create "
            "unpicklable things (locks, open files, connections) inside the task instead."
        ) from e
    return Payload(PICKLE, header, buffers)


def loads(payload: Payload, *, what: str = "object") -> Any:
    kind = payload.kind
    if kind == RAW_BYTES:
        buf = payload.buffers[0]    # received as bytes (mpnet.comm.protocol): no copy
        return buf if type(buf) is bytes else bytes(buf)
    if kind == RAW_BYTEARRAY:
        return bytearray(payload.buffers[0])
    try:
        return pickle.loads(payload.header, buffers=payload.buffers)
    except Exception as e:
        raise SerializationError(
            f"could not unpickle the {what}: {type(e).__name__}: {e}. Is the module that "
            "defines it importable on this machine, with the same version?") from e


# --- task arguments: futures inside become dependencies ---------------------------------

class _TaskPickler(cloudpickle.CloudPickler):
    """Writes ``("mpnet-dep", key)`` for every object that has ``__mpnet_key__``."""

    def __init__(self, file, deps: list, **kw):
        super().__init__(file, **kw)
        self._deps = deps

    def persistent_id(self, obj):  # noqa: D401 - pickle hook
        key = getattr(type(obj), "__mpnet_dep__", None)
        if key is None:
            return None
        key = obj.__mpnet_dep__()
        self._deps.append(key)
        return key


class _TaskUnpickler(pickle.Unpickler):
    def __init__(self, file, data: dict, **kw):
        super().__init__(file, **kw)
        self._data = data

    def persistent_load(self, key):
        return self._data[key]


def dumps_task_args(args: tuple, kwargs: dict, *, oob_threshold: int) -> tuple[Payload, list]:
    """Pickle ``(args, kwargs)``; return the payload and the dependency keys found."""
    if all(map(_plain, args)) and all(map(_plain, kwargs.values())):
        # The common case (a few numbers or strings): the C pickler alone, 4x faster
        # than setting up cloudpickle's; no futures can hide in plain scalars.
        return Payload(PICKLE, pickle.dumps((args, kwargs), protocol=5), []), []
    deps: list = []
    buffers: list = []
    bio = io.BytesIO()
    try:
        _TaskPickler(bio, deps, protocol=5,
                     buffer_callback=_buffer_callback(oob_threshold, buffers)).dump((args, kwargs))
    except Exception as e:
        bad = _first_unpicklable(list(args) + list(kwargs.values()))
        raise SerializationError(
            f"could not pickle an argument of type {bad}: {type(e).__name__}: {e}. "
            "Arguments must be picklable by cloudpickle."
        ) from e
    return Payload(PICKLE, bio.getvalue(), buffers), list(dict.fromkeys(deps))


def loads_task_args(payload: Payload, data: dict) -> tuple[tuple, dict]:
    if not data:
        return pickle.loads(payload.header, buffers=payload.buffers)
    return _TaskUnpickler(io.BytesIO(payload.header), data, buffers=payload.buffers).load()


def _first_unpicklable(objs: Iterable[Any]) -> str:
    for obj in objs:
        try:
            cloudpickle.dumps(obj)
        except Exception:
            return _describe(obj)
    return "(unknown)"


# --- exceptions: re-raised on the caller as the original type ---------------------------

def dumps_exception(exc: BaseException, *, oob_threshold: int = 64 * 1024) -> tuple[Payload, str]:
    """Serialize an exception and its formatted traceback.

    An exception that cannot be pickled is replaced by a ``RuntimeError`` naming its
    type and message, so the caller still learns what went wrong.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    try:
        payload = dumps(exc, oob_threshold=oob_threshold, what="exception")
        pickle.loads(payload.header, buffers=payload.buffers)   # it must come back, too
    except Exception:
        payload = dumps(RuntimeError(f"{_describe(exc)}: {exc} (the original exception "
                                     "could not be pickled)"))
    return payload, tb


def loads_exception(payload: Payload, tb: str) -> BaseException:
    try:
        exc = loads(payload, what="exception")
    except SerializationError as e:
        exc = e
    if isinstance(exc, BaseException):
        exc.__cause__ = RemoteTraceback(tb)
        return exc
    return SerializationError(f"remote error of unexpected kind {type(exc)!r}")


# --- actor calls: plain scalars skip pickle entirely ---------------------------------------
# Most actor calls pass and return a few numbers or strings; msgpack carries those as they
# are, which saves a pickle and an unpickle on each side of every call.

_PLAIN = (str, float, bool, type(None))


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return -(1 << 63) <= value < (1 << 64)
    return kind in _PLAIN


def encode_value(value: Any, *, oob_threshold: int = 64 * 1024) -> Any:
    """A plain scalar as it is, anything else as a :class:`Payload`."""
    return value if _plain(value) else dumps(value, oob_threshold=oob_threshold, what="result")


def decode_value(value: Any) -> Any:
    return loads(value, what="result") if isinstance(value, Payload) else value


def encode_args(args: tuple, kwargs: dict, *, oob_threshold: int = 64 * 1024) -> tuple:
    """``(args, kwargs)`` for a message: plain lists when every value is a plain scalar,
    else one payload holding both (and ``None``)."""
    if all(map(_plain, args)) and all(map(_plain, kwargs.values())):
        return list(args), kwargs or None
    return dumps((args, kwargs), oob_threshold=oob_threshold, what="arguments"), None


def decode_args(args: Any, kwargs: Any) -> tuple[tuple, dict]:
    if isinstance(args, Payload):
        return loads(args, what="arguments")
    return tuple(args), kwargs or {}


# --- receiving large bytes without a copy ---------------------------------------------------

def _bytes_maker() -> Callable | None:
    if sys.implementation.name != "cpython":
        return None          # the layout below is CPython's
    try:
        make = ctypes.pythonapi.PyBytes_FromStringAndSize
    except AttributeError:
        return None
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
    return make


_new_bytes = _bytes_maker()
_BYTES_OFFSET = bytes.__basicsize__ - 1     # where a bytes object's data (ob_sval) starts


def uninitialized_bytes(n: int) -> tuple[bytes, memoryview] | None:
    """A new ``bytes`` of ``n`` bytes, not yet filled, and a writable view of its data
    (None outside CPython). Whoever calls this fills it before anyone else sees it: a
    ``bytes`` is immutable once shared (its hash is cached on first use)."""
    if _new_bytes is None:
        return None
    obj = _new_bytes(None, n)     # malloc: large ones are fresh pages, never zero-filled
    start = id(obj) + _BYTES_OFFSET
    if n >= 2 * _HUGE and _madvise is not None:
        # 2 MiB pages where the kernel allows (THP "madvise"): far fewer page faults
        # while the bytes are written; only whole huge pages inside the object
        first = -(-start // _HUGE) * _HUGE
        _madvise(first, (start + n - first) // _HUGE * _HUGE, _MADV_HUGEPAGE)
    view = memoryview((ctypes.c_ubyte * n).from_address(start)).cast("B")
    return obj, view


_HUGE = 2 * 1024 * 1024
_MADV_HUGEPAGE = 14          # Linux
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise if sys.platform == "linux" else None
    if _madvise is not None:
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
except (OSError, AttributeError):
    _madvise = None
