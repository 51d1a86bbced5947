"""``mpnet logs``: the recent log lines of the scheduler, the workers and their nannies."""

from __future__ import annotations

import time

import click

from .common import Command
from .watching import connect, scheduler_options

__all__ = ["logs"]


def _format(source: str, line: list) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(line[0]))
    return f"{stamp} {source} {line[1]:<7} {line[2]}: {line[3]}"


def _fetch(client, worker: tuple[str, ...], scheduler: bool, n: int,
           timeout: float) -> list[tuple[float, str, list]]:
    lines = []
    if scheduler or not worker:
        lines += [(line[0], "scheduler", line) for line in
                  client.get_scheduler_logs(n, timeout=timeout)]
    if not scheduler:
        found = client.get_worker_logs(n, workers=list(worker) or None, timeout=timeout)
        for source, got in found.items():
            lines += [(line[0], source, line) for line in got]
    lines.sort(key=lambda item: item[0])
    return lines


@click.command("logs", cls=Command, short_help="Print recent log lines of the cluster.",
               help="Print the last log lines each process of the cluster kept in memory "
                    "(the scheduler, every worker, and every nanny, whose lines say how "
                    "its worker died), oldest first. --follow keeps printing new ones.")
@scheduler_options
@click.option("--worker", multiple=True, metavar="NAME",
              help="Only this worker (address or name). Repeatable.")
@click.option("--scheduler", "scheduler_only", is_flag=True,
              help="Only the scheduler's lines.")
@click.option("-n", "--lines", "n", type=click.IntRange(1, 2000), default=100,
              show_default=True, help="Lines per process.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
def logs(address: str | None, scheduler_file: str | None, token_file: str | None,
         timeout: float, worker: tuple[str, ...], scheduler_only: bool, n: int,
         follow: bool) -> None:
    if worker and scheduler_only:
        raise click.UsageError("--worker and --scheduler contradict each other")
    with connect(address, scheduler_file, token_file, timeout) as client:
        seen: set = set()
        try:
            while True:
                for stamp, source, line in _fetch(client, worker, scheduler_only, n, timeout):
                    # nannies of one process share its ring: show each line once
                    ident = (stamp, line[2], line[3])
                    if ident not in seen:
                        seen.add(ident)
                        click.echo(_format(source, line))
                if not follow:
                    return
                time.sleep(1.0)     # a poll: the rings are only read on request
        except KeyboardInterrupt:
            return
