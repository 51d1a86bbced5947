"""Rough edges a new user met (issue 10, item 6), each pinned by a test that failed before.

- a planned retirement (retire_workers, lifetime, restart) is INFO; a crash still warns;
- every error a user can see is a class of mpnet.errors (and exported by mpnet);
- a preload's unknown option fails before the server listens; its teardown runs only
  after a setup that ran;
- SIGTERM sent twice (as `timeout` does: to the process and to its group) is one
  graceful stop, and the scheduler file is removed;
- a Client pointed where nothing listens says so once, after about a second, and keeps
  trying for its timeout.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import pkgutil
import re
import signal
import socket
from pathlib import Path

import pytest

import mpnet
import mpnet.errors
from mpnet import Client, LocalCluster, Scheduler
from mpnet.deploy.scheduler_file import read_scheduler_file, write_scheduler_file
from tests.cli.test_cli import WAIT, cmd, write  # noqa: F401  (cmd: a fixture)
from tests.utils import wait_for


class Records(logging.Handler):
    """Every record of the ``mpnet`` loggers of this process, at INFO and above."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def __enter__(self) -> "Records":
        self.logger = logging.getLogger("mpnet")
        self.level = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int, text: str = "") -> list[str]:
        return [r.getMessage() for r in list(self.records)
                if r.levelno >= level and text in r.getMessage()]


def _exited(records: Records, address: str) -> list[logging.LogRecord]:
    return [r for r in list(records.records)
            if r.getMessage().startswith(f"worker {address} exited")]


def _warnings(records: Records) -> list[str]:
    # A machine so loaded that a worker misses its grace period to stop is worth a
    # warning, planned or not: that one is not what these tests are about.
    return [m for m in records.at(logging.WARNING) if "did not stop" not in m]


# --- log levels -----------------------------------------------------------------------

def test_retire_workers_and_restart_are_info_a_crash_warns():
    with Records() as log, LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \
            Client(cluster) as client:
        retired, other = sorted(client.scheduler_info()["workers"])
        client.retire_workers([retired])
        wait_for(lambda: _exited(log, retired), timeout=WAIT, what="the retired worker's exit")
        client.restart()
        wait_for(lambda: _exited(log, other), timeout=WAIT, what="the restarted worker's exit")
        assert _warnings(log) == [], "a planned exit is not a warning"
        # The worker of the nanny still supervising (the retired worker's nanny is
        # closing; a worker it may have started meanwhile is not this test's subject).
        def restarted() -> str | None:
            for n in cluster.workers:
                if n.status == "running" and n.worker_address in \
                        client.scheduler_info()["workers"]:
                    return n.worker_address
            return None
        wait_for(restarted, timeout=WAIT, what="the restarted worker")
        victim = client.scheduler_info()["workers"][restarted()]
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: log.at(logging.WARNING, "exited"), timeout=WAIT,
                 what="the crash's warning")
    assert all(r.levelno == logging.INFO for r in _exited(log, retired) + _exited(log, other))
    assert [r.levelno for r in _exited(log, victim["name"])] == [logging.WARNING]
    assert log.at(logging.ERROR) == []


def test_a_worker_that_reaches_its_lifetime_leaves_at_info():
    with Records() as log, LocalCluster(n_workers=1, threads_per_worker=1,
                                        lifetime=0.5) as cluster, Client(cluster) as client:
        (address,) = client.scheduler_info()["workers"]
        wait_for(lambda: _exited(log, address), timeout=WAIT, what="the worker's retirement")
    assert _exited(log, address)[0].levelno == logging.INFO
    assert _warnings(log) == []


# --- errors ---------------------------------------------------------------------------

def test_every_exception_class_of_mpnet_is_in_mpnet_errors():
    outside = []
    for info in pkgutil.walk_packages(mpnet.__path__, "mpnet."):
        if info.name.startswith("mpnet.cli"):
            continue          # click's own exceptions (usage errors) are the CLI's face
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and \
                    obj.__module__.startswith("mpnet.") and obj.__module__ != "mpnet.errors":
                outside.append(f"{obj.__module__}.{name}")
    assert outside == []
    for name in mpnet.errors.__all__:
        if name != "RemoteTraceback":
            assert getattr(mpnet, name) is getattr(mpnet.errors, name)
            assert name in mpnet.__all__
            assert name == "CancelledError" or name in mpnet.errors.__doc__


def test_scheduler_file_errors_are_mpnet_errors(tmp_path):
    with pytest.raises(mpnet.SchedulerFileTimeoutError, match="did not appear") as e:
        read_scheduler_file(tmp_path / "missing.json", timeout=0.1)
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, mpnet.SchedulerFileError)
    with Records() as log:        # a wait that lasts says so once
        with pytest.raises(mpnet.SchedulerFileTimeoutError):
            read_scheduler_file(tmp_path / "missing.json", timeout=1.6)
    assert len(log.at(logging.INFO, "does not exist yet: still waiting for")) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(mpnet.InvalidSchedulerFileError, match="not an mpnet scheduler file"):
        read_scheduler_file(bad, timeout=1)
    with socket.socket() as s:     # a port that was free: nothing answers there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stale = write_scheduler_file(tmp_path / "stale.json",
                                 {"address": f"tcp://127.0.0.1:{port}", "id": "x"})
    with pytest.raises(mpnet.StaleSchedulerFileError, match="stale"):
        read_scheduler_file(stale, timeout=1)


# --- preloads -------------------------------------------------------------------------

PRELOAD = """
import click
from pathlib import Path

@click.command()
@click.option("--greeting", default="hi")
def mpnet_setup(service, greeting):
    Path("{dir}/setup-{name}").write_text(greeting)
    {fail}

def mpnet_teardown(service):
    Path("{dir}/teardown-{name}").write_text("done")
"""


def _preload(tmp_path: Path, name: str, fail: bool = False) -> str:
    return write(tmp_path / f"{name}.py", PRELOAD.format(
        dir=tmp_path, name=name, fail="raise RuntimeError('setup broke')" if fail else ""))


def test_a_preload_option_is_checked_before_the_scheduler_listens(tmp_path):
    with pytest.raises(mpnet.PreloadError, match="[Nn]o such option.*--nope") as e:
        Scheduler(port=0, preload=[_preload(tmp_path, "p")], preload_argv=["--nope"])
    assert isinstance(e.value.__cause__, __import__("click").UsageError)
    assert not (tmp_path / "setup-p").exists()


def test_teardown_runs_only_after_a_setup_that_ran(tmp_path):
    names = [_preload(tmp_path, "first"), _preload(tmp_path, "broken", fail=True),
             _preload(tmp_path, "never")]
    with pytest.raises(mpnet.PreloadError, match="setup broke"):
        Scheduler(port=0, preload=names, dashboard_address=None).start()
    made = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py")
    assert made == ["setup-broken", "setup-first", "teardown-first"]


def test_cli_preload_unknown_option_opens_nothing(cmd, tmp_path):
    path = tmp_path / "scheduler.json"
    code, out, err = cmd.run("scheduler", "--host", "127.0.0.1", "--port", "0",
                             "--no-dashboard", "--scheduler-file", str(path),
                             "--preload", _preload(tmp_path, "p"), "--nope")
    assert code == 2, err
    assert re.search(r"[Nn]o such option.*--nope", err), err
    assert "Scheduler at" not in err and not path.exists()


def test_cli_worker_preload_unknown_option_is_one_line(cmd, tmp_path):
    preload = _preload(tmp_path, "p")
    with Scheduler(host="127.0.0.1", port=0, token=False) as scheduler:
        for nanny in ([], ["--no-nanny"]):
            code, _, err = cmd.run("worker", scheduler.address, "--no-auth", *nanny,
                                   "--preload", preload, "--nope")
            assert code == (2 if nanny else 1), err
            assert re.search(r"[Nn]o such option.*--nope", err), err
            assert "Traceback" not in err and "Start worker at" not in err, err
            assert "traceback is in the log" not in err, err


# --- signals --------------------------------------------------------------------------

SLOW_TEARDOWN = """
import time
from pathlib import Path

def mpnet_teardown(service):
    # Hold the close open until the test lets it go: the second SIGTERM lands inside it.
    Path("{dir}/closing").write_text("")
    deadline = time.monotonic() + 20
    while not Path("{dir}/go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def _twice(cmd, proc, tmp_path: Path) -> tuple[int, str]:
    """SIGTERM, then SIGTERM again while the close runs; let the close finish."""
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: (tmp_path / "closing").exists() or proc.poll() is not None,
             timeout=WAIT, what="the close to begin")
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "go").write_text("")
    code, _, err = cmd.finish(proc)
    return code, err


def test_scheduler_sigterm_twice_is_one_graceful_stop(cmd, tmp_path):
    preload = write(tmp_path / "slow.py", SLOW_TEARDOWN.format(dir=tmp_path))
    proc, info = cmd.scheduler("--no-dashboard", "--preload", preload)
    code, err = _twice(cmd, proc, tmp_path)
    assert "without cleaning up" not in err
    assert code == 0, err
    assert not (tmp_path / "scheduler.json").exists()


def test_worker_sigterm_twice_is_one_graceful_stop(cmd, tmp_path):
    preload = write(tmp_path / "slow.py", SLOW_TEARDOWN.format(dir=tmp_path))
    with Scheduler(host="127.0.0.1", port=0, dashboard_address=None,
                   token=False) as scheduler, Client(scheduler.address, token=False) as client:
        proc = cmd.start("worker", scheduler.address, "--no-auth", "--preload-nanny", preload)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1 or proc.poll() is not None,
                 timeout=WAIT, what="the worker")
        code, err = _twice(cmd, proc, tmp_path)
        assert "without cleaning up" not in err
        assert code == 0, err
        wait_for(lambda: not client.scheduler_info()["workers"], timeout=WAIT,
                 what="the worker to leave")


# --- connecting -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_says_once_that_nothing_listens_and_keeps_trying():
    port = _free_port()
    with Records() as log:
        with pytest.raises(mpnet.ConnectTimeoutError):
            Client(f"tcp://127.0.0.1:{port}", timeout=2.5, token=False)
    said = log.at(logging.WARNING, "nothing is listening")
    assert len(said) == 1, log.at(logging.INFO)
    assert said[0].startswith(f"nothing is listening at tcp://127.0.0.1:{port} yet: still "
                              "trying for ")


def test_client_connects_to_a_scheduler_that_starts_late():
    port = _free_port()
    with Records() as log:
        import threading
        found: list = []
        opener = threading.Thread(
            target=lambda: found.append(Client(f"tcp://127.0.0.1:{port}", timeout=20,
                                               token=False)), name="test-late-client")
        opener.start()
        try:
            wait_for(lambda: log.at(logging.WARNING, "nothing is listening"), timeout=WAIT,
                     what="the client's notice")
            with Scheduler(host="127.0.0.1", port=port, dashboard_address=None, token=False):
                opener.join(WAIT)
                assert found, "the client did not connect"
                found[0].close()
        finally:
            opener.join(WAIT)
    assert len(log.at(logging.WARNING, "nothing is listening")) == 1
