"""A worker's death is charged only to the tasks it was running, not to those queued
behind them (pure state-machine tests, then one with real processes)."""

from __future__ import annotations

import os
import time

import pytest

from mpnet import Client, KilledWorkerError, LocalCluster
from mpnet.comm.protocol import Msg, running_key
from mpnet.worker.running import RunningSlots
from tests.scheduler.test_state import cluster, submit


def _queue(state, client, n):
    for i in range(n):
        submit(state, client, f"t{i}", priority=-i)    # t0 first, as the worker runs them


def test_nanny_report_charges_only_the_running_task():
    state, (w1, w2), c = cluster(n_workers=2, nthreads=1, worker_queue_extra=16)
    state.remove_worker("w2", "test")
    _queue(state, c, 9)
    assert len(w1.processing) == 9
    state.worker_exited("w1", "pid 1, exit code 3", ["t0"])
    assert state.tasks["t0"].failed_on and not any(
        state.tasks[f"t{i}"].failed_on for i in range(1, 9))


def test_an_idle_death_charges_nobody():
    state, (w1, w2), c = cluster(n_workers=2, nthreads=2, worker_queue_extra=16)
    _queue(state, c, 6)
    state.worker_exited("w1", "pid 1, killed by signal 9", [])
    assert not any(ts.failed_on for ts in state.tasks.values())


def test_without_a_report_the_first_nthreads_are_charged():
    state, (w1,), c = cluster(n_workers=1, nthreads=2, worker_queue_extra=16)
    _queue(state, c, 5)
    state.remove_worker("w1", "its connection closed")
    charged = sorted(k for k, ts in state.tasks.items() if ts.failed_on)
    assert charged == ["t0", "t1"]


def test_repeat_offender_still_fails_after_allowed_failures():
    state, workers, c = cluster(n_workers=1, nthreads=1, allowed_failures=1,
                                worker_queue_extra=16)
    _queue(state, c, 3)
    for n in range(2):
        state.worker_exited(f"w{1 + n}" if n == 0 else f"x{n}", "exit code 3", ["t0"])
        state.add_worker(f"x{n + 1}", nthreads=1)
    out = state.take_outbox()
    lost = [m for _, m in out if m[0] == Msg.TASK_LOST]
    assert [m[1] for m in lost] == ["t0"]
    assert all(state.tasks[f"t{i}"].state != "erred" for i in (1, 2))


def test_long_keys_travel_as_digests():
    slots = RunningSlots(None, 2)
    long_key = "k" * 1000
    slots.set(0, long_key)
    slots.set(1, "short")
    assert slots.keys() == [running_key(long_key), "short"]
    slots.clear(0)
    assert slots.keys() == ["short"]
    state, (w1,), c = cluster(n_workers=1, nthreads=1, worker_queue_extra=16)
    submit(state, c, long_key)
    submit(state, c, "after", priority=-1)
    state.worker_exited("w1", "exit code 3", slots.keys()[:0] + [running_key(long_key)])
    assert state.tasks[long_key].failed_on and not state.tasks["after"].failed_on


def die(code):
    os._exit(code)


def nap(i):
    time.sleep(0.01)
    return i


@pytest.mark.slow
def test_queued_tasks_survive_a_task_that_kills_its_worker():
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster_, Client(cluster_) as c:
        bad = c.submit(die, 3)
        good = [c.submit(nap, i) for i in range(8)]
        assert c.gather(good, timeout=60) == list(range(8))
        with pytest.raises(KilledWorkerError):
            bad.result(timeout=60)
