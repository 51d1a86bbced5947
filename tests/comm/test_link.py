"""The reconnecting link (mpnet.comm.link) against a real listener that goes away and
comes back on the same port: nothing sent while it is down is lost, requests waiting on
it fail with LinkLostError when it gives up, and close() stops a reconnect."""

from __future__ import annotations

import threading

import pytest

from mpnet.comm.endpoints import Listener
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.link import Link
from mpnet.comm.protocol import Msg
from mpnet.config import make_config
from mpnet.errors import ConnectTimeoutError, LinkLostError
from mpnet.lifecycle import Status
from tests.utils import wait_for

TOKEN = "k" * 64
CONFIG = make_config(connect_timeout=5.0, death_timeout=10.0)


class Server:
    """A listener that answers REGISTER_CLIENT (refusing the first ``refuse``) and
    STATUS, and records every other message in order (with the connection's number)."""

    def __init__(self, port: int = 0, refuse: int = 0):
        self.loop = EventLoop("test-server-loop").start()
        self.refuse = refuse
        self.registered = 0
        self.received: list = []
        self._lock = threading.Lock()
        self.listener = Listener(self.loop, "127.0.0.1", port, config=CONFIG, token=TOKEN,
                                 role="scheduler", info={}, handler=self._handle)
        self.port = self.listener.port
        self.address = f"tcp://127.0.0.1:{self.port}"

    def _handle(self, conn, msg):
        if msg[0] == Msg.REGISTER_CLIENT:
            if self.refuse:
                self.refuse -= 1
                conn.reply(msg[1], False, "a client of that id is already registered")
                return
            self.registered += 1
            conn.reply(msg[1], True, {"welcome": self.registered})
        elif msg[0] == Msg.STATUS:
            conn.reply(msg[1], True, "status")
        else:
            with self._lock:
                self.received.append((self.registered, msg))

    def messages(self):
        with self._lock:
            return list(self.received)

    def stop(self):
        self.loop.run_sync(self.listener.close)
        self.loop.close()


@pytest.fixture
def loop():
    loop = EventLoop("test-link-loop").start()
    yield loop
    loop.close()


def make_link(loop, address, events, **kw):
    return Link(loop, address, config=kw.pop("config", CONFIG), token=TOKEN, role="client",
                info={"id": "c1"}, handler=lambda conn, msg: None,
                register=lambda conn: conn.request(Msg.REGISTER_CLIENT, "c1", {}),
                name="test client",
                on_lost=lambda exc: events.append("lost"),
                on_restored=lambda answer: events.append(("restored", answer)),
                on_gave_up=lambda err: events.append(("gave up", err)), **kw)


def test_sends_while_down_are_delivered_in_order_after_the_reconnect(loop):
    server = Server()
    events: list = []
    link = make_link(loop, server.address, events)
    try:
        assert link.open() == {"welcome": 1}
        loop.run_sync(link.send, [Msg.HEARTBEAT, {"n": 0}])
        wait_for(lambda: len(server.messages()) == 1, what="the first message")
        port = server.port
        server.stop()
        wait_for(lambda: link.status is Status.RECONNECTING, what="the loss")
        for n in range(1, 4):
            loop.run_sync(link.send, [Msg.HEARTBEAT, {"n": n}])
        answer = loop.run_sync(link.request, Msg.STATUS, {})
        assert not answer.done()
        server = Server(port)
        assert answer.result(timeout=10) == "status"
        wait_for(lambda: len(server.messages()) == 3, what="the queued messages")
        # after the new REGISTER (registered == 1 on the new server), in order
        assert server.messages() == [(1, [Msg.HEARTBEAT, {"n": n}]) for n in (1, 2, 3)]
        assert events == ["lost", ("restored", {"welcome": 1})]
        assert link.is_open and link.reconnects == 1
    finally:
        link.close_threadsafe()
        server.stop()


def test_pending_requests_fail_with_a_clear_error_when_the_link_gives_up(loop):
    server = Server()
    events: list = []
    link = make_link(loop, server.address, events, retry_for=0.5)
    try:
        link.open()
        server.stop()
        wait_for(lambda: link.status is Status.RECONNECTING, what="the loss")
        pending = loop.run_sync(link.request, Msg.STATUS, {})
        with pytest.raises(LinkLostError) as info:
            pending.result(timeout=10)
        text = str(info.value)
        assert server.address in text and "death_timeout" in text and "lost" in text
        assert link.status is Status.DISCONNECTED and link.closed
        assert events[0] == "lost" and events[1][0] == "gave up"
        with pytest.raises(LinkLostError):
            loop.run_sync(link.send, [Msg.HEARTBEAT, {}])
    finally:
        link.close_threadsafe()


def test_a_refused_registration_after_a_loss_is_tried_again(loop):
    server = Server()
    events: list = []
    link = make_link(loop, server.address, events)
    try:
        link.open()
        port = server.port
        server.stop()
        wait_for(lambda: link.status is Status.RECONNECTING, what="the loss")
        server = Server(port, refuse=2)
        wait_for(lambda: link.status is Status.OPEN, timeout=10, what="the re-registration")
        assert server.refuse == 0 and server.registered == 1
    finally:
        link.close_threadsafe()
        server.stop()


def test_the_queue_is_bounded_and_refuses_loudly(loop):
    server = Server()
    link = make_link(loop, server.address, [], config=CONFIG.replace(link_queue_limit=2))
    try:
        link.open()
        server.stop()
        wait_for(lambda: link.status is Status.RECONNECTING, what="the loss")
        loop.run_sync(link.send, [Msg.HEARTBEAT, {}])
        loop.run_sync(link.send, [Msg.HEARTBEAT, {}])
        with pytest.raises(LinkLostError, match="link_queue_limit"):
            loop.run_sync(link.send, [Msg.HEARTBEAT, {}])
    finally:
        link.close_threadsafe()


def test_close_while_reconnecting_stops_it_and_fails_what_waits(loop):
    server = Server()
    events: list = []
    link = make_link(loop, server.address, events)
    link.open()
    port = server.port
    server.stop()
    wait_for(lambda: link.status is Status.RECONNECTING, what="the loss")
    pending = loop.run_sync(link.request, Msg.STATUS, {})
    loop.run_sync(link.close)
    with pytest.raises(LinkLostError, match="closed"):
        pending.result(timeout=5)
    loop.run_sync(link.send, [Msg.HEARTBEAT, {}])   # late, after the owner's close: no error
    server = Server(port)       # nobody dials it any more
    try:
        assert not link.wait_for(Status.OPEN, timeout=0.5)
        assert server.registered == 0 and events == ["lost"]
    finally:
        server.stop()


def test_the_first_connection_fails_fast_and_says_where(loop):
    server = Server()
    address = server.address
    server.stop()
    link = make_link(loop, address, [], config=CONFIG.replace(connect_timeout=0.3))
    with pytest.raises(ConnectTimeoutError, match=address.split("//")[1]):
        link.open()
    assert link.closed
    link.close_threadsafe()
