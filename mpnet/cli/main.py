"""``mpnet``: the umbrella command, one subcommand per tool.

``mpnet scheduler`` is ``mpnet-scheduler`` and ``mpnet worker`` is ``mpnet-worker``, the
same click commands registered twice, and so on for ``mpnet ssh`` and ``mpnet mpi``.
"""

from __future__ import annotations

import click

from .common import Group, version_option
from .logs import logs
from .mpi import mpi
from .scheduler import scheduler
from .status import status
from .top import top
from .ssh import ssh
from .worker import worker

__all__ = ["cli", "main"]


@click.group(cls=Group, epilog="Run 'mpnet COMMAND --help' for a command's options.")
@version_option("mpnet")
def cli() -> None:
    """Set up and run an mpnet cluster from the command line."""


cli.add_command(scheduler)
cli.add_command(worker)
cli.add_command(status)
cli.add_command(top)
cli.add_command(logs)
cli.add_command(ssh)
cli.add_command(mpi)


def main() -> None:
    """Entry point of the ``mpnet`` console script."""
    cli.main(prog_name="mpnet")


if __name__ == "__main__":
    main()
