"""The scheduler's lifecycle: guarded moves, a failed start that still closes, and
waits on conditions rather than sleeps."""

from __future__ import annotations

import socket
import threading

import pytest

from mpnet import Scheduler
from mpnet.errors import ClusterClosedError
from mpnet.lifecycle import Status
from tests.scheduler.test_sessions import _client, _worker

TOKEN = "l" * 64


def test_a_failed_start_closes_so_wait_closed_returns():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = Scheduler(host="127.0.0.1", port=port, token=TOKEN)
        with pytest.raises(OSError):
            s.start()
    assert s.wait_closed(timeout=5) is True
    assert s.status is Status.CLOSED and s.status == "closed"
    with pytest.raises(ClusterClosedError, match="closed"):
        s.start()
    s.close()                       # idempotent after a failed start


def test_start_twice_is_one_start_and_close_from_many_threads_is_one_close():
    s = Scheduler(host="127.0.0.1", port=0, token=TOKEN)
    assert s.status == "created"
    assert s.start() is s and s.start() is s and s.status == "running"
    closers = [threading.Thread(target=s.close, name=f"test-closer-{i}") for i in range(4)]
    for t in closers:
        t.start()
    for t in closers:
        t.join(10)
    # Every close() returned only once the scheduler was closed.
    assert s.status == "closed" and s.wait_closed(timeout=0)


def test_idle_close_thread_is_joined_by_wait_closed():
    s = Scheduler(host="127.0.0.1", port=0, token=TOKEN, idle_timeout=0.2).start()
    assert s.wait_closed(timeout=10)
    assert s._idle_closer is not None and not s._idle_closer.is_alive()


def test_when_runs_on_the_event_that_makes_it_true_or_at_its_deadline():
    with Scheduler(host="127.0.0.1", port=0, token=TOKEN) as s:
        got: list = []
        done = threading.Event()

        def record(ok):
            got.append(ok)
            done.set()

        def on_loop():
            s.when(lambda: "tcp://w1:1" in s.state.workers, record, timeout=30)
            s.when(lambda: False, record, timeout=0.05)
            assert got == []
            _client(s)
            assert got == []                       # an event, but not the one awaited
            _worker(s, "tcp://w1:1")               # this one: no deadline needed
            assert got == [True]
        s.loop.run_sync(on_loop)
        assert done.wait(10)
        wait = threading.Event()
        s.loop.call_later(0.2, wait.set)
        assert wait.wait(10) and got == [True, False]
        assert not s._conditions
