"""``mpnet mpi`` and ``mpnet.mpi.initialize()`` under a real OpenMPI ``mpirun``, on this
machine's loopback (``--interface lo``), with 2 to 4 ranks.

Every job runs with a HOME of its own and a marker in its environment, so that the test
can find every process of the job (ranks, and nanny children) however it ends. Each
``mpirun`` is bounded twice: by its subprocess timeout (then the whole tree is killed)
and by pytest-timeout. After each job the test checks that no process of it is left.
Without ``mpirun`` or ``mpi4py`` the tests are skipped, except on CI, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from mpnet import Client, Scheduler, WorkerLostError
from mpnet.cli.main import cli
from mpnet.deploy.mpi import Layout, RankError
from tests.utils import wait_for

ROOT = Path(__file__).resolve().parents[2]
MPNET = [sys.executable, "-m", "mpnet.cli.main", "mpi"]
JOB_TIMEOUT = 40.0     # seconds: any one mpirun, start to end (pytest-timeout is 60)

_missing = [what for what, ok in (("mpirun (apt-get install openmpi-bin)",
                                   shutil.which("mpirun")),
                                  ("mpi4py (pip install 'mpnet[mpi]')",
                                   importlib.util.find_spec("mpi4py"))) if not ok]


@pytest.fixture
def mpi(tmp_path, monkeypatch):
    if _missing:
        message = f"needs {' and '.join(_missing)}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MPI tests: {message}")
        pytest.skip(message)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.delenv("MPNET_TOKEN", raising=False)
    jobs = Jobs(tmp_path)
    try:
        yield jobs
    finally:
        jobs.kill_all()


class Jobs:
    """Starts ``mpirun`` as a user would and makes sure nothing of it outlives the test."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        self.marker = f"mpnet-test-{uuid.uuid4().hex}"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, "MPNET_TEST_JOB": self.marker,
                    # root in a container (CI): OpenMPI refuses without both
                    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                    # containers often forbid the cross-process reads (CMA) it would use
                    "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
        self.env.pop("MPNET_TOKEN", None)
        self.started: list[subprocess.Popen] = []

    def mpirun(self, *args: str, options: tuple[str, ...] = ()) -> subprocess.Popen:
        # --oversubscribe: more ranks than cores (2 here); --bind-to none: leave the
        # shared cores alone
        argv = ["mpirun", "--oversubscribe", "--bind-to", "none", *options, *args]
        proc = subprocess.Popen(argv, cwd=self.dir, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.started.append(proc)
        return proc

    def logged(self, *argv: str) -> tuple[str, ...]:
        """``argv`` run with each rank's output in a file of its own (``rank_output``):
        when a rank exits non-zero, mpirun ends the job and may drop what it had not yet
        forwarded, so what a test checks must not pass through mpirun."""
        logs = self.dir / "ranks"
        logs.mkdir(exist_ok=True)
        return ("sh", "-c", f'exec "$@" >{logs}/$OMPI_COMM_WORLD_RANK.log 2>&1', "sh", *argv)

    def rank_output(self, rank: int) -> str:
        return (self.dir / "ranks" / f"{rank}.log").read_text()

    def finish(self, proc: subprocess.Popen, timeout: float = JOB_TIMEOUT) -> tuple[int, str]:
        """Wait for mpirun's end (a hang kills the job and fails): (exit code, output)."""
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, _ = proc.communicate(timeout=10)
            raise AssertionError(f"mpirun did not end within {timeout}s:\n{out}") from None
        return proc.returncode, out

    def processes(self) -> list[psutil.Process]:
        """Every live process of this test's jobs (mpirun, ranks, nanny children)."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("MPNET_TEST_JOB") == self.marker and \
                        p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except psutil.Error:
                continue
        return found

    def ranks(self, proc: subprocess.Popen, n: int) -> dict[int, psutil.Process]:
        """{rank: process} of a running job, once all ``n`` ranks are there."""
        def found() -> dict[int, psutil.Process]:
            ranks = {}
            for p in psutil.Process(proc.pid).children():
                try:
                    ranks[int(p.environ()["OMPI_COMM_WORLD_RANK"])] = p
                except (psutil.Error, KeyError, ValueError):
                    continue
            return ranks if len(ranks) == n else {}
        return wait_for(found, timeout=JOB_TIMEOUT, interval=0.05, what=f"{n} ranks")

    def kill(self, proc: subprocess.Popen) -> None:
        for p in self.processes():
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.kill()

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                self.kill(proc)
                proc.communicate(timeout=10)
        psutil.wait_procs(self.processes(), timeout=5)

    def assert_all_gone(self) -> None:
        left = [(p.pid, " ".join(p.cmdline()[:4])) for p in self.processes()]
        assert not left, f"processes of the job outlived mpirun: {left}"


def error_lines(output: str) -> list[str]:
    """The lines a user reads, after asserting there is no traceback among them."""
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if " INFO " not in line and line.strip()]


def exit_codes(out: str) -> dict[int, int]:
    return {int(r): int(c) for r, c in re.findall(r"rank (\d+): exiting with code (\d+)", out)}


# --- without mpirun ---------------------------------------------------------------

def test_layout_roles_and_too_few_ranks():
    batch = Layout(4, scheduler_rank=0, client_rank=1)
    assert [batch.role(r) for r in range(4)] == ["scheduler", "client", "worker", "worker"]
    assert Layout(3, scheduler_rank=2).workers() == [0, 1]
    assert Layout(2, scheduler_rank=None).workers() == [0, 1]
    with pytest.raises(RankError, match=r"run with at least 'mpirun -np 3'"):
        Layout(2, scheduler_rank=0, client_rank=1).check()
    with pytest.raises(RankError, match=r"give --scheduler-rank between 0 and 2"):
        Layout(3, scheduler_rank=5).check()
    Layout(1, scheduler_rank=None).check()     # one worker joining an outside scheduler


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)    # import mpi4py fails
    result = CliRunner().invoke(cli, ["mpi"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "pip install 'mpnet[mpi]'" in lines[0]
    from mpnet.mpi import initialize
    with pytest.raises(ImportError, match=r"pip install 'mpnet\[mpi\]'"):
        initialize()


# --- mpnet mpi ----------------------------------------------------------------------

def test_scheduler_that_cannot_start_is_one_line_from_every_rank(mpi):
    code, out = mpi.finish(mpi.mpirun("-np", "3", *mpi.logged(
        *MPNET, "--scheduler-port", "0", "--interface", "no-such-nic0")))
    assert code == 1, out
    for rank in range(3):
        [line] = error_lines(mpi.rank_output(rank))
        assert line.startswith(f"Error: rank {rank}: ") and \
            "no network interface 'no-such-nic0'" in line, line
    mpi.assert_all_gone()


def test_too_few_ranks_is_one_line_from_every_rank(mpi):
    code, out = mpi.finish(mpi.mpirun("-np", "1", *mpi.logged(*MPNET)))
    assert code == 2, out
    assert error_lines(mpi.rank_output(0)) == [
        "Error: 1 MPI rank(s) cannot hold a scheduler and a worker: run with at least "
        "'mpirun -np 2'"]
    script = mpi.dir / "batch.py"
    script.write_text("from mpnet.mpi import initialize\ninitialize()\nprint('ran on')\n")
    code, out = mpi.finish(mpi.mpirun("-np", "2", *mpi.logged(sys.executable, str(script))))
    assert code == 2, out
    for rank in (0, 1):
        assert error_lines(mpi.rank_output(rank)) == [
            "Error: mpnet.mpi.initialize: 2 MPI rank(s) cannot hold a scheduler, the client "
            "script and a worker: run with at least 'mpirun -np 3'"]
    mpi.assert_all_gone()


def test_cluster_from_one_mpirun_token_by_mpi_and_clean_stop(mpi):
    path = mpi.dir / "sched.json"
    others = mpi.dir / "others"      # ranks 1-3 find no token of their own there
    args = ["--scheduler-file", str(path), "--scheduler-port", "0", "--interface", "lo",
            "--name", "w", "--dashboard-address", ""]
    proc = mpi.mpirun("-np", "1", *MPNET, *args, ":",
                      "-np", "3", "env", f"XDG_CONFIG_HOME={others}", *MPNET, *args)
    ranks = mpi.ranks(proc, 4)
    with Client(scheduler_file=str(path), timeout=JOB_TIMEOUT) as client:
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 3, timeout=JOB_TIMEOUT,
                 what="3 worker ranks")
        names = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
        assert names == ["w-1", "w-2", "w-3"]
        assert sum(client.gather(client.map(lambda x: x * x, range(200)))) == \
            sum(x * x for x in range(200))
        token = client.token
    assert token and not (others / "mpnet" / "token").exists()
    for p in [psutil.Process(proc.pid), *ranks.values()]:
        assert not any(token in part for part in p.cmdline())
        assert "MPNET_TOKEN" not in p.environ()
    ranks[0].send_signal(signal.SIGTERM)     # what a user's kill or scancel does
    code, out = mpi.finish(proc)
    assert code == 0, out
    assert "rank 0: the scheduler rank received SIGTERM; ending the job (exit code 0)" in out
    assert all(f"rank {r}: the scheduler rank received SIGTERM; closing (exit code 0)" in out
               for r in (1, 2, 3)), out
    assert not path.exists()
    mpi.assert_all_gone()


def test_nanny_children_end_with_the_job(mpi):
    """--nanny: the worker is a child of the rank, outside mpirun's view; it must still
    end with the job, and be restarted by its nanny if it dies."""
    path = mpi.dir / "sched.json"
    proc = mpi.mpirun("-np", "2", *MPNET, "--nanny", "--scheduler-rank", "1",
                      "--scheduler-file", str(path), "--scheduler-port", "0",
                      "--interface", "lo", "--dashboard-address", "")
    ranks = mpi.ranks(proc, 2)
    with Client(scheduler_file=str(path), timeout=JOB_TIMEOUT) as client:
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=JOB_TIMEOUT,
                 what="the worker rank")
        first = client.run(os.getpid)
        assert list(first.values())[0] in [c.pid for c in ranks[0].children()]
        with pytest.raises(WorkerLostError):   # the nanny's worker dies; the rank does not
            client.run(lambda: os._exit(3))
        wait_for(lambda: (lambda w: len(w) == 1 and list(w.values())[0]["name"] == "mpi-0"
                          and list(w) != list(first))(client.scheduler_info()["workers"]),
                 timeout=JOB_TIMEOUT, what="the restarted worker")
        assert client.submit(pow, 3, 3).result() == 27
    ranks[1].send_signal(signal.SIGTERM)       # the scheduler rank
    code, out = mpi.finish(proc)
    assert code == 0, out
    mpi.assert_all_gone()


@pytest.mark.parametrize("auth", [True, False])
def test_no_scheduler_grows_a_running_cluster(mpi, token, auth):
    path = mpi.dir / "outside.json"
    token = token if auth else False
    with Scheduler("127.0.0.1", 0, token=token or None, auth=auth,
                   scheduler_file=str(path)) as scheduler:
        proc = mpi.mpirun("-np", "2", *MPNET, "--no-scheduler", "--scheduler-file",
                          str(path), "--interface", "lo", "--name", "extra",
                          "--nthreads", "2", *([] if auth else ["--no-auth"]))
        with Client(scheduler.address, token=token) as client:
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 2,
                     timeout=JOB_TIMEOUT, what="2 worker ranks")
            info = client.scheduler_info()["workers"].values()
            assert sorted(w["name"] for w in info) == ["extra-0", "extra-1"]
            assert client.submit(sum, [1, 2, 3], workers="extra-1").result() == 6
    code, out = mpi.finish(proc)     # the scheduler closed: the ranks leave, exit 0
    assert code == 0, out
    mpi.assert_all_gone()


@pytest.mark.parametrize("recovery", [False, True])
def test_scheduler_rank_death(mpi, recovery):
    """mpirun tears the job down by itself (non-zero); with --enable-recovery it does
    not, and the worker ranks leave on their own after their death timeout."""
    options = ("--enable-recovery",) if recovery else ()
    path = mpi.dir / "sched.json"
    proc = mpi.mpirun("-np", "3", *mpi.logged(
        *MPNET, "--scheduler-port", "0", "--interface", "lo", "--death-timeout", "2",
        "--dashboard-address", "", "--scheduler-file", str(path)), options=options)
    ranks = mpi.ranks(proc, 3)
    with Client(scheduler_file=str(path), timeout=JOB_TIMEOUT) as client:
        # past MPI_Init on every rank: a rank killed inside it holds the others there
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=JOB_TIMEOUT,
                 what="2 worker ranks")
        ranks[0].kill()
    started = time.monotonic()
    code, out = mpi.finish(proc)
    if recovery:
        # OpenMPI's mpirun returns 0 in this mode whatever the ranks return: the ranks'
        # own words are what show their exit codes.
        for r in (1, 2):
            assert (f"rank {r}: the scheduler (rank 0) is gone and did not come back within "
                    "the death timeout; exiting with code 1") in mpi.rank_output(r)
    else:
        assert code != 0 and "rank 0" in out and "signal 9" in out, out
    assert time.monotonic() - started < JOB_TIMEOUT
    mpi.assert_all_gone()


def test_ranks_on_two_namespace_hosts_over_ssh(mpi, hosts):
    """mpirun --host over the test hosts' sshd (tests/hosts.py): 2 ranks on each of two
    hosts, every rank on its host's eth0 (--interface), MPI's own traffic kept there too."""
    first, second = hosts.addresses[:2]
    subnet = first.rsplit(".", 1)[0] + ".0/24"
    # OpenSSH finds keys through the passwd entry, not $HOME: name them all here
    ssh = (f"ssh -F /dev/null -i {hosts.key_path} -o UserKnownHostsFile={hosts.known_hosts} "
           "-o BatchMode=yes")
    options = ("--host", f"{first}:2,{second}:2", "--mca", "plm_rsh_agent", ssh,
               "--mca", "plm_rsh_no_tree_spawn", "1", "--mca", "oob_tcp_if_include", subnet,
               "--mca", "btl_tcp_if_include", subnet, "--mca", "btl", "self,tcp",
               *[a for var in ("PYTHONPATH", "PYTHONUNBUFFERED", "HOME", "XDG_CONFIG_HOME",
                               "MPNET_TEST_JOB") for a in ("-x", var)])
    path = mpi.dir / "sched.json"
    proc = mpi.mpirun("-np", "4", *MPNET, "--interface", "eth0", "--scheduler-port", "0",
                      "--scheduler-file", str(path), "--dashboard-address", "",
                      options=options)
    with Client(scheduler_file=str(path), timeout=JOB_TIMEOUT) as client:
        assert client.scheduler_address.startswith(f"tcp://{first}:")
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 3, timeout=JOB_TIMEOUT,
                 what="3 worker ranks")
        hosts_of = {w["name"]: a.split("//")[1].split(":")[0]
                    for a, w in client.scheduler_info()["workers"].items()}
        assert hosts_of == {"mpi-1": first, "mpi-2": second, "mpi-3": second}
        assert sum(client.gather(client.map(lambda x: x * x, range(300)))) == \
            sum(x * x for x in range(300))
    [scheduler] = [p for p in mpi.processes()
                   if p.environ().get("OMPI_COMM_WORLD_RANK") == "0"]
    scheduler.send_signal(signal.SIGTERM)
    code, out = mpi.finish(proc)
    assert code == 0, out
    mpi.assert_all_gone()
    wait_for(lambda: not hosts.pids(0) and not hosts.pids(1), timeout=10,
             what="nothing left on the hosts (ranks, orted, ssh sessions)")


# --- batch mode ----------------------------------------------------------------------

BATCH = """\
import os, signal, sys, time
from mpnet import Client
from mpnet.mpi import initialize

cluster = initialize(interface="lo", death_timeout=5)
with Client(cluster) as client:
    total = sum(client.gather(client.map(lambda x: x * x, range(1000))))
    print("workers", sorted(cluster.worker_names), "total", total, flush=True)
    end = sys.argv[1]
    if end == "kill-worker":
        client.run(lambda: os.kill(os.getpid(), signal.SIGKILL), workers=["mpi-3"])
print("script ends at", time.time(), flush=True)
if end == "exception":
    raise ValueError("the script failed")
if end == "sys.exit":
    sys.exit(3)
"""


@pytest.mark.parametrize("end, expected", [("normally", 0), ("exception", 1),
                                           ("sys.exit", 3)])
def test_batch_every_rank_exits_with_the_scripts_code(mpi, end, expected):
    script = mpi.dir / "batch.py"
    script.write_text(BATCH)
    proc = mpi.mpirun("-np", "4", *mpi.logged(sys.executable, str(script), end))
    code, out = mpi.finish(proc)
    returned = time.time()
    mpi.assert_all_gone()                  # every rank has exited when mpirun returns
    client = mpi.rank_output(1)
    assert code == expected, (out, client)
    assert f"workers ['mpi-2', 'mpi-3'] total {sum(x * x for x in range(1000))}" in client
    for rank in (0, 2, 3):
        assert exit_codes(mpi.rank_output(rank)) == {rank: expected}, mpi.rank_output(rank)
    ended = float(re.search(r"script ends at ([0-9.]+)", client).group(1))
    # a bound that only a hang breaks (measured: 0.4-1.5 s here); EXIT_TIMEOUT is 10 s
    assert returned - ended < 15, (out, client)
    if end == "exception":
        assert "ValueError: the script failed" in client


def test_batch_worker_rank_killed_is_reported(mpi):
    script = mpi.dir / "batch.py"
    script.write_text(BATCH)
    code, out = mpi.finish(mpi.mpirun("-np", "4", *mpi.logged(sys.executable, str(script),
                                                             "kill-worker")))
    # mpirun's own report, and its own teardown of the job: it may kill the scheduler
    # rank before that one logs "worker rank 3 (mpi-3 at ...) left the cluster"
    assert code != 0, out
    assert re.search(r"process rank 3 .*exited on signal 9", out), out
    mpi.assert_all_gone()


def test_example_batch_script(mpi):
    example = ROOT / "examples" / "mpi_batch.py"
    code, out = mpi.finish(mpi.mpirun("-np", "3", sys.executable, str(example),
                                      "--interface", "lo"))
    assert code == 0, out
    assert "sum of squares below 10000: 333283335000" in out
    mpi.assert_all_gone()


def test_batch_scheduler_file_and_token_from_rank_0(mpi):
    """Rank 1 gets the token by MPI: its own config dir has none, and none is created."""
    script = mpi.dir / "batch.py"
    path = mpi.dir / "batch-sched.json"
    script.write_text(textwrap.dedent(f"""\
        import json
        from mpnet import Client
        from mpnet.mpi import initialize
        cluster = initialize(interface="lo", scheduler_file={str(path)!r})
        assert cluster.token == json.load(open({str(path)!r}))["token"]
        assert cluster.token not in repr(cluster)
        with Client(cluster) as client:
            print("answer", client.submit(pow, 2, 10).result(), flush=True)
        """))
    empty = mpi.dir / "empty"
    code, out = mpi.finish(mpi.mpirun(
        "-np", "1", sys.executable, str(script), ":",
        "-np", "2", "env", f"XDG_CONFIG_HOME={empty}", sys.executable, str(script)))
    assert code == 0 and "answer 1024" in out, out
    assert not empty.exists() and not path.exists()
    mpi.assert_all_gone()
