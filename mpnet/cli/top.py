"""``mpnet top``: a live view of the cluster in the terminal (``q`` or Ctrl-C quits)."""

from __future__ import annotations

import click

from ..diagnostics.top import top as run_top
from .common import Command
from .watching import connect, scheduler_options

__all__ = ["top"]


@click.command("top", cls=Command, short_help="Watch the cluster live in the terminal.",
               help="Redraw the cluster's workers (CPU and memory over the last minute), "
                    "tasks by function, actors and latest events every --interval "
                    "seconds. q or Ctrl-C quits. When stdout is not a terminal it prints "
                    "one snapshot and exits.")
@scheduler_options
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0,
              show_default=True, help="Seconds between redraws.")
def top(address: str | None, scheduler_file: str | None, token_file: str | None,
        timeout: float, interval: float) -> None:
    with connect(address, scheduler_file, token_file, timeout) as client:
        run_top(client, interval=interval)
