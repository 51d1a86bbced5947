"""`mpnet top` and `mpnet status` as a person uses them: top runs in a real terminal (tmux),
and the screen is read back with capture-pane while a worker is killed and restarted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mpnet import Client, LocalCluster
from tests.utils import wait_for

MPNET = [sys.executable, "-m", "mpnet.cli.main"]


def inc(x):
    return x + 1


@pytest.fixture
def cluster_and_token(tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        token_file = tmp_path / "token"
        token_file.write_text(cluster.token)
        token_file.chmod(0o600)
        yield cluster, str(token_file)


def run_cli(*args, timeout=30):
    env = dict(os.environ, COLUMNS="160", PYTHONPATH=os.getcwd())
    return subprocess.run(MPNET + list(args), capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_status_prints_tables_and_json(cluster_and_token):
    cluster, token_file = cluster_and_token
    with Client(cluster) as client:
        client.gather(client.map(inc, range(10)))
        workers = set(client.scheduler_info()["workers"])
    done = run_cli("status", cluster.scheduler_address, "--token-file", token_file)
    assert done.returncode == 0, done.stderr
    assert "2/2 workers" in done.stdout
    for address in workers:
        assert address in done.stdout
    assert "inc" in done.stdout and "10" in done.stdout
    done = run_cli("status", cluster.scheduler_address, "--token-file", token_file, "--json")
    snap = json.loads(done.stdout)
    assert {w["address"] for w in snap["workers"]} == workers
    assert {g["name"]: g["memory"] for g in snap["groups"]}.get("inc") in (10, 0)


def test_status_refused_without_the_token(cluster_and_token, tmp_path):
    cluster, _ = cluster_and_token
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    wrong.chmod(0o600)
    done = run_cli("status", cluster.scheduler_address, "--token-file", str(wrong),
                   "--timeout", "3")
    assert done.returncode == 1
    assert "Error:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_in_tmux_shows_a_killed_worker_and_its_restart(cluster_and_token, tmp_path):
    cluster, token_file = cluster_and_token
    socket_name = f"mpnet-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket_name]
    command = " ".join(MPNET + ["top", cluster.scheduler_address, "--token-file", token_file,
                                "--interval", "0.3"])
    env = dict(os.environ, PYTHONPATH=os.getcwd())

    def screen() -> str:
        return subprocess.run(tmux + ["capture-pane", "-p", "-t", "top"], capture_output=True,
                              text=True, env=env).stdout
    subprocess.run(tmux + ["new-session", "-d", "-s", "top", "-x", "160", "-y", "40",
                           command], check=True, env=env)
    try:
        with Client(cluster) as client:
            info = client.scheduler_info()["workers"]
            wait_for(lambda: "2/2 workers" in screen() and all(a in screen() for a in info),
                     timeout=15, what="both workers on the screen")
            assert "running" in screen()
            victim, details = next(iter(info.items()))
            os.kill(details["pid"], signal.SIGKILL)
            wait_for(lambda: "killed by signal 9" in screen(), timeout=15,
                     what="the killed worker's event")
            wait_for(lambda: "restarted in" in screen() and "2/2 workers" in screen(),
                     timeout=15, what="its restart")
        text = screen()
        artifacts = Path(os.environ.get("MPNET_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "top.txt").write_text(text)
        restarted = [line for line in text.splitlines() if line.rstrip().endswith("running")
                     and line.split()[0] not in info]
        assert restarted, text                      # the new worker's row
        subprocess.run(tmux + ["send-keys", "-t", "top", "q"], check=True, env=env)
        wait_for(lambda: subprocess.run(tmux + ["has-session", "-t", "top"],
                                        capture_output=True, env=env).returncode != 0,
                 timeout=10, what="top to quit on q")
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True, env=env)


def test_top_prints_once_when_not_a_terminal(cluster_and_token):
    cluster, token_file = cluster_and_token
    start = time.monotonic()
    done = run_cli("top", cluster.scheduler_address, "--token-file", token_file)
    assert done.returncode == 0, done.stderr
    assert "2/2 workers" in done.stdout and "\x1b[?1049h" not in done.stdout
    assert time.monotonic() - start < 20
