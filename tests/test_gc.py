"""The collector's tuning (mpnet.config.tune_gc) makes collections rarer, never absent:
a reference cycle in a task's result is still collected, in the worker that made it and
in the client's process that received it, within a bounded number of further tasks."""

from __future__ import annotations

import gc

import pytest

from mpnet import Client, LocalCluster
from mpnet.config import make_config, tune_gc
from tests.utils import wait_for

# Small thresholds, so that the bound (young x 10 x full = 100,000 allocations between
# full collections) is a few thousand tasks, not the defaults' ten million allocations.
YOUNG, FULL = 1_000, 10
BATCH, MAX_TASKS = 500, 40_000


class Cycle:
    """A result that refers to itself: only the cyclic collector can free it."""

    def __init__(self):
        self.me = self


def make_cycle():
    return Cycle()


def noop(x):
    return x


def cycles_alive():
    return sum(type(o).__name__ == "Cycle" for o in gc.get_objects())


def promote():
    """Collect the young generations here: what survives (the held result) is now in
    the oldest one, which only a full collection walks."""
    gc.collect(1)


@pytest.fixture
def default_thresholds():
    """This process starts from Python's own thresholds; restored after the test."""
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_tune_gc_raises_never_lowers_never_disables(default_thresholds):
    tune_gc(make_config(gc_threshold=5_000, gc_full_threshold=50))
    assert gc.get_threshold() == (5_000, 10, 50)
    tune_gc(make_config(gc_threshold=1_000, gc_full_threshold=20))   # lower: kept
    assert gc.get_threshold() == (5_000, 10, 50)
    tune_gc(make_config(gc_threshold=0, gc_full_threshold=0))        # 0: left alone
    assert gc.get_threshold() == (5_000, 10, 50)
    assert gc.isenabled()


def _run_until(client, done):
    """No-op tasks in batches until ``done()``; the number of tasks it took."""
    ran = 0
    while not done():
        assert ran < MAX_TASKS, f"a released cycle was still alive after {ran:,} tasks"
        client.gather(client.map(noop, range(ran, ran + BATCH)))
        ran += BATCH
    return ran


def test_a_cycle_in_a_result_is_collected_in_the_worker_and_the_client(default_thresholds):
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      gc_threshold=YOUNG, gc_full_threshold=FULL) as cluster, \
            Client(cluster, gc_threshold=YOUNG, gc_full_threshold=FULL) as client:
        (worker_thresholds,) = client.run(gc.get_threshold).values()
        assert tuple(worker_thresholds) == (YOUNG, 10, FULL)
        assert gc.get_threshold() == (YOUNG, 10, FULL)
        f = client.submit(make_cycle, pure=False)
        assert f.result(timeout=10).me is f.result()
        # Both copies (the worker's stored result, the client's) now in the oldest
        # generation, where a young collection never looks.
        client.run(promote)
        promote()
        assert list(client.run(cycles_alive).values()) == [1]
        assert cycles_alive() == 1
        del f
        wait_for(lambda: not client.run_on_scheduler(
            lambda mpnet_scheduler: len(mpnet_scheduler.state.tasks)),
            what="the scheduler to forget the released result")
        _run_until(client, lambda: cycles_alive() == 0)
        _run_until(client, lambda: list(client.run(cycles_alive).values()) == [0])
