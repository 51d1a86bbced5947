"""The worker's lifecycle: guarded moves, a failed start that still closes."""

from __future__ import annotations

import time

import pytest

from mpnet import Scheduler, Worker
from mpnet.errors import ClusterClosedError, LifecycleError
from mpnet.lifecycle import Status


class _FailingPlugin:
    def setup(self, worker):
        raise RuntimeError("plugin cannot set up")


@pytest.fixture
def scheduler(token):
    with Scheduler("127.0.0.1", 0, token=token, dashboard_address=None) as s:
        yield s


def test_a_worker_closed_before_it_started_is_closed_for_waiters(scheduler, token):
    w = Worker(scheduler.address, token=token)
    w.close()
    assert w.wait_closed(5)          # it used to wait for a loop that never ran
    assert w.status is Status.CLOSED
    with pytest.raises(ClusterClosedError, match="closed"):
        w.start()


def test_a_failed_start_leaves_wait_closed_prompt(scheduler, token):
    w = Worker(scheduler.address, token=token, plugins=[_FailingPlugin()])
    with pytest.raises(RuntimeError, match="plugin cannot set up"):
        w.start()
    start = time.monotonic()
    assert w.wait_closed(5)
    assert time.monotonic() - start < 4
    assert w.status is Status.CLOSED
    w.close()                        # idempotent


def test_status_moves_only_along_the_table(scheduler, token):
    with Worker(scheduler.address, token=token) as w:
        assert w.status is Status.RUNNING and w.status == "running"
        with pytest.raises(LifecycleError, match="worker: cannot go from 'running' to "
                                                 "'created'"):
            w._life.move(Status.CREATED)
    assert w.status is Status.CLOSED
