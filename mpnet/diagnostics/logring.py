"""The last log lines of this process, kept in memory for `mpnet logs`.

One :class:`RingHandler` per process, on the ``mpnet`` logger: every record that logger
lets through (its level decides) is kept as ``[time, level, logger, text]`` in a ring of
``KEPT`` lines. The scheduler, each worker and each nanny answer ``LOGS`` requests from
it, so a user on a laptop can read why a remote worker died.

Adding a handler to ``mpnet`` would stop Python's last-resort stderr output of warnings
in a program that configured no logging; the ring passes such records on to it, so
installing the ring changes nothing a user sees.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

__all__ = ["RingHandler", "install", "lines", "KEPT"]

KEPT = 2000
_lock = threading.Lock()
_handler: "RingHandler | None" = None


class RingHandler(logging.Handler):
    def __init__(self, capacity: int = KEPT):
        super().__init__(logging.NOTSET)
        self.ring: deque = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:          # a bad format string must not break the caller
            text = str(record.msg)
        self.ring.append([record.created, record.levelname, record.name, text])
        self._last_resort(record)

    def _last_resort(self, record: logging.LogRecord) -> None:
        """Do what logging would have done had this handler not been there."""
        resort = logging.lastResort
        if resort is None or record.levelno < resort.level:
            return
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return
            if not logger.propagate:
                break
            logger = logger.parent
        resort.handle(record)


def install() -> RingHandler:
    """Attach the ring to the ``mpnet`` logger (once per process) and return it."""
    global _handler
    with _lock:
        if _handler is None:
            _handler = RingHandler()
            logging.getLogger("mpnet").addHandler(_handler)
        return _handler


def lines(n: int | None = None) -> list:
    """The last ``n`` lines (all kept if None), oldest first."""
    handler = _handler
    if handler is None:
        return []
    kept = list(handler.ring)
    return kept[-n:] if n else kept
