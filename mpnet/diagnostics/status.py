"""The cluster as rich tables: what `mpnet status` prints and `mpnet top` redraws.

``render(snapshot, width)`` is a pure function of a snapshot (see
:mod:`mpnet.scheduler.snapshot`) and a terminal width: tests render it into a capture
console and read the text. A narrow terminal loses the least useful columns first
instead of wrapping lines.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..config import format_bytes

__all__ = ["render", "header", "sparkline"]

_SPARKS = "▁▂▃▄▅▆▇█"
_STATE_STYLE = {"running": "green", "paused": "yellow", "closing": "cyan",
                "restarting": "red", "silent": "yellow", "lost": "red"}
_EVENT_STYLE = {"worker-exited": "red", "worker-removed": "red", "task-killed": "red",
                "worker-restarted": "green", "worker-paused": "yellow"}


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def sparkline(values: Sequence[float], top: float | None = None, width: int = 12) -> str:
    """The last ``width`` values as block characters, scaled to ``top`` (or their max)."""
    values = list(values)[-width:]
    if not values:
        return ""
    top = top or max(values) or 1
    return "".join(_SPARKS[min(len(_SPARKS) - 1, max(0, int(v / top * (len(_SPARKS) - 1)
                                                                + 0.5)))] for v in values)


def _membar(w: dict, pause: float, kill: float, cells: int = 10) -> Text:
    """``███████░░░`` against the limit, with ``|`` at the pause and kill thresholds."""
    limit = w.get("memory_limit") or 0
    used = w.get("memory", 0)
    if not limit:
        return Text(format_bytes(used))
    fill = min(cells, int(round(cells * used / limit)))
    bar = Text()
    marks = {min(cells - 1, int(cells * pause)), min(cells - 1, int(cells * kill))}
    for i in range(cells):
        if i < fill:
            style = "red" if used / limit >= pause else "green"
            bar.append("█", style)
        else:
            bar.append("│" if i in marks else "░", "dim")
    bar.append(f" {format_bytes(used)}/{format_bytes(limit)}")
    return bar


def header(snap: dict) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(" mpnet ", "bold reverse")
    parts = [snap["address"], f"up {_duration(snap['uptime'])}",
             f"{snap['clients']} clients",
             f"{snap['workers_alive']}/{snap['workers_expected']} workers",
             f"{snap['tasks_per_second']:,.0f} tasks/s",
             f"CPU {snap['cpu']:.1f}/{snap['threads']}",
             f"mem {format_bytes(snap['memory'])}/{format_bytes(snap['memory_limit'])}"]
    if snap.get("dashboard"):
        parts.append(snap["dashboard"])
    text.append("  " + "   ".join(parts))
    return text


# A column: (title, min width, priority: lower is dropped later, justify, cell(row)).
_Column = tuple[str, int, int, str, Callable[[dict], object]]


def _fit(columns: list[_Column], width: int) -> list[_Column]:
    """Drop the highest-priority-number columns until the rest fit in ``width``."""
    chosen = list(columns)
    while len(chosen) > 1 and sum(c[1] + 2 for c in chosen) > width:
        chosen.remove(max(chosen, key=lambda c: c[2]))
    return chosen


def _table(columns: list[_Column], rows: list[dict], width: int) -> Table:
    chosen = _fit(columns, width)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold",
                  expand=False)
    for name, min_width, _, justify, _cell in chosen:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",
                         min_width=min_width)
    for row in rows:
        table.add_row(*[cell(row) for *_, cell in chosen])
    return table


def _workers(snap: dict, width: int) -> Table:
    pause, kill = snap["memory_pause_fraction"], snap["memory_terminate_fraction"]
    cols: list[_Column] = [
        ("worker", 14, 0, "left", lambda w: w["name"]),
        ("host", 9, 5, "left", lambda w: w["host"]),
        ("pid", 6, 6, "right", lambda w: str(w.get("pid") or "")),
        ("cpu", 5, 1, "right", lambda w: f"{w.get('cpu', 0):.0f}%"),
        ("cpu 1m", 12, 9, "left", lambda w: Text(sparkline(w.get("cpu_history", ()), 100),
                                                  "cyan")),
        ("memory", 22, 2, "left", lambda w: _membar(w, pause, kill)),
        ("mem 1m", 12, 10, "left", lambda w: Text(sparkline(
            w.get("memory_history", ()), w.get("memory_limit") or None), "magenta")),
        ("exec", 4, 3, "right", lambda w: str(w.get("executing", ""))),
        ("ready", 5, 7, "right", lambda w: str(w.get("ready", ""))),
        ("stored", 9, 8, "right", lambda w: format_bytes(w["nbytes"]) if "nbytes" in w else ""),
        ("restarts", 8, 4, "right", lambda w: str(w.get("restarts", 0))),
        ("last seen", 9, 11, "right",
         lambda w: f"{w['last_seen']:.1f} s" if "last_seen" in w else ""),
        ("state", 10, 1, "left", lambda w: Text(w["state"], _STATE_STYLE.get(w["state"], ""))),
    ]
    return _table(cols, snap["workers"], width)


def _bar(fraction: float, cells: int = 20) -> Text:
    fill = int(round(cells * fraction))
    return Text("━" * fill, "green") + Text("━" * (cells - fill), "dim")


def _groups(snap: dict, width: int) -> Table:
    def done(g: dict) -> float:
        finished = g["memory"] + g["released"] + g["forgotten"] + g["erred"]
        return finished / g["total"] if g["total"] else 1.0
    cols: list[_Column] = [
        ("tasks by function", 17, 0, "left", lambda g: g["name"]),
        ("waiting", 7, 2, "right", lambda g: f"{g['waiting'] + g['ready']:,}"),
        ("processing", 10, 1, "right", lambda g: f"{g['processing']:,}"),
        ("in memory", 9, 3, "right", lambda g: f"{g['memory']:,}"),
        ("erred", 5, 1, "right", lambda g: Text(f"{g['erred']:,}",
                                                "red" if g["erred"] else "")),
        ("", 20, 6, "left", lambda g: _bar(done(g))),
        ("done", 4, 4, "right", lambda g: f"{done(g):.0%}"),
        ("tasks/s", 7, 5, "right", lambda g: f"{g['rate']:,.0f}"),
    ]
    return _table(cols, snap["groups"], width)


def _actors(snap: dict, width: int) -> Table:
    cols: list[_Column] = [
        ("actor", 14, 0, "left", lambda a: a["name"] or a["key"]),
        ("class", 10, 1, "left", lambda a: a["class"]),
        ("host", 9, 3, "left", lambda a: a["host"] or ""),
        ("status", 8, 1, "left", lambda a: a["status"]),
        ("calls/s", 7, 1, "right", lambda a: f"{a.get('calls_per_second', 0):,.0f}"),
        ("queued", 6, 2, "right", lambda a: f"{a.get('queued', 0):,}"),
        ("restarts", 8, 2, "right", lambda a: str(a["restarts"])),
    ]
    return _table(cols, snap["actors"], width)


def _line(*parts: tuple[str, str]) -> Text:
    """One line that is cut with an ellipsis rather than wrapped."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for content, style in parts:
        text.append(content, style)
    return text


def _events(snap: dict, limit: int) -> Group:
    events = snap["events"][-limit:] if limit else []
    lines = []
    for i, e in enumerate(reversed(events)):
        stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        lines.append(_line(("events  " if i == 0 else "        ", "bold"), (f"{stamp} ", ""),
                           (e["text"], _EVENT_STYLE.get(e["kind"], ""))))
    if not events:
        lines.append(_line(("events  ", "bold"), ("none yet", "dim")))
    return Group(*lines)


def render(snap: dict, width: int = 120, events: int = 8, groups: int = 20) -> RenderableType:
    """The whole view: header, workers, tasks by function, actors, latest events."""
    parts: list[RenderableType] = [header(snap), Text(""), _workers(snap, width)]
    if snap["groups"]:
        shown = dict(snap, groups=snap["groups"][:groups])
        parts += [Text(""), _groups(shown, width)]
    if snap["actors"]:
        parts += [Text(""), _actors(snap, width)]
    parts += [Text(""), _events(snap, events)]
    return Group(*parts)
