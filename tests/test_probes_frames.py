"""Messages over max_frame_bytes that nobody waited on by request id were dropped by
their sender, and whoever waited for their answer hung: an actor's result, an actor
call's arguments, two dependencies that fit one by one but not together, and a COMPUTE
whose payloads fit the SUBMIT but not with the routing the scheduler adds."""

from __future__ import annotations

import pytest

from mpnet import Client, FrameTooLargeError, LocalCluster, Scheduler, Worker
from mpnet.comm.endpoints import connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import FrameEncoder, Msg
from mpnet.comm.serialize import dumps, loads_exception
from mpnet.config import make_config
from tests.utils import wait_for

LIMIT = 1 << 20
TOKEN = "f" * 64


def blob(n):
    return b"x" * n


def total(*parts):
    return sum(len(p) for p in parts)


class Big:
    def make(self, n):
        return b"a" * n

    def take(self, data):
        return len(data)


@pytest.fixture
def small_frames():
    with LocalCluster(n_workers=2, threads_per_worker=1, max_frame_bytes=LIMIT,
                      processes=False, dashboard_address=None) as cluster, \
            Client(cluster, max_frame_bytes=LIMIT) as client:
        yield client


def test_an_actor_result_over_the_limit_fails_the_call(small_frames):
    actor = small_frames.submit(Big, actor=True).result(timeout=20)
    with pytest.raises(FrameTooLargeError, match="max_frame_bytes"):
        actor.make(2 * LIMIT).result(timeout=20)
    assert actor.make(3).result(timeout=20) == b"aaa"


def test_actor_arguments_over_the_limit_fail_the_call(small_frames):
    actor = small_frames.submit(Big, actor=True).result(timeout=20)
    with pytest.raises(FrameTooLargeError, match="ACTOR_CALL"):
        actor.take(b"y" * (2 * LIMIT)).result(timeout=20)
    assert actor.take(b"ok").result(timeout=20) == 2


def test_dependencies_that_fit_only_one_by_one_are_fetched(small_frames):
    w0, w1 = sorted(small_frames.scheduler_info()["workers"])[:2]
    halves = [small_frames.submit(blob, LIMIT // 2 + 10, key=f"half-{i}", workers=[w0])
              for i in range(2)]
    both = small_frames.submit(total, *halves, workers=[w1])
    assert both.result(timeout=20) == 2 * (LIMIT // 2 + 10)


def _size(msg) -> int:
    return sum(memoryview(p).nbytes for p in FrameEncoder(64 * 1024).encode([msg]))


def test_a_compute_over_the_limit_fails_the_task(tmp_path):
    # With many inputs, COMPUTE (each input with its holders' addresses) outgrows the
    # SUBMIT that brought it: the scheduler could not send it, and the task waited forever.
    config = make_config(max_frame_bytes=LIMIT)
    loop = EventLoop("test-frames-loop").start()
    with Scheduler(host="127.0.0.1", port=0, token=TOKEN, max_frame_bytes=LIMIT) as s, \
            Worker(s.address, token=TOKEN, host="127.0.0.1", max_frame_bytes=LIMIT) as w:
        conn = connect_sync(loop, s.address, config=config, token=TOKEN, role="client",
                            info={}, handler=lambda c, m: None)
        try:
            conn.loop.run_sync(conn.request, Msg.REGISTER_CLIENT, "prober", {}).result(10)
            fn, small = dumps(len), dumps(((b"",), {}))
            deps = [f"dep-{i:03d}" for i in range(200)]
            for key in deps:
                conn.send_threadsafe([Msg.SUBMIT, key, fn, small, [], 0, 0, None, None])
            wait_for(lambda: all(s.state.tasks.get(k) is not None and
                                 s.state.tasks[k].state == "memory" for k in deps),
                     timeout=20, what="the inputs to be computed")
            n = LIMIT - 2000
            while True:     # the largest arguments whose SUBMIT still fits
                submit = [Msg.SUBMIT, "big", fn, dumps(((b"q" * (n + 100),), {})), deps, 0, 0,
                          None, None]
                if _size(submit) > LIMIT:
                    break
                n += 100
            submit[3] = dumps(((b"q" * n,), {}))
            compute = [Msg.COMPUTE, "big", fn, submit[3],
                       [[k, [w.address]] for k in deps], [0, 0]]
            assert _size(submit) <= LIMIT < _size(compute)
            conn.send_threadsafe(submit)
            wait_for(lambda: "big" in s.state.tasks and s.state.tasks["big"].state == "erred",
                     timeout=20, what="the task to fail")
            ts = s.state.tasks["big"]
            error = loads_exception(ts.exception, ts.traceback)
            assert isinstance(error, FrameTooLargeError) and "COMPUTE" in str(error)
            assert w.address in s.state.workers
        finally:
            conn.close_threadsafe()
            loop.close()
