"""What every mpnet command shares: option types, one-line errors, logging, signals.

::

    argv ─ click ─► command ─► service objects (Scheduler, Nanny, Worker) ─► start()
            │ bad input: "Error: …" (exit 2)    │ failed start: "Error: …" (exit 1),
            │                                   │ after the traceback of a failing preload
    SIGINT/SIGTERM ─► handler records it, writes a byte ─► Shutdown.wait() returns on the
                      main thread, which closes the services (exit 0)
    a second SIGINT (Ctrl-C again) ─► os._exit at once
    more SIGTERMs ─► ignored: the close goes on (wrappers such as `timeout` send one to
                     the process and one to its group; SIGKILL is there to force)

The commands stay thin: each option is a keyword argument of a service object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import psutil

from .. import __version__
from ..comm.addressing import parse_address, parse_port_range, route_address
from ..comm import auth
from ..errors import MpnetError, PreloadError, TokenFileError

__all__ = ["Command", "Group", "version_option", "service_errors", "check_preload_argv",
           "check_preloads_take_argv", "Duration", "PortRange", "share_ports",
           "checked_address", "interface_address", "memory_limit_option", "route_address",
           "choose_host", "read_token_file", "setup_logging", "pid_file", "Shutdown", "FIREWALL_HELP",
           "tls_options", "tls_from_context"]

log = logging.getLogger("mpnet.cli")

FIREWALL_HELP = """\b
Ports a firewall must let through (TCP):
  8786        the scheduler (--port)
  8787        the scheduler's dashboard (--dashboard-address)
  random      each worker and nanny, unless fixed with --worker-port and
              --nanny-port (a port, or a range such as 9000:9100 shared out
              among --nworkers)"""


# --- one-line errors ----------------------------------------------------------------

def _one_line(e: click.UsageError) -> click.UsageError:
    """Drop the usage text click prints above a usage error: one line is enough."""
    if e.ctx is not None:
        e.message = f"{e.message} (see '{e.ctx.command_path} --help')"
        e.ctx = None
    return e


class _OneLineErrors:
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None


class Command(_OneLineErrors, click.Command):
    """A click command whose usage errors are one line."""


class Group(_OneLineErrors, click.Group):
    """A click group whose usage errors are one line."""


def version_option(prog_name: str) -> Callable:
    return click.version_option(__version__, "--version", prog_name=prog_name,
                                message="%(prog)s %(version)s")


@contextlib.contextmanager
def service_errors() -> Iterator[None]:
    """Turn what a service's construction or start raises into what a user should see.

    Bad input and an unreachable or wrong cluster are one line (exit 1). A preload that
    fails is the user's own code: its traceback is printed, then exit 1.
    """
    try:
        yield
    except PreloadError as e:
        cause = e.__cause__
        if isinstance(cause, click.UsageError):   # its click options did not parse
            raise click.UsageError(f"preload option: {cause.format_message()}") from None
        missing = isinstance(cause, ModuleNotFoundError) and f"'{cause.name}'" in str(e)
        if cause is not None and not missing:   # the user's frames, then one summary line
            traceback.print_exception(cause)
        raise click.ClickException(str(e)) from None
    except (MpnetError, OSError, ValueError, TimeoutError) as e:
        # MpnetError: a refused token, no scheduler at the address, a scheduler file
        # that never appeared or is stale; OSError: a port in
        # use, a host that cannot be bound; ValueError: a file or value that does not
        # parse. Anything else is a bug in mpnet, and its traceback should show.
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise click.ClickException(text.replace("\n", " ")) from None


def check_preload_argv(preload_argv: tuple[str, ...], names: list[str]) -> None:
    """Arguments click did not know are for a preload; without one they are mistakes."""
    if preload_argv and not names:
        what = "option" if preload_argv[0].startswith("-") else "argument"
        raise click.UsageError(f"no such {what}: {preload_argv[0]}")


def check_preloads_take_argv(preload_argv: tuple[str, ...], preloads: list) -> None:
    """Once loaded (in this process): some preload must be a click command to take them."""
    if preload_argv and not any(isinstance(p.setup_fn, click.Command)
                                or hasattr(p.setup_fn, "__click_params__") for p in preloads):
        raise click.UsageError(f"no such option: {preload_argv[0]} (no --preload takes "
                               "command-line options)")


# --- option types -------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """Seconds, from ``30``, ``30s``, ``500ms``, ``5m``, ``1h`` or ``2d``."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
        if not m or m.group(2) not in _DURATION_UNITS:
            self.fail(f"{value!r} is not a duration: use e.g. 30, 30s, 5m or 1h", param, ctx)
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


class PortRange(click.ParamType):
    """A port (``9000``) or an inclusive range (``9000:9100``), as a list of ports."""

    name = "port[:port]"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            ports = parse_port_range(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if not all(0 <= p <= 65535 for p in ports):
            self.fail(f"{value!r} has a port outside 0-65535", param, ctx)
        return ports


def share_ports(ports: list[int] | None, n: int, option: str) -> list[int | list[int]]:
    """Give each of ``n`` services its own slice of ``ports`` (0: any free port)."""
    if not ports or ports == [0]:
        return [0] * n
    if len(ports) < n:
        raise click.BadParameter(
            f"{len(ports)} port(s) cannot serve {n} workers: give a range of at least {n} "
            f"ports, such as {ports[0]}:{ports[0] + n - 1}", param_hint=f"'{option}'")
    size = len(ports) // n
    return [ports[i * size:(i + 1) * size] for i in range(n)]


def checked_address(value: str, option: str, default_port: int | None = None) -> tuple[str, int]:
    try:
        return parse_address(value, default_port=default_port)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint=f"'{option}'") from None


_TLS_META = "mpnet.tls"


def tls_options(command: Callable, *, to_context: bool = False) -> Callable:
    """``--tls-cert``, ``--tls-key``, ``--tls-ca-file``: the Config fields of the same
    names (docs/security-tls.md), passed on as keyword arguments, or (``to_context``)
    kept for :func:`tls_from_context` so that shared helpers can pick them up."""
    pem = click.Path(exists=True, dir_okay=False, readable=True)
    extra: dict = {}
    if to_context:
        def keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
            if value:
                ctx.meta.setdefault(_TLS_META, {})[param.name] = value
            return value
        extra = dict(expose_value=False, callback=keep)
    for name, text in reversed([
            ("--tls-cert", "PEM certificate of this process. With it, servers listen on "
                           "tls:// (TLS, with the token handshake inside)."),
            ("--tls-key", "PEM private key of --tls-cert (unencrypted; omit it if the "
                          "key is inside the --tls-cert file)."),
            ("--tls-ca-file", "PEM CA certificate: peers' certificates must be signed by "
                              "it. Needed to connect to tls://; on a server it turns on "
                              "mutual TLS (client certificates required).")]):
        command = click.option(name, type=pem, default=None, metavar="PEM", help=text,
                               **extra)(command)
    return command


def tls_from_context() -> dict:
    """The TLS options :func:`tls_options` (``to_context``) kept for this command."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_TLS_META, {})) if ctx is not None else {}


def interface_address(name: str) -> str:
    """The IPv4 address of the network interface ``name`` (``eth0``, ``ib0``)."""
    found = psutil.net_if_addrs()
    if name not in found:
        raise click.BadParameter(f"this machine has no network interface {name!r}; it has "
                                 f"{', '.join(sorted(found))}", param_hint="'--interface'")
    for addr in found[name]:
        if addr.family == socket.AF_INET:
            return addr.address
    raise click.BadParameter(f"network interface {name!r} has no IPv4 address",
                             param_hint="'--interface'")


def choose_host(host: str | None, interface: str | None,
                toward: str | None = None) -> str | None:
    """The host to listen on, from ``--host`` (a name or address) or ``--interface``;
    failing both, with ``toward`` (a peer's host), this machine's address on the route to
    it; else None (the caller's default)."""
    if host and interface:
        raise click.UsageError("give --host or --interface, not both")
    if interface:
        return interface_address(interface)
    if host:
        return checked_address(host, "--host", default_port=0)[0]
    if toward:
        return route_address(toward)
    return None


def memory_limit_option(text: str, sharing: int) -> int:
    """``--memory-limit``, in bytes per worker: ``auto`` shares this machine among the
    ``sharing`` workers on it, ``0.5`` is half the machine, ``4GiB`` each, ``0`` none."""
    from ..deploy.local import memory_per_worker
    value: Any = text
    try:
        number = float(text)
        value = number if 0 < number <= 1 else int(number)
    except ValueError:
        pass
    try:
        return memory_per_worker(value, sharing)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--memory-limit'") from None


def read_token_file(path: str, *, create: bool = False) -> str:
    """``--token-file``: the token in ``path`` (``create`` writes one if it is missing);
    an empty, unreadable or world-readable file is a usage error naming it."""
    try:
        return auth.read_token_file(path, create=create)
    except FileNotFoundError:
        raise click.BadParameter(f"{Path(path).expanduser()} does not exist",
                                 param_hint="'--token-file'") from None
    except (TokenFileError, OSError) as e:
        raise click.BadParameter(str(e), param_hint="'--token-file'") from None


# --- process plumbing ---------------------------------------------------------------

def setup_logging(level: int = logging.INFO) -> None:
    """mpnet's log lines to stderr, at INFO so that the address lines always show.

    Worker processes a nanny spawns log at the same level (the nanny passes it on).
    """
    logger = logging.getLogger("mpnet")
    if any(getattr(h, "_mpnet_cli", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler._mpnet_cli = True   # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False    # the root logger may have a handler of its own


@contextlib.contextmanager
def pid_file(path: str | None) -> Iterator[None]:
    """Write this process's pid to ``path`` for the duration, then remove it."""
    if not path:
        yield
        return
    target = Path(path).expanduser()
    try:
        target.write_text(f"{os.getpid()}\n")
    except OSError as e:
        raise click.BadParameter(f"cannot write {target}: {e.strerror}",
                                 param_hint="'--pid-file'") from None
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


class Shutdown:
    """SIGINT and SIGTERM wake the main thread to close gracefully; a second SIGINT forces.

    A repeated SIGTERM is the same request again, not an escalation: ``timeout``, shells
    and job schedulers send SIGTERM to the process *and* to its process group, so one
    stop can arrive twice. Only a person presses Ctrl-C twice; whoever sends SIGTERM has
    SIGKILL to force.

    The handler only records the signal and writes a byte to a pipe (uvicorn's habit: the
    handler records, the main loop acts). :meth:`wait` blocks on that pipe; services that
    can end by themselves (the scheduler asked workers to leave, an idle timeout) are
    checked every ``interval`` seconds, because they offer no wake-up of their own.
    """

    def __init__(self, prog: str, interval: float = 0.2):
        self.prog = prog
        self.interval = interval
        self.received: list[int] = []
        self._saved: dict[int, Any] = {}
        self._r = self._w = -1

    def __enter__(self) -> "Shutdown":
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        os.close(self._r)
        os.close(self._w)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if len(self.received) > 1 and signum == signal.SIGINT:
            os.write(2, f"{self.prog}: second {signal.Signals(signum).name}, exiting "
                        "without cleaning up\n".encode())
            os._exit(128 + signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"!")

    @property
    def reason(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else ""

    def wait(self, finished: Callable[[], bool]) -> None:
        """Block until a signal arrives or ``finished()`` is true."""
        while not self.received and not finished():
            select.select([self._r], [], [], self.interval)
