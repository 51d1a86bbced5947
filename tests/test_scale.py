"""Many tasks and many workers, checked for correctness (speed is benchmarks/bench_scale.py's
business: nothing here depends on how fast it runs)."""

from __future__ import annotations

import gc

from benchmarks.loadgen import FakeWorkers
from mpnet import Client, Scheduler
from tests.utils import wait_for


def inc(x):
    return x + 1


def _scheduler_tasks(mpnet_scheduler):
    return len(mpnet_scheduler.state.tasks)


def test_twenty_thousand_tasks_by_map_and_by_submit_are_exact_and_released(client):
    n = 10_000        # each way
    mapped = client.map(inc, range(n))
    assert client.gather(mapped) == list(range(1, n + 1))
    submitted = [client.submit(inc, i) for i in range(n)]
    assert client.gather(submitted) == list(range(1, n + 1))
    del mapped, submitted
    gc.collect()
    wait_for(lambda: client.run_on_scheduler(_scheduler_tasks) == 0, timeout=20,
             what="the scheduler to forget 20,000 released tasks")


def test_the_load_generator_serves_a_scheduler_as_many_workers(token):
    with Scheduler("127.0.0.1", 0, token=token) as scheduler:
        gen = FakeWorkers(scheduler.address, token, 50)
        try:
            gen.start(timeout=30)
            with Client(scheduler.address, token=token) as client:
                assert len(client.scheduler_info()["workers"]) == 50
                assert client.gather(client.map(inc, range(2_000))) == [None] * 2_000
                assert gen.computed == 2_000
        finally:
            gen.close()
