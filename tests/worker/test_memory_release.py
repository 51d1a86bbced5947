"""Nothing the loop or the executor has finished with stays reachable: a released result
is collected at once, and a dropped connection's half-received frame is freed."""

from __future__ import annotations

import gc
import socket
import struct
import weakref

from mpnet import Client, LocalCluster, Scheduler
from mpnet.comm.protocol import HEADER
from tests.utils import wait_for


class Big:
    """A result with a weak reference kept to it (ndarray and bytes allow none)."""

    def __init__(self, n: int):
        self.data = bytearray(n)


_made: list = []


def make_big(n):
    big = Big(n)
    _made.append(weakref.ref(big))
    return big


def nothing():
    return None


def test_released_result_is_collected():
    _made.clear()
    with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as client:
        f = client.submit(make_big, 1 << 20)
        assert len(f.result(timeout=10).data) == 1 << 20
        wait_for(lambda: _made and _made[0]() is not None, what="the result on the worker")
        del f
        # Nothing else runs on the loop after the release: the loop's own leftovers
        # would be the last thing holding the result.
        wait_for(lambda: gc.collect() is not None and _made[0]() is None, timeout=10,
                 what="the released result to be collected")


def released_collected():
    gc.collect()
    return [ref() is None for ref in _made]


def test_released_result_is_collected_in_a_worker_process():
    """The worker's loop is idle after the release: only its own leftovers could hold
    the result. RUN follows FREE on the same connection, so it sees the release."""
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as c:
        f = c.submit(make_big, 1 << 20)
        f.result(timeout=10)
        del f
        wait_for(lambda: c.scheduler_info()["tasks"] == 0, timeout=10, what="the release")
        (outcome,) = c.run(released_collected).values()
        assert outcome == [True], outcome


def test_each_released_result_is_collected_while_others_run():
    _made.clear()
    with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as client:
        for i in range(5):
            f = client.submit(make_big, 1 << 16, key=f"big-{i}")
            f.result(timeout=10)
            del f
            wait_for(lambda: gc.collect() is not None and _made[-1]() is None, timeout=10,
                     what=f"result {i} to be collected")
        assert client.submit(nothing).result(timeout=10) is None


def test_dropped_connection_frees_its_half_received_frame():
    """A client that hangs up in the middle of a large frame: its buffers are freed at
    once, not when the connection's (cancelled) stall timer would have fired. (Large
    receive buffers are anonymous mmaps that tracemalloc cannot see: the test watches
    the decoder that holds them instead.)"""
    token = "t" * 64
    with Scheduler(host="127.0.0.1", port=0, token=token) as s, \
            Client(s.address, token=token, timeout=10) as c:
        conn = s.loop.run_sync(lambda: next(iter(s.listener.connections)))
        sock = c.loop.run_sync(lambda: c._session.link.sock)
        # One frame: a 16 MiB buffer announced, 8 MiB of it sent, then silence.
        head = HEADER.pack(0, 1) + struct.pack("!Q", 16 << 20)
        c.loop.run_sync(lambda: c._session.link._write([head, bytes(8 << 20)]))
        wait_for(lambda: s.loop.run_sync(lambda: conn._decoder.mid_frame), timeout=10,
                 what="the scheduler to receive the first half")
        decoder = weakref.ref(s.loop.run_sync(lambda: conn._decoder))
        c.loop.run_sync(lambda: sock.shutdown(socket.SHUT_RDWR))
        wait_for(lambda: conn.closed, timeout=10, what="the connection to close")
        # The connection object itself may stay referenced a while (its cancelled stall
        # timer sits in the loop's heap): what it was receiving must not stay with it.
        wait_for(lambda: gc.collect() is not None and decoder() is None, timeout=5,
                 what="the half-received frame's decoder to be freed")
