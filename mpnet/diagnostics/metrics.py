"""``/metrics``: a cluster snapshot in the Prometheus text exposition format (0.0.4).

Every metric, with its meaning, is listed in :data:`METRICS` (and in docs/monitoring.md).
Names follow Prometheus conventions: ``mpnet_`` prefix, base units in the name
(``_bytes``, ``_seconds``, ``_ratio``), ``_total`` for counters.
"""

from __future__ import annotations

from typing import Iterable

from ..scheduler.monitor import DURATION_BUCKETS

__all__ = ["render", "METRICS", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: name → (type, help)
METRICS = {
    "mpnet_workers": ("gauge", "Workers registered with the scheduler now."),
    "mpnet_workers_expected": ("gauge", "Workers registered plus those their nanny is "
                                        "restarting."),
    "mpnet_clients": ("gauge", "Clients connected now."),
    "mpnet_threads": ("gauge", "Worker threads over all registered workers."),
    "mpnet_uptime_seconds": ("gauge", "Seconds since the scheduler started."),
    "mpnet_tasks": ("gauge", "Tasks the scheduler holds, by state."),
    "mpnet_tasks_by_function": ("gauge", "Tasks the scheduler holds, by function name and "
                                         "state."),
    "mpnet_tasks_submitted_total": ("counter", "Tasks submitted (distinct keys)."),
    "mpnet_tasks_finished_total": ("counter", "Task runs that finished with a result, by "
                                              "function name."),
    "mpnet_tasks_erred_total": ("counter", "Tasks that failed (raised, or lost with their "
                                           "worker), by function name."),
    "mpnet_task_duration_seconds": ("histogram", "Time from sending a task to a worker to "
                                                 "its result arriving, by function name."),
    "mpnet_workers_lost_total": ("counter", "Workers that left without saying goodbye "
                                            "(died, hung, unreachable)."),
    "mpnet_worker_restarts_total": ("counter", "Times a worker's nanny restarted it."),
    "mpnet_worker_memory_bytes": ("gauge", "Resident memory of the worker process."),
    "mpnet_worker_memory_limit_bytes": ("gauge", "The worker's memory limit (0: none)."),
    "mpnet_worker_cpu_ratio": ("gauge", "CPU use of the worker process (1.0 = one core)."),
    "mpnet_worker_threads": ("gauge", "Threads the worker runs tasks on."),
    "mpnet_worker_tasks_executing": ("gauge", "Tasks running on the worker now."),
    "mpnet_worker_tasks_processing": ("gauge", "Tasks the scheduler has sent to the worker "
                                               "and not heard back about."),
    "mpnet_worker_stored_keys": ("gauge", "Results the worker holds."),
    "mpnet_worker_stored_bytes": ("gauge", "Bytes of results the worker holds."),
    "mpnet_worker_last_seen_seconds": ("gauge", "Seconds since the worker's last "
                                                "heartbeat."),
    "mpnet_actors": ("gauge", "Actors that are not dead, by status."),
    "mpnet_actor_restarts_total": ("counter", "Times each live actor was restarted."),
    "mpnet_actor_calls_total": ("counter", "Method calls each live actor received (as its "
                                           "worker last reported)."),
    "mpnet_actor_queued_calls": ("gauge", "Calls waiting in each live actor's mailbox."),
}


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(int(value))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, samples: Iterable[tuple[str, dict, float]]) -> None:
        kind, help_text = METRICS[name]
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")


def _worker_labels(w: dict) -> dict:
    return {"worker": w["address"], "name": w["name"]}


def render(snap: dict) -> str:
    """The text ``/metrics`` serves for snapshot ``snap`` (see :mod:`mpnet.scheduler.snapshot`)."""
    out = _Out()
    workers = [w for w in snap["workers"] if w["state"] != "restarting"]
    groups = snap["groups"]
    out.family("mpnet_workers", [("", {}, snap["workers_alive"])])
    out.family("mpnet_workers_expected", [("", {}, snap["workers_expected"])])
    out.family("mpnet_clients", [("", {}, snap["clients"])])
    out.family("mpnet_threads", [("", {}, snap["threads"])])
    out.family("mpnet_uptime_seconds", [("", {}, float(snap["uptime"]))])
    out.family("mpnet_tasks", [("", {"state": s}, n) for s, n in snap["tasks"].items()])
    out.family("mpnet_tasks_by_function", [
        ("", {"function": g["name"], "state": s}, g[s]) for g in groups
        for s in ("waiting", "ready", "processing", "memory", "erred", "released")])
    out.family("mpnet_tasks_submitted_total", [("", {}, snap["counts"]["submitted"])])
    out.family("mpnet_tasks_finished_total",
               [("", {"function": g["name"]}, g["done"]) for g in groups])
    out.family("mpnet_tasks_erred_total",
               [("", {"function": g["name"]}, g["erred_total"]) for g in groups])
    out.family("mpnet_task_duration_seconds", _histogram(groups))
    out.family("mpnet_workers_lost_total", [("", {}, snap["counts"]["workers_lost"])])
    out.family("mpnet_worker_restarts_total", [
        ("", {"nanny": w["nanny"] or w["address"], "name": w["name"]}, w["restarts"])
        for w in snap["workers"]])
    for name, field, scale in (
            ("mpnet_worker_memory_bytes", "memory", 1),
            ("mpnet_worker_memory_limit_bytes", "memory_limit", 1),
            ("mpnet_worker_cpu_ratio", "cpu", 0.01),
            ("mpnet_worker_threads", "nthreads", 1),
            ("mpnet_worker_tasks_executing", "executing", 1),
            ("mpnet_worker_tasks_processing", "processing", 1),
            ("mpnet_worker_stored_keys", "stored", 1),
            ("mpnet_worker_stored_bytes", "nbytes", 1),
            ("mpnet_worker_last_seen_seconds", "last_seen", 1.0)):
        out.family(name, [("", _worker_labels(w), w[field] * scale if scale != 1 else w[field])
                          for w in workers])
    by_status: dict[str, int] = {}
    for a in snap["actors"]:
        by_status[a["status"]] = by_status.get(a["status"], 0) + 1
    out.family("mpnet_actors", [("", {"status": s}, n) for s, n in sorted(by_status.items())])
    out.family("mpnet_actor_restarts_total", [
        ("", {"actor": a["key"], "class": a["class"]}, a["restarts"]) for a in snap["actors"]])
    out.family("mpnet_actor_calls_total", [
        ("", {"actor": a["key"], "class": a["class"]}, a["calls"]) for a in snap["actors"]])
    out.family("mpnet_actor_queued_calls", [
        ("", {"actor": a["key"], "class": a["class"]}, a["queued"]) for a in snap["actors"]])
    return "\n".join(out.lines) + "\n"


def _histogram(groups: list[dict]) -> list:
    samples = []
    for g in groups:
        buckets = g.get("buckets")
        if buckets is None:
            continue
        labels = {"function": g["name"]}
        running = 0
        for bound, n in zip(DURATION_BUCKETS, buckets):
            running += n
            samples.append(("_bucket", {**labels, "le": repr(float(bound))}, running))
        running += buckets[-1]
        samples.append(("_bucket", {**labels, "le": "+Inf"}, running))
        samples.append(("_sum", labels, float(g["seconds"])))
        samples.append(("_count", labels, running))
    return samples
