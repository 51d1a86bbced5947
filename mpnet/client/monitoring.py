"""A client's read-only views of the cluster: status snapshot, task stream, logs, and
the small table a Client or a cluster shows in a notebook.

``Client`` hands these calls here. Each is one request to the scheduler (which, for
worker logs, asks every worker and nanny and answers once they all have); this object
needs only the client's session (``check_open`` and ``request``).
"""

from __future__ import annotations

from html import escape
from typing import Iterable

from ..comm.protocol import Msg
from ..lifecycle import Status
from .session import Session

__all__ = ["Monitoring", "cluster_html"]


class Monitoring:
    """The read-only views of one client, through its ``session``."""

    def __init__(self, session: Session):
        self._session = session

    def get_status(self, *, history: bool = False, events: int = 20,
                   timeout: float | None = None) -> dict:
        """The cluster now, as ``mpnet status --json`` prints it (see docs/monitoring.md).

        ``history`` adds each worker's CPU and memory over the last minute; ``events`` is
        how many recent events (worker deaths, restarts, pauses, clients) to include.
        """
        self._session.check_open("get_status")
        return self._session.request(Msg.STATUS, {"history": history, "events": events},
                                     timeout=timeout)

    def get_task_stream(self, since: float = 0.0, n: int | None = None,
                        timeout: float | None = None) -> list[dict]:
        """Recent task runs, oldest first: ``{"function", "key", "worker", "start",
        "stop", "status"}`` (times from ``time.time()``, stop after ``since``; the
        scheduler keeps the last 10,000)."""
        self._session.check_open("get_task_stream")
        return self._session.request(Msg.TASK_STREAM, since, n, timeout=timeout)

    def get_scheduler_logs(self, n: int = 100, timeout: float | None = None) -> list:
        """The scheduler's last ``n`` log lines: ``[time, level, logger, text]``."""
        self._session.check_open("get_scheduler_logs")
        return self._session.request(Msg.GET_LOGS, "scheduler", n, None, timeout=timeout)

    def get_worker_logs(self, n: int = 100, workers: Iterable[str] | None = None,
                        timeout: float | None = None) -> dict:
        """``{worker address: [[time, level, logger, text], ...]}``: each worker's last
        ``n`` log lines. Without ``workers``, also ``"nanny <address>"`` entries: the
        nannies' lines say how and why their worker died."""
        self._session.check_open("get_worker_logs")
        return self._session.request(Msg.GET_LOGS, "workers", n,
                                     list(workers) if workers is not None else None,
                                     timeout=timeout)

    def html(self, title: str, address: str) -> str:
        """``cluster_html`` of the cluster now (without figures if it cannot answer)."""
        try:
            snap = (self.get_status(events=0, timeout=2)
                    if self._session.status == Status.OPEN else None)
        except Exception:        # a notebook repr must never raise
            snap = None
        return cluster_html(title, address, self._session.status, snap)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cluster_html(title: str, address: str, status: str, snap: dict | None) -> str:
    """A small table for notebooks: address, dashboard link, workers, threads, memory."""
    rows = [("Scheduler", escape(address)), ("Status", escape(status))]
    if snap is not None:
        link = snap.get("dashboard")
        if link:
            rows.append(("Dashboard", f'<a href="{escape(link)}" target="_blank">'
                                      f'{escape(link)}</a>'))
        rows += [("Workers", f'{snap["workers_alive"]} of {snap["workers_expected"]}'),
                 ("Threads", str(snap["threads"])),
                 ("Memory", f'{_bytes(snap["memory"])} used of '
                            f'{_bytes(snap["memory_limit"])}'),
                 ("Tasks", ", ".join(f"{n} {s}" for s, n in snap["tasks"].items() if n)
                  or "none")]
    body = "".join(f'<tr><th style="text-align:left">{k}</th>'
                   f'<td style="text-align:left">{v}</td></tr>' for k, v in rows)
    return f"<div><strong>{title}</strong><table>{body}</table></div>"

