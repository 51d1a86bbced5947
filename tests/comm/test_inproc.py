"""Client(cluster) in the cluster's process: an in-process link to the scheduler, and no
user code (done-callbacks, unpickling of results) on the scheduler's thread."""

from __future__ import annotations

import logging
import operator
import os
import threading
import time

import pytest

from mpnet import Client, LocalCluster
from mpnet.comm.connection import Connection
from mpnet.comm.inproc import Endpoint
from mpnet.comm.protocol import Msg
from mpnet.errors import ClusterClosedError, SerializationError
from tests.utils import wait_for


def inc(x):
    return x + 1


def wait_path(path):
    """A task that runs until the test creates ``path``."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return path


def first_byte(data, *_):
    return data[0]


class MadeByWhoever:
    """Unpickles into the thread that unpickles it."""

    def __reduce__(self):
        return threading.current_thread, ()


class CannotUnpickle:
    def __reduce__(self):
        return operator.truediv, (1, 0)


def made_by_whoever():
    return MadeByWhoever()


def cannot_unpickle():
    return CannotUnpickle()


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        yield c


def test_client_of_the_cluster_uses_an_in_process_link(cluster):
    with Client(cluster) as client:
        assert isinstance(client.scheduler, Endpoint)
        assert client.submit(inc, 1).result(timeout=10) == 2
        assert client.gather(client.map(inc, range(20)), timeout=10) == list(range(1, 21))
        # no socket of the scheduler's belongs to a client
        roles = client.loop.run_sync(lambda: [c.peer_role for c in
                                              cluster.scheduler.listener.connections])
        assert "client" not in roles
        assert client.scheduler_info()["clients"] == 1
    # closing it removes it from the scheduler, as a closed connection does
    wait_for(lambda: not cluster.scheduler.state.clients, what="the client to be removed")
    assert not cluster.scheduler._inproc


def test_a_client_given_the_address_uses_tcp(cluster):
    with Client(cluster.scheduler_address, token=cluster.token) as client:
        assert isinstance(client.scheduler, Connection)
        assert client.submit(inc, 41).result(timeout=10) == 42


def test_results_are_unpickled_on_the_callers_thread_not_the_loop(cluster):
    with Client(cluster) as client:
        fut = client.submit(made_by_whoever)
        wait_for(fut.done, what="the task")
        assert fut.result(timeout=10) is threading.current_thread()
        assert fut.result() is fut.result()           # unpickled once
        other = client.submit(made_by_whoever)
        got = []
        worker = threading.Thread(target=lambda: got.append(other.result(timeout=10)),
                                  name="a-user-thread")
        worker.start()
        worker.join(10)
        assert got == [worker]


def test_a_result_that_cannot_be_unpickled_fails_its_future_only(cluster):
    with Client(cluster) as client:
        bad = client.submit(cannot_unpickle)
        wait_for(bad.done, what="the task")
        assert isinstance(bad.exception(timeout=10), SerializationError)
        with pytest.raises(SerializationError, match="could not unpickle"):
            bad.result()
        assert bad.status == "error"
        assert client.submit(inc, 1).result(timeout=10) == 2


def test_a_blocked_done_callback_does_not_stop_the_cluster(cluster, tmp_path):
    release = threading.Event()
    ran_on = []

    def blocking(fut):
        ran_on.append(threading.current_thread().name)
        release.wait(10)
    try:
        with Client(cluster) as client:
            first = client.submit(wait_path, str(tmp_path / "go"))
            first.add_done_callback(blocking)
            (tmp_path / "go").touch()
            wait_for(lambda: ran_on, what="the callback to start")
            # the callback still blocks: the scheduler answers and other tasks finish
            assert client.submit(inc, 2).result(timeout=5) == 3
            assert client.scheduler_info(timeout=5)["workers"]
            assert ran_on[0].startswith("mpnet-client-callbacks")
            release.set()
    finally:
        release.set()


def test_cancel_runs_callbacks_before_it_returns(cluster, tmp_path):
    go = tmp_path / "go"
    try:
        with Client(cluster) as client:
            blocker = client.submit(wait_path, str(go))     # the only thread busy
            queued = client.submit(inc, 1)
            called = []
            queued.add_done_callback(called.append)
            assert queued.cancel() is True
            assert called == [queued]
            go.touch()
            assert blocker.result(timeout=10) == str(go)
    finally:
        go.touch()


def test_messages_to_the_scheduler_carry_copies_not_the_users_objects(cluster, tmp_path):
    data = bytearray(b"a" * (1 << 17))    # large: pickled out of band
    with Client(cluster) as client:
        gate = client.submit(wait_path, str(tmp_path / "go"))
        fut = client.submit(first_byte, data, gate)     # waits for gate at the scheduler
        wait_for(lambda: fut.key in cluster.scheduler.state.tasks, what="the SUBMIT")
        data[0] = ord("b")                              # after it was sent
        (tmp_path / "go").touch()
        assert fut.result(timeout=10) == ord("a")


def test_a_message_outside_the_clients_role_drops_the_link(cluster, caplog):
    with Client(cluster) as client, caplog.at_level(logging.WARNING, "mpnet"):
        link = client.scheduler
        client.loop.run_sync(link.send, [Msg.TASK_FINISHED, "not-a-task", None, 0])
        wait_for(lambda: link.closed, what="the link to close")
        assert "a client has no handler for message type" in caplog.text
        assert "not-a-task" not in cluster.scheduler.state.tasks
        # as a TCP client reconnects, it links again (the scheduler still runs)
        client.wait_for_scheduler(timeout=10)
        assert client.scheduler is not link and not client.scheduler.closed
        assert client.submit(inc, 1).result(timeout=10) == 2


def test_closing_the_cluster_fails_what_is_pending_without_reconnecting():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pending = client.submit(time.sleep, 1)
        cluster.close()
        with pytest.raises(ClusterClosedError):
            pending.result(timeout=10)
        wait_for(lambda: client.status == "disconnected", what="the client to give up")
        with pytest.raises(ClusterClosedError):
            cluster.scheduler.connect_inproc("client-late", lambda *a: None, None)
