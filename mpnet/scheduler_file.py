"""The scheduler file: how workers and clients on a shared file system find a scheduler.

The scheduler writes it once it is listening, atomically (a temporary file in the same
folder, then ``os.replace``) and with mode 0600 because it carries the token; it removes
it on shutdown. A TLS scheduler's address says ``tls://``; the file never holds
certificates, keys or their paths (each machine gives its own). JSON, with at least::

    {"address": "tcp://10.0.0.5:8786", "dashboard": "http://10.0.0.5:8787/" | null,
     "id": "scheduler-…", "pid": 4242, "host": "node12", "started": 1795000000.0,
     "token": "…" | null}

Readers wait for it to appear (``timeout`` seconds, 60 by default: a job scheduler may
start workers before the scheduler), and report a *stale* file, one whose scheduler no
longer answers, at once instead of waiting on it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from .comm.addressing import parse_address
# The errors live in mpnet.errors; imported here too, where they were first defined.
from .errors import (InvalidSchedulerFileError, SchedulerFileTimeoutError,
                      StaleSchedulerFileError)

__all__ = ["write_scheduler_file", "read_scheduler_file", "remove_scheduler_file",
           "StaleSchedulerFileError", "SchedulerFileTimeoutError",
           "InvalidSchedulerFileError", "DEFAULT_WAIT"]

DEFAULT_WAIT = 60.0
#: Seconds of waiting for a missing file before saying so (once, at INFO).
WAITING_NOTICE = 1.0

log = logging.getLogger("mpnet.deploy")      # the name users filter on, as before


def _path(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(path))).absolute()


def write_scheduler_file(path: str | os.PathLike, info: dict[str, Any]) -> Path:
    target = _path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mpnet-", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def remove_scheduler_file(path: str | os.PathLike, scheduler_id: str) -> None:
    """Remove the file if it is still ours (another scheduler may have replaced it)."""
    target = _path(path)
    try:
        if json.loads(target.read_text()).get("id") == scheduler_id:
            target.unlink()
    except (FileNotFoundError, ValueError, OSError):
        pass


def _answers(address: str, timeout: float = 2.0) -> bool:
    host, port = parse_address(address)
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def read_scheduler_file(path: str | os.PathLike, *, timeout: float | None = None,
                        check_alive: bool = True) -> dict[str, Any]:
    """Wait up to ``timeout`` seconds for the file, then return its contents.

    Raises :class:`~mpnet.errors.SchedulerFileTimeoutError` (a ``TimeoutError``) if it
    never appears, :class:`~mpnet.errors.InvalidSchedulerFileError` (a ``ValueError``) if
    it is not a scheduler file, and :class:`~mpnet.errors.StaleSchedulerFileError` if its
    scheduler does not answer.
    """
    target = _path(path)
    timeout = DEFAULT_WAIT if timeout is None else timeout
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.05
    noticed = False
    while True:
        try:
            text = target.read_text()
            break
        except FileNotFoundError:
            now = time.monotonic()
            if not noticed and now - started >= WAITING_NOTICE and now < deadline:
                noticed = True    # a job scheduler may start workers first: say so, once
                log.info("scheduler file %s does not exist yet: still waiting for %.0f s",
                         target, deadline - now)
            if now >= deadline:
                raise SchedulerFileTimeoutError(
                    f"scheduler file {target} did not appear within {timeout}s: is "
                    f"mpnet-scheduler running with --scheduler-file {path}?") from None
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        except OSError as e:
            raise InvalidSchedulerFileError(
                f"cannot read scheduler file {target}: {e.strerror}") from None
    try:
        info = json.loads(text)
        info["address"]
    except (ValueError, KeyError, TypeError):
        raise InvalidSchedulerFileError(
            f"{target} is not an mpnet scheduler file (no JSON with an 'address')") from None
    if info.get("token"):
        from .comm.auth import check_private    # the file carries the cluster's token
        check_private(target, what="scheduler file", folder=False)
    if check_alive and not _answers(info["address"]):
        raise StaleSchedulerFileError(
            f"scheduler file {target} is stale: the scheduler it names at "
            f"{info['address']} (pid {info.get('pid')} on {info.get('host')}) does not "
            "answer. Delete the file or start the scheduler again.")
    return info
