"""``mpnet status``: the cluster's tables once, or ``--json`` for scripts."""

from __future__ import annotations

import json

import click
from rich.console import Console

from ..diagnostics.status import render
from .common import Command
from .watching import connect, scheduler_options

__all__ = ["status"]


@click.command("status", cls=Command, short_help="Show the cluster once (--json for scripts).",
               help="Print the workers, tasks by function, actors and recent events of a "
                    "running cluster once. --json prints the same snapshot that the "
                    "dashboard's /api/status serves (docs/monitoring.md lists its fields).")
@scheduler_options
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.option("--events", type=click.IntRange(0, 500), default=10, show_default=True,
              help="How many recent events to show.")
def status(address: str | None, scheduler_file: str | None, token_file: str | None,
           timeout: float, as_json: bool, events: int) -> None:
    with connect(address, scheduler_file, token_file, timeout) as client:
        snap = client.get_status(history=True, events=events, timeout=timeout)
    if as_json:
        click.echo(json.dumps(snap, indent=2))
        return
    console = Console()
    console.print(render(snap, console.width, events=events))
