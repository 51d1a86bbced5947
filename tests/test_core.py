"""End-to-end behaviour of the core: real scheduler, real worker processes, real sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import operator
import time

import pytest

import mpnet
from mpnet import Client, LocalCluster, as_completed, wait
from tests.utils import wait_for


def inc(x):
    return x + 1


def square(x):
    return x * x


def add(*args, **kwargs):
    return sum(args) + sum(kwargs.values())


def boom(x):
    raise ValueError(f"bad value {x}")


def slow(x, delay=0.2):
    time.sleep(delay)
    return x


def big(n):
    return b"x" * n


def test_the_issue_example(client):
    futures = client.map(square, range(1000))
    total = client.submit(sum, futures)
    assert total.result(timeout=20) == sum(x * x for x in range(1000))


def test_submit_result_and_kwargs(client):
    assert client.submit(inc, 1).result(timeout=10) == 2
    assert client.submit(add, 1, 2, c=3).result(timeout=10) == 6
    assert client.submit(lambda: "lambdas work").result(timeout=10) == "lambdas work"


def test_futures_nested_at_any_depth_are_dependencies(client):
    a, b, c = client.submit(inc, 1), client.submit(inc, 2), client.submit(inc, 3)

    def combine(items, mapping, *, extra):
        return items[0] + items[1][0] + mapping["k"][0] + extra["deep"][1]
    f = client.submit(combine, [a, (b,)], {"k": [c]}, extra={"deep": (0, a)})
    assert f.result(timeout=10) == 2 + 3 + 4 + 2


def test_chain_of_dependencies_crosses_workers(client):
    f = client.submit(inc, 0)
    for _ in range(50):
        f = client.submit(inc, f)
    assert f.result(timeout=20) == 51


def test_remote_exception_reraises_with_remote_traceback(client):
    f = client.submit(boom, 7)
    with pytest.raises(ValueError, match="bad value 7") as info:
        f.result(timeout=10)
    assert isinstance(info.value.__cause__, mpnet.errors.RemoteTraceback)
    assert "boom" in str(info.value.__cause__)
    assert f.status == "error"
    # dependents fail with the same error
    g = client.submit(inc, f)
    with pytest.raises(ValueError, match="bad value 7"):
        g.result(timeout=10)


def test_gather_structures(client):
    fs = client.map(inc, range(5))
    assert client.gather(fs) == [1, 2, 3, 4, 5]
    assert client.gather({"a": fs[0], "b": [fs[1], 10]}) == {"a": 1, "b": [2, 10]}
    assert client.gather(fs[2]) == 3
    assert client.gather((fs[3], fs[4])) == (4, 5)


def test_large_results_are_fetched_from_the_worker(client):
    n = 2 * 1024 * 1024        # above the 64 KiB inline limit
    f = client.submit(big, n)
    wait([f], timeout=10)
    assert f._needs_fetch()    # the completion did not carry the data
    assert f.result(timeout=10) == b"x" * n
    g = client.submit(len, f)  # and a peer fetches it as an input
    assert g.result(timeout=10) == n


def test_numpy_arrays_travel_out_of_band(client):
    np = pytest.importorskip("numpy")
    arr = np.arange(500_000, dtype="float64")
    [remote] = client.scatter([arr])
    f = client.submit(lambda a: a * 2, remote)
    out = f.result(timeout=10)
    assert out.dtype == arr.dtype and (out == arr * 2).all()


def test_scatter_list_dict_single(client):
    fs = client.scatter([1, 2, 3])
    assert isinstance(fs, list) and client.gather(fs) == [1, 2, 3]
    d = client.scatter({"x": 10, "y": 20})
    assert set(d) == {"x", "y"} and client.submit(add, d["x"], d["y"]).result(10) == 30
    one = client.scatter(5)
    assert client.submit(inc, one).result(10) == 6


def test_wait_and_as_completed(client):
    fs = client.map(slow, [0.3, 0.01, 0.1], delay=0)
    done, not_done = wait(fs, timeout=10)
    assert len(done) == 3 and not not_done
    fs = [client.submit(slow, i, delay=0.05 * (3 - i)) for i in range(3)]
    seen = [f.result() for f in as_completed(fs, timeout=10)]
    assert sorted(seen) == [0, 1, 2]
    pairs = list(as_completed(client.map(inc, range(4)), with_results=True))
    assert sorted(r for _, r in pairs) == [1, 2, 3, 4]
    # the standard library's functions work on mpnet futures too
    fs = client.map(inc, range(10))
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=10)) == list(range(1, 11))


def test_futures_are_awaitable(client):
    async def main():
        a = client.submit(inc, 1)
        b = client.submit(big, 1 << 20)
        return await a, len(await b)
    assert asyncio.run(main()) == (2, 1 << 20)


def test_executor_interface(client):
    with client.get_executor() as ex:
        assert isinstance(ex, cf.Executor)
        assert ex.submit(operator.add, 1, 2).result(timeout=10) == 3
        assert list(ex.map(inc, range(5), timeout=10)) == [1, 2, 3, 4, 5]


def test_run_and_run_on_scheduler(client, cluster):
    import os
    pids = client.run(os.getpid)
    assert set(pids) == set(client.scheduler_info()["workers"])
    assert len(set(pids.values())) == 2
    assert client.run_on_scheduler(os.getpid) == os.getpid()
    n = client.run_on_scheduler(lambda mpnet_scheduler: len(mpnet_scheduler.state.workers))
    assert n == 2
    addresses = client.run(lambda mpnet_worker: mpnet_worker.address)
    assert all(k == v for k, v in addresses.items())
    with pytest.raises(ZeroDivisionError):
        client.run(lambda: 1 / 0)


def test_scheduler_info_lists_workers(client, cluster):
    info = client.scheduler_info()
    assert info["address"] == cluster.scheduler_address
    assert len(info["workers"]) == 2
    for address, w in info["workers"].items():
        assert address.startswith("tcp://127.0.0.1:") and w["nthreads"] == 1 and w["pid"]


def test_retries(client, tmp_path):
    marker = tmp_path / "attempts"

    def flaky():
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < 2:
            raise RuntimeError("not yet")
        return "ok"
    assert client.submit(flaky, retries=2).result(timeout=10) == "ok"
    marker.unlink()
    with pytest.raises(RuntimeError, match="not yet"):
        client.submit(flaky, retries=1).result(timeout=10)


def test_priority_runs_higher_first():
    # Tasks already sent to a worker (up to nthreads + worker_queue_extra) keep their
    # place; priority orders everything that waits at the scheduler and on the worker.
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      worker_queue_extra=1) as c, Client(c) as client:
        blocker = client.submit(slow, 0, delay=0.3, priority=100)
        time.sleep(0.1)
        low = [client.submit(time.monotonic, priority=-10, key=f"low-{i}") for i in range(20)]
        high = [client.submit(time.monotonic, priority=10, key=f"high-{i}") for i in range(20)]
        client.gather([blocker] + low + high)
        assert max(f.result() for f in high) < sorted(f.result() for f in low)[2]


def test_cancel(client):
    blockers = [client.submit(slow, i, delay=0.5) for i in range(2)]
    queued = client.map(slow, range(100), delay=0.5)
    dependent = client.submit(sum, queued)
    client.cancel(queued)
    with pytest.raises(cf.CancelledError):
        dependent.result(timeout=10)
    assert all(f.cancelled() for f in queued[50:])
    client.gather(blockers)


def test_released_results_are_freed_on_the_cluster(client):
    fs = client.map(inc, range(100))
    client.gather(fs)
    keys = {f.key for f in fs}

    def left():
        on_scheduler = client.run_on_scheduler(
            lambda mpnet_scheduler: list(mpnet_scheduler.state.tasks))
        on_workers = client.run(lambda mpnet_worker: mpnet_worker.store.keys())
        return keys & (set(on_scheduler) | {k for ks in on_workers.values() for k in ks})
    assert len(left()) == 100
    del fs
    gc.collect()
    try:
        wait_for(lambda: not left(), timeout=5, what="results to be released")
    except AssertionError:
        remaining = left()
        states = client.run_on_scheduler(lambda mpnet_scheduler: {
            k: (t.state, len(t.who_wants)) for k, t in mpnet_scheduler.state.tasks.items()})
        raise AssertionError(f"{len(remaining)} left: {[(k, states.get(k)) for k in remaining][:5]}; in the client: {[k for k in remaining if k in client._futures][:5]}")


def test_same_key_gives_same_future(client):
    a = client.submit(inc, 1, key="my-key")
    b = client.submit(inc, 1, key="my-key")
    assert a is b and a.result(timeout=10) == 2


def test_two_clients_share_a_cluster(cluster, client):
    with Client(cluster.scheduler_address, token=cluster.token) as other:
        f = other.submit(inc, 41)
        assert f.result(timeout=10) == 42
        # the same key from two clients: the second learns where the value lives
        g = client.submit(inc, 1, key="shared")
        h = other.submit(inc, 1, key="shared")
        assert g.result(timeout=10) == h.result(timeout=10) == 2


def test_threads_cluster():
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False) as c, Client(c) as cl:
        assert cl.submit(inc, 1).result(timeout=10) == 2
        assert sum(cl.gather(cl.map(square, range(100)))) == sum(x * x for x in range(100))


def test_scale_up_and_down():
    with LocalCluster(n_workers=1) as c, Client(c) as cl:
        c.scale(3)
        assert len(cl.scheduler_info()["workers"]) == 3
        c.scale(1)
        wait_for(lambda: len(cl.scheduler_info()["workers"]) == 1, what="scale down")
        assert cl.submit(inc, 1).result(timeout=10) == 2


def test_exception_in_with_block_leaves_nothing_behind():
    with pytest.raises(KeyError):
        with LocalCluster(n_workers=2) as c, Client(c) as cl:
            cl.submit(inc, 1).result(timeout=10)
            raise KeyError("user error")
    assert c.status == "closed" and cl.status == "closed"


def test_close_is_idempotent():
    c = LocalCluster(n_workers=1)
    cl = Client(c)
    cl.close()
    cl.close()
    c.close()
    c.close()
