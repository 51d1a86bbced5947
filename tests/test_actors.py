"""Actors: stateful objects on workers, called directly, restarted on failure."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time

import pytest

import mpnet
from mpnet import ActorDiedError, Client, LocalCluster
from tests.utils import wait_for


class Counter:
    def __init__(self, start=0):
        self.n = start
        self.restarted = mpnet.get_actor_context().restarted

    def incr(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def slow_incr(self, delay):
        time.sleep(delay)
        self.n += 1
        return self.n

    def fail(self):
        raise KeyError("no such thing")


class Log:
    def __init__(self):
        self.items = []

    def append(self, x):
        self.items.append(x)
        return len(self.items)

    def all(self):
        return list(self.items)


class Forwarder:
    """An actor that calls another actor through a handle it was given."""

    def __init__(self, target):
        self.target = target

    def forward(self, k):
        return self.target.incr(k).result() * 10


class Sleeper:
    async def nap(self, delay, value):
        await asyncio.sleep(delay)
        return value

    def plain(self):
        return "sync on the loop"


class Parallel:
    def __init__(self):
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def work(self, delay):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(delay)
        with self.lock:
            self.active -= 1
        return self.peak


class Saver:
    """Checkpoints its count; a re-created instance restores it."""

    def __init__(self):
        self.n = 0
        self.restored = False

    def __mpnet_restore__(self, state):
        self.n = state
        self.restored = True

    def incr(self):
        self.n += 1
        mpnet.get_actor_context().checkpoint(self.n)
        return self.n

    def status(self):
        return self.n, self.restored, mpnet.get_actor_context().restarted


def use_counter(handle, k):
    return handle.incr(k).result()


def make_actor_in_task(k):
    client = mpnet.get_client()
    c = client.actor(Counter, k)
    return c.incr(1).result()


@pytest.fixture(scope="module")
def actor_cluster():
    with LocalCluster(n_workers=2, resources={"slot": 1}) as c:
        yield c


@pytest.fixture
def aclient(actor_cluster):
    with Client(actor_cluster) as c:
        yield c


def test_create_call_and_read_attributes(aclient):
    counter = aclient.actor(Counter, 10, name="hits")
    assert isinstance(counter, mpnet.ActorHandle)
    assert counter.incr(5).result(timeout=10) == 15
    assert counter.n == 15                        # a plain attribute reads its value
    again = mpnet.get_actor("hits", client=aclient)
    assert again.incr().result(timeout=10) == 16
    listed = {a["name"]: a for a in aclient.list_actors()}
    assert listed["hits"]["status"] == "alive"
    assert listed["hits"]["address"] in aclient.scheduler_info()["workers"]


def test_dask_style_submit_actor_true(aclient):
    fut = aclient.submit(Counter, 3, actor=True)
    handle = fut.result(timeout=10)
    assert handle.incr().result(timeout=10) == 4


def test_calls_from_one_caller_run_in_order(aclient):
    log = aclient.actor(Log)
    futures = [log.append(i) for i in range(1000)]
    assert [f.result(timeout=30) for f in futures] == list(range(1, 1001))
    assert log.all().result(timeout=10) == list(range(1000))


def test_two_callers_in_parallel(actor_cluster, aclient):
    counter = aclient.actor(Counter, 0, name="shared-counter")
    with Client(actor_cluster) as other:
        theirs = other.get_actor("shared-counter")
        mine = [counter.incr() for _ in range(300)]
        others = [theirs.incr() for _ in range(300)]
        results = [f.result(timeout=30) for f in mine + others]
    assert sorted(results) == list(range(1, 601))
    assert counter.get().result(timeout=10) == 600


def test_handle_passed_into_50_tasks(aclient):
    counter = aclient.actor(Counter, 0)
    futures = [aclient.submit(use_counter, counter, 1) for _ in range(50)]
    aclient.gather(futures)
    assert counter.get().result(timeout=10) == 50


def test_actor_calling_another_actor(aclient):
    counter = aclient.actor(Counter, 1)
    forwarder = aclient.actor(Forwarder, counter)
    assert forwarder.forward(2).result(timeout=10) == 30
    assert counter.get().result(timeout=10) == 3


def test_tasks_can_create_actors(aclient):
    assert aclient.submit(make_actor_in_task, 41).result(timeout=20) == 42
    # the worker keeps that client for later tasks; close it so the test leaves no socket
    aclient.run(lambda mpnet_worker: mpnet_worker.clients.close_client())


def test_async_actor_overlaps_its_calls(aclient):
    sleeper = aclient.actor(Sleeper)
    start = time.monotonic()
    futures = [sleeper.nap(0.3, i) for i in range(10)]
    assert [f.result(timeout=10) for f in futures] == list(range(10))
    assert time.monotonic() - start < 2.0          # overlapped, not 3 s in a row
    assert sleeper.plain().result(timeout=10) == "sync on the loop"

    async def from_asyncio():
        return await sleeper.nap(0.01, "awaited")
    assert asyncio.run(from_asyncio()) == "awaited"


def test_max_concurrency_runs_calls_on_a_pool(aclient):
    par = aclient.actor(Parallel, max_concurrency=4)
    peaks = [f.result(timeout=10) for f in [par.work(0.3) for _ in range(4)]]
    assert max(peaks) >= 2


def test_exception_in_a_method(aclient):
    counter = aclient.actor(Counter)
    with pytest.raises(KeyError, match="no such thing") as info:
        counter.fail().result(timeout=10)
    assert "fail" in str(info.value.__cause__)
    assert counter.incr().result(timeout=10) == 1     # the actor lives on


def test_constructor_error_reaches_every_call(aclient):
    bad = aclient.actor(Counter, "not a number")
    with pytest.raises(TypeError):
        bad.incr(1).result(timeout=10)


def test_futures_and_large_arrays_as_arguments(aclient):
    np = pytest.importorskip("numpy")
    counter = aclient.actor(Counter, 0)
    f = aclient.submit(lambda: 7)
    assert counter.incr(f).result(timeout=10) == 7
    log = aclient.actor(Log)
    arr = np.ones(1_000_000)
    assert log.append(arr).result(timeout=10) == 1
    assert log.all().result(timeout=10)[0].sum() == 1_000_000


def test_killing_an_actor_frees_its_resources(aclient):
    # Each worker declares one "slot"; two actors needing one each fill the cluster.
    a = aclient.actor(Counter, resources={"slot": 1})
    b = aclient.actor(Counter, resources={"slot": 1})
    assert a.incr().result(timeout=10) == b.incr().result(timeout=10) == 1
    c = aclient.actor(Counter, resources={"slot": 1})
    time.sleep(0.3)
    assert all(x["key"] != c.key or x["status"] == "pending" for x in aclient.list_actors())
    a.kill()
    assert c.incr().result(timeout=10) == 1            # placed on the freed slot
    with pytest.raises(ActorDiedError, match="killed"):
        a.incr().result(timeout=10)
    b.kill()
    c.kill()


def test_unplaceable_actor_fails_clearly(aclient):
    gpu = aclient.actor(Counter, resources={"GPU": 1})
    with pytest.raises(ActorDiedError, match="cannot be placed.*GPU"):
        gpu.incr().result(timeout=10)


def test_tasks_respect_resources(aclient):
    with pytest.raises(mpnet.UnsatisfiableError, match="GPU"):
        aclient.submit(os.getpid, resources={"GPU": 1}).result(timeout=10)
    pids = aclient.gather([aclient.submit(os.getpid, resources={"slot": 1}, pure=False)
                           for _ in range(6)])
    assert len(pids) == 6


def test_dropping_the_last_handle_kills_the_actor(aclient):
    counter = aclient.actor(Counter, 0)
    key = counter.key
    assert counter.incr().result(timeout=10) == 1
    del counter
    gc.collect()
    wait_for(lambda: all(a["key"] != key for a in aclient.list_actors()), timeout=5,
             what="the released actor to be killed")


def test_named_detached_actor_outlives_its_client(actor_cluster):
    with Client(actor_cluster) as first:
        keeper = first.actor(Counter, 100, name="keeper", lifetime="detached")
        assert keeper.incr().result(timeout=10) == 101
    with Client(actor_cluster) as second:
        again = second.get_actor("keeper")
        assert again.incr().result(timeout=10) == 102
        again.kill()
        with pytest.raises(ActorDiedError):
            second.get_actor("keeper")


def test_restart_after_kill_9_of_the_hosting_worker():
    with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
        counter = client.actor(Counter, 5, max_restarts=1)
        assert counter.incr().result(timeout=10) == 6
        pid = counter.pid().result(timeout=10)
        inflight = counter.slow_incr(5)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ActorDiedError, match="may or may not have run"):
            inflight.result(timeout=20)
        # new calls go to the new instance: the constructor ran again with its arguments
        assert counter.incr().result(timeout=30) == 6
        assert counter.restarted == 1
        assert counter.pid().result(timeout=10) != pid
        # restarts are used up now: the next death is final
        os.kill(counter.pid().result(timeout=10), signal.SIGKILL)
        wait_for(lambda: all(a["key"] != counter.key for a in client.list_actors()),
                 timeout=10, what="the scheduler to give the actor up")
        with pytest.raises(ActorDiedError, match="max_restarts"):
            counter.incr().result(timeout=30)


def test_max_task_retries_resends_calls_in_flight():
    with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
        counter = client.actor(Counter, 0, max_restarts=1, max_task_retries=1)
        pid = counter.pid().result(timeout=10)
        inflight = counter.slow_incr(2)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        assert inflight.result(timeout=30) == 1           # ran again on the new instance


def test_checkpoint_is_restored_after_a_restart():
    with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
        saver = client.actor(Saver, max_restarts=1)
        for _ in range(3):
            saver.incr().result(timeout=10)
        time.sleep(0.2)                 # the checkpoint travels to the scheduler
        pid = client.run(os.getpid)
        host = [a for a in client.list_actors() if a["key"] == saver.key][0]["address"]
        os.kill(pid[host], signal.SIGKILL)

        def restarted():
            return any(a["key"] == saver.key and a["restarts"] == 1 and
                       a["status"] == "alive" for a in client.list_actors())
        wait_for(restarted, timeout=30, what="the actor to be re-created")
        assert tuple(saver.status().result(timeout=30)) == (3, True, 1)


def test_one_worker_per_gpu_gets_its_own_device():
    with LocalCluster(n_workers=2, gpus=[3, 5]) as cluster, Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["3", "5"]
        offered = [w["resources"] for w in client.scheduler_info()["workers"].values()]
        assert offered == [{"GPU": 1}, {"GPU": 1}]
        on_gpu = client.actor(Counter, resources={"GPU": 1})
        assert on_gpu.incr().result(timeout=10) == 1
        assert client.submit(os.getenv, "CUDA_VISIBLE_DEVICES",
                             resources={"GPU": 1}).result(timeout=10) in ("3", "5")
