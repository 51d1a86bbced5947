"""One Client, many user threads (issue 10, finding 1).

Every test hammers a client from several threads at once on an in-process cluster,
2,000 tries each, with the interpreter's thread switch interval cut to a microsecond so
that the races that once happened in about one try in a thousand happen in most runs.
Each one failed before the futures table and the scheduler link came under one lock.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading

import pytest

from mpnet import Client, ClusterClosedError, LocalCluster

TRIES = 2000


def inc(x):
    return x + 1


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as c:
        yield c


@pytest.fixture
def contention():
    """Switch threads every microsecond (default: 5 ms) while the test runs."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def hammer(n_threads, work):
    """Run ``work(i)`` on ``n_threads`` threads at once; re-raise the first error."""
    errors = []
    start = threading.Barrier(n_threads)

    def run(i):
        start.wait()
        try:
            work(i)
        except BaseException as e:   # noqa: BLE001 - handed to the test thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,), name=f"test-hammer-{i}")
               for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a hammering thread hung"
    if errors:
        raise errors[0]


def test_failing_pending_futures_while_threads_submit(cluster, contention):
    """The loop fails every pending future (scheduler lost, close) while user threads
    insert new ones: never 'dictionary changed size during iteration', and every
    future submitted ends (a result, or the error that failed it)."""
    with Client(cluster) as client:
        stop = threading.Event()

        def submitter(i):
            while not stop.is_set():      # in rounds, so that the table stays small
                futures = [client.submit(inc, i) for _ in range(50)]
                done, not_done = cf.wait(futures, timeout=20)
                assert not not_done, f"{len(not_done)} futures never ended"

        def failer(i):
            try:
                for _ in range(TRIES):
                    client._session.fail_pending("test: failed on purpose")
            finally:
                stop.set()
        hammer(3, lambda i: failer(i) if i == 0 else submitter(i))


def test_same_explicit_key_from_two_threads_gives_one_future(cluster, contention):
    with Client(cluster) as client:
        got = [[None] * TRIES for _ in range(2)]

        def submitter(i):
            for n in range(TRIES):
                got[i][n] = client.submit(inc, n, key=f"same-{n}")
        hammer(2, submitter)
        twins = [n for n in range(TRIES) if got[0][n] is not got[1][n]]
        assert not twins, f"{len(twins)} keys got two futures (e.g. same-{twins[0]})"
        assert client.gather(got[0], timeout=20) == [n + 1 for n in range(TRIES)]


def test_submit_gather_cancel_close_at_once(cluster, contention):
    """Threads submit, gather and cancel while another closes the client: every call
    either works or raises ClusterClosedError / CancelledError, and every future ends."""
    made = []
    for attempt in range(20):
        client = Client(cluster)
        closed = threading.Event()
        mine = []

        def user(i, client=client, closed=closed, mine=mine):
            for n in range(TRIES // 20):
                try:
                    f = client.submit(inc, n)
                    mine.append(f)
                    if n % 3 == 0:
                        client.cancel([f])
                    elif n % 3 == 1:
                        client.gather([f], timeout=20)
                except (ClusterClosedError, cf.CancelledError):
                    pass
                if closed.is_set() and n > 10:
                    return

        def closer(i, client=client, closed=closed):
            client.close()
            closed.set()
        hammer(4, lambda i: closer(i) if i == 0 else user(i))
        made += mine
    done, not_done = cf.wait(made, timeout=20)
    assert not not_done, f"{len(not_done)} of {len(made)} futures never ended"


def test_a_send_on_a_lost_link_fails_its_future_never_drops_it(cluster, contention):
    """The scheduler link drops (and comes back) while threads submit: each future
    gets its result or ClusterClosedError; none waits forever."""
    with Client(cluster) as client:
        futures = []
        stop = threading.Event()

        def submitter(i):
            while not stop.is_set():
                try:
                    futures.append(client.submit(inc, i))
                except ClusterClosedError:
                    pass

        def dropper(i):
            try:
                for _ in range(10):
                    client.wait_for_scheduler(timeout=10)
                    client.loop.run_sync(lambda: client.scheduler.close())
                client.wait_for_scheduler(timeout=10)
            finally:
                stop.set()
        hammer(3, lambda i: dropper(i) if i == 0 else submitter(i))
        done, not_done = cf.wait(futures, timeout=20)
        assert not not_done, f"{len(not_done)} of {len(futures)} futures never ended"
        assert client.submit(inc, 1).result(timeout=10) == 2
