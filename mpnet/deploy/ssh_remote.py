"""The remote end of ``mpnet ssh``: ``python -m mpnet.deploy.ssh_remote`` on each host.

::

    local mpnet ssh ── ssh channel ──► sshd ──► this process (no argument but the module)
      stdin:  one JSON line (role, options, the token), then nothing until EOF
      stdout: "MPNET-SSH {json}" event lines: hello, scheduler / worker addresses, ready,
              error, exit; anything else on stdout is the workers' own output
      stderr: log lines, streamed to the local terminal with a [host] prefix

The token arrives on stdin, so it is never on a command line ``ps`` can show. The
addresses leave as JSON events, never as log text that a log level could hide. When the
ssh session ends (Ctrl-C, a closed or killed local process, a dropped connection), stdin
reaches EOF and this process closes its services gracefully; its worker processes die with
their nanny if it is killed instead. SIGTERM and SIGINT close it the same way. The local
side also writes a keepalive line every second: after ``silence_timeout`` seconds without
one (the network to this host cut), this process closes all the same.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import sys
import time
from typing import Any

MARKER = "MPNET-SSH "

log = logging.getLogger("mpnet.ssh")


def emit(event: str, **fields: Any) -> None:
    """One machine-readable line on stdout (the local side reads nothing else as events)."""
    sys.stdout.write(MARKER + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _ssh_server_address() -> str | None:
    """The address the local side reached this host at (``SSH_CONNECTION``'s third field)."""
    fields = os.environ.get("SSH_CONNECTION", "").split()
    if len(fields) == 4 and not fields[2].startswith("127.") and fields[2] != "::1":
        return fields[2]
    return None


def listen_host(spec: dict, toward: str | None) -> str | None:
    """Where to listen and what to advertise: ``--host``, ``--interface`` (resolved here, on
    the remote host), else the address on the route to the scheduler (workers) or the one
    the ssh session came in on (the scheduler)."""
    from ..cli.common import choose_host
    return (choose_host(spec.get("host"), spec.get("interface"), toward)
            or _ssh_server_address())


class _Session:
    """The ssh session as seen from here. The local side writes a keepalive line every
    second; EOF means it closed the session, and ``timeout`` seconds of silence mean it
    is unreachable (a cut network, which sshd alone would not notice for a long time)."""

    def __init__(self, timeout: float | None):
        self.timeout = timeout
        self.last = time.monotonic()
        self.why = ""

    def ended(self) -> bool:
        """Never blocks: reads whatever stdin holds."""
        if self.why:
            return True
        readable, _, _ = select.select([0], [], [], 0)
        if readable:
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                self.why = "the ssh session ended"
                return True
            self.last = time.monotonic()
        if self.timeout and time.monotonic() - self.last > self.timeout:
            self.why = (f"no word from mpnet ssh for {self.timeout:.0f}s (network cut, or "
                        "its host is down)")
            return True
        return False


def _start_scheduler(spec: dict) -> list:
    from ..scheduler.server import Scheduler
    host = listen_host(spec, None)
    s = Scheduler(host, spec.get("port", 8786), token=spec["token"],
                  idle_timeout=spec.get("idle_timeout"), **spec.get("config", {}))
    s.start()
    emit("scheduler", address=s.address, pid=os.getpid())
    return [s]


def _start_nannies(spec: dict) -> list:
    from ..cli.common import share_ports
    from ..comm.addressing import parse_address
    from ..comm.eventloop import EventLoop
    from ..deploy.local import memory_per_worker
    from ..nanny.nanny import Nanny

    address = spec["scheduler"]
    sched_host, _ = parse_address(address)
    host = listen_host(spec, sched_host)
    n = spec.get("nworkers") or 1
    n = (os.cpu_count() or 1) if n == "auto" else int(n)
    nthreads = spec.get("nthreads") or max(1, (os.cpu_count() or 1) // n)
    memory = spec.get("memory_limit", "auto")
    if isinstance(memory, str):
        try:
            number = float(memory)
            memory = number if 0 < number <= 1 else int(number)
        except ValueError:
            pass
    memory = memory_per_worker(memory, n)
    worker_ports = share_ports(spec.get("worker_port"), n, "--worker-port")
    nanny_ports = share_ports(spec.get("nanny_port"), n, "--nanny-port")
    extra = {}
    if spec.get("death_timeout") is not None:
        extra = dict(connect_timeout=spec["death_timeout"], death_timeout=spec["death_timeout"])
    loop = EventLoop("mpnet-ssh-remote-loop")
    nannies = []
    for i in range(n):
        name = f"{spec['name']}-{i}" if spec.get("name") else None
        nannies.append(Nanny(address, name=name, nthreads=nthreads, host=host,
                             port=nanny_ports[i], worker_port=worker_ports[i],
                             memory_limit=memory, token=spec["token"], loop=loop,
                             resources=spec.get("resources"),
                             **{**spec.get("config", {}), **extra}))
    try:
        for nanny in nannies:
            nanny.start_nowait()
        for nanny in nannies:
            nanny.wait_started()
    except BaseException:
        _close(nannies)
        raise
    for nanny in nannies:
        emit("worker", address=nanny.worker_address, nanny=nanny.address,
             pid=nanny.pid, nthreads=nthreads)
    return nannies


def _finished(service: Any) -> bool:
    from ..nanny.nanny import Nanny
    if isinstance(service, Nanny):
        return service.status in ("closing", "closed")
    return service.wait_closed(0)


def _close(services: list) -> None:
    from ..nanny.nanny import Nanny, close_all
    nannies = [s for s in services if isinstance(s, Nanny)]
    if nannies:
        close_all(nannies, nannies[0].config.close_timeout)
        nannies[0].loop.close()
    for s in services:
        if not isinstance(s, Nanny):
            s.close()


def _one_line(e: BaseException) -> str:
    import click
    from ..errors import MpnetError
    if isinstance(e, click.ClickException):        # a bad --interface or port range
        text = e.format_message()
    elif isinstance(e, (MpnetError, OSError, ValueError)):
        text = str(e)
    else:
        text = f"{type(e).__name__}: {e}"
    return text.replace("\n", " ")


def main() -> int:
    from .. import __version__
    emit("hello", pid=os.getpid(), python=sys.version.split()[0], mpnet=__version__,
         hostname=socket.gethostname())
    line = sys.stdin.readline()
    while line == "\n":        # a keepalive, should one ever come first
        line = sys.stdin.readline()
    if not line:
        return 0                 # the local side gave up before sending the spec
    spec = json.loads(line)
    from ..cli.common import Shutdown, setup_logging
    setup_logging(spec.get("log_level", logging.INFO))
    services: list = []
    with Shutdown("mpnet-ssh-remote", interval=0.1) as shutdown:
        try:
            if spec["role"] == "scheduler":
                services = _start_scheduler(spec)
            else:
                services = _start_nannies(spec)
        except BaseException as e:      # reported as one line, then the traceback in the log
            emit("error", message=_one_line(e))
            log.debug("start failed", exc_info=True)
            _close(services)
            return 1
        session = _Session(spec.get("silence_timeout"))
        emit("ready")
        try:
            shutdown.wait(lambda: session.ended() or all(_finished(s) for s in services))
            why = (shutdown.reason or session.why or "the services stopped by themselves")
            log.info("closing (%s)", why)
        finally:
            _close(services)
    try:
        emit("exit")
    except OSError:
        pass                     # the channel is already gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
