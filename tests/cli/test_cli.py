"""The command line as a user runs it: real processes and sockets, on 127.0.0.1 only.

Every command runs as ``python -m mpnet.cli.main ...`` (what the ``mpnet`` console script
runs) with a HOME of its own, so the per-user token file of the machine running the
tests is never read or written. Each test kills what it started, worker processes
included, however it ends; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from mpnet import Client, VersionMismatchError
from mpnet.cli.main import cli
from mpnet.deploy.scheduler_file import read_scheduler_file
from mpnet.errors import AuthenticationError
from tests.utils import wait_for

ROOT = Path(__file__).resolve().parents[2]
MPNET = [sys.executable, "-m", "mpnet.cli.main"]
WAIT = 30.0     # seconds: the bound on anything a test waits for


class Commands:
    """Starts mpnet commands as a user would, and cleans up after them."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        home = tmp_path / "home"
        home.mkdir()
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self.env.pop("MPNET_TOKEN", None)
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """Start ``mpnet ARGS...``."""
        return self.spawn([*MPNET, *args], env=env)

    def spawn(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=self.dir, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(proc)
        return proc

    def run(self, *args: str, env: dict | None = None) -> tuple[int, str, str]:
        """Run a command to its end (a hang fails the test): (exit code, stdout, stderr)."""
        return self.finish(self.start(*args, env=env))

    def finish(self, proc: subprocess.Popen, sig: int | None = None) -> tuple[int, str, str]:
        """Optionally send ``sig``, then wait for the exit: (exit code, stdout, stderr)."""
        if sig is not None:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=WAIT)
        return proc.returncode, out, err

    def scheduler(self, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, dict]:
        """Start ``mpnet scheduler`` on a free port; return it and its scheduler file."""
        path = self.dir / "scheduler.json"
        proc = self.start("scheduler", "--host", "127.0.0.1", "--port", "0",
                          "--scheduler-file", str(path), *args, env=env)
        wait_for(lambda: path.exists() or proc.poll() is not None, timeout=WAIT,
                 what="the scheduler file")
        if proc.poll() is not None:
            raise AssertionError(f"the scheduler exited: {proc.communicate(timeout=WAIT)}")
        return proc, read_scheduler_file(path, timeout=WAIT)

    def kill_all(self) -> None:
        for proc in self.started:
            try:
                tree = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                tree = []
            for p in tree:   # first the worker processes, which hold the output pipes too
                try:
                    p.kill()
                except psutil.Error:
                    pass
            proc.kill()
            proc.communicate(timeout=WAIT)
            psutil.wait_procs(tree, timeout=5)


@pytest.fixture
def cmd(tmp_path, monkeypatch):
    # This process's clients look for tokens where the commands do, never in the real HOME.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.delenv("MPNET_TOKEN", raising=False)
    commands = Commands(tmp_path)
    try:
        yield commands
    finally:
        commands.kill_all()


def one_line_error(err: str) -> str:
    """Assert ``err`` is a single ``Error: ...`` line without a traceback; return it."""
    lines = [line for line in err.strip().splitlines() if " INFO " not in line]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


def worker_count(client: Client) -> int:
    return len(client.scheduler_info()["workers"])


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def free_port_range(n: int) -> int:
    """The first of ``n`` consecutive free ports below Linux's ephemeral range."""
    for base in range(21000, 31000, 97):
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


def loopback_interface() -> str:
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs):
            return name
    pytest.skip("no loopback interface with 127.0.0.1")


# --- the seed's flow: scheduler file, workers, client ------------------------------------

def test_scheduler_file_flow_and_sigterm(cmd, tmp_path):
    pid_file = tmp_path / "scheduler.pid"
    sched, info = cmd.scheduler("--pid-file", str(pid_file))
    path = tmp_path / "scheduler.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {"address", "dashboard", "id", "pid", "started", "token"} <= set(info)
    assert info["address"].startswith("tcp://127.0.0.1:") and info["token"]
    assert pid_file.read_text().strip() == str(sched.pid)

    workers = [cmd.start("worker", "--scheduler-file", str(path), "--nworkers", "2",
                         "--nthreads", "1", "--memory-limit", "0") for _ in range(2)]
    with Client(scheduler_file=str(path), timeout=WAIT) as client:
        wait_for(lambda: worker_count(client) == 4, timeout=WAIT, what="4 workers")
        squares = client.map(pow, range(20), [2] * 20)
        assert client.submit(sum, squares).result(timeout=WAIT) == sum(i * i for i in range(20))
        assert len(set(client.run(os.getpid).values())) == 4   # four worker processes

    code, _, err = cmd.finish(sched, signal.SIGTERM)
    assert code == 0, err
    assert f"Scheduler at: {info['address']}" in err
    assert not path.exists() and not pid_file.exists()
    for w in workers:   # they leave by themselves when the scheduler goes
        code, _, err = cmd.finish(w)
        assert code == 0, err
        assert err.count("Start worker at: tcp://127.0.0.1:") == 2, err
        assert err.count(f"Registered to: {info['address']}") == 2, err


def test_stale_missing_and_unreadable_scheduler_files(cmd, tmp_path):
    with socket.socket() as s:   # a port where nothing listens any more
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"address": f"tcp://127.0.0.1:{dead}", "pid": 1,
                                 "host": "gone", "token": "ab" * 32}))
    stale.chmod(0o600)    # it carries a token: a file open to others is refused first
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json {")
    runs = {
        "stale": cmd.start("worker", "--scheduler-file", str(stale)),
        "not an mpnet scheduler file": cmd.start("worker", "--scheduler-file", str(garbage)),
        "did not appear within 0.3s": cmd.start("worker", "--scheduler-file",
                                                str(tmp_path / "none.json"),
                                                "--death-timeout", "0.3"),
    }
    for expected, proc in runs.items():
        code, _, err = cmd.finish(proc)
        assert code != 0 and expected in one_line_error(err)


def test_idle_timeout_closes_the_scheduler(cmd, tmp_path):
    sched, _ = cmd.scheduler("--idle-timeout", "300ms")
    code, _, err = cmd.finish(sched)
    assert code == 0, err
    assert not (tmp_path / "scheduler.json").exists()


# --- preload -----------------------------------------------------------------------------

SEED_PRELOAD = """\
    import click

    from mpnet import SchedulerPlugin

    class MyPlugin(SchedulerPlugin):
        def __init__(self, print_count):
          self.print_count = print_count

        def add_worker(self, scheduler=None, worker=None, **kwargs):
            print("Added a new worker at:", worker)
            if self.print_count and scheduler is not None:
                print("Total workers:", len(scheduler.workers))

    @click.option("--print-count/--no-print-count", default=False)
    def mpnet_setup(scheduler, print_count):
        plugin = MyPlugin(print_count)
        scheduler.add_plugin(plugin)
"""

RAISING_PRELOAD = """\
    def mpnet_setup(service):
        raise RuntimeError("boom from the preload")
"""


def test_seed_preload_with_click_option(cmd, tmp_path):
    preload = write(tmp_path / "print_count.py", SEED_PRELOAD)
    sched, info = cmd.scheduler("--preload", preload, "--print-count")
    worker = cmd.start("worker", info["address"], "--nworkers", "2", "--no-nanny",
                       "--nthreads", "1")
    with Client(info["address"], timeout=WAIT) as client:
        wait_for(lambda: worker_count(client) == 2, timeout=WAIT, what="2 workers")
    code, out, err = cmd.finish(sched, signal.SIGINT)
    assert code == 0, err
    assert out.count("Added a new worker at: tcp://127.0.0.1:") == 2, out
    assert "Total workers: 1" in out and "Total workers: 2" in out, out
    assert cmd.finish(worker)[0] == 0


def test_preload_that_raises_stops_the_start(cmd, tmp_path):
    boom = write(tmp_path / "boom.py", RAISING_PRELOAD)
    code, _, err = cmd.run("scheduler", "--host", "127.0.0.1", "--port", "0",
                           "--scheduler-file", str(tmp_path / "never.json"), "--preload", boom)
    assert code == 1
    assert "Traceback" in err and 'raise RuntimeError("boom from the preload")' in err, err
    assert err.strip().splitlines()[-1].startswith("Error: preload")
    assert not (tmp_path / "never.json").exists()

    sched, info = cmd.scheduler()
    in_process = cmd.start("worker", info["address"], "--no-nanny", "--preload", boom)
    with_nanny = cmd.start("worker", info["address"], "--preload", boom)
    code, _, err = cmd.finish(in_process)
    assert code == 1 and "Traceback" in err and "boom from the preload" in err, err
    code, _, err = cmd.finish(with_nanny)
    assert code == 1 and "boom from the preload" in err, err
    with Client(info["address"], timeout=WAIT) as client:
        assert worker_count(client) == 0   # a half-configured worker never joined
    assert cmd.finish(sched, signal.SIGTERM)[0] == 0


# --- tokens ------------------------------------------------------------------------------

def test_wrong_token_is_refused_and_token_file_wins(cmd, tmp_path):
    right, wrong = "right-" + os.urandom(8).hex(), "wrong-" + os.urandom(8).hex()
    sched, info = cmd.scheduler(env={"MPNET_TOKEN": right})
    assert info["token"] == right
    code, _, err = cmd.run("worker", info["address"], "--no-nanny",
                           env={"MPNET_TOKEN": wrong})
    line = one_line_error(err)
    assert code == 1 and "refused" in line and "token" in line and "MPNET_TOKEN" in line
    with pytest.raises(AuthenticationError):
        Client(info["address"], token=wrong, timeout=WAIT)

    token_file = tmp_path / "token"
    token_file.write_text(right + "\n")
    token_file.chmod(0o600)
    worker = cmd.start("worker", info["address"], "--no-nanny", "--token-file",
                       str(token_file), env={"MPNET_TOKEN": wrong})   # the file wins
    with Client(info["address"], token=right, timeout=WAIT) as client:
        wait_for(lambda: worker_count(client) == 1, timeout=WAIT, what="the worker")
    code, _, err = cmd.finish(worker, signal.SIGTERM)
    assert code == 0, err
    assert cmd.finish(sched, signal.SIGTERM)[0] == 0


def test_no_auth_warns_and_lets_anyone_in(cmd, tmp_path):
    sched, info = cmd.scheduler("--no-auth")
    assert info["token"] is None
    # Joining without a token is said out loud too: a worker that finds none refuses.
    code, _, err = cmd.run("worker", "--scheduler-file", str(tmp_path / "scheduler.json"),
                           "--no-nanny")
    assert code != 0 and "--no-auth" in err and "Traceback" not in err, err
    # --interface resolves a NIC to its address: loopback's is 127.0.0.1
    worker = cmd.start("worker", "--scheduler-file", str(tmp_path / "scheduler.json"),
                       "--no-nanny", "--no-auth", "--interface", loopback_interface())
    with Client(info["address"], timeout=WAIT) as client:   # no token anywhere
        assert client.token is None
        wait_for(lambda: worker_count(client) == 1, timeout=WAIT, what="the worker")
        assert client.submit(pow, 3, 2).result(timeout=WAIT) == 9
    assert not (tmp_path / "home" / ".config" / "mpnet" / "token").exists()
    code, _, err = cmd.finish(sched, signal.SIGTERM)
    assert code == 0 and "WARNING" in err and "--no-auth" in err, err
    assert cmd.finish(worker)[0] == 0


# --- ports, versions ---------------------------------------------------------------------

def test_port_ranges_are_shared_out(cmd):
    wbase, nbase = free_port_range(4), free_port_range(4) + 200
    sched, info = cmd.scheduler()
    worker = cmd.start("worker", info["address"], "--nworkers", "2", "--nthreads", "1",
                       "--worker-port", f"{wbase}:{wbase + 3}",
                       "--nanny-port", f"{nbase}:{nbase + 3}")
    with Client(info["address"], timeout=WAIT) as client:
        wait_for(lambda: worker_count(client) == 2, timeout=WAIT, what="2 workers")
        workers = client.scheduler_info()["workers"]
        ports = sorted(int(a.rsplit(":", 1)[1]) for a in workers)
        nanny_ports = sorted(int(w["nanny"].rsplit(":", 1)[1]) for w in workers.values())
        # worker 0 gets the first half of each range, worker 1 the second
        assert wbase <= ports[0] <= wbase + 1 and wbase + 2 <= ports[1] <= wbase + 3, ports
        assert nbase <= nanny_ports[0] <= nbase + 1 and nbase + 2 <= nanny_ports[1] <= nbase + 3
        code, _, err = cmd.finish(worker, signal.SIGINT)   # Ctrl-C: a graceful exit
        assert code == 0, err
        wait_for(lambda: worker_count(client) == 0, timeout=WAIT, what="the workers to go")
    assert cmd.finish(sched, signal.SIGTERM)[0] == 0


def test_gpus_are_shared_out_one_per_worker(cmd):
    sched, info = cmd.scheduler()
    worker = cmd.start("worker", info["address"], "--nworkers", "2", "--nthreads", "1",
                       "--gpus", "4,7")
    with Client(info["address"], timeout=WAIT) as client:
        wait_for(lambda: worker_count(client) == 2, timeout=WAIT, what="2 workers")
        seen = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["4", "7"]
        assert all(w["resources"] == {"GPU": 1}
                   for w in client.scheduler_info()["workers"].values())
        assert cmd.finish(worker, signal.SIGINT)[0] == 0
    assert cmd.finish(sched, signal.SIGTERM)[0] == 0


FAKE_VERSION_PRELOAD = """\
    import mpnet.versions

    real = mpnet.versions.get_versions

    def fake(packages=()):
        return {**real(packages), "mpnet": "0.0.0-fake"}

    def mpnet_setup(worker):
        mpnet.versions.get_versions = fake
"""


def test_version_mismatch_is_an_error_on_request(cmd, tmp_path):
    fake = write(tmp_path / "fake_version.py", FAKE_VERSION_PRELOAD)
    sched, info = cmd.scheduler()
    worker = cmd.start("worker", info["address"], "--no-nanny", "--preload", fake)
    with Client(info["address"], timeout=WAIT) as client:
        wait_for(lambda: worker_count(client) == 1, timeout=WAIT, what="the worker")
        with pytest.raises(VersionMismatchError, match="0.0.0-fake"):
            client.get_versions(check=True)
    assert cmd.finish(sched, signal.SIGTERM)[0] == 0
    assert cmd.finish(worker)[0] == 0


# --- bad input, help, version ------------------------------------------------------------

def test_bad_input_is_one_line_and_no_traceback(cmd):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        runs = {   # started together: each costs an interpreter start-up
            "already in use": ("scheduler", "--host", "127.0.0.1", "--port", str(port)),
            "not a number": ("worker", "tcp://127.0.0.1:notaport"),
            "no such option: --bogus": ("scheduler", "--bogus"),
            "'--nworkers'": ("worker", "--nworkers", "lots", "tcp://127.0.0.1:8786"),
            "no network interface": ("scheduler", "--interface", "no-such-nic0"),
            "'--resources'": ("worker", "--resources", "GPU", "tcp://127.0.0.1:8786"),
            "range of at least 2": ("worker", "--nworkers", "2", "--worker-port", "9000",
                                    "tcp://127.0.0.1:8786"),
        }
        procs = {expected: cmd.start(*args) for expected, args in runs.items()}
        for expected, proc in procs.items():
            code, _, err = cmd.finish(proc)
            assert code != 0 and expected in one_line_error(err), (expected, err)


def test_version_and_entry_points(cmd):
    code, out, _ = cmd.run("--version")
    assert code == 0 and out.strip() == "mpnet 0.1.0"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"mpnet": "mpnet.cli.main:main",
                       "mpnet-scheduler": "mpnet.cli.scheduler:main",
                       "mpnet-worker": "mpnet.cli.worker:main",
                       "mpnet-ssh": "mpnet.cli.ssh:main",
                       "mpnet-mpi": "mpnet.cli.mpi:main"}
    code, out, _ = cmd.finish(cmd.spawn([sys.executable, "-m", "mpnet.cli.worker", "--version"]))
    assert code == 0 and out.strip() == "mpnet-worker 0.1.0"


SCHEDULER_OPTIONS = ["--host", "--port", "--interface", "--dashboard-address",
                     "--no-dashboard", "--scheduler-file", "--preload", "--idle-timeout",
                     "--pid-file", "--token-file", "--no-auth", "--version"]
WORKER_OPTIONS = ["--scheduler-file", "--nthreads", "--nworkers", "--nanny", "--no-nanny",
                  "--name", "--memory-limit", "--resources", "--worker-port", "--nanny-port",
                  "--listen-address", "--contact-address", "--host", "--interface",
                  "--death-timeout", "--lifetime", "--lifetime-stagger", "--lifetime-restart",
                  "--local-directory", "--preload", "--preload-nanny", "--token-file",
                  "--version"]


@pytest.mark.parametrize("command, options", [("scheduler", SCHEDULER_OPTIONS),
                                              ("worker", WORKER_OPTIONS)])
def test_help_lists_options_and_firewall_ports(command, options):
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0
    for option in options:
        assert option in result.output, option
    text = " ".join(result.output.split())
    assert "8786 the scheduler" in text and "8787 the scheduler's dashboard" in text
    assert "--worker-port and --nanny-port" in text


def test_scheduler_file_example_runs(cmd):
    code, out, err = cmd.finish(cmd.spawn([sys.executable, str(ROOT / "examples" /
                                                               "scheduler_file.py"), "2"]))
    assert code == 0, err
    assert "sum of squares of 0..99 = 328350" in out
    assert "scheduler exited with 0, workers with [0, 0]; scheduler file removed: True" in out


STUCK_CLOSE = """\
    import time
    from mpnet.cli.common import Shutdown

    with Shutdown("stuck") as shutdown:
        print("ready", flush=True)
        shutdown.wait(lambda: False)
        print("closing", flush=True)
        time.sleep(60)   # a close that hangs: only a second signal ends it
"""


def test_second_signal_forces_exit(cmd):
    proc = cmd.spawn([sys.executable, "-c", textwrap.dedent(STUCK_CLOSE)])
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "closing\n"
    code, _, err = cmd.finish(proc, signal.SIGINT)
    assert code == 128 + signal.SIGINT and "second SIGINT" in err, err


def test_lifetime_ends_the_worker_command(cmd):
    sched, info = cmd.scheduler()
    worker = cmd.start("worker", info["address"], "--no-nanny", "--nworkers", "2",
                       "--lifetime", "300ms", "--lifetime-stagger", "200ms")
    code, _, err = cmd.finish(worker)   # no signal: the workers retire, the command exits
    assert code == 0 and err.count("Registered to:") == 2, err
    with Client(info["address"], timeout=WAIT) as client:
        wait_for(lambda: worker_count(client) == 0, timeout=WAIT, what="the workers to go")
    assert cmd.finish(sched, signal.SIGTERM)[0] == 0
