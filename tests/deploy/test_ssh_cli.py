"""``mpnet ssh`` as a user runs it, against namespace hosts (tests/hosts.py): a cluster
on three hosts, a client through the scheduler file, and every way the command can end.

The command runs with the hosts' temporary HOME (their known_hosts and user key), so the
machine's own ~/.ssh is never read.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from mpnet import Client
from tests.utils import wait_for

ROOT = str(Path(__file__).resolve().parents[2])
MPNET = [sys.executable, "-m", "mpnet.cli.main"]

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # see test_ssh.py


def no_remote_processes(hosts) -> bool:
    return not any(hosts.mpnet_pids(i) for i in range(hosts.n))


def start(hosts, tmp_path, *args):
    out = open(tmp_path / "out.txt", "w")
    with out:
        return subprocess.Popen(
            [*MPNET, "ssh", *args, "--remote-dir", ROOT,
             "--scheduler-file", str(tmp_path / "sched.json")],
            stdout=out, stderr=subprocess.STDOUT, env=hosts.env, cwd=tmp_path)


def wait_up(proc, tmp_path) -> None:
    wait_for(lambda: (tmp_path / "sched.json").exists() or proc.poll() is not None, 30,
             what="the cluster to come up")
    assert proc.poll() is None, (tmp_path / "out.txt").read_text()


def double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_cli_cluster_on_three_hosts_stops_on_signal(hosts, tmp_path, how):
    proc = start(hosts, tmp_path, *hosts.addresses, "--nworkers", "2", "--nthreads", "1",
                 "--log-directory", str(tmp_path / "logs"))
    try:
        wait_up(proc, tmp_path)
        with Client(scheduler_file=str(tmp_path / "sched.json")) as client:
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 6
            assert {a.split("//")[1].rsplit(":", 1)[0] for a in workers} == set(hosts.addresses)
            assert client.gather(client.map(double, range(60))) == [2 * x for x in range(60)]
            ran = {client.submit(double, 1, workers=[a]).result(timeout=20) for a in workers}
            assert ran == {2}
        proc.send_signal(getattr(signal, how))
        assert proc.wait(20) == 0
        wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (tmp_path / "out.txt").read_text()
    assert "cluster up: 1 scheduler, 6 workers on 3 hosts" in out
    assert f"[{hosts.addresses[0]}]" in out and "Scheduler at: tcp://" in out
    assert not (tmp_path / "sched.json").exists()
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == sorted([f"{hosts.addresses[0]}-scheduler.log",
                           *[f"{a}-workers.log" for a in hosts.addresses]])


def test_cli_killed_leaves_nothing_behind(hosts, tmp_path):
    proc = start(hosts, tmp_path, *hosts.addresses[:2], "--nworkers", "1", "--nthreads", "1")
    try:
        wait_up(proc, tmp_path)
        proc.kill()
        proc.wait()
        wait_for(lambda: no_remote_processes(hosts), 10, what="every remote process to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bad_host_is_one_line(hosts, tmp_path):
    res = subprocess.run([*MPNET, "ssh", hosts.addresses[0], f"{hosts.addresses[1]}:2",
                          "--remote-dir", ROOT], capture_output=True, text=True,
                         env=hosts.env, timeout=60)
    assert res.returncode == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert errors == [f"Error: {hosts.addresses[1]}: cannot connect to "
                      f"{hosts.addresses[1]}:2: Connection refused"], res.stderr
    wait_for(lambda: no_remote_processes(hosts), 5, what="every remote process to exit")
