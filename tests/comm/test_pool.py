"""The peer connection pool (mpnet.comm.pool) against a real listener: one dial per
address however many ask at once, closed connections and failed dials leave the pool,
and close() closes everything."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from mpnet.comm.endpoints import Listener
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.pool import Pool
from mpnet.comm.protocol import Msg
from mpnet.config import make_config
from mpnet.errors import CommClosedError, ConnectTimeoutError
from tests.utils import wait_for

TOKEN = "p" * 64
CONFIG = make_config(peer_connect_timeout=0.3)


class Peer:
    """A listener that counts the connections it opened and answers GET_DATA."""

    def __init__(self):
        self.loop = EventLoop("test-peer-loop").start()
        self.opened: list = []
        self.listener = Listener(self.loop, "127.0.0.1", 0, config=CONFIG, token=TOKEN,
                                 role="worker", info={}, handler=self._handle,
                                 on_open=self.opened.append)
        self.address = f"tcp://127.0.0.1:{self.listener.port}"

    def _handle(self, conn, msg):
        if msg[0] == Msg.GET_DATA:
            conn.reply(msg[1], True, [[key, key.upper()] for key in msg[2]])

    def drop_all(self):
        self.loop.run_sync(lambda: [c.close() for c in list(self.listener.connections)])

    def stop(self):
        self.loop.run_sync(self.listener.close)
        self.loop.close()


@pytest.fixture
def loop():
    loop = EventLoop("test-pool-loop").start()
    yield loop
    loop.close()


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.stop()


def make_pool(loop, lost=None):
    return Pool(loop, config=CONFIG, token=TOKEN, role="worker", info={"address": "x"},
                handler=lambda conn, msg: None,
                on_close=None if lost is None else lambda a, c, e: lost.append(a))


def test_concurrent_asks_share_one_connection(loop, peer):
    pool = make_pool(loop)
    try:
        start = threading.Barrier(8)
        asked: list = []

        def ask():
            start.wait()
            asked.append(loop.run_sync(pool.get, peer.address))
        threads = [threading.Thread(target=ask, name=f"test-ask-{i}") for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        conns = {f.result(timeout=10) for f in asked}
        assert len(conns) == 1
        answer = loop.run_sync(pool.request, peer.address, Msg.GET_DATA, ["a", "b"])
        assert answer.result(timeout=10) == [["a", "A"], ["b", "B"]]
        assert len(peer.opened) == 1
    finally:
        loop.run_sync(pool.close)


def test_a_closed_connection_leaves_the_pool_and_the_next_ask_dials_again(loop, peer):
    lost: list = []
    pool = make_pool(loop, lost)
    try:
        first = loop.run_sync(pool.get, peer.address).result(timeout=10)
        peer.drop_all()
        wait_for(lambda: lost == [peer.address], what="the pool to hear of the close")
        assert loop.run_sync(lambda: peer.address not in pool)
        second = loop.run_sync(pool.get, peer.address).result(timeout=10)
        assert second is not first and not second.closed
        # (the peer's side of the handshake may finish a moment after ours)
        wait_for(lambda: len(peer.opened) == 2, what="the second connection at the peer")
    finally:
        loop.run_sync(pool.close)


def test_a_failed_dial_is_not_kept(loop):
    gone = Peer()
    address = gone.address
    gone.stop()
    pool = make_pool(loop)
    try:
        with pytest.raises(ConnectTimeoutError):
            loop.run_sync(pool.get, address).result(timeout=10)
        wait_for(lambda: loop.run_sync(lambda: len(pool)) == 0, what="the dial to leave")
    finally:
        loop.run_sync(pool.close)


def test_close_closes_connections_and_stops_dials(loop, peer):
    pool = make_pool(loop)
    conn = loop.run_sync(pool.get, peer.address).result(timeout=10)
    gone = Peer()
    address = gone.address
    gone.stop()
    dialing = loop.run_sync(pool.get, address)
    loop.run_sync(pool.close)
    assert conn.closed
    with pytest.raises(CommClosedError):
        dialing.result(timeout=5)
    with pytest.raises(CommClosedError, match="closed"):
        loop.run_sync(pool.get, peer.address).result(timeout=5)
    assert not isinstance(dialing.exception(), cf.CancelledError)
