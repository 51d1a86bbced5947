"""What `mpnet status`, `mpnet top` and `mpnet logs` share: finding the scheduler.

``ADDRESS`` or ``--scheduler-file``; the token comes from ``--token-file``, then
``MPNET_TOKEN``, the scheduler file or the per-user token file, as for every client.
Without either, the scheduler on this machine's default port is asked.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import click

from ..client.client import Client
from .common import read_token_file, service_errors, tls_from_context, tls_options

__all__ = ["scheduler_options", "connect"]

DEFAULT_ADDRESS = "tcp://127.0.0.1:8786"


def scheduler_options(fn: Callable) -> Callable:
    """``[ADDRESS] --scheduler-file F --token-file F --timeout S`` on a command."""
    for option in reversed([
            click.argument("address", required=False, metavar="[ADDRESS]"),
            click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
                         help="Read the scheduler's address and token from this file."),
            click.option("--token-file", type=click.Path(dir_okay=False, exists=True),
                         default=None, help="Read the cluster token from this file."),
            click.option("--timeout", type=float, default=5.0, show_default=True,
                         help="Seconds to wait for the scheduler to answer.")]):
        fn = option(fn)
    return tls_options(fn, to_context=True)    # for a tls:// scheduler


@contextlib.contextmanager
def connect(address: str | None, scheduler_file: str | None, token_file: str | None,
            timeout: float) -> Iterator[Any]:
    """A Client, closed on the way out; failures to connect are one line (exit 1)."""
    if address and scheduler_file:
        raise click.UsageError("give the scheduler's ADDRESS or --scheduler-file, not both")
    token = read_token_file(token_file, create=False) if token_file else None
    with service_errors():
        client = Client(address or (None if scheduler_file else DEFAULT_ADDRESS),
                        scheduler_file=scheduler_file, token=token, timeout=timeout,
                        default=False, **tls_from_context())
    try:
        yield client
    finally:
        client.close()
