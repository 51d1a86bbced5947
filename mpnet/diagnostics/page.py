"""The dashboard's one HTML page, made on the server: worker table, progress by function,
and the task stream as an SVG timeline (one lane per worker, one bar per task run).

No script and nothing from another host: the page refreshes itself every few seconds
with a ``<meta refresh>``, and everything it shows is escaped.
"""

from __future__ import annotations

import hashlib
import time
from html import escape

from ..config import format_bytes

__all__ = ["render_page"]

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7",
            "#9c755f", "#bab0ac", "#86bcb6")
_ERRED = "#d62728"
_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin-bottom: .2em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
.header span { margin-right: 1.5em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right;
                                          white-space: nowrap; }
th { border-bottom: 1px solid #888; } td.l, th.l { text-align: left; }
.bar { display: inline-block; width: 120px; height: 10px; background: #eee;
       position: relative; vertical-align: middle; }
.bar i { display: block; height: 100%; background: #4e79a7; }
.bar b { position: absolute; top: -2px; width: 1px; height: 14px; background: #d62728; }
.state-paused, .state-silent { color: #b8860b; } .state-restarting { color: #d62728; }
.events td { text-align: left; }
"""


def _color(name: str) -> str:
    digest = hashlib.blake2s(name.encode(), digest_size=1).digest()[0]
    return _PALETTE[digest % len(_PALETTE)]


def _membar(w: dict, pause: float, kill: float) -> str:
    limit = w.get("memory_limit") or 0
    if not limit:
        return format_bytes(w.get("memory", 0))
    used = min(100.0, 100.0 * w.get("memory", 0) / limit)
    return (f'<span class="bar" title="pause at {pause:.0%}, kill at {kill:.0%}">'
            f'<i style="width:{used:.0f}%"></i><b style="left:{pause * 100:.0f}%"></b>'
            f'<b style="left:{kill * 100:.0f}%"></b></span> '
            f'{format_bytes(w.get("memory", 0))} / {format_bytes(limit)}')


def _workers(snap: dict) -> str:
    rows = []
    for w in snap["workers"]:
        state = escape(w["state"])
        rows.append(
            f'<tr class="worker state-{state}" data-address="{escape(w["address"])}">'
            f'<td class="l">{escape(w["name"])}</td><td class="l">{escape(w["host"])}</td>'
            f'<td>{w.get("pid", 0)}</td><td>{w.get("cpu", 0):.0f}%</td>'
            f'<td class="l">{_membar(w, snap["memory_pause_fraction"], snap["memory_terminate_fraction"])}</td>'
            f'<td>{w.get("executing", 0)}</td><td>{w.get("ready", 0)}</td>'
            f'<td>{w.get("stored", 0)}</td><td>{format_bytes(w.get("nbytes", 0))}</td>'
            f'<td>{w.get("restarts", 0)}</td><td>{w.get("last_seen", 0):.1f} s</td>'
            f'<td class="l">{state}</td></tr>')
    head = ("<tr><th class='l'>worker</th><th class='l'>host</th><th>pid</th><th>cpu</th>"
            "<th class='l'>memory</th><th>exec</th><th>ready</th><th>stored</th>"
            "<th>bytes</th><th>restarts</th><th>last seen</th><th class='l'>state</th></tr>")
    return f'<table id="workers">{head}{"".join(rows)}</table>'


def _groups(snap: dict) -> str:
    rows = []
    for g in snap["groups"]:
        total = max(1, g["total"])
        finished = g["memory"] + g["released"] + g["forgotten"] + g["erred"]
        rows.append(
            f'<tr class="group" data-function="{escape(g["name"])}">'
            f'<td class="l">{escape(g["name"])}</td><td>{g["waiting"] + g["ready"]}</td>'
            f'<td>{g["processing"]}</td><td>{g["memory"]}</td><td>{g["erred"]}</td>'
            f'<td class="l"><span class="bar"><i style="width:{100 * finished / total:.0f}%;'
            f'background:{_color(g["name"])}"></i></span> {100 * finished / total:.0f}%</td>'
            f'<td>{g["rate"]:.1f}/s</td></tr>')
    head = ("<tr><th class='l'>function</th><th>waiting</th><th>processing</th>"
            "<th>in memory</th><th>erred</th><th class='l'>done</th><th>rate</th></tr>")
    return f'<table id="groups">{head}{"".join(rows)}</table>'


def _timeline(snap: dict, stream: list[dict], width: int = 1000, lane: int = 18) -> str:
    """The task stream as SVG: x is time (the last minute at most), y the worker."""
    now = snap["time"]
    t0 = min([r["start"] for r in stream], default=now - 1)
    t0 = max(t0, now - 60)
    span = max(now - t0, 1e-3)
    lanes = {w["address"]: i for i, w in enumerate(
        w for w in snap["workers"] if w["state"] != "restarting")}
    for r in stream:
        lanes.setdefault(r["worker"], len(lanes))
    label_w = 160
    height = lane * max(1, len(lanes)) + 20
    parts = [f'<svg id="task-stream" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}">']
    for address, i in lanes.items():
        parts.append(f'<text x="0" y="{i * lane + 13}" font-size="11">{escape(address)}</text>')
    plot = width - label_w
    for r in stream:
        if r["stop"] < t0:
            continue
        x = label_w + plot * (max(r["start"], t0) - t0) / span
        w = max(1.0, plot * (r["stop"] - max(r["start"], t0)) / span)
        color = _ERRED if r["status"] == "erred" else _color(r["function"])
        parts.append(
            f'<rect class="task" data-function="{escape(r["function"])}" x="{x:.1f}" '
            f'y="{lanes[r["worker"]] * lane + 2}" width="{w:.1f}" height="{lane - 4}" '
            f'fill="{color}"><title>{escape(r["key"])} on {escape(r["worker"])}: '
            f'{(r["stop"] - r["start"]) * 1000:.1f} ms, {escape(r["status"])}</title></rect>')
    parts.append(f'<text x="{label_w}" y="{height - 4}" font-size="11">'
                 f'{span:.1f} s up to {time.strftime("%H:%M:%S", time.localtime(now))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _events(snap: dict) -> str:
    rows = [f'<tr class="event"><td>{time.strftime("%H:%M:%S", time.localtime(e["time"]))}'
            f'</td><td>{escape(e["kind"])}</td><td>{escape(e["text"])}</td></tr>'
            for e in reversed(snap["events"])]
    return f'<table id="events" class="events">{"".join(rows)}</table>'


def render_page(snap: dict, stream: list[dict], refresh: int = 2) -> str:
    up = int(snap["uptime"])
    header = (f'<span>up {up // 3600}:{up % 3600 // 60:02d}:{up % 60:02d}</span>'
              f'<span>{snap["clients"]} clients</span>'
              f'<span id="worker-count">{snap["workers_alive"]}/{snap["workers_expected"]} '
              f'workers</span><span>{snap["tasks_per_second"]:.0f} tasks/s</span>'
              f'<span>CPU {snap["cpu"]:.1f}/{snap["threads"]}</span>'
              f'<span>memory {format_bytes(snap["memory"])} / {format_bytes(snap["memory_limit"])}</span>')
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{refresh}">'
            f'<title>mpnet {escape(snap["address"])}</title><style>{_CSS}</style></head>'
            f'<body><h1>mpnet {escape(snap["address"])}</h1><div class="header">{header}</div>'
            f'<h2>Workers</h2>{_workers(snap)}<h2>Tasks by function</h2>{_groups(snap)}'
            f'<h2>Task stream</h2>{_timeline(snap, stream)}'
            f'<h2>Events</h2>{_events(snap)}'
            f'<p><a href="/metrics">/metrics</a> · <a href="/api/status">/api/status</a></p>'
            f'</body></html>')
