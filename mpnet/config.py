"""One frozen configuration object, built once and passed down.

Layers, later wins: the defaults below < the environment (``MPNET_<FIELD>``, e.g.
``MPNET_CONNECT_TIMEOUT=5``) < keyword arguments to :func:`make_config`. Nothing deep
in mpnet reads the environment itself: it gets a :class:`Config`.

Every duration is in seconds, every size in bytes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

__all__ = ["Config", "make_config", "parse_bytes", "format_bytes", "tune_gc"]


@dataclass(frozen=True)
class Config:
    # --- connections -------------------------------------------------------------
    #: how long connect() keeps retrying an address where nothing answers yet
    connect_timeout: float = 10.0
    #: a peer must finish the authenticated handshake within this
    handshake_timeout: float = 5.0
    #: largest handshake frame accepted before authentication
    max_handshake_bytes: int = 4096
    #: largest frame accepted after authentication (body and buffers together)
    max_frame_bytes: int = 1 << 30
    #: a peer that stops in the middle of a frame for this long is disconnected
    frame_stall_timeout: float = 30.0
    #: how long a dial to a peer (another worker, an actor's host) keeps trying before
    #: the fetch or call through mpnet.comm.pool fails (and is retried elsewhere)
    peer_connect_timeout: float = 2.0
    #: messages a link to the scheduler keeps for its reconnect while it is down; one
    #: more raises LinkLostError (nothing is dropped silently)
    link_queue_limit: int = 10_000
    # --- TLS (docs/security-tls.md); "" = not set -----------------------------------
    #: PEM certificate this process shows (a server's, and a client's for mutual TLS);
    #: setting it makes listeners speak TLS (tls:// addresses)
    tls_cert: str = ""
    #: PEM private key of tls_cert ("" when the key is inside the tls_cert file)
    tls_key: str = ""
    #: PEM CA certificate(s): clients verify servers against it, and servers given it
    #: require a client certificate it signed (mutual TLS)
    tls_ca_file: str = ""
    # --- serialization -----------------------------------------------------------
    #: buffers at least this large travel out-of-band (no copy into the body)
    oob_threshold: int = 64 * 1024
    #: results up to this size travel inline with the completion message
    inline_result_bytes: int = 64 * 1024
    #: workers on one host hand each other buffers of shm_min_bytes and more through
    #: shared memory (/dev/shm) instead of TCP (docs/data.md); False: always TCP
    shm_enabled: bool = True
    shm_min_bytes: int = 1 << 20
    # --- scheduling --------------------------------------------------------------
    #: tasks sent ahead to a worker beyond its thread count, so it never starves
    #: while the next assignment is on the wire; the rest wait at the scheduler
    worker_queue_extra: int = 16
    #: a task running on this many workers that died (plus one) fails with
    #: KilledWorkerError instead of being tried again
    allowed_failures: int = 3
    #: after a worker's connection drops, wait this long for its nanny's report of the
    #: exit code before acting (the report usually comes within a millisecond)
    lost_worker_grace: float = 0.2
    # --- processes ---------------------------------------------------------------
    #: multiprocessing start method for worker processes ("spawn" is safe with threads)
    start_method: str = "spawn"
    #: how long close() asks nicely before SIGTERM, then SIGKILL
    close_timeout: float = 3.0
    #: how often a worker tells the scheduler it is alive
    heartbeat_interval: float = 0.5
    #: processes running mpnet raise Python's generation-0 GC threshold to at least this
    #: (0 leaves it alone): the default 700 makes the collector scan the thousands of
    #: live futures and task records over and over; measured in docs/design.md
    gc_threshold: int = 10_000
    #: ... and the full-collection threshold (Python's third, default 10: a full
    #: collection after that many middle ones) to at least this (0 leaves it alone). A
    #: full collection walks every live object: with 100,000 tasks in flight (about 20
    #: tracked objects each in a LocalCluster's process) it takes about a second, and at
    #: 10 it ran twice per 100,000-task batch. Measured in benchmarks/README.md ("Scale")
    gc_full_threshold: int = 100
    # --- supervision -------------------------------------------------------------
    #: a worker silent this long (no heartbeat, socket still open) is declared lost
    worker_ttl: float = 20.0
    #: the nanny pings its worker this often ...
    ping_interval: float = 1.0
    #: ... and kills it as hung when it has not answered for this long
    ping_timeout: float = 20.0
    #: how often the nanny looks at its worker's memory (psutil RSS)
    memory_interval: float = 0.2
    #: fraction of memory_limit at which the worker stops starting tasks
    memory_pause_fraction: float = 0.80
    #: fraction of memory_limit at which the nanny kills and restarts the worker
    memory_terminate_fraction: float = 0.95
    #: a nanny that restarted its worker this many times ...
    max_restarts: int = 10
    #: ... within this many seconds stops restarting it and tells the scheduler why
    restart_window: float = 60.0
    #: workers and nannies that lose the scheduler try to reach it again this long
    death_timeout: float = 60.0

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}


def parse_bytes(value: int | float | str) -> int:
    """``"2GiB"`` → 2147483648; ``"500 MB"`` → 500000000; numbers pass through."""
    if isinstance(value, (int, float)):
        return int(value)
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    if not number or unit not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size: use e.g. 2GiB, 500MB or 1000000")
    return int(float(number) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``: the inverse of :func:`parse_bytes`, for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _from_text(field_type: Any, text: str) -> Any:
    kind = field_type if isinstance(field_type, type) else {"int": int, "float": float,
                                                             "str": str, "bool": bool}[field_type]
    if kind is bool:
        word = text.strip().lower()
        if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"{text!r} is not a yes/no value (use 1/0, true/false, on/off)")
        return word in ("1", "true", "yes", "on")
    if kind is int and not text.strip().lstrip("-").isdigit():
        return parse_bytes(text)
    return kind(text)


def make_config(base: Config | None = None, *, environ: Mapping[str, str] | None = None,
                **overrides: Any) -> Config:
    """Build a :class:`Config`: defaults (or ``base``) < environment < ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so callers can pass their own
    optional arguments straight through.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    names = {f.name: f for f in fields(Config)}
    if base is None:
        for name, f in names.items():
            raw = environ.get("MPNET_" + name.upper())
            if raw is not None:
                try:
                    values[name] = _from_text(f.type, raw)
                except ValueError as e:
                    raise ValueError(f"environment variable MPNET_{name.upper()}={raw!r}: {e}")
        base = Config(**values)
    unknown = set(overrides) - set(names)
    if unknown:
        raise TypeError(f"unknown configuration option(s): {', '.join(sorted(unknown))}")
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


def tune_gc(config: Config) -> None:
    """Raise the collector's thresholds (process-wide) to ``gc_threshold`` (young) and
    ``gc_full_threshold`` (full); never lowers them, never disables the collector.

    Cyclic garbage is still collected: young cycles (most of them: a task's result, a
    caught exception's traceback) within ``gc_threshold`` allocations, cycles that
    outlived two collections within ``gc_threshold * 10 * gc_full_threshold``
    (tests/test_gc.py checks both in a worker and in the client's process)."""
    import gc
    first, second, third = gc.get_threshold()
    first = max(first, config.gc_threshold)
    third = max(third, config.gc_full_threshold)
    if (first, second, third) != gc.get_threshold():
        gc.set_threshold(first, second, third)
