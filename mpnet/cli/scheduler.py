"""``mpnet-scheduler`` (and ``mpnet scheduler``): run a :class:`~mpnet.Scheduler` until
SIGINT or SIGTERM, then close it (workers told to leave, scheduler file removed, exit 0).
"""

from __future__ import annotations

import logging

import click

from ..scheduler.server import Scheduler
from .common import (FIREWALL_HELP, Command, Duration, Shutdown, check_preload_argv,
                     check_preloads_take_argv, checked_address, choose_host, read_token_file,
                     service_errors, setup_logging, tls_options, version_option)
from .common import pid_file as write_pid_file

__all__ = ["scheduler", "main"]

log = logging.getLogger("mpnet.cli")


def _dashboard_address(value: str) -> str:
    """``8787`` and ``:8787`` and ``host:8787`` are all fine; return the text to pass on."""
    text = value.strip()
    if text.isdigit():
        text = ":" + text
    checked_address(text, "--dashboard-address", default_port=8787)
    return text


@click.command(
    "scheduler", cls=Command, context_settings=dict(ignore_unknown_options=True),
    epilog=FIREWALL_HELP, short_help="Start a scheduler (port 8786).",
    help="Start the scheduler of an mpnet cluster and serve until SIGINT or SIGTERM.\n\n"
         "Workers join with 'mpnet-worker ADDRESS' or 'mpnet-worker --scheduler-file "
         "PATH'. Options a --preload's mpnet_setup defines (a click command) may be given "
         "on the same command line.")
@click.option("--host", metavar="HOST", default=None,
              help="Interface address to listen on (default: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8786, show_default=True,
              help="Port to listen on; 0 picks a free one.")
@click.option("--interface", metavar="NIC", default=None,
              help="Listen on this network interface's IPv4 address (eth0, ib0).")
@click.option("--dashboard-address", default=":8787", show_default=True,
              help="Address of the web dashboard and /metrics (a free port if 8787 "
                   "is taken). See docs/monitoring.md.")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Serve the dashboard or not.")
@click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
              help="Write the address and token to this JSON file (mode 0600) once "
                   "serving, for workers and clients on a shared file system; removed "
                   "at shutdown.")
@click.option("--preload", multiple=True, metavar="MODULE|FILE.py",
              help="Run this module's mpnet_setup(scheduler) at start and "
                   "mpnet_teardown(scheduler) at close. Repeatable.")
@click.option("--idle-timeout", type=Duration(), default=None,
              help="Close after this long with no client and no task (e.g. 600, 10m).")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None,
              help="Write the process id to this file; removed at exit.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="Read the cluster token from this file (created, mode 0600, if it is "
                   "missing). Default: MPNET_TOKEN, else ~/.config/mpnet/token.")
@click.option("--auth/--no-auth", default=True, show_default=True,
              help="--no-auth lets anyone who reaches the port run code on the cluster.")
@tls_options
@version_option("mpnet-scheduler")
@click.argument("preload_argv", nargs=-1, type=click.UNPROCESSED,
                metavar="[PRELOAD OPTIONS]")
def scheduler(host: str | None, port: int, interface: str | None, dashboard_address: str,
              dashboard: bool, scheduler_file: str | None, preload: tuple[str, ...],
              idle_timeout: float | None, pid_file: str | None, token_file: str | None,
              auth: bool, tls_cert: str | None, tls_key: str | None,
              tls_ca_file: str | None, preload_argv: tuple[str, ...]) -> None:
    setup_logging()
    host = choose_host(host, interface)
    if token_file and not auth:
        raise click.UsageError("--token-file and --no-auth contradict each other")
    token = read_token_file(token_file, create=True) if token_file else None
    dashboard_at = _dashboard_address(dashboard_address) if dashboard else None
    check_preload_argv(preload_argv, list(preload))
    with write_pid_file(pid_file), Shutdown("mpnet-scheduler") as shutdown:
        with service_errors():
            service = Scheduler(host, port, token=token, auth=auth,
                                scheduler_file=scheduler_file, preload=list(preload),
                                preload_argv=preload_argv, idle_timeout=idle_timeout,
                                dashboard_address=dashboard_at, tls_cert=tls_cert,
                                tls_key=tls_key, tls_ca_file=tls_ca_file)
            check_preloads_take_argv(preload_argv, service.preloads)
            service.start()
        try:
            shutdown.wait(lambda: service.wait_closed(0))
            if shutdown.received:
                log.info("%s received: closing", shutdown.reason)
        finally:
            service.close()


def main() -> None:
    """Entry point of the ``mpnet-scheduler`` console script."""
    scheduler.main(prog_name="mpnet-scheduler")


if __name__ == "__main__":
    main()
