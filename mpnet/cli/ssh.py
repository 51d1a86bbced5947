"""``mpnet-ssh`` (and ``mpnet ssh``): a whole cluster over ssh, from one command.

::

    mpnet ssh process
      main thread ─ parse ─ SSHCluster (connect all hosts at once, start the scheduler,
                    then every host's workers) ─ Shutdown.wait() ─ SSHCluster.close() ─ exit
      reader threads: each remote process's output, printed with a coloured [host] prefix

It ends on SIGINT or SIGTERM (exit 0, every remote process stopped), or when the
scheduler's remote process ends by itself (exit 1). Everything is
:class:`~mpnet.deploy.ssh.SSHCluster`; this file only turns options into its arguments.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import click

from .common import (Command, Duration, PortRange, Shutdown, read_token_file,
                     service_errors, setup_logging, version_option)

__all__ = ["ssh", "main"]

log = logging.getLogger("mpnet.cli")

_COLOURS = ["cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan",
            "bright_magenta", "bright_green", "bright_yellow", "bright_blue"]

_EPILOG = """\b
Examples:
  mpnet ssh node1 node2 node3 --nworkers 4 --scheduler-file sched.json
  mpnet ssh --hostfile hosts.txt --remote-python /opt/env/bin/python
  mpnet ssh alice@10.0.0.5:2222 10.0.0.6 --ssh-private-key ~/.ssh/cluster

\b
What runs where: the scheduler on the first host (or --scheduler), and
--nworkers worker processes, each under a nanny, on every host. Each is one
'python -m mpnet.deploy.ssh_remote' per host and role, started over ssh.
The token is made here (or read from --token-file) and sent over the ssh
channel's stdin: it never appears on a command line. Client(scheduler_file=F)
with --scheduler-file F connects from here.

\b
Ports (TCP) the hosts must let through among themselves and to clients:
  8786        the scheduler (--scheduler-port)
  random      each worker and nanny, unless --worker-port/--nanny-port

\b
Ctrl-C (or SIGTERM) stops every remote process and exits 0; if this command is
killed, each remote process sees its ssh session end and stops by itself."""


class _Printer:
    """Remote output on the terminal: ``[host]`` in a colour of its own, then the line."""

    def __init__(self) -> None:
        self._colours: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, label: str, line: str) -> None:
        host = label.split(" ")[0]
        with self._lock:
            colour = self._colours.setdefault(host, _COLOURS[len(self._colours) % len(_COLOURS)])
            click.echo(click.style(f"[{host}]", fg=colour) + " " + line)


def _hosts(hosts: tuple[str, ...], hostfile: str | None) -> list:
    from ..deploy.ssh_connect import parse_host, read_hostfile
    try:
        found = [parse_host(h) for h in hosts]
        if hostfile:
            found += read_hostfile(hostfile)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'HOSTS'") from None
    if not found:
        raise click.UsageError("give the hosts as arguments or with --hostfile")
    return found


def _nworkers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number nor 'auto'",
                                 param_hint="'--nworkers'") from None
    if n < 1:
        raise click.BadParameter("need at least one worker per host", param_hint="'--nworkers'")
    return n


@click.command(
    "ssh", cls=Command, epilog=_EPILOG, short_help="Start a cluster on other hosts over ssh.",
    help="Start a scheduler on the first of HOSTS and workers on every host over ssh, "
         "stream their output here with a [host] prefix, and stop them all on Ctrl-C.\n\n"
         "A host is NAME, USER@NAME, NAME:PORT or USER@NAME:PORT; ~/.ssh/config is honoured "
         "(HostName, User, Port, IdentityFile). Host keys must be in ~/.ssh/known_hosts "
         "unless --ssh-accept-new is given.")
@click.argument("hosts", nargs=-1)
@click.option("--hostfile", type=click.Path(dir_okay=False), default=None,
              help="Read hosts from this file: one per line, # starts a comment.")
@click.option("--scheduler", default=None, metavar="HOST",
              help="Run the scheduler on this host  [default: the first host]")
@click.option("--scheduler-port", type=click.IntRange(0, 65535), default=8786,
              show_default=True, help="The scheduler's port; 0 picks a free one.")
@click.option("--nworkers", default="1", show_default=True, metavar="N|auto",
              help="Worker processes per host ('auto': one per CPU of that host).")
@click.option("--nthreads", type=click.IntRange(min=1), default=None,
              help="Threads per worker  [default: the host's CPUs / --nworkers]")
@click.option("--memory-limit", default="auto", show_default=True,
              help="Memory per worker: 'auto' shares each host's out, 0.5 is half the host, "
                   "4GiB, or 0 for no limit.")
@click.option("--worker-port", type=PortRange(), default=None,
              help="Port or range (9000:9100) for each host's workers  [default: random]")
@click.option("--nanny-port", type=PortRange(), default=None,
              help="Port or range for each host's nannies  [default: random]")
@click.option("--host", default=None, metavar="ADDRESS",
              help="Address every remote scheduler, nanny and worker listens on (0.0.0.0: "
                   "every interface). Default: each listens on, and advertises, the address "
                   "its host is reached at. Not with --interface.")
@click.option("--interface", default=None, metavar="NIC",
              help="Listen and advertise on this network interface (ib0) on every host  "
                   "[default: the address each host reaches the scheduler from]")
@click.option("--death-timeout", type=Duration(), default=None,
              help="How long workers try to reach a lost scheduler, and remote processes "
                   "wait without word from this command (a cut network), before exiting  "
                   "[default: 60s]")
@click.option("--remote-python", default=None, metavar="PATH",
              help="Python on the hosts (with mpnet installed)  [default: this "
                   "command's own interpreter path]")
@click.option("--remote-dir", default=None, metavar="DIR",
              help="Directory the remote processes start in.")
@click.option("--log-directory", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write each remote process's output to DIR/HOST-ROLE.log here.")
@click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
              help="Write the scheduler's address and token here (mode 0600) for "
                   "Client(scheduler_file=...); removed at exit.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="Use the token in this file  [default: a new random token]")
@click.option("--ssh-username", default=None, help="User to log in as  [default: "
              "from the host, ~/.ssh/config, else yours]")
@click.option("--ssh-port", type=click.IntRange(1, 65535), default=None,
              help="sshd's port  [default: from the host, ~/.ssh/config, else 22]")
@click.option("--ssh-private-key", type=click.Path(dir_okay=False), default=None,
              help="Private key file to log in with  [default: ~/.ssh/config, "
                   "~/.ssh/id_*, an agent]")
@click.option("--ssh-accept-new", is_flag=True, default=False,
              help="Accept the key of a host not in ~/.ssh/known_hosts and record it "
                   "(a changed key is still refused).")
@click.option("--allow-missing", type=click.IntRange(min=0), default=0, show_default=True,
              help="Start anyway if up to N worker hosts cannot be started.")
@click.option("--timeout", type=Duration(), default=60.0, show_default=True,
              help="How long the whole start may take.")
@version_option("mpnet-ssh")
def ssh(**o: Any) -> None:
    # imported here: paramiko takes ~0.1 s to import, which no other mpnet command needs
    from ..deploy.ssh import SSHCluster
    from ..deploy.ssh_connect import parse_host
    setup_logging()
    hosts = _hosts(o["hosts"], o["hostfile"])
    scheduler = parse_host(o["scheduler"]) if o["scheduler"] else hosts[0]
    token = read_token_file(o["token_file"]) if o["token_file"] else None
    if o["host"] and o["interface"]:
        raise click.UsageError("give --host or --interface, not both")
    worker_options = {k: o[k] for k in ("nthreads", "memory_limit", "worker_port",
                                        "nanny_port", "interface", "host", "death_timeout")
                      if o[k] is not None}
    worker_options["nworkers"] = _nworkers(o["nworkers"])
    scheduler_options = {"port": o["scheduler_port"]}
    for name in ("interface", "host"):
        if o[name]:
            scheduler_options[name] = o[name]
    connect = dict(username=o["ssh_username"], port=o["ssh_port"],
                   key_filename=o["ssh_private_key"], accept_new=o["ssh_accept_new"])
    with Shutdown("mpnet-ssh") as shutdown:
        with service_errors():
            cluster = SSHCluster(
                hosts, connect, worker_options, scheduler_options, o["remote_python"],
                scheduler=scheduler, remote_dir=o["remote_dir"], token=token,
                scheduler_file=o["scheduler_file"], log_directory=o["log_directory"],
                allow_missing=o["allow_missing"], output=_Printer(), timeout=o["timeout"])
        try:
            t = cluster.times
            hosts_up = len({w["host"] for w in cluster.workers} | {str(scheduler)})
            click.echo(f"cluster up: 1 scheduler, {len(cluster.workers)} workers on "
                       f"{hosts_up} hosts in {t.total:.1f} s (ssh phase {t.ssh:.2f} s) at "
                       f"{cluster.scheduler_address} (Ctrl-C to stop)")
            shutdown.wait(lambda: not cluster.scheduler_alive())
            if shutdown.received:
                log.info("%s received: stopping every remote process", shutdown.reason)
        finally:
            cluster.close()
        if not shutdown.received:
            raise click.ClickException(f"the scheduler on {scheduler} stopped; the cluster "
                                       "is closed")


def main() -> None:
    """Entry point of the ``mpnet-ssh`` console script."""
    ssh.main(prog_name="mpnet-ssh")


if __name__ == "__main__":
    main()
