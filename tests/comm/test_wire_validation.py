"""A token holder that sends a malformed or out-of-role message loses its connection and
leaves no state behind; the scheduler keeps serving everyone else."""

from __future__ import annotations

import pytest

from mpnet import Client, Scheduler, Worker
from mpnet.comm.endpoints import connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import Msg
from mpnet.comm.serialize import dumps
from mpnet.config import make_config
from tests.utils import wait_for

TOKEN = "v" * 64


def inc(x):
    return x + 1


@pytest.fixture
def sched():
    with Scheduler(host="127.0.0.1", port=0, token=TOKEN) as s:
        yield s


@pytest.fixture
def raw(sched):
    """Open authenticated connections to the scheduler and send anything on them."""
    loop = EventLoop("test-raw-loop").start()
    conns = []

    def open_(role: str = "client"):
        conn = connect_sync(loop, sched.address, config=make_config(), token=TOKEN,
                            role=role, info={}, handler=lambda c, m: None)
        conns.append(conn)
        return conn
    yield open_
    for c in conns:
        c.close_threadsafe()
    loop.close()


def _register(conn, client_id="raw-client"):
    fut = conn.loop.run_sync(conn.request, Msg.REGISTER_CLIENT, client_id, {})
    fut.result(timeout=10)


def _still_serves(sched):
    with Worker(sched.address, token=TOKEN, host="127.0.0.1") as w, \
            Client(sched.address, token=TOKEN, timeout=10) as c:
        assert c.submit(inc, 1).result(timeout=10) == 2
        assert w.address in sched.workers


def _sent(conn, msg):
    conn.send_threadsafe(msg)
    wait_for(lambda: conn.closed, timeout=10, what="the scheduler to drop the connection")


FN, ARGS = dumps(inc), dumps(((1,), {}))


def test_submit_before_register_client_leaves_no_task(sched, raw):
    conn = raw()
    _sent(conn, [Msg.SUBMIT, "k1", FN, ARGS, [], 0, 0, None, None])
    assert sched.state.tasks == {}
    _still_serves(sched)


def test_bad_resources_with_no_worker_cannot_stick_the_cluster(sched, raw):
    conn = raw()
    _register(conn)
    _sent(conn, [Msg.SUBMIT, "k2", FN, ARGS, [], 0, 0, {"GPU": "1"}, None])
    assert "k2" not in sched.state.tasks
    _still_serves(sched)


@pytest.mark.parametrize("msg", [
    [Msg.SUBMIT, 7, FN, ARGS, [], 0, 0, None, None],               # key not a string
    [Msg.SUBMIT, "k", "not a payload", ARGS, [], 0, 0, None, None],
    [Msg.SUBMIT, "k", FN, ARGS, "dep", 0, 0, None, None],           # deps not a list
    [Msg.SUBMIT, "k", FN, ARGS, [1], 0, 0, None, None],
    [Msg.SUBMIT, "k", FN, ARGS, [], "high", 0, None, None],
    [Msg.SUBMIT, "k", FN, ARGS, [], 0, -1, None, None],             # negative retries
    [Msg.SUBMIT, "k", FN, ARGS, [], 0, True, None, None],           # a bool is no int
    [Msg.SUBMIT, "k", FN, ARGS, [], 0, 0, {"GPU": -1}, None],
    [Msg.SUBMIT, "k", FN, ARGS, [], 0, 0, {"GPU": float("nan")}, None],
    [Msg.SUBMIT, "k", FN, ARGS, [], 0, 0, None, "w1"],
    [Msg.RELEASE, "k"],
    [Msg.CANCEL, ["k"], 3],
    [Msg.SCATTER, 1, [["k", 5]], None],
    [Msg.CREATE_ACTOR, "a", None, FN, ARGS, {"resources": {"GPU": "x"}}],
    [Msg.CREATE_ACTOR, "a", None, FN, ARGS, {"max_concurrency": -2}],
    [Msg.RESTART, 1, None, "soon"],
    [Msg.REGISTER_PLUGIN, 1, "elsewhere", "p", FN],
    [Msg.TASK_FINISHED, "k", None, 1],                               # not from a client
    [Msg.WORKER_EXITED, "tcp://x:1", 1, 1, "x", False, None],        # not from a client
    [Msg.REGISTER_CLIENT, 1, "again", {}],                           # registered twice
])
def test_malformed_or_out_of_role_message_closes_only_that_connection(sched, raw, msg):
    conn = raw()
    _register(conn)
    before = (set(sched.state.tasks), set(sched.state.actors), set(sched.state.workers))
    _sent(conn, msg)
    assert (set(sched.state.tasks), set(sched.state.actors),
            set(sched.state.workers)) == before
    wait_for(lambda: "raw-client" not in sched.state.clients, timeout=10,
             what="the client record to go with its connection")


@pytest.mark.parametrize("info", [
    {"address": "tcp://127.0.0.1:1", "nthreads": "2"},
    {"address": 5, "nthreads": 1},
    {"nthreads": 1},
    {"address": "tcp://127.0.0.1:1", "nthreads": 1, "resources": {"GPU": "1"}},
])
def test_bad_worker_registration_is_refused_without_state(sched, raw, info):
    conn = raw("worker")
    conn.send_threadsafe([Msg.REGISTER_WORKER, 1, info])
    wait_for(lambda: conn.closed, timeout=10, what="the scheduler to drop the connection")
    assert sched.state.workers == {}
    _still_serves(sched)
