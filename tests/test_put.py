"""Direct put (docs/data.md): a large scatter goes from the client straight to the chosen
worker, not through the scheduler; its keys are usable at once; broadcast, hash keys;
a worker killed during a put fails the scatter clearly and leaves nothing behind; only
clients may put, and only clients the scheduler knows."""

from __future__ import annotations

import mmap
import os
import signal
import threading

import pytest

from mpnet import Client, FrameTooLargeError, LocalCluster, WorkerLostError
from mpnet.comm.pool import Pool
from mpnet.comm.protocol import Msg
from mpnet.comm.serialize import Payload, dumps
from mpnet.errors import CommClosedError, MpnetError
from tests.utils import wait_for

MB = 10**6


def size(x, extra=b""):
    return len(x) + len(extra)


def keys_held(mpnet_worker):
    return sorted(mpnet_worker.store._data)


def holds(key):
    def check(mpnet_worker):
        return key in mpnet_worker.store._data
    return check


def _count_payload_bytes(client) -> list:
    """What the client sends its scheduler (Client(cluster): the in-process link), in
    payload bytes: wraps the link's detach step, which every message passes."""
    seen = [0]
    link = client.scheduler
    detach = link._detach

    def counting(msg):
        for v in msg[1:]:
            for p in (v if isinstance(v, list) else [v]):
                if isinstance(p, list):
                    p = p[-1] if p else None
                if isinstance(p, Payload):
                    seen[0] += p.nbytes
        return detach(msg)
    client.loop.run_sync(setattr, link, "_detach", counting)
    return seen


def test_large_scatter_goes_straight_to_the_chosen_worker(client):
    a, b = sorted(client.scheduler_info()["workers"])
    sent = _count_payload_bytes(client)
    data = os.urandom(MB) * 50
    fut = client.scatter(data, workers=[b])
    assert sent[0] < MB          # 50 MB went to the worker, not to the scheduler
    assert client.run(holds(fut.key)) == {a: False, b: True}
    # usable by a task at once, on either worker
    assert client.submit(size, fut, workers=[b]).result(timeout=10) == 50 * MB
    assert client.submit(size, fut, workers=[a]).result(timeout=10) == 50 * MB
    assert fut.result() is data        # the client keeps its own value
    key = fut.key
    del fut
    wait_for(lambda: not any(key in ks for ks in client.run(keys_held).values()),
             what="the released value to leave the workers")


def test_small_scatter_still_rides_through_the_scheduler(client):
    sent = _count_payload_bytes(client)
    [fut] = client.scatter([b"small"])
    assert sent[0] >= 5
    assert client.submit(size, fut).result(timeout=10) == 5


def test_broadcast_puts_every_value_on_every_worker(client):
    workers = sorted(client.scheduler_info()["workers"])
    big, small = client.scatter([b"b" * (2 * MB), 7], broadcast=True)
    for fut in (big, small):
        assert sorted(client._session.request(Msg.WHO_HAS, [fut.key])[fut.key]) == workers
        assert all(client.run(holds(fut.key)).values())
    assert client.submit(size, big, workers=[workers[0]]).result(timeout=10) == 2 * MB
    [one] = client.scatter([b"c" * MB], broadcast=True, workers=[workers[1]])
    assert client.run(holds(one.key)) == {workers[0]: False, workers[1]: True}


def test_hash_keys_name_the_data(client):
    data = b"h" * (2 * MB)
    first = client.scatter(data, hash=True)
    again = client.scatter(bytes(data), hash=True)
    other = client.scatter(b"i" * (2 * MB), hash=True)
    assert again is first and other.key != first.key
    assert client.scatter(data).key != client.scatter(data).key     # hash=False: new keys
    assert client.submit(size, again).result(timeout=10) == 2 * MB


def test_worker_killed_during_a_put_fails_the_scatter_and_leaves_nothing():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        info = client.scheduler_info()["workers"]
        a, b = sorted(info)
        client.scatter(b"w" * (2 * MB), workers=[b]).release()   # the connection is open
        conn = client.loop.run_sync(lambda: client._fetcher._workers.get(b)).result(5)
        os.kill(info[b]["pid"], signal.SIGSTOP)     # it stops reading: the put stalls
        errors = []

        def put():
            try:
                client.scatter(os.urandom(MB) * 50, workers=[b])
            except Exception as e:
                errors.append(e)
        t = threading.Thread(target=put, name="test-put")
        t.start()
        try:
            wait_for(lambda: len(conn._requests), what="the put to be on its way")
        finally:
            os.kill(info[b]["pid"], signal.SIGKILL)
        t.join(20)
        assert not t.is_alive()
        [err] = errors
        assert isinstance(err, WorkerLostError)
        assert b in str(err) and "scatter them again" in str(err)
        # nothing behind: the scheduler holds no key, the other worker no value
        state = cluster.scheduler.state
        wait_for(lambda: not state.tasks, timeout=10, what="the scheduler to hold no key")
        assert client.run(keys_held, workers=[a]) == {a: []}


def test_only_clients_the_scheduler_knows_may_put(cluster, client):
    address = sorted(client.scheduler_info()["workers"])[0]
    payload = dumps(b"p" * (2 * MB), oob_threshold=cluster.config.oob_threshold)

    def put_as(role, info):
        pool = Pool(client.loop, config=cluster.config, token=cluster.token, role=role,
                    info=info, handler=lambda conn, msg: None)
        try:
            reply = client.loop.run_sync(pool.request, address, Msg.PUT_DATA,
                                         [["stranger-key", payload]])
            return reply.exception(10)
        finally:
            client.loop.run_sync(pool.close)
    # a worker (or anyone not a client) is refused: the connection is closed
    assert isinstance(put_as("worker", {"address": "tcp://127.0.0.1:1"}), CommClosedError)
    # a client the scheduler does not know: the worker drops what it stored
    err = put_as("client", {"id": "client-nobody"})
    assert isinstance(err, MpnetError) and "dropped" in str(err)
    assert not any("stranger-key" in ks for ks in client.run(keys_held).values())
    assert "stranger-key" not in cluster.scheduler.state.tasks


def test_large_task_arguments_are_put_directly_and_freed_with_the_task(client):
    sent = _count_payload_bytes(client)
    data = os.urandom(MB) * 20
    fut = client.submit(size, data, extra=b"small", pure=False)
    assert fut.result(timeout=10) == 20 * MB + 5
    assert sent[0] < MB          # the scheduler carried only the small argument
    # a key the user chose names the same computation each time (hash keys inside)
    named = client.submit(size, data, key="named-size")
    assert client.submit(size, bytes(data), key="named-size") is named
    assert named.result(timeout=10) == 20 * MB
    del fut, named
    wait_for(lambda: not any(client.run(keys_held).values()),
             what="the put arguments to leave the workers with their tasks")


def make_array(n):
    import numpy
    return numpy.full(n, 7, dtype=numpy.uint8)


def test_a_large_result_is_fetched_without_a_copy(client):
    numpy = pytest.importorskip("numpy")
    fut = client.submit(make_array, 20 * MB, pure=False)
    arr = fut.result(timeout=10)
    # received straight into the memory the array uses (docs/data.md): an anonymous
    # map the socket wrote into, not bytes (or an array) it was copied to
    assert isinstance(arr, numpy.ndarray) and arr.nbytes == 20 * MB and int(arr[-1]) == 7
    base = arr
    while isinstance(base, (numpy.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    assert isinstance(base, mmap.mmap)


def test_direct_put_keeps_to_the_frame_limit():
    limit = 1 << 20
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      max_frame_bytes=limit) as cluster, \
            Client(cluster, max_frame_bytes=limit) as client:
        # together over the limit: sent in frames of their own, each under it
        futs = client.scatter([b"a" * 600_000, b"b" * 600_000])
        assert [client.submit(size, f).result(timeout=10) for f in futs] == [600_000] * 2
        with pytest.raises(FrameTooLargeError, match="max_frame_bytes"):
            client.scatter(b"z" * (2 * limit))
