"""The task record's size savings keep its meaning: shared function payloads, lazy lists."""

from __future__ import annotations

from mpnet.comm.protocol import FrameDecoder, FrameEncoder, Msg
from mpnet.comm.serialize import Payload, dumps
from mpnet.config import make_config
from mpnet.scheduler.state import SchedulerState
from mpnet.scheduler.taskstate import EMPTY, TaskState, shared_function


def _over_the_wire(*payloads: Payload) -> list:
    """The payloads as the scheduler receives them: decoded from a frame (new objects)."""
    pieces = FrameEncoder(oob_threshold=1 << 16).encode([[Msg.REPLY, 0, True, list(payloads)]])
    decoder = FrameDecoder(1 << 30)
    out = decoder.feed(b"".join(bytes(p) for p in pieces))
    return out[0][3]


def test_tasks_of_one_function_share_one_payload_and_still_send_it():
    fn1, fn2, other = _over_the_wire(dumps(len), dumps(len), dumps(print))
    assert fn1 is not fn2 and fn1.header == fn2.header
    state = SchedulerState(make_config())
    ws = state.add_worker("tcp://w:1", nthreads=2)
    cs = state.add_client("c")
    state.submit(cs, "a", fn1, dumps(1), [])
    state.submit(cs, "b", fn2, dumps(2), [])
    state.submit(cs, "c", other, dumps(3), [])
    a, b, c = (state.tasks[k] for k in "abc")
    assert a.fn is b.fn and a.fn is not c.fn
    sent = {m[1]: m[2] for dest, m in state.take_outbox() if m[0] == Msg.COMPUTE and dest is ws}
    assert sent["a"].header == sent["b"].header == fn1.header
    assert sent["c"].header == other.header


def test_payloads_with_buffers_and_other_objects_are_kept_as_given():
    big = dumps(b"x" * (1 << 17))
    assert big.buffers and shared_function(big) is big
    closure = dumps(list(range(5000)))          # no buffers, but too big to keep
    again = dumps(list(range(5000)))
    assert not closure.buffers and shared_function(closure) is closure
    assert shared_function(again) is again
    assert shared_function("fn") == "fn" and shared_function(None) is None


def test_failed_on_and_waiting_on_behave_as_before():
    ts = TaskState("k", None, None, (0, 0), 0)
    assert ts.failed_on == [] and not ts.waiting_on and not ts.inline_to
    ts.failed_on.append("tcp://w:1 (exit 9)")
    assert ts.failed_on == ["tcp://w:1 (exit 9)"]
    other = TaskState("j", None, None, (0, 1), 0)
    assert other.failed_on == []       # one list per task, not a shared one


def test_sets_a_task_never_fills_are_not_made_and_graphs_still_run():
    """A map's tasks keep the one shared empty set for their inputs, dependents and
    waits; a graph's tasks get sets of their own on the first add."""
    state = SchedulerState(make_config())
    ws = state.add_worker("tcp://w:1", nthreads=1)
    cs = state.add_client("c")
    for key in ("x", "y", "z"):
        state.submit(cs, key, dumps(len), dumps(key), [])
    x, y = state.tasks["x"], state.tasks["y"]
    assert x.dependencies is x.dependents is x.waiting_on is y.dependencies is EMPTY
    state.submit(cs, "sum", dumps(sum), dumps(0), ["x", "y"])
    total = state.tasks["sum"]
    assert total.dependencies == {x, y} and x.dependents == {total} == y.dependents
    assert total.waiting_on == {x, y} and x.waiting_on is EMPTY
    assert total.dependencies is not total.waiting_on
    state.take_outbox()
    for key in ("x", "y"):
        state.task_finished(ws, key, None, 8)
    assert total.state in ("ready", "processing") and not total.waiting_on
    assert state.tasks["z"].dependents is EMPTY
