"""The seed's Python API with mpnet's names: Scheduler, Worker, Nanny started by hand."""

from __future__ import annotations

import os
import threading

import pytest

import mpnet
from mpnet import Client, Nanny, Scheduler, Worker
from tests.utils import wait_for


def test_scheduler_worker_nanny_by_hand(token):
    s = Scheduler(port=0, token=token)
    s.start("tcp://127.0.0.1:0")              # the seed's start('tcp://:8786') form
    try:
        assert s.address.startswith("tcp://127.0.0.1:") and s.status == "running"
        with Worker(s.address, nthreads=2, token=token) as w, \
                Nanny(s.address, nthreads=1, token=token) as n, \
                Client(s.address, token=token) as c:
            assert w.status == "running" and n.status == "running"
            info = c.scheduler_info()["workers"]
            assert {w.address, n.worker_address} == set(info)
            assert info[w.address]["nthreads"] == 2
            pids = c.run(os.getpid)
            assert pids[w.address] == os.getpid() and pids[n.worker_address] == n.pid
            assert sum(c.gather(c.map(abs, range(-10, 0)))) == 55
        wait_for(lambda: not s.workers, what="the workers to leave")
    finally:
        s.close()
    assert s.wait_closed(0) and s.status == "closed"
    s.close()                                  # idempotent


def test_wait_closed_returns_when_closed_from_another_thread(token):
    s = Scheduler("127.0.0.1", 0, token=token).start()
    closer = threading.Timer(0.2, s.close)
    closer.start()
    try:
        assert s.wait_closed(timeout=10)
    finally:
        closer.join()


def test_a_port_in_use_is_a_clear_error(token):
    with Scheduler("127.0.0.1", 0, token=token) as s:
        port = int(s.address.rsplit(":", 1)[1])
        with pytest.raises(OSError, match="already in use"):
            Scheduler("127.0.0.1", port, token=token).start()


def test_start_twice_and_after_close(token):
    s = Scheduler("127.0.0.1", 0, token=token).start()
    assert s.start() is s                      # already running: a no-op
    s.close()
    with pytest.raises(mpnet.ClusterClosedError):
        s.start()


def test_worker_without_a_scheduler_times_out_naming_the_address(token):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(mpnet.ConnectTimeoutError, match=str(port)):
        Worker(f"tcp://127.0.0.1:{port}", token=token, connect_timeout=0.5).start()
