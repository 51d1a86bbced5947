"""``mpnet-worker`` (and ``mpnet worker``): join a scheduler with ``--nworkers`` workers.

::

    mpnet-worker process
      main thread ─ parse ─ start services ─ Shutdown.wait() ─ close services ─ exit
      mpnet-worker-cli-loop thread: the one selector loop all the services here share
        Nanny × n ── spawn, watch, restart ──► worker processes (their own loops)
        or, with --no-nanny, Worker × n right here

It ends on SIGINT or SIGTERM, or by itself when the scheduler tells the workers to leave
or goes away. Every option maps onto a keyword argument of :class:`~mpnet.Nanny` or
:class:`~mpnet.Worker`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import click

from ..comm.addressing import address_scheme, format_address
from ..comm.auth import resolve_token
from ..comm.eventloop import EventLoop
from ..deploy.scheduler_file import DEFAULT_WAIT, read_scheduler_file
from ..nanny.nanny import Nanny, close_all
from ..worker.worker import Worker
from .common import (FIREWALL_HELP, Command, Duration, PortRange, Shutdown,
                     check_preload_argv, check_preloads_take_argv, checked_address,
                     choose_host, memory_limit_option, read_token_file, service_errors,
                     setup_logging, share_ports, tls_options, version_option)

__all__ = ["worker", "main"]

log = logging.getLogger("mpnet.cli")


class _NWorkers(click.ParamType):
    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if value == "auto":
            return os.cpu_count() or 1
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
        if n < 1:
            self.fail(f"need at least one worker, got {n}", param, ctx)
        return n


def _resources(text: str | None) -> dict[str, float]:
    """``"GPU=2 db=1"`` (or ``"GPU=2,db=1"``) → ``{"GPU": 2.0, "db": 1.0}``."""
    found: dict[str, float] = {}
    for item in re.split(r"[\s,]+", (text or "").strip()):
        if not item:
            continue
        key, sep, amount = item.partition("=")
        try:
            if not key or not sep:
                raise ValueError
            found[key] = float(amount)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME=AMOUNT (e.g. \"GPU=2 db=1\")",
                                     param_hint="'--resources'") from None
    return found


def _scheduler_address(address: str | None, scheduler_file: str | None,
                       wait: float, scheme: str = "tcp") -> tuple[str, str | None]:
    """The scheduler's address, and the token its scheduler file carries (if any)."""
    if address and scheduler_file:
        raise click.UsageError("give the scheduler's ADDRESS or --scheduler-file, not both")
    if scheduler_file:
        with service_errors():
            found = read_scheduler_file(scheduler_file, timeout=wait)
        return found["address"], found.get("token")
    if not address:
        raise click.UsageError("give the scheduler's ADDRESS (tcp://host:8786) or "
                               "--scheduler-file PATH")
    host, port = checked_address(address, "ADDRESS", default_port=8786)
    return format_address(host or "127.0.0.1", port, address_scheme(address) or scheme), None


def _service_options(o: dict, preload_argv: tuple[str, ...]) -> tuple[dict, list, list]:
    """The keyword arguments every Nanny (or Worker) gets, and each one's ports."""
    n = o["nworkers"]
    host = choose_host(o["host"], o["interface"])
    worker_ports = o["worker_port"]
    if o["listen_address"]:
        host, port = checked_address(o["listen_address"], "--listen-address")
        worker_ports = [port]
    if o["contact_address"]:
        checked_address(o["contact_address"], "--contact-address")
    kwargs = dict(
        nthreads=o["nthreads"] or max(1, (os.cpu_count() or 1) // n), host=host,
        contact_address=o["contact_address"], resources=_resources(o["resources"]),
        memory_limit=memory_limit_option(o["memory_limit"], n),
        local_directory=o["local_directory"], preload=list(o["preload"]),
        preload_argv=list(preload_argv), lifetime=o["lifetime"],
        lifetime_stagger=o["lifetime_stagger"] or 0.0, lifetime_restart=o["lifetime_restart"],
        # death_timeout: reaching the scheduler at start (connect_timeout) and again after
        # losing it (config.death_timeout); None keeps the configured defaults
        connect_timeout=o["death_timeout"], death_timeout=o["death_timeout"],
        tls_cert=o["tls_cert"], tls_key=o["tls_key"], tls_ca_file=o["tls_ca_file"])
    return (kwargs, share_ports(worker_ports, n, "--worker-port"),
            share_ports(o["nanny_port"], n, "--nanny-port"))


def _gpu_shares(text: str | None, n: int) -> list:
    """``"0,1,2,3"`` for 2 workers → ``[["0", "1"], ["2", "3"]]``; None → no GPUs."""
    if not text:
        return [None] * n
    ids = [g.strip() for g in text.split(",") if g.strip()]
    if not ids or len(ids) % n:
        raise click.BadParameter(f"{len(ids)} GPUs cannot be shared out evenly among "
                                 f"{n} workers", param_hint="'--gpus'")
    per = len(ids) // n
    return [ids[i * per:(i + 1) * per] for i in range(n)]


def _check_combinations(o: dict) -> None:
    if o["gpus"] and not o["nanny"]:
        raise click.UsageError("--gpus needs --nanny: each worker process gets its own "
                               "CUDA_VISIBLE_DEVICES")
    if o["listen_address"] and (o["host"] or o["interface"] or o["worker_port"]):
        raise click.UsageError("--listen-address replaces --host, --interface and "
                               "--worker-port: give one or the other")
    if o["contact_address"] and o["nworkers"] > 1:
        raise click.UsageError("--contact-address names one worker: it cannot be shared "
                               "by --nworkers > 1")
    if not o["nanny"] and (o["nanny_port"] or o["preload_nanny"] or o["lifetime_restart"]):
        raise click.UsageError("--nanny-port, --preload-nanny and --lifetime-restart need "
                               "a nanny: drop --no-nanny")
    if (o["lifetime_stagger"] or o["lifetime_restart"]) and not o["lifetime"]:
        raise click.UsageError("--lifetime-stagger and --lifetime-restart need --lifetime")


@click.command(
    "worker", cls=Command, context_settings=dict(ignore_unknown_options=True),
    epilog=FIREWALL_HELP, short_help="Join a scheduler with one or more workers.",
    help="Join the scheduler at ADDRESS (or the one --scheduler-file names) with "
         "--nworkers worker processes, each watched by a nanny that restarts it if it "
         "dies, until SIGINT, SIGTERM or the scheduler's shutdown.\n\n"
         "The token comes from --token-file, else MPNET_TOKEN, else the scheduler file, "
         "else ~/.config/mpnet/token. Options a --preload's mpnet_setup defines may follow "
         "ADDRESS on the same command line.")
@click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
              help="Read the scheduler's address and token from this file, waiting for it "
                   "to appear (up to --death-timeout, else 60 s).")
@click.option("--nthreads", type=click.IntRange(min=1), default=None,
              help="Threads per worker  [default: CPUs / --nworkers]")
@click.option("--nworkers", type=_NWorkers(), default="1", show_default=True,
              help="Worker processes to start, or 'auto' for one per CPU.")
@click.option("--nanny/--no-nanny", default=True, show_default=True,
              help="Run each worker in a process watched by a nanny, or in this process.")
@click.option("--name", default=None,
              help="Worker name (NAME-0, NAME-1, ... with --nworkers > 1)  "
                   "[default: its address]")
@click.option("--memory-limit", default="auto", show_default=True,
              help="Memory per worker: 'auto' shares this machine's out, 0.5 is half the "
                   "machine, 4GiB, or 0 for no limit.")
@click.option("--resources", default=None, metavar='"NAME=N ..."',
              help='Abstract resources tasks can ask for, e.g. "GPU=2 db=1".')
@click.option("--gpus", default=None, metavar="0,1,...",
              help="GPU ids shared out among --nworkers (one each when the counts "
                   "match): each worker sees only its own (CUDA_VISIBLE_DEVICES) and "
                   "offers that many GPU resources. Needs --nanny.")
@click.option("--worker-port", type=PortRange(), default=None,
              help="Port or range (9000:9100) for the workers, shared out among "
                   "--nworkers  [default: random]")
@click.option("--nanny-port", type=PortRange(), default=None,
              help="Port or range for the nannies, shared out likewise  [default: random]")
@click.option("--listen-address", default=None, metavar="tcp://HOST:PORT",
              help="Address the worker listens on, e.g. tcp://0.0.0.0:9000.")
@click.option("--contact-address", default=None, metavar="tcp://HOST:PORT",
              help="Address others reach the worker at, when it differs from the one it "
                   "listens on (NAT, containers).")
@click.option("--host", default=None, metavar="HOST",
              help="Interface address to listen on  [default: loopback for a local "
                   "scheduler, else every interface]")
@click.option("--interface", default=None, metavar="NIC",
              help="Listen on this network interface's IPv4 address (eth0, ib0).")
@click.option("--death-timeout", type=Duration(), default=None,
              help="How long to try to reach the scheduler (and wait for its file) "
                   "before giving up, e.g. 60 or 2m.")
@click.option("--lifetime", type=Duration(), default=None,
              help="Close the worker gracefully after this long (e.g. 1h), to leave a "
                   "job's allocation cleanly.")
@click.option("--lifetime-stagger", type=Duration(), default=None,
              help="Randomise --lifetime by up to this much, so workers do not all leave "
                   "at once.")
@click.option("--lifetime-restart/--no-lifetime-restart", default=False,
              help="At the end of --lifetime, have the nanny start a fresh worker instead "
                   "of closing.")
@click.option("--local-directory", type=click.Path(file_okay=False), default=None,
              help="Directory for the worker's scratch files.")
@click.option("--preload", multiple=True, metavar="MODULE|FILE.py",
              help="Run this module's mpnet_setup(worker) in each worker process before it "
                   "registers. Repeatable.")
@click.option("--preload-nanny", multiple=True, metavar="MODULE|FILE.py",
              help="Run this module's mpnet_setup(nanny) in the nanny. Repeatable.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="Read the cluster token from this file.")
@click.option("--auth/--no-auth", default=True, show_default=True,
              help="--no-auth joins a scheduler started with --no-auth (a worker holding "
                   "a token refuses a scheduler that asks for none) and lets anyone who "
                   "reaches this worker's port talk to it.")
@tls_options
@version_option("mpnet-worker")
@click.argument("address", required=False)
@click.argument("preload_argv", nargs=-1, type=click.UNPROCESSED,
                metavar="[PRELOAD OPTIONS]")
def worker(**o: Any) -> None:
    setup_logging()
    address, preload_argv = o["address"], tuple(o["preload_argv"])
    if address and address.startswith("-"):   # a preload's option, taken for ADDRESS
        address, preload_argv = None, (address, *preload_argv)
    _check_combinations(o)
    check_preload_argv(preload_argv, [*o["preload"], *o["preload_nanny"]])
    kwargs, worker_ports, nanny_ports = _service_options(o, preload_argv)
    if o["token_file"] and not o["auth"]:
        raise click.UsageError("--token-file and --no-auth contradict each other")
    explicit = read_token_file(o["token_file"]) if o["token_file"] else None
    address, file_token = _scheduler_address(
        address, o["scheduler_file"], o["death_timeout"] or DEFAULT_WAIT,
        "tls" if o["tls_cert"] or o["tls_ca_file"] else "tcp")
    if not o["auth"]:
        kwargs["token"] = False
    else:
        with service_errors():
            kwargs["token"] = resolve_token(explicit, scheduler_file_token=file_token)
        if kwargs["token"] is None:
            raise click.UsageError("no cluster token found (--token-file, MPNET_TOKEN, the "
                                   "scheduler file, ~/.config/mpnet/token): give one, or "
                                   "--no-auth to join a scheduler that runs without one")
    n = o["nworkers"]
    gpus = _gpu_shares(o["gpus"], n)

    loop = EventLoop("mpnet-worker-cli-loop")
    services: list[Nanny | Worker] = []
    with Shutdown("mpnet-worker") as shutdown:
        try:
            with service_errors():
                for i in range(n):
                    name = f"{o['name']}-{i}" if o["name"] and n > 1 else o["name"]
                    if o["nanny"]:
                        services.append(Nanny(
                            address, name=name, port=nanny_ports[i],
                            worker_port=worker_ports[i], preload_nanny=list(o["preload_nanny"]),
                            preload_nanny_argv=list(preload_argv), gpus=gpus[i], loop=loop,
                            **kwargs))
                    else:
                        services.append(Worker(address, name=name, port=worker_ports[i],
                                               loop=loop, **kwargs))
                if not o["nanny"]:
                    check_preloads_take_argv(preload_argv, services[0].preloads)
                _start(services)
            shutdown.wait(lambda: all(_finished(s) for s in services))
            if shutdown.received:
                log.info("%s received: closing %d worker(s)", shutdown.reason, len(services))
            else:
                log.info("the workers stopped by themselves (retired, asked to leave, or "
                         "the scheduler is gone): exiting")
        finally:
            _close(services, loop)


def _start(services: list[Nanny | Worker]) -> None:
    """Start every service; nannies spawn their worker processes all at once."""
    nannies = [s for s in services if isinstance(s, Nanny)]
    for nanny in nannies:
        nanny.start_nowait()
    for nanny in nannies:
        nanny.wait_started()
    for w in services:
        if isinstance(w, Worker):
            w.start()


def _finished(service: Nanny | Worker) -> bool:
    """True once a service stopped by itself (told to leave, or its scheduler is gone)."""
    if isinstance(service, Nanny):
        return service.status in ("closing", "closed")
    return service.wait_closed(0)


def _close(services: list[Nanny | Worker], loop: EventLoop) -> None:
    """Close everything under one deadline: ask every nanny first, then wait for each."""
    close_all(services, services[0].config.close_timeout if services else 3.0)
    loop.close()


def main() -> None:
    """Entry point of the ``mpnet-worker`` console script."""
    worker.main(prog_name="mpnet-worker")


if __name__ == "__main__":
    main()
