"""The scheduler's sessions: each registered peer is served only its role's messages.

The links here are plain objects with the link interface (send, reply, request, close,
closed, peer), as an in-process link would be: no sockets, no threads. What a TCP
Connection does with the ProtocolError (close that one connection) is tested at the end
with a real one.
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from mpnet import Scheduler
from mpnet.comm.endpoints import connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import Msg
from mpnet.comm.serialize import dumps
from mpnet.config import make_config
from mpnet.errors import ProtocolError
from tests.utils import wait_for

TOKEN = "s" * 64
FN, ARGS = dumps(len), dumps((([1],), {}))


class Link:
    """What a scheduler needs of a link, recording what it is sent."""

    def __init__(self, peer: str):
        self.peer = peer
        self.closed = False
        self.sent: list = []

    def send(self, msg):
        self.sent.append(msg)

    def reply(self, req_id, ok, value):
        self.sent.append([Msg.REPLY, req_id, ok, value])

    def request(self, *msg):
        self.sent.append(list(msg))
        return Future()

    def close(self, exc=None):
        self.closed = True


@pytest.fixture
def sched():
    s = Scheduler(host="127.0.0.1", port=0, token=TOKEN)
    yield s
    s.close()


def _client(s, client_id="c1", link=None):
    link = link or Link(f"tcp://{client_id}:1")
    s._dispatch(link, [Msg.REGISTER_CLIENT, 1, client_id, {}])
    assert link.sent[-1][:3] == [Msg.REPLY, 1, True]
    return link


def _worker(s, address="tcp://w1:1", nanny=None):
    link = Link(address)
    s._dispatch(link, [Msg.REGISTER_WORKER, 1, {"address": address, "nthreads": 1,
                                                 "nanny": nanny}])
    assert link.sent[-1][:3] == [Msg.REPLY, 1, True]
    return link


def _nanny(s, address="tcp://n1:1"):
    link = Link(address)
    s._dispatch(link, [Msg.REGISTER_NANNY, 1, {"address": address}])
    assert link.sent[-1][:3] == [Msg.REPLY, 1, True]
    return link


def _submit(key):
    return [Msg.SUBMIT, key, FN, ARGS, [], 0, 0, None, None]


def test_submit_on_a_worker_link_is_refused_and_leaves_no_task(sched):
    w = _worker(sched)
    with pytest.raises(ProtocolError, match="worker has no handler.*SUBMIT"):
        sched._dispatch(w, _submit("k1"))
    assert sched.state.tasks == {} and not sched.state.clients


def test_task_finished_from_a_client_is_refused_and_changes_nothing(sched):
    c = _client(sched)
    _worker(sched)
    sched._dispatch(c, _submit("k1"))
    ts = sched.state.tasks["k1"]
    assert ts.state == "processing"
    with pytest.raises(ProtocolError, match="client has no handler.*TASK_FINISHED"):
        sched._dispatch(c, [Msg.TASK_FINISHED, "k1", None, 1])
    assert ts.state == "processing" and sched.state.counts["finished"] == 0


@pytest.mark.parametrize("msg", [[Msg.INFO, 1], [Msg.RUN_ON_SCHEDULER, 1, FN],
                                 [Msg.RESTART, 1, None, 1.0], [Msg.GOODBYE, "bye"]])
def test_nothing_but_a_registration_is_served_before_one(sched, msg):
    link = Link("tcp://stranger:1")
    with pytest.raises(ProtocolError, match="before registration"):
        sched._dispatch(link, msg)
    assert link.sent == []


@pytest.mark.parametrize("msg", [[Msg.INFO, 1], _submit("k1"), [Msg.HEARTBEAT, {}]])
def test_a_nanny_is_served_only_its_own_messages(sched, msg):
    n = _nanny(sched)
    sent = len(n.sent)
    with pytest.raises(ProtocolError, match="nanny has no handler"):
        sched._dispatch(n, msg)
    assert len(n.sent) == sent and sched.state.tasks == {}


@pytest.mark.parametrize("second", [
    [Msg.REGISTER_CLIENT, 2, "c1", {}],
    [Msg.REGISTER_WORKER, 2, {"address": "tcp://w9:1", "nthreads": 1}],
    [Msg.REGISTER_NANNY, 2, {"address": "tcp://n9:1"}],
])
def test_a_second_registration_on_one_link_is_refused(sched, second):
    c = _client(sched)
    with pytest.raises(ProtocolError, match="client has no handler.*REGISTER_"):
        sched._dispatch(c, second)
    assert set(sched.state.clients) == {"c1"} and not sched.state.workers
    assert not sched.nannies


def test_a_client_that_registered_again_keeps_its_work_when_the_old_link_closes(sched):
    """A client reconnects (same id) before the scheduler saw its old link die: the old
    link's late close must not release what the client asked for on the new one."""
    old = _client(sched, "c1")
    _worker(sched)
    sched._dispatch(old, _submit("k1"))
    new = _client(sched, "c1")
    sched._dispatch(new, _submit("k2"))
    sched._on_close(old, None)
    assert set(sched.state.tasks) == {"k1", "k2"}
    assert "c1" in sched.state.clients
    sched._on_close(new, None)
    assert not sched.state.clients and not sched.state.tasks


def test_a_nanny_that_registered_again_stays_when_its_old_link_closes(sched):
    old = _nanny(sched, "tcp://n1:1")
    new = _nanny(sched, "tcp://n1:1")
    sched._on_close(old, None)
    assert sched.nannies["tcp://n1:1"].link is new
    sched._on_close(new, None)
    assert not sched.nannies


def test_a_worker_that_said_goodbye_is_not_lost_when_its_link_closes(sched):
    w = _worker(sched)
    sched._dispatch(w, [Msg.GOODBYE, "retired"])
    assert not sched.state.workers
    sched._on_close(w, None)
    assert sched.state.counts["workers_lost"] == 0


def test_a_worker_whose_link_breaks_is_lost_and_its_task_goes_elsewhere(sched):
    c = _client(sched)
    w1 = _worker(sched, "tcp://w1:1")
    sched._dispatch(c, _submit("k1"))
    assert sched.state.tasks["k1"].processing_on.address == "tcp://w1:1"
    w2 = _worker(sched, "tcp://w2:1")
    sched._on_close(w1, ConnectionResetError("reset"))
    assert list(sched.state.workers) == ["tcp://w2:1"]
    assert sched.state.counts["workers_lost"] == 1
    assert any(m[0] == Msg.COMPUTE and m[1] == "k1" for m in w2.sent)


def test_a_nanny_speaks_only_for_the_death_of_its_own_worker(sched):
    _worker(sched, "tcp://w1:1", nanny="tcp://n1:1")
    own, other = _nanny(sched, "tcp://n1:1"), _nanny(sched, "tcp://n2:1")
    sched._dispatch(other, [Msg.WORKER_EXITED, "tcp://w1:1", 7, -9, "killed", False, []])
    assert "tcp://w1:1" in sched.state.workers          # not its worker: ignored
    sched._dispatch(own, [Msg.WORKER_EXITED, "tcp://w1:1", 7, -9, "killed", False, []])
    assert "tcp://w1:1" not in sched.state.workers


def test_an_exit_reported_after_the_worker_was_lost_still_warns(sched, caplog):
    """On a loaded machine the nanny's report can come after lost_worker_grace: the
    worker is gone already, but its exit is a crash, not a planned one."""
    import logging
    _worker(sched, "tcp://w1:1", nanny="tcp://n1:1")
    nanny = _nanny(sched, "tcp://n1:1")
    sched.lose_worker(sched.state.workers["tcp://w1:1"], "its connection closed")
    with caplog.at_level(logging.INFO, logger="mpnet.scheduler"):
        sched._dispatch(nanny, [Msg.WORKER_EXITED, "tcp://w1:1", 7, -9,
                                "killed by signal 9 (SIGKILL)", True, []])
    exited = [r for r in caplog.records if "exited" in r.getMessage()]
    assert [r.levelno for r in exited] == [logging.WARNING]


def test_out_of_role_message_closes_only_that_tcp_connection():
    with Scheduler(host="127.0.0.1", port=0, token=TOKEN) as s:
        loop = EventLoop("test-sessions-loop").start()
        try:
            worker = connect_sync(loop, s.address, config=make_config(), token=TOKEN,
                                  role="worker", info={}, handler=lambda c, m: None)
            client = connect_sync(loop, s.address, config=make_config(), token=TOKEN,
                                  role="client", info={}, handler=lambda c, m: None)
            info = {"address": "tcp://127.0.0.1:9", "nthreads": 1}
            loop.run_sync(worker.request, Msg.REGISTER_WORKER, info).result(timeout=10)
            loop.run_sync(client.request, Msg.REGISTER_CLIENT, "c1", {}).result(timeout=10)
            worker.send_threadsafe(_submit("k1"))
            wait_for(lambda: worker.closed, timeout=10, what="the worker link to close")
            assert "k1" not in s.state.tasks
            wait_for(lambda: not s.state.workers, timeout=10, what="the worker to go")
            assert not client.closed and "c1" in s.state.clients
            client.close_threadsafe()
        finally:
            loop.close()
