"""A worker's own port, through sessions: each peer is served only what its handshake
role may ask (mpnet/worker/peers.py). Real TCP with the cluster token: a message outside
the role, or a role the port does not serve, closes that one connection with one log
line, and the worker goes on serving everyone else.

And the orders on a worker's or nanny's link to its scheduler: one Role each, whose
handlers name their fields, so a malformed order from a (fake) scheduler closes the link
with the ProtocolError in the log line, and the link registers again."""

from __future__ import annotations

import logging
import re

import pytest

from mpnet import Client, Nanny, Scheduler, Worker
from mpnet.comm.endpoints import Listener, connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import Msg
from mpnet.comm.serialize import decode_value, dumps, loads
from mpnet.config import make_config
from mpnet.errors import ProtocolError
from mpnet.worker.peers import PeerPort
from tests.utils import wait_for

TOKEN = "w" * 64


def inc(x):
    return x + 1


def _ran(path):
    with open(path, "w") as f:
        f.write("ran")
    return 1


class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


@pytest.fixture(scope="module")
def cluster():
    """A scheduler, one worker holding a result and hosting an actor, and a client."""
    with Scheduler(host="127.0.0.1", port=0, token=TOKEN) as s, \
            Worker(s.address, token=TOKEN, host="127.0.0.1") as w, \
            Client(s.address, token=TOKEN, timeout=10) as c:
        kept = c.submit(inc, 1)
        assert kept.result(timeout=10) == 2
        counter = c.actor(Counter)
        assert counter.add(0).result(timeout=10) == 0     # hosted, and its caller dialed
        yield s, w, c, kept, counter


@pytest.fixture
def raw():
    """Dial the worker's port as any role; what each connection is sent is recorded."""
    loop = EventLoop("test-peer-loop").start()
    conns = []

    def open_(address, role):
        got: list = []
        conn = connect_sync(loop, address, config=make_config(), token=TOKEN, role=role,
                            info={}, handler=lambda c, m: got.append(m))
        conn.received = got
        conns.append(conn)
        return conn
    yield open_
    for c in conns:
        c.close_threadsafe()
    loop.close()


def _request(conn, *msg):
    return conn.loop.run_sync(conn.request, *msg).result(timeout=10)


def _get_data(conn, key):
    return {k: loads(p) for k, p in _request(conn, Msg.GET_DATA, [key])}


def _call(conn, key, method, *args):
    conn.send_threadsafe([Msg.ACTOR_CALL, 7, key, method, list(args), None, "call"])
    answer = wait_for(lambda: conn.received, timeout=10, what="the actor's answer")[0]
    assert answer[:3] == [Msg.ACTOR_RESULT, 7, True], answer
    return decode_value(answer[3])


def _unaffected(cluster, raw, calls_before=None):
    s, w, c, kept, counter = cluster
    assert w.status == "running" and w.address in s.state.workers
    assert kept.key in w.store
    assert _get_data(raw(w.address, "worker"), kept.key) == {kept.key: 2}
    if calls_before is not None:
        assert w.actor_host.calls[counter.key] == calls_before
    assert c.submit(inc, kept).result(timeout=10) == 3
    assert counter.add(0).result(timeout=10) >= 0


def _dropped(caplog, conn, what):
    """The worker closed ``conn``, saying why in one log line (returned)."""
    wait_for(lambda: conn.closed, timeout=10, what=f"the worker to drop {what}")

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "mpnet.comm"
                and r.getMessage().startswith("dropped connection from")]
    wait_for(lines, timeout=10, what="the log line")
    assert len(lines()) == 1, lines()
    return lines()[0]


# --- each allowed pair ----------------------------------------------------------------

@pytest.mark.parametrize("role", ["worker", "client"])
def test_workers_and_clients_fetch_data(cluster, raw, role):
    s, w, c, kept, counter = cluster
    assert _get_data(raw(w.address, role), kept.key) == {kept.key: 2}


def test_an_actor_caller_calls_an_actor(cluster, raw):
    s, w, c, kept, counter = cluster
    before = counter.add(0).result(timeout=10)
    assert _call(raw(w.address, "caller"), counter.key, "add", 5) == before + 5
    assert counter.add(0).result(timeout=10) == before + 5


# --- a message outside the role -------------------------------------------------------

def test_a_caller_may_not_fetch_data(cluster, raw, caplog):
    s, w, c, kept, counter = cluster
    caplog.set_level(logging.WARNING, logger="mpnet.comm")
    conn = raw(w.address, "caller")
    conn.send_threadsafe([Msg.GET_DATA, 1, [kept.key]])
    line = _dropped(caplog, conn, "the caller")
    assert "actor caller has no handler" in line and "GET_DATA" in line
    assert not [m for m in conn.received if m[0] == Msg.REPLY]     # nothing was served
    _unaffected(cluster, raw)


def test_a_peer_worker_may_not_call_actors(cluster, raw, caplog):
    s, w, c, kept, counter = cluster
    caplog.set_level(logging.WARNING, logger="mpnet.comm")
    calls = w.actor_host.calls[counter.key]
    value = counter.add(0).result(timeout=10)
    conn = raw(w.address, "worker")
    conn.send_threadsafe([Msg.ACTOR_CALL, 7, counter.key, "add", [100], None, "call"])
    line = _dropped(caplog, conn, "the peer worker")
    assert "peer worker has no handler" in line and "ACTOR_CALL" in line
    assert conn.received == []
    _unaffected(cluster, raw, calls_before=calls + 1)      # +1: the check of the value
    assert counter.add(0).result(timeout=10) == value


def test_a_client_may_not_give_orders_on_the_workers_port(cluster, raw, caplog, tmp_path):
    s, w, c, kept, counter = cluster
    caplog.set_level(logging.WARNING, logger="mpnet.comm")
    marker = tmp_path / "ran"
    conn = raw(w.address, "client")
    conn.send_threadsafe([Msg.COMPUTE, "peer-task", dumps(_ran), dumps(((str(marker),), {})),
                          [], [0]])
    line = _dropped(caplog, conn, "the client")
    assert "client has no handler" in line and "COMPUTE" in line
    assert not marker.exists() and "peer-task" not in w.tasks
    _unaffected(cluster, raw)


# --- a role the port does not serve ---------------------------------------------------

@pytest.mark.parametrize("role", ["scheduler", "nanny", "stranger"])
def test_a_role_the_port_does_not_serve_is_refused_at_once(cluster, raw, caplog, role):
    s, w, c, kept, counter = cluster
    caplog.set_level(logging.WARNING, logger="mpnet.comm")
    conn = raw(w.address, role)                  # refused without sending anything
    line = _dropped(caplog, conn, f"a {role}")
    assert f"role {role!r} has nothing to ask of a worker" in line
    assert not w.loop.run_sync(lambda: [x for x in w.peers.sessions if x.link is conn])
    _unaffected(cluster, raw)


# --- the worker's own dials ---------------------------------------------------------------

def test_nothing_but_replies_is_served_on_the_workers_own_dials():
    port = PeerPort(get_data=lambda session, req_id, keys: None,
                    actor_call=lambda session, call_id, key, method, a, k, kind: None)
    for msg in ([Msg.GET_DATA, 1, ["k"]], [Msg.COMPUTE, "k", None, None, [], [0]]):
        with pytest.raises(ProtocolError, match="on its own dial to a peer"):
            port.dispatch(object(), msg)


# --- orders from the scheduler: a fake one that sends malformed ones ---------------------

class FakeScheduler:
    """Answers every registration; ``registered``: (message type, connection)."""

    def __init__(self):
        self.loop = EventLoop("test-fake-scheduler").start()
        self.registered: list = []
        self.listener = self.loop.run_sync(lambda: Listener(
            self.loop, "127.0.0.1", 0, config=make_config(), token=TOKEN, role="scheduler",
            info={"id": "fake"}, handler=self._on_message))
        self.address = self.listener.address_at("127.0.0.1")

    def _on_message(self, conn, msg):
        if msg[0] in (Msg.REGISTER_WORKER, Msg.REGISTER_NANNY):
            self.registered.append((msg[0], conn))
            conn.reply(msg[1], True, {"id": "fake", "address": self.address})

    def links(self, kind):
        return [conn for k, conn in list(self.registered) if k == kind]

    def send(self, conn, msg):
        self.loop.call_soon_threadsafe(conn.send, msg)

    def close(self):
        self.loop.run_sync(self.listener.close)
        self.loop.close()


@pytest.fixture
def fake():
    f = FakeScheduler()
    yield f
    f.close()


def _lost_lines(caplog):
    return [r.getMessage() for r in caplog.records if "lost its scheduler" in r.getMessage()]


@pytest.mark.parametrize("msg, why", [
    ([Msg.LOGS, 1], r"malformed LOGS message: 1 fields"),
    ([Msg.HOST_ACTOR, "an-actor"], r"malformed HOST_ACTOR message: 1 fields"),
    ([Msg.CLOSE_WORKER, "a", "b", "c"], r"malformed CLOSE_WORKER message: 3 fields"),
    ([Msg.FREE, "not-a-list"], r"FREE"),
    ([Msg.GET_DATA, 1, ["k"]], r"worker has no handler .*GET_DATA"),   # peers' only
])
def test_a_malformed_order_closes_the_workers_scheduler_link(fake, caplog, msg, why):
    caplog.set_level(logging.WARNING, logger="mpnet.worker")
    with Worker(fake.address, token=TOKEN, host="127.0.0.1") as w:
        [link] = fake.links(Msg.REGISTER_WORKER)
        fake.send(link, msg)
        wait_for(lambda: link.closed, timeout=10, what="the worker to drop the link")
        wait_for(lambda: len(fake.links(Msg.REGISTER_WORKER)) == 2, timeout=10,
                 what="the worker to register again")
        lines = _lost_lines(caplog)
        assert len(lines) == 1 and re.search(why, lines[0]), lines
        wait_for(lambda: w.status == "running", timeout=10, what="the worker back")


@pytest.mark.parametrize("msg, why", [
    ([Msg.RESTART_WORKER], r"malformed RESTART_WORKER message: 0 fields"),
    ([Msg.LOGS, 1, "many"], r"LOGS"),
])
def test_a_malformed_order_closes_the_nannys_scheduler_link(fake, caplog, msg, why):
    caplog.set_level(logging.WARNING, logger="mpnet.nanny")
    with Nanny(fake.address, token=TOKEN, host="127.0.0.1") as n:
        pid = n.pid
        [link] = fake.links(Msg.REGISTER_NANNY)
        fake.send(link, msg)
        wait_for(lambda: link.closed, timeout=10, what="the nanny to drop the link")
        wait_for(lambda: len(fake.links(Msg.REGISTER_NANNY)) == 2, timeout=10,
                 what="the nanny to register again")
        lines = _lost_lines(caplog)
        assert len(lines) == 1 and re.search(why, lines[0]), lines
        assert n.pid == pid and n.restarts == 0      # its worker was not restarted
