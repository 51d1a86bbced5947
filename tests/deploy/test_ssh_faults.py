"""Faults across namespace hosts (tests/hosts.py): a remote worker killed, a whole host's
processes killed, a host's link cut and restored. Every result must stay exact."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import cloudpickle

from mpnet import Client
from mpnet.deploy.ssh import SSHCluster
from tests.utils import wait_for

ROOT = str(Path(__file__).resolve().parents[2])

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # see test_ssh.py


def inc(x: int) -> int:
    return x + 1


def inc_where(x: int) -> tuple[int, str]:
    """x + 1, and the worker that holds the result."""
    import mpnet
    return x + 1, mpnet.get_worker().address


def double_first(pair: tuple[int, str]) -> int:
    return 2 * pair[0]


def spread(client: Client, n: int) -> tuple[list, set[str]]:
    """``n`` results held across every worker (unrestricted, so each can be recomputed
    anywhere), and the workers holding them."""
    held = client.map(inc_where, range(n))
    values = client.gather(held)
    assert [v for v, _ in values] == list(range(1, n + 1))
    return held, {w for _, w in values}


def host_of(address: str) -> str:
    return address.split("//")[1].rsplit(":", 1)[0]


def workers_on(client: Client, host: str) -> list[str]:
    return [a for a in client.scheduler_info()["workers"] if host_of(a) == host]


def cluster_on(hosts, **config):
    return SSHCluster(hosts.addresses, dict(key_filename=str(hosts.key_path),
                                            known_hosts=str(hosts.known_hosts),
                                            config_file=os.devnull),
                      {"nworkers": 1, "nthreads": 2}, remote_dir=ROOT,
                      scheduler=hosts.addresses[0], config=config)


def no_remote_processes(hosts) -> bool:
    return not any(hosts.mpnet_pids(i) for i in range(hosts.n))


def test_remote_worker_killed_is_restarted_on_its_host(hosts):
    with cluster_on(hosts) as cluster, Client(cluster) as client:
        held, holders = spread(client, 60)
        victim = next(w for w in cluster.workers if w["address"] in holders)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: [a for a in workers_on(client, victim["host"])
                          if a != victim["address"]], 20, what="the restarted worker")
        assert client.gather(client.map(double_first, held)) == [2 * x for x in range(1, 61)]
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")


def test_host_lost_then_results_recomputed_elsewhere(hosts):
    with cluster_on(hosts) as cluster, Client(cluster) as client:
        held, holders = spread(client, 60)
        lost_host = next(host_of(a) for a in holders if host_of(a) != hosts.addresses[0])
        lost = hosts.addresses.index(lost_host)
        for pid in hosts.mpnet_pids(lost):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not workers_on(client, lost_host), 20, what="the host's loss noticed")
        assert client.gather(client.map(double_first, held)) == [2 * x for x in range(1, 61)]
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")


def test_link_cut_then_restored_workers_rejoin(hosts):
    with cluster_on(hosts, worker_ttl=2.0) as cluster, Client(cluster) as client:
        held, holders = spread(client, 60)
        lost_host = next(host_of(a) for a in holders if host_of(a) != hosts.addresses[0])
        lost = hosts.addresses.index(lost_host)
        try:
            hosts.link_down(lost)
            wait_for(lambda: not workers_on(client, lost_host), 20,
                     what="the silent host declared lost")
            assert client.gather(client.map(double_first, held)) == [2 * x for x in range(1, 61)]
        finally:
            hosts.link_up(lost)
        wait_for(lambda: workers_on(client, lost_host), 20, what="the host's workers rejoin")
        assert client.submit(inc, 1, workers=workers_on(client, lost_host)).result(20) == 2
    wait_for(lambda: no_remote_processes(hosts), 10, what="every remote process to exit")


def test_link_cut_for_good_its_processes_exit_within_the_death_timeout(hosts):
    lost = hosts.n - 1
    with SSHCluster(hosts.addresses[:1] + hosts.addresses[lost:], dict(
            key_filename=str(hosts.key_path), known_hosts=str(hosts.known_hosts),
            config_file=os.devnull), {"nworkers": 1, "nthreads": 1, "death_timeout": 2},
            remote_dir=ROOT) as cluster:
        assert hosts.mpnet_pids(lost)
        try:
            hosts.link_down(lost)
            # the death timeout (2 s), then a graceful close: bounded by the wait below
            wait_for(lambda: not hosts.mpnet_pids(lost), 10,
                     what="the cut-off host's processes to exit")
        finally:
            hosts.link_up(lost)
        assert cluster.scheduler_alive()
    wait_for(lambda: no_remote_processes(hosts), 10, what="every remote process to exit")
