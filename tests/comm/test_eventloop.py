"""The selector loop: callbacks from other threads, timers, closing."""

from __future__ import annotations

import threading
import time

import pytest

from mpnet.comm.eventloop import EventLoop


def test_call_soon_threadsafe_runs_on_the_loop_thread():
    loop = EventLoop("test-loop").start()
    try:
        seen = []
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (seen.append(threading.current_thread().name),
                                           done.set()))
        assert done.wait(5) and seen == ["test-loop"]
        assert loop.run_sync(lambda: 41 + 1) == 42
    finally:
        loop.close()
    assert not loop.running


def test_timers_fire_in_order_and_can_be_cancelled():
    loop = EventLoop("test-loop").start()
    try:
        fired = []
        done = threading.Event()
        loop.call_later(0.05, fired.append, "b")
        loop.call_later(0.01, fired.append, "a")
        loop.call_later(0.03, fired.append, "x").cancel()
        loop.call_later(0.08, done.set)
        assert done.wait(5)
        assert fired == ["a", "b"]
    finally:
        loop.close()


def test_a_failing_callback_does_not_stop_the_loop(caplog):
    loop = EventLoop("test-loop").start()
    try:
        loop.call_soon_threadsafe(lambda: 1 / 0)
        assert loop.run_sync(lambda: "still here") == "still here"
        assert "ZeroDivisionError" in caplog.text
    finally:
        loop.close()


def test_close_is_idempotent_and_bounded():
    loop = EventLoop("test-loop").start()
    start = time.monotonic()
    loop.close()
    loop.close()
    assert time.monotonic() - start < 1
    EventLoop("never-started").close()


def test_wakeups_are_not_lost_under_contention():
    loop = EventLoop("test-loop").start()
    try:
        counter = [0]
        n, threads = 2000, 4

        def bump():
            counter[0] += 1

        def spam():
            for _ in range(n):
                loop.call_soon_threadsafe(bump)
        ts = [threading.Thread(target=spam) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        deadline = time.monotonic() + 5
        while counter[0] < n * threads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counter[0] == n * threads
    finally:
        loop.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_closing_the_loop_leaves_bare_descriptors_to_their_owner():
    """A registered object that is not a socket (a nanny's pipe or process sentinel,
    wrapped to give ``fileno()``) is not closed by the loop: its owner closes it."""
    import os as _os
    import selectors as _selectors

    from mpnet.comm.eventloop import EventLoop as _Loop

    class Fd:
        def __init__(self, fd):
            self.fd = fd

        def fileno(self):
            return self.fd

    r, w = _os.pipe()
    try:
        loop = _Loop("test-fd-loop").start()
        loop.run_sync(loop.register, Fd(r), _selectors.EVENT_READ, lambda mask: None)
        loop.close()                 # raised AttributeError ('Fd' has no close) before
        _os.fstat(r)                 # still open: the owner's to close
    finally:
        _os.close(r)
        _os.close(w)
