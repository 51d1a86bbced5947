"""mpnet against what CPython's concurrent.futures promises: the executor of
``client.get_executor()``, ``wait``, ``as_completed`` and the futures themselves.

The cluster runs in this process (processes=False, one worker of one thread), so a task
can block on a ``threading.Event`` the test holds: a "running" task is one whose gate is
shut, and everything submitted after it is queued behind it.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import threading
import time

import pytest

import mpnet
from mpnet import Client, LocalCluster
from tests.utils import wait_for

GATES: dict[str, threading.Event] = {}
STARTED: set[str] = set()


def hold(name, value=None):
    """Run until the test opens gate ``name``."""
    STARTED.add(name)
    GATES[name].wait(20)
    return value


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def fail_on(x, bad):
    if x == bad:
        raise ZeroDivisionError(f"bad {x}")
    return x


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster) as c:
        yield c


@pytest.fixture
def gate():
    """``gate()`` makes a shut gate and its name; every gate opens at the end."""
    made = []

    def make():
        name = f"gate-{len(GATES)}"
        GATES[name] = threading.Event()
        made.append(name)
        return name
    yield make
    for name in made:
        GATES[name].set()


def running(client, gate):
    """A future whose task has started and runs until its gate opens."""
    name = gate()
    fut = client.submit(hold, name, "held")
    wait_for(lambda: name in STARTED, what=f"{name} to start")
    return fut, name


# --- the Executor ---------------------------------------------------------------------

def test_executor_submit_and_keywords(client):
    ex = client.get_executor()
    assert isinstance(ex, cf.Executor)
    assert ex.submit(add, 1, y=2).result(timeout=10) == 3
    assert ex.submit(pow, 2, 8).result(timeout=10) == 256      # a builtin
    assert isinstance(ex.submit(inc, 1), cf.Future)


def test_executor_map_in_order_with_chunks_and_several_iterables(client):
    ex = client.get_executor()
    assert list(ex.map(inc, range(20), chunksize=3)) == list(range(1, 21))
    assert list(ex.map(add, range(5), range(10, 100), timeout=10)) == [10, 12, 14, 16, 18]
    assert list(ex.map(inc, [])) == []


def test_executor_map_raises_at_the_failing_item(client):
    results = client.get_executor().map(fail_on, range(5), itertools.repeat(3))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ZeroDivisionError, match="bad 3"):
        next(results)


def test_executor_map_timeout(client, gate):
    blocker, name = running(client, gate)
    results = client.get_executor().map(hold, [name, name], timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        next(results)
    assert time.monotonic() - t0 < 5


def test_shutdown_wait_true_waits_for_submitted_work(client, gate):
    blocker, name = running(client, gate)
    ex = client.get_executor()
    futures = [ex.submit(inc, i) for i in range(5)]
    threading.Timer(0.1, GATES[name].set).start()
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [1, 2, 3, 4, 5]


def test_shutdown_wait_false_returns_at_once_and_the_work_still_runs(client, gate):
    blocker, name = running(client, gate)
    ex = client.get_executor()
    fut = ex.submit(inc, 41)
    ex.shutdown(wait=False)
    assert not fut.done()
    GATES[name].set()
    assert fut.result(timeout=10) == 42


def test_shutdown_cancel_futures_cancels_only_what_has_not_started(client, gate):
    ex = client.get_executor()
    name = gate()
    started = ex.submit(hold, name, "ran")
    wait_for(lambda: name in STARTED, what="the first task to start")
    queued = [ex.submit(inc, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert not started.cancelled()
    GATES[name].set()
    assert started.result(timeout=10) == "ran"


def test_submit_after_shutdown_raises_runtime_error(client):
    ex = client.get_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(inc, 1)
    with pytest.raises(RuntimeError):
        ex.map(inc, [1])
    ex.shutdown()                        # a second shutdown does nothing


def test_executor_as_context_manager_waits_then_refuses(client, gate):
    blocker, name = running(client, gate)
    with client.get_executor() as ex:
        fut = ex.submit(inc, 1)
        threading.Timer(0.1, GATES[name].set).start()
    assert fut.done() and fut.result() == 2
    with pytest.raises(RuntimeError):
        ex.submit(inc, 1)


# --- wait -----------------------------------------------------------------------------

@pytest.mark.parametrize("wait", [cf.wait, mpnet.wait])
def test_wait_first_completed(client, gate, wait):
    blocker, name = running(client, gate)
    pending = client.submit(inc, 2)                   # queued behind the blocker
    finished = cf.Future()
    finished.set_result(0)                            # a stdlib future may be mixed in
    done, not_done = wait([blocker, pending, finished], timeout=5,
                          return_when=cf.FIRST_COMPLETED)
    assert done == {finished} and not_done == {blocker, pending}


@pytest.mark.parametrize("wait", [cf.wait, mpnet.wait])
def test_wait_first_exception(client, gate, wait):
    blocker, name = running(client, gate)
    erred = cf.Future()
    erred.set_exception(ValueError("x"))
    done, not_done = wait([blocker, erred], timeout=5, return_when=cf.FIRST_EXCEPTION)
    assert done == {erred} and not_done == {blocker}
    # without an exception it waits for all
    ok = [client.submit(inc, i) for i in range(3)]
    GATES[name].set()
    done, not_done = wait(ok + [blocker], timeout=10, return_when="FIRST_EXCEPTION")
    assert done == set(ok + [blocker]) and not not_done


def test_wait_first_exception_with_a_remote_error(client):
    bad = client.submit(fail_on, 1, 1)
    done, not_done = mpnet.wait([bad], timeout=10, return_when=mpnet.FIRST_EXCEPTION)
    assert done == {bad}
    assert isinstance(bad.exception(), ZeroDivisionError)


def test_wait_all_completed_and_timeout(client, gate):
    blocker, name = running(client, gate)
    quick = cf.Future()
    quick.set_result(1)
    t0 = time.monotonic()
    done, not_done = mpnet.wait([blocker, quick], timeout=0.2)
    assert time.monotonic() - t0 >= 0.15
    assert done == {quick} and not_done == {blocker}
    GATES[name].set()
    done, not_done = mpnet.wait([blocker, quick], timeout=10,
                                return_when=mpnet.ALL_COMPLETED)
    assert done == {blocker, quick} and not not_done


def test_wait_on_finished_futures_returns_at_once(client):
    futures = [client.submit(inc, i) for i in range(3)]
    cf.wait(futures, timeout=10)
    done, not_done = mpnet.wait(futures, timeout=0, return_when=mpnet.FIRST_COMPLETED)
    assert done == set(futures) and not not_done


# --- as_completed ---------------------------------------------------------------------

@pytest.mark.parametrize("as_completed", [cf.as_completed, mpnet.as_completed])
def test_as_completed_timeout_says_how_many_are_left(client, gate, as_completed):
    done = [client.submit(inc, i) for i in range(2)]
    cf.wait(done, timeout=10)
    blocker, name = running(client, gate)
    seen = []
    with pytest.raises(TimeoutError, match=r"1 \(of 3\) futures unfinished"):
        for f in as_completed(done + [blocker], timeout=0.2):
            seen.append(f)
    assert set(seen) == set(done)               # the finished ones came first


@pytest.mark.parametrize("as_completed", [cf.as_completed, mpnet.as_completed])
def test_as_completed_yields_duplicates_once(client, as_completed):
    f = client.submit(inc, 1)
    g = client.submit(inc, 2)
    got = list(as_completed(itertools.chain(itertools.repeat(f, 3), [g, g]), timeout=10))
    assert sorted(got, key=id) == sorted([f, g], key=id)


def test_as_completed_add_counts_each_addition(client):
    """dask's form: each ``add`` is yielded once more (the constructor dedupes)."""
    f = client.submit(inc, 1)
    ac = mpnet.as_completed()
    ac.add(f)
    ac.add(f)
    assert list(ac) == [f, f]


@pytest.mark.parametrize("as_completed", [cf.as_completed, mpnet.as_completed])
def test_as_completed_on_finished_futures_and_mixed_ones(client, as_completed):
    mine = client.submit(inc, 1)
    mine.result(timeout=10)
    stdlib = cf.Future()
    stdlib.set_result(5)
    assert set(as_completed([mine, stdlib], timeout=0)) == {mine, stdlib}
    assert list(as_completed([])) == []


# --- Future objects ---------------------------------------------------------------------

def test_states_pending_running_finished(client, gate):
    blocker, name = running(client, gate)
    queued = client.submit(inc, 1)
    assert not queued.done() and not queued.cancelled() and not queued.running()
    assert queued.status == "pending" and "pending" in repr(queued)
    GATES[name].set()
    assert queued.result(timeout=10) == 2
    assert queued.done() and not queued.cancelled() and not queued.running()
    assert queued.status == "finished" and queued.exception() is None


def test_cancel_a_queued_future(client, gate):
    blocker, name = running(client, gate)
    queued = client.submit(inc, 10)
    calls = []
    queued.add_done_callback(calls.append)
    assert queued.cancel() is True
    assert queued.cancelled() and queued.done() and not queued.running()
    assert calls == [queued]
    assert queued.cancel() is True                # again: still True, no second call
    assert calls == [queued]
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    with pytest.raises(cf.CancelledError):
        queued.exception(timeout=0)
    assert queued.status == "cancelled"
    late = []
    queued.add_done_callback(late.append)          # after the fact: called at once
    assert late == [queued]


def test_cancel_running_or_finished_returns_false(client, gate):
    blocker, name = running(client, gate)
    assert blocker.cancel() is False
    assert not blocker.cancelled()
    GATES[name].set()
    assert blocker.result(timeout=10) == "held"
    assert blocker.cancel() is False and not blocker.cancelled()


def test_result_and_exception_with_timeout(client, gate):
    blocker, name = running(client, gate)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        blocker.result(timeout=0.1)
    with pytest.raises(TimeoutError):
        blocker.exception(timeout=0.1)
    assert time.monotonic() - t0 >= 0.15
    GATES[name].set()
    assert blocker.exception(timeout=10) is None
    bad = client.submit(fail_on, 2, 2)
    assert isinstance(bad.exception(timeout=10), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError, match="bad 2"):
        bad.result()
    assert bad.status == "error" and bad.done() and not bad.cancelled()


def test_done_callbacks_run_once_before_and_after_completion(client, gate):
    blocker, name = running(client, gate)
    fut = client.submit(inc, 1)
    calls = []
    fut.add_done_callback(lambda f: calls.append(("before", f)))
    GATES[name].set()
    fut.result(timeout=10)
    wait_for(lambda: calls, what="the callback")
    fut.add_done_callback(lambda f: calls.append(("after", f)))
    assert calls == [("before", fut), ("after", fut)]


def test_an_exception_in_a_callback_is_logged_not_raised(client, caplog):
    fut = client.submit(inc, 1)
    fut.result(timeout=10)
    seen = []

    def bad(f):
        raise RuntimeError("callback failed")
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        fut.add_done_callback(bad)                    # done: runs here, must not raise
        fut.add_done_callback(seen.append)
    assert seen == [fut]
    assert "callback failed" in caplog.text or any(
        r.exc_info and "callback failed" in str(r.exc_info[1]) for r in caplog.records)
    # the same for a callback run by the cluster's answer
    caplog.clear()
    later = client.submit(inc, 2)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        later.add_done_callback(bad)
        later.add_done_callback(seen.append)
        later.result(timeout=10)
        wait_for(lambda: len(seen) == 2, what="the second callback")
    assert any(r.exc_info and "callback failed" in str(r.exc_info[1]) for r in caplog.records)


def test_set_result_and_set_exception_are_not_for_users(client, gate):
    blocker, name = running(client, gate)
    with pytest.raises(RuntimeError, match="cluster sets"):
        blocker.set_result(1)
    with pytest.raises(RuntimeError, match="cluster sets"):
        blocker.set_exception(ValueError())
    assert not blocker.done()
    GATES[name].set()
    assert blocker.result(timeout=10) == "held"


def test_executor_of_a_closed_client_refuses_with_runtime_error(cluster):
    with Client(cluster) as other:
        ex = other.get_executor()
        assert ex.submit(inc, 1).result(timeout=10) == 2
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(inc, 1)



def test_shutdown_cancel_futures_right_after_submitting():
    """As with a stdlib pool: work a free thread took at once has started (and runs);
    the rest is cancelled, even when shutdown comes before any task began. (Worker
    processes: there the thread that would take the task lags the TRY_CANCEL.)"""
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as c:
        for _ in range(3):
            ex = c.get_executor()
            futures = [ex.submit(time.sleep, 0.02) for _ in range(20)]
            ex.shutdown(wait=True, cancel_futures=True)
            others = [f for f in futures if not f.cancelled()]
            assert 1 <= len(others) <= 10
            assert all(f.done() and f.exception() is None for f in others)


def test_as_completed_with_results_raise_errors_and_batches(client):
    good, bad = client.submit(inc, 1), client.submit(fail_on, 3, 3)
    with pytest.raises(ZeroDivisionError):
        dict(mpnet.as_completed([good, bad], with_results=True, timeout=10))
    got = dict(mpnet.as_completed([good, bad], with_results=True, raise_errors=False,
                                  timeout=10))
    assert got[good] == 2 and isinstance(got[bad], ZeroDivisionError)
    futures = [client.submit(inc, i) for i in range(5)]
    cf.wait(futures, timeout=10)
    batches = list(mpnet.as_completed(futures).batches())
    flat = [f for b in batches for f in b]
    assert len(flat) == 5 and set(flat) == set(futures) and all(batches)
