"""Choosing a worker: the least loaded one, found without looking at every worker."""

from __future__ import annotations

import random

from mpnet.comm.protocol import Msg
from mpnet.config import make_config
from mpnet.scheduler.placement import Placement
from mpnet.scheduler.state import SchedulerState


def _scan(place: Placement):
    """What the scheduler chose by scanning every worker: the least loaded with room,
    the first to join among equals."""
    best, best_load = None, None
    for ws in place.workers.values():
        load = len(ws.processing) / ws.nthreads
        if len(ws.processing) < place.capacity(ws) and (best is None or load < best_load):
            best, best_load = ws, load
    return best


def test_choosing_a_worker_does_not_look_at_every_worker(monkeypatch):
    st = SchedulerState(make_config(environ={}, worker_queue_extra=0))
    for i in range(1000):
        st.add_worker(f"tcp://w{i}:1", nthreads=2)
    cs = st.add_client("c")
    looked = []
    real = Placement.capacity
    monkeypatch.setattr(Placement, "capacity", lambda self, ws: looked.append(ws) or
                        real(self, ws))
    for i in range(200):
        st.submit(cs, f"t-{i}", "fn", "args", [], 0, 0)
    # A scan looks at all 1,000 workers per task; the heap at a few.
    assert len(looked) < 200 * 10, len(looked)
    placed = [d.address for d, m in st.take_outbox() if m[0] == Msg.COMPUTE]
    assert placed == [f"tcp://w{i % 1000}:1" for i in range(200)]


def test_the_heap_chooses_what_a_scan_would():
    rng = random.Random(7)
    st = SchedulerState(make_config(environ={}, worker_queue_extra=1))
    place = st.placement
    checked = []
    real_pick = place.pick

    def pick(ts):
        expected = None if ts.dependencies else _scan(place)
        got = real_pick(ts)
        if not ts.dependencies:
            assert got is expected, (ts.key, got, expected)
            checked.append(got)
        return got
    place.pick = pick
    cs = st.add_client("c")
    n = 0
    for step in range(3000):
        r = rng.random()
        running = [t for t in st.tasks.values() if t.state == "processing"]
        if r < 0.05 or not st.workers:
            n += 1
            st.add_worker(f"tcp://w{n}:1", nthreads=rng.choice((1, 2, 3)))
        elif r < 0.07 and len(st.workers) > 1:
            st.remove_worker(rng.choice(list(st.workers)), "gone")
        elif r < 0.10:
            ws = rng.choice(list(st.workers.values()))
            st.heartbeat(ws, {"paused": not ws.paused})
        elif r < 0.11:
            st.stop_assigning(rng.choice(list(st.workers)))
        elif r < 0.15 and running:          # cancelled while it runs: the slot stays held
            ts = rng.choice(running)
            ws = ts.processing_on
            st.cancel([ts.key], "test", cs)
            if rng.random() < 0.5:
                st.task_released(ws, ts.key)
        elif r < 0.55 or not running:
            st.submit(cs, f"t-{step}", "fn", "args", [], 0, 0)
        else:
            ts = rng.choice(running)
            st.task_finished(ts.processing_on, ts.key, b"r", 1)
            st.release(cs, [ts.key])
        st.take_outbox()
    assert len(checked) > 500 and any(w is None for w in checked)
