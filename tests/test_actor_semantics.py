"""Actor handles behave as Ray users expect (issue 9 items 2 and 9-12)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time

import pytest

import mpnet
from mpnet import ActorDiedError, Client, LocalCluster
from tests.utils import wait_for


class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def hang(self, path, started):
        open(started, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return "ended"


class Keeper:
    def __init__(self):
        self.handle = None

    def keep(self, handle):
        self.handle = handle

    def give(self):
        return self.handle


def inc(x):
    return x + 1


def temporary_actor_in_a_task():
    client = mpnet.get_client()
    try:
        return client.actor(Counter, 1).incr(2).result()
    finally:
        client.close()        # (the test checks that no connection is left open)


def call_incr(handle):
    return handle.incr(1).result()


def live_keys(client):
    return {a["key"] for a in client.list_actors()}


# --- 2: a pending call keeps its actor alive -----------------------------------------------

def test_a_temporary_handle_keeps_its_actor_alive_for_its_call(client):
    for _ in range(3):
        assert client.actor(Counter, 10).incr(5).result(timeout=10) == 15
    assert client.submit(temporary_actor_in_a_task).result(timeout=20) == 3
    # ... and once the call is answered and the handle gone, the actor is released
    wait_for(lambda: not any(k.startswith("Counter-") for k in live_keys(client)),
             timeout=10, what="temporary actors to be released")


# --- 9: kill ---------------------------------------------------------------------------------

def _stopping(mpnet_scheduler=None):
    return sorted(getattr(mpnet_scheduler.state, "stopping_actors", {}))


def test_kill_fails_calls_at_once_and_frees_resources_when_the_method_ends(tmp_path):
    go, started = str(tmp_path / "go"), str(tmp_path / "started")
    with LocalCluster(n_workers=1, threads_per_worker=1, resources={"slot": 1}) as cluster, \
            Client(cluster) as client:
        actor = client.actor(Counter, resources={"slot": 1})
        hung = actor.hang(go, started)
        queued = actor.incr(1)
        wait_for(lambda: os.path.exists(started), what="the method to start")
        actor.kill()
        for fut in (hung, queued):
            with pytest.raises(ActorDiedError):
                fut.result(timeout=5)         # at once, not when the method returns
        with pytest.raises(ActorDiedError):
            actor.incr(1).result(timeout=5)
        # the method still runs: its resources are still held
        needs_slot = client.submit(inc, 1, resources={"slot": 1})
        assert list(client.run_on_scheduler(_stopping)) == [actor.key]
        assert not needs_slot.done()
        open(go, "w").close()
        assert needs_slot.result(timeout=10) == 2
        wait_for(lambda: not client.run_on_scheduler(_stopping), what="resources freed")


# --- 10: handles bind to the client that fetched them ----------------------------------------

def test_a_handle_from_an_actor_binds_to_the_client_that_fetched_it(client, cluster):
    keeper = client.actor(Keeper)
    counter = client.actor(Counter, 1)
    keeper.keep(counter).result(timeout=10)
    later = Client(cluster)                 # the most recently created client
    try:
        back = keeper.give().result(timeout=10)
    finally:
        later.close()
    assert back.key == counter.key
    assert back.incr(1).result(timeout=10) == 2       # through `client`, still open


# --- 11: futures as actor arguments -----------------------------------------------------------

def test_futures_in_actor_arguments_and_actor_futures_in_tasks(client):
    counter = client.actor(Counter, client.submit(inc, 4))
    assert counter.get().result(timeout=10) == 5
    handle_future = client.submit(Counter, 10, actor=True)
    assert client.submit(call_incr, handle_future).result(timeout=20) == 11
    other = client.actor(Counter, start=client.submit(inc, 0))
    assert other.get().result(timeout=10) == 1


# --- 12: names --------------------------------------------------------------------------------

def test_actor_names_are_checked_and_get_if_exists_is_get_or_create(client, cluster):
    with pytest.raises(TypeError):
        client.actor(Counter, name=5)
    with pytest.raises(ValueError):
        client.actor(Counter, name="")
    for bad in ("no-such-actor", None, ""):
        with pytest.raises(ValueError, match="name"):
            client.get_actor(bad)
    first = client.actor(Counter, 1, name="semantics-unique")
    with pytest.raises(ValueError, match="already exists"):
        client.actor(Counter, 2, name="semantics-unique")
    same = client.actor(Counter, 3, name="semantics-unique", get_if_exists=True)
    assert same.key == first.key and same.get().result(timeout=10) == 1
    assert "incr" in dir(first) and "hang" in dir(first)

    clients = [Client(cluster) for _ in range(3)]
    try:
        barrier = threading.Barrier(len(clients))

        def get_or_create(c):
            barrier.wait()
            return c.actor(Counter, name="semantics-race", get_if_exists=True)
        with cf.ThreadPoolExecutor(len(clients)) as pool:
            handles = list(pool.map(get_or_create, clients))
        assert len({h.key for h in handles}) == 1
        assert handles[0].incr(1).result(timeout=10) == 1
        del handles
    finally:
        for c in clients:
            c.close()
