"""mpnet's Future on top of ``concurrent.futures.Future``'s public API only.

Socket-free: a future is driven by hand through the methods the client's loop thread
uses (``_set_value``, ``_set_error``, ``_set_lost``, ``_set_cancelled``), with a stand-in
owner that fetches nothing.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import pathlib
import threading

import pytest

import mpnet
from mpnet.client.futures import Future, Remote

CLIENT = pathlib.Path(mpnet.__file__).parent / "client"


class Owner:
    """What a future needs of its client; fetching gives ``fetched``."""

    def __init__(self, fetched=None):
        self.fetched = fetched
        self.released: list[str] = []

    def _fetch(self, futures, timeout):
        return [self.fetched for _ in futures]

    def _release(self, key):
        self.released.append(key)

    def _try_cancel(self, futures):
        return set()


# The private fields and names of concurrent.futures' Future and module.
STDLIB_PRIVATE = {"_base", "_condition", "_state", "_result", "_exception", "_waiters",
                  "_done_callbacks", "_AcquireFutures", "_invoke_callbacks",
                  "PENDING", "RUNNING", "FINISHED", "CANCELLED", "CANCELLED_AND_NOTIFIED"}


def test_the_client_package_uses_no_private_part_of_concurrent_futures():
    found = []
    for path in sorted(CLIENT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in STDLIB_PRIVATE:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, "concurrent.futures internals used: " + ", ".join(found)


def test_a_large_value_is_replaced_by_its_fetched_value():
    f = Future("x", Owner(fetched=42))
    f._set_value(Remote("tcp://w:1", 10))
    assert f.done() and f._needs_fetch() and f.status == "finished"
    assert f.result() == 42              # fetched through the owner
    f._set_value(43)                     # what a fetcher does with the value it got
    assert not f._needs_fetch() and f.result() == 43


def test_a_value_lost_before_it_was_fetched_fails_the_future():
    f = Future("x", Owner())
    f._set_value(Remote("tcp://w:1", 10))
    err = mpnet.WorkerLostError("gone")
    f._set_error(err)
    assert f.exception() is err and f.status == "error"
    with pytest.raises(mpnet.WorkerLostError):
        f.result()
    f._set_value(1)                      # a failed future keeps its error
    assert f.exception() is err


def test_an_error_does_not_replace_a_value_held_here():
    f = Future("x", Owner())
    f._set_value(7)
    f._set_error(RuntimeError("late"))
    assert f.result() == 7


def test_lost_data_fails_even_a_value_held_here():
    f = Future("x", Owner())
    f._set_value(7)                      # scattered: the value is here
    f._set_lost(mpnet.WorkerLostError("its worker died"))
    assert isinstance(f.exception(), mpnet.WorkerLostError)


def test_cancelling_a_finished_future_cancels_it_as_in_dask():
    f = Future("x", Owner())
    f._set_value(7)
    f._set_cancelled("the cluster was restarted")
    assert f.cancelled() and f.done() and f.status == "cancelled"
    with pytest.raises(mpnet.CancelledError, match="restarted"):
        f.result()
    with pytest.raises(cf.CancelledError):
        f.exception()
    done, not_done = cf.wait([f], timeout=0)
    assert done == {f} and not not_done


def test_cancelling_a_pending_future_wakes_the_stdlib_waiters():
    futures = [Future(f"x{i}", Owner()) for i in range(3)]
    threading.Timer(0.05, futures[1]._set_cancelled, ("by the test",)).start()
    done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED, timeout=10)
    assert done == {futures[1]} and futures[1].cancelled()
    for f in futures:
        f._set_cancelled("end")


def test_wait_and_as_completed_of_the_stdlib_see_mpnet_futures():
    futures = [Future(f"x{i}", Owner()) for i in range(4)]
    futures[2]._set_error(ZeroDivisionError("x"))
    done, not_done = cf.wait(futures, return_when=cf.FIRST_EXCEPTION, timeout=10)
    assert done == {futures[2]} and len(not_done) == 3
    for i, f in enumerate(futures):
        if i != 2:
            threading.Timer(0.01 * i, f._set_value, (i,)).start()
    assert set(cf.as_completed(futures, timeout=10)) == set(futures)
    assert [f.result() for f in futures if f is not futures[2]] == [0, 1, 3]


def test_a_fetch_waiting_for_a_value_to_move_wakes_when_it_moves():
    f = Future("x", Owner())
    f._set_value(Remote("tcp://old:1", 10))
    threading.Timer(0.05, f._set_value, (Remote("tcp://new:1", 10),)).start()
    assert f._wait_moved("tcp://old:1", deadline=None)     # no timeout: woken
    assert f._remote().worker == "tcp://new:1"


def test_a_fetch_waiting_for_a_value_to_move_gives_up_at_its_deadline():
    import time
    f = Future("x", Owner())
    f._set_value(Remote("tcp://old:1", 10))
    assert not f._wait_moved("tcp://old:1", deadline=time.monotonic() + 0.05)


def test_the_first_of_racing_completions_wins():
    for _ in range(200):
        f = Future("x", Owner())
        threads = [threading.Thread(target=f._set_value, args=(1,)),
                   threading.Thread(target=f._set_error, args=(RuntimeError("closed"),))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # whichever won, the stdlib's view and mpnet's agree
        assert (f.exception() is None) == (cf.Future.exception(f) is None)


def test_packed_values_and_errors_are_unpickled_when_read_even_when_delivered_again():
    """A result or error arrives packed (unpickled on the reading thread); a result
    recomputed after a loss is delivered again, packed too, and must be unpickled."""
    import pickle

    from mpnet.client.futures import Packed
    f = Future("k", Owner())
    f._set_value(Packed(pickle.loads, pickle.dumps(1)))
    assert f.status == "finished" and f.result(timeout=1) == 1
    f._set_value(Packed(pickle.loads, pickle.dumps(2)))       # recomputed elsewhere
    assert f.result(timeout=1) == 2 and f._settled() == 2

    g = Future("g", Owner())
    g._set_value(Packed(pickle.loads, pickle.dumps([3])))
    assert g._settled() == [3]                                  # gather's path

    e = Future("e", Owner())
    e._set_error(Packed(lambda: ValueError("boom")))
    assert e.status == "error"
    assert isinstance(e.exception(timeout=1), ValueError)
    with pytest.raises(ValueError, match="boom"):
        e.result(timeout=1)

    bad = Future("bad", Owner())
    bad._set_value(Packed(pickle.loads, b"not a pickle"))
    assert isinstance(bad.exception(timeout=1), Exception)
    with pytest.raises(Exception):
        bad.result(timeout=1)
