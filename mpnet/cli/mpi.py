"""``mpnet-mpi`` (and ``mpnet mpi``): a whole cluster from one ``mpirun``.

::

    mpirun -np 4 mpnet-mpi --scheduler-file sched.json
      rank 0: Scheduler ── HELLO {address, token} over MPI ──► ranks 1..3
      ranks 1..3: one Worker each (named mpi-1, mpi-2, mpi-3), or one Nanny with --nanny
      end: SIGTERM (or SIGINT) to the scheduler rank, or mpirun's own teardown ─►
           EXIT over MPI ─► every rank closes, meets the others, exits 0

Every option maps onto a keyword argument of :class:`~mpnet.Scheduler`,
:class:`~mpnet.Worker` or :class:`~mpnet.Nanny`; the life of a rank is in
:mod:`mpnet.deploy.mpi`. The one line of a usage error comes from every rank.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from ..deploy.mpi import (POLL_INTERVAL, START_TIMEOUT, Layout, RankComm, RankError,
                          RankOptions, exit_now, import_mpi, run_service_rank)
from ..deploy.scheduler_file import read_scheduler_file
from .common import (Command, Duration, Shutdown, memory_limit_option, read_token_file,
                     setup_logging, version_option)

__all__ = ["mpi", "main"]

log = logging.getLogger("mpnet.cli")


def dashboard_text(value: str | None) -> str | None:
    if not value:
        return None
    text = value.strip()
    return ":" + text if text.isdigit() else text


@click.command(
    "mpi", cls=Command, short_help="Run a whole cluster under mpirun (rank 0 the scheduler).",
    help="Run a whole mpnet cluster as one MPI job: the scheduler on rank 0 (or "
         "--scheduler-rank), one worker on every other rank, until SIGTERM or SIGINT "
         "reaches the scheduler rank (or mpirun ends the job).\n\n"
         "The ranks learn the scheduler's address and token from rank 0 by MPI, never "
         "from a command line; --scheduler-file also writes them to a file, for clients "
         "outside the job. Workers are named NAME-RANK. Start it with e.g. "
         "'mpirun -np 4 mpnet-mpi --scheduler-file sched.json --interface ib0'.")
@click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
              help="Write the scheduler's address and token to this file (mode 0600) for "
                   "clients; with --no-scheduler, read them from it.")
@click.option("--scheduler-port", type=click.IntRange(0, 65535), default=8786,
              show_default=True, help="The scheduler's port; 0 picks a free one.")
@click.option("--scheduler-rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="The rank that runs the scheduler.")
@click.option("--scheduler/--no-scheduler", "with_scheduler", default=True,
              show_default=True,
              help="--no-scheduler: every rank is a worker joining the scheduler that "
                   "--scheduler-file names (grow a running cluster).")
@click.option("--interface", default=None, metavar="NIC",
              help="Listen and be reached on this network interface (eth0, ib0) on every "
                   "rank  [default: every interface]")
@click.option("--nthreads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads per worker rank.")
@click.option("--memory-limit", default="auto", show_default=True,
              help="Memory per worker rank: 'auto' shares the machine among the ranks on "
                   "it, 0.5 is half the machine, 4GiB, or 0 for no limit.")
@click.option("--nanny/--no-nanny", default=False, show_default=True,
              help="Run each rank's worker in a child process a nanny restarts (outside "
                   "mpirun's view; see docs/mpi.md), or in the rank itself.")
@click.option("--name", default="mpi", show_default=True,
              help="Workers are named NAME-RANK.")
@click.option("--dashboard-address", default=":8787", show_default=True,
              help="Address of the scheduler's dashboard ('' for none).")
@click.option("--death-timeout", type=Duration(), default=None,
              help="How long a worker rank tries to reach a lost scheduler before it exits "
                   "(code 1), e.g. 60 or 2m  [default: 60s]")
@click.option("--local-directory", type=click.Path(file_okay=False), default=None,
              help="Directory for the workers' scratch files.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="The scheduler rank reads the cluster token here (created, mode 0600, if "
                   "missing)  [default: MPNET_TOKEN, else ~/.config/mpnet/token]")
@click.option("--auth/--no-auth", default=True, show_default=True,
              help="--no-auth runs the cluster without a token: anyone who reaches a port "
                   "can run code on it.")
@version_option("mpnet-mpi")
def mpi(**o: Any) -> None:
    try:
        MPI = import_mpi()
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    setup_logging()
    rc = RankComm(MPI)
    layout = Layout(rc.size, None if not o["with_scheduler"] else o["scheduler_rank"])
    try:
        code, together = _run(rc, layout, o)
    except click.ClickException as e:   # the same options on every rank: all fail alike
        click.echo(f"Error: {e.format_message()}", err=True)
        code, together = e.exit_code, True
    except RankError as e:
        click.echo(f"Error: {e}", err=True)
        code, together = 1, not e.alone
    finished = rc.finish(code, with_others=together)
    exit_now(code if finished else (code or 1))


def _run(rc: RankComm, layout: Layout, o: dict) -> tuple[int, bool]:
    try:
        layout.check()
    except RankError as e:
        raise click.UsageError(str(e)) from None
    if o["token_file"] and not o["auth"]:
        raise click.UsageError("--token-file and --no-auth contradict each other")
    if not o["with_scheduler"] and not o["scheduler_file"]:
        raise click.UsageError("--no-scheduler needs --scheduler-file: it names the "
                               "scheduler to join")
    role = layout.role(rc.rank)
    # Collective: every rank asks, whatever its role, before any rank can fail alone.
    sharing = rc.local_size() if o["memory_limit"] == "auto" else 1
    memory = memory_limit_option(o["memory_limit"], sharing)
    wait = o["death_timeout"] or START_TIMEOUT

    options = RankOptions(
        interface=o["interface"], nthreads=o["nthreads"], memory_limit=memory,
        nanny=o["nanny"], name=o["name"], scheduler_port=o["scheduler_port"],
        scheduler_file=o["scheduler_file"],
        dashboard_address=dashboard_text(o["dashboard_address"]),
        token_file=o["token_file"], auth=o["auth"], death_timeout=o["death_timeout"],
        local_directory=o["local_directory"])

    def read_hello() -> dict:
        found = read_scheduler_file(o["scheduler_file"], timeout=wait)
        if not o["auth"]:
            return {"address": found["address"], "token": None}
        explicit = read_token_file(o["token_file"]) if o["token_file"] else None
        from ..comm.auth import resolve_token
        token = resolve_token(explicit, scheduler_file_token=found.get("token"))
        if token is None:
            raise ValueError("no cluster token found (--token-file, MPNET_TOKEN, the "
                             "scheduler file, ~/.config/mpnet/token): give one, or "
                             "--no-auth to join a scheduler that runs without one")
        return {"address": found["address"], "token": token}

    log.info("rank %d of %d: %s", rc.rank, rc.size, role)
    with Shutdown(f"mpnet-mpi rank {rc.rank}", interval=POLL_INTERVAL) as shutdown:
        return run_service_rank(
            rc, layout, shutdown, options,
            read_hello=read_hello if layout.scheduler_rank is None else None,
            start_timeout=wait)


def main() -> None:
    """Entry point of the ``mpnet-mpi`` console script."""
    mpi.main(prog_name="mpnet-mpi")


if __name__ == "__main__":
    main()
