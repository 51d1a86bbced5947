"""Large payloads over real connections: what arrives is what was sent, of the same type,
through every receive path (the stream buffer, a direct buffer, a direct map, a direct
bytes) and with several large buffers in one frame."""

from __future__ import annotations

import os

import pytest

from mpnet.comm.endpoints import Listener, connect
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import Msg
from mpnet.comm.serialize import RAW_BYTES, dumps, loads
from mpnet.config import make_config

TOKEN = "test-token-large-data"


@pytest.fixture
def echo():
    """A connection to a server that answers each request with the payloads it got."""
    config = make_config()
    server_loop, client_loop = EventLoop("test-server").start(), EventLoop("test-client").start()

    def handler(conn, msg):
        conn.reply(msg[1], True, msg[2])

    listener = Listener(server_loop, "127.0.0.1", 0, config=config, token=TOKEN,
                        role="worker", info={}, handler=handler)
    conn = connect(client_loop, listener.address_at("127.0.0.1"), config=config, token=TOKEN,
                   role="client", info={}, handler=lambda c, m: None).result(10)

    def ask(values: list) -> list:
        payloads = [dumps(v) for v in values]
        return client_loop.run_sync(conn.request, Msg.GET_DATA, payloads).result(30)
    yield ask
    client_loop.run_sync(conn.close)
    server_loop.run_sync(listener.close)
    client_loop.close()
    server_loop.close()


@pytest.mark.parametrize("size", [100, 200_000, 3 * 1024 * 1024])
def test_bytes_arrive_as_bytes(echo, size):
    data = os.urandom(size)
    [back] = echo([data])
    value = loads(back)
    assert type(value) is bytes and value == data
    if size >= 64 * 1024:
        assert back.kind == RAW_BYTES and type(back.buffers[0]) is bytes   # no copy at loads
    assert hash(value) == hash(data)        # a real, immutable bytes


def test_several_large_buffers_of_each_kind_in_one_frame(echo):
    np = pytest.importorskip("numpy")
    arr = np.arange(600_000, dtype="float64")            # 4.8 MB: a map
    small = np.arange(20_000, dtype="int32")              # 80 kB: a direct bytearray
    values = [os.urandom(2 * 1024 * 1024), arr, bytearray(os.urandom(300_000)), small,
              {"nested": [arr[:1000], b"x" * 100]}, os.urandom(70_000)]
    back = [loads(p) for p in echo(values)]
    assert back[0] == values[0] and type(back[0]) is bytes
    assert (back[1] == arr).all() and back[1].flags.writeable      # over TCP: its own copy
    assert back[2] == values[2] and type(back[2]) is bytearray
    assert (back[3] == small).all()
    assert (back[4]["nested"][0] == arr[:1000]).all() and back[4]["nested"][1] == b"x" * 100
    assert back[5] == values[5]
