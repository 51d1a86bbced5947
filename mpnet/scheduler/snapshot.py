"""One picture of the cluster, as plain data: what `mpnet status --json`, `mpnet top`,
``/api/status`` and ``/metrics`` all read.

Built on the scheduler's loop thread from the state machine, the heartbeats the workers
sent and the :class:`~.monitor.Monitor`. Its cost grows with the number of workers,
function names and actors, never with the number of tasks. ``scheduler`` is the
:class:`~mpnet.scheduler.server.Scheduler`, read through its public names (the server
imports this module, not the other way round).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..comm.addressing import parse_address
from .monitor import group_name


__all__ = ["snapshot", "SNAPSHOT_VERSION"]

#: bumped when a field changes meaning (scripts reading --json may check it)
SNAPSHOT_VERSION = 1


def _host(address: str) -> str:
    try:
        return parse_address(address)[0]
    except ValueError:
        return address


def _worker_row(scheduler: Any, ws, now: float, history: bool) -> dict:
    m = ws.metrics
    if ws.retiring:
        state = "closing"
    elif ws.paused:
        state = "paused"
    elif now - ws.last_seen > 4 * scheduler.config.heartbeat_interval + 1:
        state = "silent"
    else:
        state = "running"
    row = {"address": ws.address, "name": ws.name, "host": _host(ws.address), "pid": ws.pid,
           "nthreads": ws.nthreads, "nanny": ws.nanny, "state": state,
           "cpu": m.get("cpu", 0.0), "memory": m.get("memory", 0),
           "memory_limit": ws.info.get("memory_limit", 0),
           "executing": m.get("executing", 0), "ready": m.get("ready", 0),
           "processing": len(ws.processing), "stored": len(ws.has_what),
           "nbytes": ws.nbytes, "restarts": scheduler.restarts.get(ws.nanny, 0),
           "last_seen": round(now - ws.last_seen, 3), "actors": len(ws.actors),
           "resources": ws.resources}
    if history:
        samples = scheduler.state.monitor.history.get(ws.address, ())
        row["cpu_history"] = [c for c, _ in samples]
        row["memory_history"] = [b for _, b in samples]
    return row


def snapshot(scheduler: Any, *, history: bool = False, events: int = 20) -> dict:
    """The cluster now. ``history`` adds each worker's last minute of CPU and memory;
    ``events`` is how many of the latest events to include."""
    st = scheduler.state
    mon = st.monitor
    now = time.monotonic()
    workers = [_worker_row(scheduler, ws, now, history) for ws in st.workers.values()]
    # A nanny whose worker is not registered now is restarting it (or gave up).
    registered = {ws.nanny for ws in st.workers.values() if ws.nanny}
    for nanny in scheduler.nannies:
        if nanny not in registered:
            workers.append({"address": "", "name": nanny, "host": _host(nanny), "pid": 0,
                            "nthreads": 0, "nanny": nanny, "state": "restarting",
                            "restarts": scheduler.restarts.get(nanny, 0)})
    live = [w for w in workers if w["state"] != "restarting"]
    expected = len(live) + sum(1 for w in workers if w["state"] == "restarting")
    cfg = scheduler.config
    actors = []
    for a in st.actors.values():
        if a.status == "dead":
            continue
        calls, queued = (a.worker.metrics.get("actors", {}).get(a.key, (0, 0))
                         if a.worker is not None else (0, 0))
        actors.append({"key": a.key, "name": a.name, "class": group_name(a.key),
                       "status": a.status, "restarts": a.restarts, "calls": calls,
                       "queued": queued,
                       "calls_per_second": round(mon.actor_rates.get(a.key, (0, 0.0))[1], 2),
                       "worker": a.worker.address if a.worker is not None else None,
                       "host": _host(a.worker.address) if a.worker is not None else ""})
    return {
        "version": SNAPSHOT_VERSION,
        "type": "Scheduler", "id": scheduler.id, "address": scheduler.address,
        "dashboard": scheduler.dashboard_link, "pid": os.getpid(),
        "time": time.time(), "started": mon.started, "uptime": time.time() - mon.started,
        "clients": len(st.clients),
        "workers_alive": len(live), "workers_expected": expected,
        "threads": sum(w["nthreads"] for w in live),
        "cpu": sum(w["cpu"] for w in live) / 100.0,
        "memory": sum(w["memory"] for w in live),
        "memory_limit": sum(w["memory_limit"] for w in live),
        "memory_pause_fraction": cfg.memory_pause_fraction,
        "memory_terminate_fraction": cfg.memory_terminate_fraction,
        "tasks_per_second": round(mon.rate, 2),
        "tasks": mon.task_counts(),
        "counts": dict(st.counts),
        "restarts_total": sum(scheduler.restarts.values()),
        "workers": workers,
        "groups": sorted((g.describe() for g in mon.groups.values()),
                         key=lambda g: (-g["active"], g["name"])),
        "actors": actors,
        "events": mon.recent_events(events),
    }

