"""A cluster over ssh: a scheduler and workers on other machines, from a script.

    python examples/ssh_cluster.py node1 node2 node3        # your hosts
    sudo python examples/ssh_cluster.py                      # or: three test hosts made here

Every host needs the same Python with mpnet at the same path (``remote_python=`` otherwise),
an sshd that lets you in with a key, and its host key in ~/.ssh/known_hosts (or pass
``connect_options={"accept_new": True}`` to accept and record new ones). With no hosts
given, as root, it makes three network-namespace hosts with their own sshd (the ones the
tests use, see tests/hosts.py) and removes them afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from mpnet import Client, SSHCluster, get_worker

ROOT = Path(__file__).resolve().parents[1]


def where(x: int) -> tuple[int, str]:
    """x squared, and the address of the worker that computed it."""
    return x * x, get_worker().address


def total(pairs: list) -> int:
    return sum(value for value, _ in pairs)


@contextlib.contextmanager
def hosts_to_use(argv: list[str]):
    """The hosts on the command line, or three test hosts made for the occasion."""
    if argv:
        yield argv, {}
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from hosts import TestHosts, unavailable
    why = unavailable()
    if why:
        sys.exit(f"give some hosts, or run as root to make test hosts here ({why})")
    with TestHosts(3) as made:
        yield made.addresses, dict(key_filename=str(made.key_path),
                                   known_hosts=str(made.known_hosts), config_file=os.devnull)


def main() -> None:
    with hosts_to_use(sys.argv[1:]) as (hosts, connect_options):
        with SSHCluster(hosts, connect_options, worker_options={"nworkers": 2, "nthreads": 1},
                        remote_dir=str(ROOT)) as cluster, Client(cluster) as client:
            print(f"scheduler at {cluster.scheduler_address}; "
                  f"{len(cluster.workers)} workers on {hosts[1:]}; "
                  f"started in {cluster.times.total:.1f} s (ssh phase {cluster.times.ssh:.2f} s)")
            squares = client.map(where, range(100))
            by_worker: dict[str, int] = {}
            for _, address in client.gather(squares):
                by_worker[address] = by_worker.get(address, 0) + 1
            print("tasks per worker:", by_worker)
            # the squares stay on the workers that made them; one task gathers them all
            print(f"sum of squares: {client.submit(total, squares).result()} "
                  f"(expected {sum(x * x for x in range(100))})")
    print(f"done on {socket.gethostname()}; every remote process has stopped")


if __name__ == "__main__":
    main()
