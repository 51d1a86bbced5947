"""A script that ends without closing its cluster: the work it still wants finishes, then
clients, workers and the scheduler close quietly (at most one line: its own error).

Each script runs in a fresh interpreter, as a user runs it, with a LocalCluster of worker
processes; it prints its workers' pids so the test can check none is left behind.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.utils import wait_for

ROOT = Path(__file__).resolve().parents[1]

HEAD = """
    import os, time
    from mpnet import Client, LocalCluster

    def slow_inc(x):
        time.sleep(0.2)
        return x + 1

    if __name__ == "__main__":
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        info = client.scheduler_info()["workers"].values()
        print("PIDS", *[w["pid"] for w in info], flush=True)
        futures = client.map(slow_inc, range(4))
"""

ENDINGS = {
    "ends": """
        print("submitted", flush=True)
    """,
    "raises": """
        raise ValueError("the script's own error")
    """,
    "exits": """
        raise SystemExit(3)
    """,
}


def _run(tmp_path: Path, ending: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(HEAD) + textwrap.indent(textwrap.dedent(ending), "    "))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=40)


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_script_that_does_not_close_ends_quietly(tmp_path, ending):
    done = _run(tmp_path, ENDINGS[ending])
    pids = [int(p) for p in done.stdout.split("\n")[0].split()[1:]]
    assert len(pids) == 2, (done.stdout, done.stderr)
    err = done.stderr.strip().splitlines()
    if ending == "raises":
        assert done.returncode == 1
        # Python's own traceback, ending with the one line that matters; nothing after it.
        assert err[0] == "Traceback (most recent call last):", done.stderr
        assert err[-1] == "ValueError: the script's own error", done.stderr
        assert "mpnet" not in done.stderr, done.stderr
    else:
        assert done.returncode == (3 if ending == "exits" else 0)
        assert err == [], done.stderr
    wait_for(lambda: not any(map(_alive, pids)), timeout=10,
             what="the script's worker processes to be gone")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
