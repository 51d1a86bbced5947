"""Futures, keys and the executor behave as concurrent.futures and dask users expect
(issue 9 items 1 and 3-8; issue 8 item 6 / issue 10 item 3: a freed running task keeps
its worker's thread counted until it ends)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import subprocess
import sys
import textwrap
import time
import weakref

import pytest

import mpnet
from mpnet import Client, KeyConflictError, LocalCluster
from tests.utils import wait_for


def inc(x):
    return x + 1


def boom():
    raise ValueError("boom")


def wait_file(path, started=None, value=None, limit=30.0):
    """A task that runs until ``path`` exists (the test's way to end it)."""
    if started:
        open(started, "w").close()
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


def touch(path):
    open(path, "w").close()
    return path


class Payload:
    """A result or callable whose lifetime the tests watch with weakrefs."""

    def __init__(self, n=0):
        self.n = n

    def __call__(self, x):
        return x + self.n


def make_payload(n):
    return Payload(n)


# --- 1: keys never hand out another computation's result ------------------------------

def test_named_map_never_returns_another_calls_results(client):
    first = client.map(inc, range(4), key="INC")
    second = client.map(inc, [5, 6, 7, 8], key="INC")
    assert client.gather(second, timeout=10) == [6, 7, 8, 9]
    assert client.gather(first, timeout=10) == [1, 2, 3, 4]
    assert all(f.key.startswith("INC-") for f in first + second)
    assert len({f.key for f in first + second}) == 8


def test_explicit_key_reused_for_another_computation_is_an_error(client, cluster):
    f = client.submit(inc, 1, key="same-key")
    assert client.submit(inc, 1, key="same-key") is f        # the same computation
    with pytest.raises(KeyConflictError, match="same-key"):
        client.submit(inc, 2, key="same-key")
    assert f.result(timeout=10) == 2
    with Client(cluster) as other:                            # another client: the
        g = other.submit(inc, 5, key="same-key")              # scheduler refuses it
        with pytest.raises(KeyConflictError, match="same-key"):
            g.result(timeout=10)
        del g
        gc.collect()           # (a raised exception's traceback holds its future)
        assert other.submit(inc, 1, key="same-key").result(timeout=10) == 2


# --- 3: cancel ---------------------------------------------------------------------------

def test_future_cancel_is_the_stdlibs(client, tmp_path):
    go, started = str(tmp_path / "go"), str(tmp_path / "started")
    blockers = [client.submit(wait_file, go, started + str(i), i) for i in range(2)]
    wait_for(lambda: all(os.path.exists(started + str(i)) for i in range(2)),
             what="both workers busy")
    queued = client.submit(touch, str(tmp_path / "never"))  # sent to a worker, not started
    waiting = client.submit(inc, queued)                     # waits at the scheduler
    called = []
    queued.add_done_callback(called.append)
    assert queued.cancel() is True
    assert queued.cancelled() and called == [queued]          # at once, callbacks run
    assert queued.cancel() is True                           # again: still True
    assert blockers[0].cancel() is False                     # running: not cancelled
    assert not blockers[0].cancelled()
    with pytest.raises(cf.CancelledError):
        waiting.result(timeout=10)                           # its dependent goes too
    touch(go)
    assert client.gather(blockers, timeout=10) == [0, 1]
    assert blockers[0].cancel() is False                     # done: not cancelled
    assert client.submit(inc, 1).result(timeout=10) == 2
    assert not os.path.exists(tmp_path / "never")            # it never ran


def test_executor_shutdown_cancels_only_what_has_not_started(client, tmp_path):
    go, started = str(tmp_path / "go"), str(tmp_path / "started")
    ex = client.get_executor()
    running = [ex.submit(wait_file, go, started + str(i), i) for i in range(2)]
    wait_for(lambda: all(os.path.exists(started + str(i)) for i in range(2)),
             what="both workers busy")
    queued = [ex.submit(touch, str(tmp_path / f"q{i}")) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert not any(f.cancelled() for f in running)
    with pytest.raises(RuntimeError):
        ex.submit(inc, 1)
    touch(go)
    assert [f.result(timeout=10) for f in running] == [0, 1]
    assert not any(os.path.exists(tmp_path / f"q{i}") for i in range(5))


def _abandoned(dask_scheduler=None, mpnet_scheduler=None):
    return {a: list(getattr(ws, "abandoned", ())) for a, ws in
            mpnet_scheduler.state.workers.items()}


@pytest.mark.parametrize("how", ["cancel", "release"])
def test_freed_running_task_keeps_its_thread_until_it_ends(tmp_path, how):
    """Issue 8 item 6, issue 10 item 3: cancelling (or dropping) a running task must not
    send its worker more work than its free threads can run."""
    go, started = str(tmp_path / "go"), str(tmp_path / "started")
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \
            Client(cluster) as client:
        endless = client.submit(wait_file, go, started)
        wait_for(lambda: os.path.exists(started), what="the endless task to start")
        if how == "cancel":
            client.cancel([endless])
            wait_for(endless.cancelled, what="cancelled")
        else:
            del endless
            gc.collect()
        futures = client.map(inc, range(40))
        assert client.gather(futures, timeout=10) == list(range(1, 41))
        assert any(client.run_on_scheduler(_abandoned).values())   # still running
        touch(go)                                   # the thread ends: the slot is free
        wait_for(lambda: not any(client.run_on_scheduler(_abandoned).values()),
                 what="the worker to report the freed task ended")
        assert client.submit(inc, 1).result(timeout=10) == 2


# --- 4: interpreter exit -----------------------------------------------------------------

EXIT_SCRIPT = """
import sys, time
import mpnet

def work(path):
    time.sleep(0.3)
    open(path, "w").close()
    return path

if __name__ == "__main__":
    out = sys.argv[1]
    cluster = mpnet.LocalCluster(n_workers=2, threads_per_worker=1)
    client = mpnet.Client(cluster)
    kept = client.submit(work, out + "-client")
    ex = client.get_executor()
    ex.submit(work, out + "-executor")          # not even kept
    print("submitted")
"""


def test_a_script_that_ends_without_closing_exits_cleanly(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    out = str(tmp_path / "done")
    proc = subprocess.run([sys.executable, str(script), out], capture_output=True,
                          text=True, timeout=40, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "submitted"
    assert proc.stderr.strip() == ""
    assert os.path.exists(out + "-client") and os.path.exists(out + "-executor")


# --- 5: references -----------------------------------------------------------------------

def test_client_and_executor_do_not_keep_callables_or_results_alive(client):
    fn = Payload(10)
    ref = weakref.ref(fn)
    f = client.submit(fn, 1)
    assert f.result(timeout=10) == 11
    ex = client.get_executor()
    assert ex.submit(fn, 2).result(timeout=10) == 12
    held = Payload(20)
    held_ref = weakref.ref(held)

    def closure(x):                 # a plain function: its payload is cached, weakly
        return x + held.n
    assert client.submit(closure, 1).result(timeout=10) == 21
    del fn, f, held, closure
    gc.collect()
    assert ref() is None, "a submitted callable is kept after its future is gone"
    assert held_ref() is None, "a submitted function's closure is kept alive"
    results = ex.map(make_payload, range(3))
    first = next(results)
    first_ref = weakref.ref(first)
    del first
    gc.collect()
    assert first_ref() is None, "Executor.map keeps a result after yielding it"
    assert [p.n for p in results] == [1, 2]


# --- 6: builtins as functions ------------------------------------------------------------

def test_builtin_types_and_functions_work_as_task_functions(client):
    assert client.submit(int, "5").result(timeout=10) == 5
    assert client.gather(client.map(float, ["1.5", "2"]), timeout=10) == [1.5, 2.0]
    assert set(client.run(int, 5).values()) == {5}
    assert client.get_executor().submit(int, "7").result(timeout=10) == 7
    assert client.run_on_scheduler(len, [1, 2]) == 2


# --- 7: keys -----------------------------------------------------------------------------

def test_tuple_and_empty_keys_are_refused_at_the_call(client):
    with pytest.raises(TypeError, match="tuple keys"):
        client.submit(inc, 1, key=("x", 0, 1))
    with pytest.raises(TypeError):
        client.map(inc, [1], key=[("x", 0)])
    with pytest.raises(ValueError):
        client.submit(inc, 1, key="")


def test_one_clients_cancel_never_cancels_anothers_future(client, cluster, tmp_path):
    go, started = str(tmp_path / "go"), str(tmp_path / "started")
    with Client(cluster) as other:
        mine = client.submit(wait_file, go, started, 7, key="shared-cancel")
        theirs = other.submit(wait_file, go, started, 7, key="shared-cancel")
        wait_for(lambda: os.path.exists(started), what="the shared task to start")
        client.cancel([mine])
        wait_for(mine.cancelled, what="my future to be cancelled")
        queued = client.submit(inc, 1, key="shared-queued")
        queued2 = other.submit(inc, 1, key="shared-queued")
        touch(go)
        assert theirs.result(timeout=10) == 7
        assert queued2.result(timeout=10) == 2 and queued.result(timeout=10) == 2


# --- 8: small gaps -----------------------------------------------------------------------

def test_traceback_started_run_nowhere_and_scatter_containers(client):
    f = client.submit(boom)
    assert "boom" in f.traceback(timeout=10) and "raise ValueError" in f.traceback()
    assert client.submit(inc, 1).traceback(timeout=10) is None
    started = client.scheduler_info()["started"]
    assert isinstance(started, float) and 0 < time.time() - started < 3600
    assert client.run(os.getpid, workers=[]) == {}
    assert isinstance(client.scatter((1, 2)), tuple)
    assert isinstance(client.scatter({1, 2}), set)
    assert isinstance(client.scatter(frozenset({3})), frozenset)
    scattered = client.scatter(range(3))
    assert isinstance(scattered, list) and client.gather(scattered) == [0, 1, 2]


def test_retire_and_restart_workers_say_what_they_did_and_lost_scatter_fails():
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \
            Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        done = client.restart_workers([a])
        assert done == {a: "OK"}
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=20,
                 what="the restarted worker to come back")
        data = client.scatter([41], workers=[b])[0]
        assert client.submit(inc, data).result(timeout=10) == 42
        pid = client.scheduler_info()["workers"][b]["pid"]
        os.kill(pid, 9)
        wait_for(lambda: data.status == "error", timeout=15,
                 what="the scattered future to fail with its only copy gone")
        with pytest.raises(mpnet.WorkerLostError, match="scatter"):
            data.result()
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=20,
                 what="the killed worker to come back")
        one = sorted(client.scheduler_info()["workers"])[0]
        retired = client.retire_workers([one])
        assert list(retired) == [one] and "nthreads" in retired[one]
