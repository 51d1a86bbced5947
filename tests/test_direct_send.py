"""Sends from any thread without a loop hop (Connection.send_direct), and the paths built
on it: a worker's executor thread reporting its task's end, an actor's thread answering
its call, a client thread writing its actor call.

Each test fails if the direct path loses, duplicates or reorders a message, or if the
loop's state about a finished task (stored values, freed keys, running slots) drifts.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from mpnet import Client, LocalCluster
from mpnet.comm.endpoints import Listener, connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import Msg
from mpnet.config import make_config
from mpnet.errors import FrameTooLargeError
from tests.utils import wait_for

TOKEN = "d" * 64


class Receiver:
    """A listener that keeps every message it receives, in order."""

    def __init__(self, config):
        self.loop = EventLoop("test-direct-recv").start()
        self.got: list = []
        self.listener = Listener(self.loop, "127.0.0.1", 0, config=config, token=TOKEN,
                                 role="worker", info={}, handler=self._handle)
        self.address = f"tcp://127.0.0.1:{self.listener.port}"

    def _handle(self, conn, msg):
        self.got.append(msg)

    def stop(self):
        self.loop.run_sync(self.listener.close)
        self.loop.close()


@pytest.fixture
def pair():
    config = make_config(max_frame_bytes=8 << 20)
    recv = Receiver(config)
    loop = EventLoop("test-direct-send").start()
    conn = connect_sync(loop, recv.address, config=config, token=TOKEN, role="client",
                        info={}, handler=lambda c, m: None)
    yield loop, conn, recv
    loop.run_sync(conn.close)
    loop.close()
    recv.stop()


def test_threads_and_the_loop_send_at_once_nothing_lost_each_in_order(pair):
    # Four threads write directly (large messages too, so that some writes are partial
    # and their rest goes through the loop) while the loop thread sends its own batch.
    loop, conn, recv = pair
    n, big = 300, b"x" * (3 << 20)

    def sender(i):
        for j in range(n):
            conn.send_direct([Msg.LOGS, i, j, big if j % 50 == 7 else b""])

    def loop_sender():
        for j in range(n):
            loop.call_soon_threadsafe(conn.send_direct, [Msg.LOGS, 99, j, b""])
    threads = [threading.Thread(target=sender, args=(i,), name=f"test-sender-{i}")
               for i in range(4)] + [threading.Thread(target=loop_sender,
                                                      name="test-loop-sender")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(recv.got) == 5 * n, timeout=30, what="every message")
    for i in (0, 1, 2, 3, 99):
        seq = [m[2] for m in recv.got if m[1] == i]
        assert seq == list(range(n)), f"sender {i} out of order or incomplete"
    assert all(len(m[3]) == (len(big) if m[1] != 99 and m[2] % 50 == 7 else 0)
               for m in recv.got)


def test_a_frame_over_the_limit_goes_through_the_loop_and_fails_there(pair):
    # Too large for one frame: send_direct hands it to the loop, which splits the batch
    # and drops that one message (with an error line); what follows still arrives.
    loop, conn, recv = pair
    limit = conn.config.max_frame_bytes
    conn.send_direct([Msg.LOGS, 1, 0, b"y" * (limit + 10)])
    conn.send_direct([Msg.LOGS, 1, 1, b""])
    wait_for(lambda: [m[2] for m in recv.got] == [1], timeout=10, what="the small one")


def test_a_closed_connection_drops_direct_sends(pair):
    loop, conn, recv = pair
    loop.run_sync(conn.close)
    conn.send_direct([Msg.LOGS, 1, 0, b""])        # no error, nothing written
    assert conn.closed and conn._wbuf == [] and conn._out == []


# --- the worker: executor threads report their tasks' ends --------------------------------
def inc(x):
    return x + 1


def big(i):
    return bytes(100_000) + bytes([i % 256])     # over inline_result_bytes: fetched


def slow_then(x, delay):
    import time
    time.sleep(delay)
    return x


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def test_results_fetched_right_after_they_finish(cluster):
    # A result too large to travel inline is fetched from its worker (GET_DATA) as soon
    # as the scheduler hears TASK_FINISHED: the worker must have stored it by then.
    with Client(cluster) as client:
        for _ in range(3):
            futures = client.map(big, range(60))
            values = client.gather(futures, timeout=30)
            assert [v[-1] for v in values] == [i % 256 for i in range(60)]
        chain = client.submit(inc, 0)
        for _ in range(50):                # each input is on a worker the moment it ends
            chain = client.submit(inc, chain)
        assert chain.result(timeout=30) == 51


def _worker_state(mpnet_worker):
    return {"tasks": len(mpnet_worker.tasks), "ended": len(mpnet_worker.runner.ended),
            "stored": sorted(mpnet_worker.store.keys()), "executing":
            mpnet_worker.executor.executing}


def test_cancel_racing_the_end_of_tasks_leaves_no_state_behind(cluster):
    # FREE arriving while tasks finish: whichever wins, the worker keeps no task, no
    # value and no running slot of them, and the scheduler gives its slots back.
    with Client(cluster) as client:
        for round_ in range(5):
            futures = client.map(slow_then, range(40), delay=0.001 * (round_ % 3),
                                 key=[f"race-{round_}-{i}" for i in range(40)])
            futures[10].result(timeout=30)
            client.cancel(futures)
            del futures
        wait_for(lambda: all(s["tasks"] == 0 and s["ended"] == 0 and s["executing"] == 0
                             and not any(k.startswith("race-") for k in s["stored"])
                             for s in client.run(_worker_state).values()),
                 timeout=15, what="the workers' task state to empty")
        # every slot came back: as many tasks as threads run at once again
        assert client.gather(client.map(inc, range(20)), timeout=30) == list(range(1, 21))


def test_a_result_over_max_frame_bytes_fails_its_task_and_the_worker_goes_on():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      max_frame_bytes=1 << 20) as cluster, Client(cluster) as client:
        fut = client.submit(lambda: b"z" * (2 << 20))
        with pytest.raises(FrameTooLargeError):
            fut.result(timeout=30)
        assert client.submit(inc, 1).result(timeout=30) == 2


def test_a_worker_closing_while_its_tasks_end():
    # Tasks end (and their threads write to the scheduler) while the cluster closes.
    with LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=None) as cluster:
        client = Client(cluster)
        futures = client.map(slow_then, range(100), delay=0.002)
        futures[0].result(timeout=30)
        client.close()
    # (conftest checks that no thread, process or socket is left behind)


# --- actors: answered from the actor's thread, results read on the caller's ------------
class Seen:
    """Unpickling records the thread it happens on."""

    threads: list = []

    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        return (_rebuild_seen, (self.v,))


def _rebuild_seen(v):
    Seen.threads.append(threading.current_thread().name)
    return Seen(v)


class Box:
    def __init__(self):
        self.n = 0

    def incr(self, k=1):
        self.n += k
        return self.n

    def seen(self, v):
        return Seen(v)

    def slow(self, delay):
        import time
        time.sleep(delay)
        return delay


def test_actor_results_unpickled_on_the_callers_thread_callbacks_off_the_loop(cluster):
    with Client(cluster) as client:
        box = client.actor(Box)
        Seen.threads.clear()
        fut = box.seen(5)
        cf.wait([fut], timeout=30)                    # done, not yet unpickled
        assert fut.done()
        assert Seen.threads == []
        assert fut.result().v == 5 and fut.result().v == 5     # unpickled once
        assert Seen.threads == [threading.current_thread().name]
        ran_on = []
        done = threading.Event()
        f2 = box.slow(0.3)                  # still running when the callback is added
        f2.add_done_callback(lambda f: (ran_on.append(threading.current_thread().name),
                                        done.set()))
        assert done.wait(30)
        assert ran_on[0].startswith("mpnet-client-callbacks"), ran_on


def test_actor_calls_from_several_threads_keep_each_threads_order(cluster):
    # Direct writes (a call alone) and loop-batched ones (bursts) mix; each thread's
    # calls run in the order it made them.
    with Client(cluster) as client:
        box = client.actor(Box)
        log: dict = {}

        def caller(i):
            futures = []
            for j in range(200):
                futures.append(box.incr(1))
                if j % 20 == 0:
                    futures[-1].result(timeout=30)      # alone now and then: direct
            log[i] = [f.result(timeout=30) for f in futures]
        threads = [threading.Thread(target=caller, args=(i,), name=f"test-caller-{i}")
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for values in log.values():
            assert values == sorted(values) and len(set(values)) == 200
        assert sorted(v for vs in log.values() for v in vs) == list(range(1, 801))
        assert box.incr(0).result(timeout=30) == 800

