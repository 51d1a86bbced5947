"""mpnet over ssh, against real sshd servers on namespace hosts (tests/hosts.py).

Every remote process is a child of a namespace's sshd, so the leak check of
tests/conftest.py sees any that survive a test; the tests also look inside each namespace.
The remote processes start in this checkout (``remote_dir``), with this checkout's python.
Skipped where namespaces cannot be made (not root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

import mpnet
from mpnet import Client
from mpnet.deploy.ssh import SSHCluster, SSHError
from mpnet.deploy.ssh_connect import parse_host, read_hostfile
from tests.utils import wait_for

ROOT = str(Path(__file__).resolve().parents[2])

# pytest imports this file as "test_ssh", a name the remote processes cannot import: send
# its functions and classes by value instead.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def where() -> str:
    """The address of the worker running this task."""
    return mpnet.get_worker().address


def make_block(seed: int) -> bytes:
    return bytes([seed % 256]) * 1_000_000


def combine(a: bytes, b: bytes) -> tuple[int, int, str]:
    return len(a) + len(b), a[0] + b[0], where()


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self, k: int) -> tuple[int, str]:
        self.n += k
        return self.n, where()


def call_actor(handle, k: int) -> tuple[tuple[int, str], str]:
    return handle.incr(k).result(timeout=20), where()


def connect_options(hosts) -> dict:
    return dict(key_filename=str(hosts.key_path), known_hosts=str(hosts.known_hosts),
                config_file=os.devnull)


def no_remote_processes(hosts) -> bool:
    return not any(hosts.mpnet_pids(i) for i in range(hosts.n))


def host_of(address: str) -> str:
    return address.split("//")[1].rsplit(":", 1)[0]


# --- host specs, no network ----------------------------------------------------------

def test_host_specs_and_hostfile(tmp_path):
    assert parse_host("alice@node1:2222") == parse_host("alice@node1:2222")
    spec = parse_host("alice@node1:2222")
    assert (spec.host, spec.user, spec.port) == ("node1", "alice", 2222)
    assert parse_host("[fd00::5]:22").host == "fd00::5"
    assert parse_host("node2").port is None
    with pytest.raises(ValueError, match="not a host"):
        parse_host("node:port")
    f = tmp_path / "hosts.txt"
    f.write_text("# the cluster\nnode1\n\n  bob@node2:2200  # fast one\n")
    assert [str(h) for h in read_hostfile(f)] == ["node1", "node2"]
    assert read_hostfile(f)[1].user == "bob"


def test_no_namespaces_without_root(monkeypatch):
    from tests.hosts import unavailable
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "need root" in unavailable()


# --- a cluster across hosts ----------------------------------------------------------

def test_sshcluster_runs_on_every_host_and_leaves_nothing(hosts):
    addresses = hosts.addresses
    with SSHCluster(addresses, connect_options(hosts), {"nworkers": 1, "nthreads": 2},
                    remote_dir=ROOT, scheduler=addresses[0]) as cluster:
        assert host_of(cluster.scheduler_address) == addresses[0]
        assert sorted(host_of(w["address"]) for w in cluster.workers) == sorted(addresses)
        token_seen = []
        for i in range(hosts.n):        # the token is on no command line and in no env
            for pid in hosts.pids(i):
                for part in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{part}").read_bytes()
                    except OSError:
                        continue
                    token_seen += [(pid, part)] if cluster.token.encode() in data else []
        assert token_seen == []
        with Client(cluster) as client:
            by_worker = {w["address"]: client.submit(where, workers=[w["address"]])
                         for w in cluster.workers}
            assert {a: f.result(timeout=20) for a, f in by_worker.items()} == \
                {a: a for a in by_worker}
            # inputs made on two different hosts, combined on a third
            w = [x["address"] for x in cluster.workers]
            a = client.submit(make_block, 1, workers=[w[0]])
            b = client.submit(make_block, 2, workers=[w[1]])
            total, first_bytes, ran_on = client.submit(combine, a, b, workers=[w[2]]).result(20)
            assert (total, first_bytes, ran_on) == (2_000_000, 3, w[2])
            # an actor on one host, called from a task on another
            counter = client.actor(Counter, workers=[w[1]])
            (n, actor_at), task_at = client.submit(call_actor, counter, 5,
                                                   workers=[w[2]]).result(20)
            assert (n, actor_at, task_at) == (5, w[1], w[2])
            del counter
        logs = cluster.get_logs()
        assert any("Scheduler at:" in text for text in logs.values())
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")
    assert cluster.status == "closed"
    cluster.close()                             # idempotent


def test_ssh_config_is_honoured(hosts, tmp_path, monkeypatch):
    """HostName, User, Port and IdentityFile come from ~/.ssh/config (a temporary HOME)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = tmp_path / "elsewhere_key"
    key.write_bytes(hosts.key_path.read_bytes())
    key.chmod(0o600)
    (home / ".ssh" / "known_hosts").write_text(hosts.known_hosts.read_text())
    (home / ".ssh" / "config").write_text("".join(
        f"Host node{i}\n  HostName {a}\n  User {hosts.user}\n  Port 22\n  IdentityFile {key}\n"
        for i, a in enumerate(hosts.addresses)))
    monkeypatch.setenv("HOME", str(home))
    with SSHCluster(["node0", "node1"], remote_dir=ROOT,
                    worker_options={"nworkers": 1, "nthreads": 1}) as cluster:
        assert host_of(cluster.scheduler_address) == hosts.addresses[0]
        assert [host_of(w["address"]) for w in cluster.workers] == [hosts.addresses[1]]
        with Client(cluster) as client:
            assert client.submit(where).result(timeout=20) == cluster.workers[0]["address"]
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")


def test_unknown_host_key_is_refused_then_accepted_and_recorded(hosts, tmp_path):
    known = tmp_path / "known_hosts"
    options = dict(key_filename=str(hosts.key_path), known_hosts=str(known),
                   config_file=os.devnull)
    with pytest.raises(SSHError) as e:
        SSHCluster(hosts.addresses[:1], options, remote_dir=ROOT)
    message = str(e.value)
    assert message.startswith(hosts.addresses[0]) and "SHA256:" in message
    assert "--ssh-accept-new" in message and "\n" not in message
    with SSHCluster(hosts.addresses[:1], {**options, "accept_new": True},
                    remote_dir=ROOT) as cluster:
        assert cluster.scheduler_address
    assert known.read_text().split()[:2] == [hosts.addresses[0], "ssh-ed25519"]
    with SSHCluster(hosts.addresses[:1], options, remote_dir=ROOT):   # now known
        pass


@pytest.mark.parametrize("case", ["unknown-host", "refused-port", "refused-key",
                                  "wrong-password", "no-python", "no-mpnet"])
def test_bad_input_is_one_line_naming_the_host(hosts, tmp_path, case):
    good = hosts.addresses[1]
    options = connect_options(hosts)
    python = hosts.python
    host = good
    if case == "unknown-host":
        host = "no-such-host.invalid"
    elif case == "refused-port":
        host = f"{good}:2"
    elif case == "refused-key":
        other = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)
        options["key_filename"] = str(other)
    elif case == "wrong-password":
        options.update(key_filename=[], password="not-the-password")
    elif case == "no-python":
        python = "/nonexistent/python3"
    elif case == "no-mpnet":
        python = "/usr/bin/python3"     # the system python, without mpnet
    with pytest.raises(SSHError) as e:
        SSHCluster([hosts.addresses[0], host], [connect_options(hosts), options], remote_dir="/",
                   remote_python=[hosts.python, python], timeout=20)
    message = str(e.value)
    assert "\n" not in message and message.startswith(host.split(":")[0]), message
    expected = {"unknown-host": "unknown host", "refused-port": "cannot connect",
                "refused-key": "authentication failed",
                "wrong-password": "a password, refused", "no-python": "not found",
                "no-mpnet": "mpnet is not installed"}[case]
    assert expected in message
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")


def test_allow_missing_starts_with_the_hosts_that_came_up(hosts):
    with SSHCluster([hosts.addresses[0], hosts.addresses[1], f"{hosts.addresses[2]}:2"],
                    connect_options(hosts), {"nworkers": 1, "nthreads": 1},
                    remote_dir=ROOT, allow_missing=1) as cluster:
        assert [host_of(w["address"]) for w in cluster.workers] == [hosts.addresses[1]]
        assert list(cluster.failed) == [hosts.addresses[2]]
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")


def test_interface_is_resolved_on_each_host(hosts):
    """``eth0`` is 10.250.0.X inside each host but another address here: the remote side
    must look it up; a missing interface is one line naming the host."""
    with SSHCluster(hosts.addresses[:2], connect_options(hosts),
                    {"nworkers": 1, "nthreads": 1, "interface": "eth0"},
                    {"interface": "eth0", "port": 0}, remote_dir=ROOT) as cluster:
        assert host_of(cluster.scheduler_address) == hosts.addresses[0]
        assert [host_of(w["address"]) for w in cluster.workers] == [hosts.addresses[1]]
        assert host_of(cluster.workers[0]["nanny"]) == hosts.addresses[1]
    with pytest.raises(SSHError, match=rf"^{hosts.addresses[0]} scheduler: .*no network "
                                       r"interface 'ib9'"):
        SSHCluster(hosts.addresses[:1], connect_options(hosts), None, {"interface": "ib9"},
                   remote_dir=ROOT)
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")


def test_host_all_interfaces_still_advertises_a_reachable_address(hosts):
    """``--host 0.0.0.0``: every process listens everywhere, and what it advertises is
    still its host's address on the route to the scheduler, never 0.0.0.0."""
    with SSHCluster(hosts.addresses[:2], connect_options(hosts),
                    {"nworkers": 1, "nthreads": 1, "host": "0.0.0.0"},
                    {"host": "0.0.0.0", "port": 0}, remote_dir=ROOT) as cluster:
        assert host_of(cluster.scheduler_address) == hosts.addresses[0]
        assert [host_of(w["address"]) for w in cluster.workers] == [hosts.addresses[1]]
        with Client(cluster, timeout=30) as client:
            assert client.submit(pow, 2, 10).result(timeout=30) == 1024
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")
