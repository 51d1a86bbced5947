"""Large buffers between processes of one host, through shared memory (/dev/shm).

::

    producer (worker A)                               consumer (worker B, same host)
    a large result, on the executor thread ──► export(payload): its buffers copied
      once into /dev/shm/mpnet-<pid>-<n> (other large values: at the first GET_DATA
      from a same-host peer)
    GET_DATA from a same-host peer ──►
      reply: Payload(SHM, [kind, header, name, spans])  ──► decoder: attach(): map the
                                                            file read-only, unpickle onto it
    key released / worker closed ──► unlink(name)           (a mapping outlives the name)
    worker SIGKILLed ──► its nanny: sweep(pid) unlinks /dev/shm/mpnet-<pid>-*

A segment belongs to the key whose buffers it holds and to the process that made it; its
name carries that pid so that whoever outlives the process (the nanny) can remove it.
Consumers never create segments: a consumer that dies leaves nothing. Linux keeps a
mapped file alive after its name is gone, so a consumer's arrays stay valid when the
producer releases the key or dies. Only plain files in /dev/shm, owned by this user and
named with this prefix, are ever mapped.
"""

from __future__ import annotations

import glob
import itertools
import logging
import mmap
import os
import socket
import stat
import weakref

import msgpack

from .serialize import RAW_BYTES, SHM, Payload, uninitialized_bytes

__all__ = ["available", "host_id", "advertise", "local_threshold", "threshold", "Segment",
           "export", "attach", "unlink", "sweep", "PREFIX"]

log = logging.getLogger("mpnet.comm")

DIRECTORY = "/dev/shm"
PREFIX = "mpnet-"
_ALIGN = 64                   # each buffer starts on a cache line (numpy wants ≥ 16)
_counter = itertools.count()
_host_id: str | None = None


def available() -> bool:
    """Shared memory works here: Linux-style /dev/shm that this user can write."""
    return os.path.isdir(DIRECTORY) and os.access(DIRECTORY, os.W_OK | os.X_OK)


def host_id() -> str:
    """Names this host and boot: processes with equal ids share /dev/shm (a container
    has its own hostname, and a reboot a new boot id)."""
    global _host_id
    if _host_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            boot = "?"
        _host_id = f"{socket.gethostname()}/{boot}"
    return _host_id


def advertise(config) -> dict:
    """What a worker adds to its handshake info when it dials a peer: its host id, if it
    takes shared memory (``config.shm_enabled`` and /dev/shm usable)."""
    return {"host": host_id()} if config.shm_enabled and available() else {}


def local_threshold(config) -> int:
    """Bytes from which this process's results go into shared memory as they are
    stored (0: never), so that a peer on this host maps them without waiting for a copy."""
    return config.shm_min_bytes if config.shm_enabled and available() else 0


def threshold(config, peer_info: dict) -> int:
    """Bytes from which a value goes to this peer through shared memory; 0: never (it
    is on another host, a client, or one side has shared memory off)."""
    if config.shm_enabled and peer_info.get("host") == host_id() and available():
        return config.shm_min_bytes
    return 0


def _path(name: str) -> str:
    if not name.startswith(PREFIX) or "/" in name or name in (".", ".."):
        raise ValueError(f"not an mpnet shared-memory segment: {name!r}")
    return os.path.join(DIRECTORY, name)


class Segment:
    """A segment this process made: ``ref`` is the payload that names it (no buffers: a
    few dozen bytes on the wire). Unlinked by :meth:`close`, or when it is dropped (a
    result thrown away before it was stored must not leave its segment behind)."""

    __slots__ = ("name", "ref", "_unlink", "__weakref__")

    def __init__(self, name: str, ref: Payload):
        self.name, self.ref = name, ref
        self._unlink = weakref.finalize(self, unlink, name)

    def close(self) -> None:
        self._unlink()


def export(payload: Payload) -> Segment:
    """Copy ``payload``'s buffers into a new segment."""
    spans, offset = [], 0
    for buf in payload.buffers:
        n = memoryview(buf).nbytes
        spans.append([offset, n])
        offset = (offset + n + _ALIGN - 1) // _ALIGN * _ALIGN
    name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
    fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # Written, not mapped: a full /dev/shm (Docker gives 64 MB) is then an OSError
        # (ENOSPC) here, where writing through a mapping of it would be a SIGBUS.
        os.ftruncate(fd, max(offset, 1))
        for buf, (start, n) in zip(payload.buffers, spans):
            view, done = memoryview(buf).cast("B"), 0
            while done < n:
                done += os.pwrite(fd, view[done:], start + done)
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)
    ref = msgpack.packb([payload.kind, payload.header, name, spans], use_bin_type=True)
    return Segment(name, Payload(SHM, ref, []))


def attach(ref: bytes) -> Payload:
    """The payload a :func:`export` reference names, its buffers read-only views of the
    mapped segment. Raises OSError if the segment is gone (released, its producer died)."""
    kind, header, name, spans = msgpack.unpackb(ref, raw=False)
    fd = os.open(_path(name), os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        end = max((start + n for start, n in spans), default=0)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size < end:
            raise OSError(f"{name} is not a segment of this user's mpnet")
        if kind == RAW_BYTES and len(spans) == 1:
            made = uninitialized_bytes(spans[0][1])
            if made is not None:      # a bytes owns its memory: one copy, by the kernel
                _read_into(fd, made[1], spans[0][0])
                return Payload(kind, header, [made[0]])
        m = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    view = memoryview(m)
    return Payload(kind, header, [view[start:start + n] for start, n in spans])


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError("shared-memory segment shorter than announced")
        done += n


def unlink(name: str) -> None:
    """Remove a segment's name; mappings of it stay valid until they are dropped."""
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        pass


def sweep(pid: int | None) -> int:
    """Remove every segment process ``pid`` made (it is gone); return how many."""
    if pid is None:
        return 0
    names = glob.glob(os.path.join(DIRECTORY, f"{PREFIX}{int(pid)}-*"))
    for path in names:
        try:
            os.unlink(path)
        except OSError as e:
            log.warning("could not remove shared memory %s of dead pid %s: %s", path, pid, e)
    return len(names)
