#!/usr/bin/env python3
"""Make the test hosts of tests/hosts.py by hand, to try ``mpnet ssh`` without machines.

    sudo python scripts/testhosts.py up 3      # make 3 hosts, print how to use them,
                                               # keep them until Ctrl-C, then remove all
    sudo python scripts/testhosts.py down      # remove what a killed run left behind

Each host is a network namespace (10.250.0.1, .2, ...) on a bridge, with its own sshd
from a temporary config and generated keys; nothing of this machine's ssh set-up is read
or changed. Run it with the Python that has mpnet installed: the hosts run that Python.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hosts import TestHosts, remove_stale, unavailable  # noqa: E402


def up(n: int) -> int:
    why = unavailable()
    if why:
        print(f"cannot make test hosts: {why}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with TestHosts(n) as hosts:
        print(f"{n} hosts up: {' '.join(hosts.addresses)} (this machine is "
              f"{hosts.driver_address} on bridge {hosts.bridge})")
        print("try, in another shell:")
        print(f"  HOME={hosts.home} {sys.executable} -m mpnet.cli.main ssh "
              f"{' '.join(hosts.addresses)} --nworkers 2 --scheduler-file /tmp/sched.json")
        print(f"  HOME={hosts.home} ssh -F /dev/null -i {hosts.key_path} "
              f"-o UserKnownHostsFile={hosts.known_hosts} {hosts.user}@{hosts.addresses[0]}")
        print(f"  ip netns pids {hosts.namespaces[0]} | xargs ps -o pid,args -p   "
              "# what runs on host 1")
        print("Ctrl-C removes them.", flush=True)
        stop.wait()
    print("removed")
    return 0


def down() -> int:
    removed = remove_stale()
    print(f"removed {', '.join(removed)}" if removed else "nothing left behind")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="make N hosts and keep them until Ctrl-C")
    p_up.add_argument("n", type=int, nargs="?", default=3)
    sub.add_parser("down", help="remove the hosts of runs that are gone")
    args = parser.parse_args()
    return up(args.n) if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
