"""Pure unit tests of the scheduler's state machine: no threads, no sockets, no processes.

Every event is a method call on :class:`SchedulerState`; what it causes is read back from
``state.outbox`` as ``(destination, message)`` pairs. Payloads are opaque to the scheduler,
so plain strings stand in for functions, arguments and results.
"""

from __future__ import annotations

import pytest

from mpnet.comm.protocol import Msg
from mpnet.config import make_config
from mpnet.scheduler.state import ACTIVE, SchedulerState


# --- helpers -------------------------------------------------------------------------

def make_state(**overrides) -> SchedulerState:
    """A state with no queueing beyond each worker's threads unless a test asks for it."""
    overrides.setdefault("worker_queue_extra", 0)
    return SchedulerState(make_config(environ={}, **overrides))


def cluster(n_workers: int = 2, nthreads: int = 1, **overrides):
    """``(state, [worker, ...], client)`` with workers ``w1``, ``w2``, …"""
    state = make_state(**overrides)
    workers = [state.add_worker(f"w{i + 1}", nthreads=nthreads) for i in range(n_workers)]
    client = state.add_client("c1")
    state.take_outbox()
    return state, workers, client


def submit(state, client, key, deps=(), priority=0, retries=0) -> list:
    state.submit(client, key, f"fn-{key}", f"args-{key}", list(deps), priority, retries)
    return state.take_outbox()


def finish(state, key, payload=None, nbytes=1, ws=None, inline=True) -> list:
    """The worker running ``key`` reports it done; returns what that caused.
    ``inline=False``: the result was too large to travel with the completion."""
    ws = ws or state.tasks[key].processing_on
    assert ws is not None, f"{key} is not processing anywhere"
    if inline:
        payload = f"result-{key}" if payload is None else payload
    else:
        payload = None
    state.task_finished(ws, key, payload, nbytes)
    return state.take_outbox()


def fail(state, key, exc="exc", tb="tb") -> list:
    ws = state.tasks[key].processing_on
    assert ws is not None, f"{key} is not processing anywhere"
    state.task_failed(ws, key, exc, tb)
    return state.take_outbox()


def messages(out, kind, dest=None) -> list:
    """The messages of type ``kind`` in ``out`` (to ``dest`` only, when given)."""
    return [m for d, m in out if m[0] == kind and (dest is None or d is dest)]


def computes(out) -> list:
    """``[(worker address, key), ...]`` of the COMPUTE messages, in order."""
    return [(d.address, m[1]) for d, m in out if m[0] == Msg.COMPUTE]


def freed(out) -> set:
    """``{(worker address, key)}`` of every FREE message."""
    return {(d.address, k) for d, m in out if m[0] == Msg.FREE for k in m[1]}


def keys_of(out, kind, dest=None) -> list:
    return [m[1] for m in messages(out, kind, dest)]


def where(state, key) -> str | None:
    ts = state.tasks[key]
    return ts.processing_on.address if ts.processing_on is not None else None


def check_invariants(state: SchedulerState) -> None:
    """Cross-links between tasks, workers and clients agree with each other."""
    live = set(state.workers.values())
    for ws in live:
        assert len(ws.processing) <= ws.nthreads + state.config.worker_queue_extra, ws
        for ts in ws.processing:
            assert ts.processing_on is ws and ts.state == "processing", (ws, ts)
            assert state.tasks.get(ts.key) is ts, ts
        for ts in ws.has_what:
            assert ws in ts.who_has and state.tasks.get(ts.key) is ts, (ws, ts)
    heap = {id(t) for _, t in state.ready}
    for key, ts in state.tasks.items():
        assert ts.key == key and ts.state != "forgotten", ts
        if ts.state == "processing":
            assert ts.processing_on in live and ts in ts.processing_on.processing, ts
        else:
            assert ts.processing_on is None, ts
        for ws in ts.who_has:
            assert ws in live and ts in ws.has_what, (ts, ws)
        if ts.state == "memory":
            assert ts.who_has, ts
        if ts.state == "ready":
            assert id(ts) in heap, ts
        if ts.state == "waiting":
            assert ts.waiting_on and ts.waiting_on <= ts.dependencies, ts
        for dep in ts.dependencies:
            assert state.tasks.get(dep.key) is dep and ts in dep.dependents, (ts, dep)
        for dep in ts.dependents:
            assert state.tasks.get(dep.key) is dep and ts in dep.dependencies, (ts, dep)
        for cs in ts.who_wants:
            assert ts in cs.wants, (ts, cs)
    for cs in state.clients.values():
        for ts in cs.wants:
            assert state.tasks.get(ts.key) is ts and cs in ts.who_wants, (cs, ts)


def assert_empty(state: SchedulerState) -> None:
    """Nothing is left: no task, nothing stored or processing on any worker."""
    check_invariants(state)
    assert state.tasks == {}
    for ws in state.workers.values():
        assert not ws.processing and not ws.has_what and ws.nbytes == 0, ws
    for cs in state.clients.values():
        assert not cs.wants, cs
    assert not [t for _, t in state.ready if t.state in ACTIVE]


# --- placing work ----------------------------------------------------------------------

def test_submit_without_deps_goes_to_least_loaded_worker():
    state, (w1, w2, w3), c = cluster(3, nthreads=2)
    assert computes(submit(state, c, "a")) == [("w1", "a")]
    assert computes(submit(state, c, "b")) == [("w2", "b")]
    assert computes(submit(state, c, "c")) == [("w3", "c")]
    finish(state, "b")                         # w2 is now the idle one
    assert computes(submit(state, c, "d")) == [("w2", "d")]
    out = submit(state, c, "e")
    assert computes(out) == [("w1", "e")]      # all hold one: the first of the ties
    msg = messages(out, Msg.COMPUTE)[0]
    assert msg[:5] == [Msg.COMPUTE, "e", "fn-e", "args-e", []]   # fields as the table says
    check_invariants(state)


def test_load_is_relative_to_thread_count():
    state = make_state(worker_queue_extra=0)
    state.add_worker("small", nthreads=1)
    state.add_worker("big", nthreads=4)
    c = state.add_client("c1")
    placed = [computes(submit(state, c, f"t{i}"))[0][0] for i in range(5)]
    assert placed.count("big") == 4 and placed.count("small") == 1
    check_invariants(state)


def test_worker_bound_holds_and_extra_tasks_wait_in_ready_heap():
    state, (w1, w2), c = cluster(2, nthreads=1, worker_queue_extra=0)
    placed = []
    for i in range(5):
        placed += computes(submit(state, c, f"t{i}"))
    assert placed == [("w1", "t0"), ("w2", "t1")]
    assert len(w1.processing) == 1 and len(w2.processing) == 1
    assert sorted(t.key for _, t in state.ready) == ["t2", "t3", "t4"]
    assert all(state.tasks[f"t{i}"].state == "ready" for i in (2, 3, 4))
    check_invariants(state)

    out = finish(state, "t1")                  # w2 has room again: it gets the next one
    assert computes(out) == [("w2", "t2")]
    out = finish(state, "t0")
    assert computes(out) == [("w1", "t3")]
    out = finish(state, "t2")
    assert computes(out) == [("w2", "t4")]
    assert not [t for _, t in state.ready if t.state == "ready"]
    check_invariants(state)


def test_worker_queue_extra_adds_to_the_bound():
    state, (w1,), c = cluster(1, nthreads=2, worker_queue_extra=3)
    placed = []
    for i in range(7):
        placed += computes(submit(state, c, f"t{i}"))
    assert len(placed) == 5 and len(w1.processing) == 5       # 2 threads + 3 extra
    assert {state.tasks["t5"].state, state.tasks["t6"].state} == {"ready"}
    assert computes(finish(state, "t0")) == [("w1", "t5")]
    check_invariants(state)


def test_ready_heap_hands_out_higher_priority_first_then_fifo():
    state, (w1,), c = cluster(1, nthreads=1)
    order = [("run", 0), ("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 10)]
    for key, prio in order:
        submit(state, c, key, priority=prio)
    assert where(state, "run") == "w1"         # it came first, when w1 was idle
    handed_out = []
    key = "run"
    for _ in range(len(order) - 1):
        out = finish(state, key)
        (addr, key), = computes(out)
        handed_out.append(key)
    assert handed_out == ["f", "b", "d", "a", "c", "e"]
    check_invariants(state)


def test_new_worker_takes_from_heap_in_priority_order():
    state = make_state(worker_queue_extra=0)
    c = state.add_client("c1")
    for key, prio in [("a", 0), ("b", 1), ("c", 0), ("d", 1), ("e", 2)]:
        assert submit(state, c, key, priority=prio) == []     # no worker yet
    assert all(ts.state == "ready" for ts in state.tasks.values())
    state.add_worker("w1", nthreads=3)
    assert computes(state.take_outbox()) == [("w1", "e"), ("w1", "b"), ("w1", "d")]
    state.add_worker("w2", nthreads=5)
    assert computes(state.take_outbox()) == [("w2", "a"), ("w2", "c")]
    check_invariants(state)


# --- dependencies and locality ---------------------------------------------------------

def test_task_waits_until_its_dependencies_are_in_memory():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    submit(state, c, "y")
    out = submit(state, c, "z", deps=["x", "y"])
    assert computes(out) == [] and state.tasks["z"].state == "waiting"
    assert computes(finish(state, "x")) == []
    assert state.tasks["z"].state == "waiting"
    assert {t.key for t in state.tasks["z"].waiting_on} == {"y"}
    out = finish(state, "y", nbytes=10)
    (addr, key), = computes(out)
    assert key == "z"
    msg = messages(out, Msg.COMPUTE)[0]
    assert sorted(msg[4]) == [["x", ["w1"]], ["y", ["w2"]]]
    check_invariants(state)


@pytest.mark.parametrize("x_bytes, y_bytes, expected", [(1000, 10, "w1"), (10, 1000, "w2")])
def test_dependent_goes_to_worker_holding_most_of_its_inputs(x_bytes, y_bytes, expected):
    state, (w1, w2, w3), c = cluster(3)
    submit(state, c, "x")
    submit(state, c, "y")
    assert (where(state, "x"), where(state, "y")) == ("w1", "w2")
    finish(state, "x", nbytes=x_bytes)
    finish(state, "y", nbytes=y_bytes)
    out = submit(state, c, "z", deps=["x", "y"])
    assert computes(out) == [(expected, "z")]           # not w3, the idle one
    check_invariants(state)


def test_locality_counts_inputs_not_only_bytes():
    state, (w1, w2), c = cluster(2, nthreads=4)
    for key in ("a", "b", "c"):
        submit(state, c, key)
    assert [where(state, k) for k in "abc"] == ["w1", "w2", "w1"]
    for key in "abc":
        finish(state, key, nbytes=5)
    out = submit(state, c, "d", deps=["a", "b", "c"])    # two inputs on w1, one on w2
    assert computes(out) == [("w1", "d")]
    check_invariants(state)


def test_locality_falls_back_to_least_loaded_when_holder_is_full():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x", nbytes=1000)                       # x lives on w1
    submit(state, c, "busy")                              # w1 is full now
    assert where(state, "busy") == "w1"
    out = submit(state, c, "y", deps=["x"])
    assert computes(out) == [("w2", "y")]
    assert messages(out, Msg.COMPUTE)[0][4] == [["x", ["w1"]]]
    check_invariants(state)


# --- results ---------------------------------------------------------------------------

def test_task_done_goes_to_every_client_that_wants_it_with_payload_inline():
    state, (w1,), c1 = cluster(1)
    c2 = state.add_client("c2")
    c3 = state.add_client("c3")
    submit(state, c1, "x")
    assert submit(state, c2, "x") == []                   # already being computed
    assert len(state.tasks) == 1 and state.counts["submitted"] == 1
    out = finish(state, "x", payload="PAYLOAD", nbytes=7)
    assert messages(out, Msg.TASK_DONE, c1) == [[Msg.TASK_DONE, "x", "PAYLOAD", "w1", 7]]
    assert messages(out, Msg.TASK_DONE, c2) == [[Msg.TASK_DONE, "x", "PAYLOAD", "w1", 7]]
    assert messages(out, Msg.TASK_DONE, c3) == []
    assert len(messages(out, Msg.TASK_DONE)) == 2
    check_invariants(state)


def test_second_client_gets_task_done_at_once_when_key_is_in_memory():
    state, (w1,), c1 = cluster(1)
    submit(state, c1, "x")
    finish(state, "x", nbytes=42)
    c2 = state.add_client("c2")
    out = submit(state, c2, "x")
    assert out == [(c2, [Msg.TASK_DONE, "x", None, "w1", 42])]   # the data stays on w1
    assert computes(out) == []
    # the first client letting go does not free what the second still wants
    state.release(c1, ["x"])
    assert state.take_outbox() == [] and state.tasks["x"].state == "memory"
    state.release(c2, ["x"])
    assert freed(state.take_outbox()) == {("w1", "x")}
    assert_empty(state)


def test_submitting_same_key_twice_from_one_client_is_harmless():
    state, (w1,), c = cluster(1)
    submit(state, c, "x")
    assert submit(state, c, "x") == []
    finish(state, "x")
    assert submit(state, c, "x") == []                    # already told
    state.release(c, ["x"])
    state.take_outbox()
    assert_empty(state)


# --- releasing and forgetting ----------------------------------------------------------

def test_release_of_unneeded_key_frees_it_on_workers_and_forgets_it():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x", nbytes=100)
    assert w1.nbytes == 100
    state.release(c, ["x"])
    out = state.take_outbox()
    assert out == [(w1, [Msg.FREE, ["x"]])]
    assert "x" not in state.tasks
    assert_empty(state)
    state.release(c, ["x"])                               # twice: nothing happens
    assert state.take_outbox() == []


def test_release_of_key_never_wanted_by_that_client_is_ignored():
    state, (w1,), c1 = cluster(1)
    c2 = state.add_client("c2")
    submit(state, c1, "x")
    finish(state, "x")
    state.release(c2, ["x", "nonexistent"])
    assert state.take_outbox() == [] and state.tasks["x"].state == "memory"


def test_whole_graph_leaves_no_tasks_once_all_keys_are_released():
    #      a
    #     / \
    #    b   c
    #     \ /
    #      d
    for order in ["abcd", "dcba", "bdac", "cadb", "dabc"]:
        state, (w1, w2), c = cluster(2)
        submit(state, c, "a")
        submit(state, c, "b", deps=["a"])
        submit(state, c, "c", deps=["a"])
        submit(state, c, "d", deps=["b", "c"])
        for key in "abcd":
            out = finish(state, key, nbytes=10)
            assert keys_of(out, Msg.TASK_DONE) == [key]
            check_invariants(state)
        frees = set()
        for key in order:
            state.release(c, [key])
            frees |= freed(state.take_outbox())
            check_invariants(state)
        assert {k for _, k in frees} == set("abcd"), order   # every result freed
        assert_empty(state)


def test_releasing_everything_while_it_runs_forgets_everything():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "a")
    submit(state, c, "b", deps=["a"])
    submit(state, c, "c", deps=["b"])
    state.release(c, ["a", "b"])
    assert state.take_outbox() == [] and len(state.tasks) == 3   # c still needs them
    state.release(c, ["c"])
    out = state.take_outbox()
    assert freed(out) == {("w1", "a")}                   # a was running: stop it
    assert_empty(state)
    # the worker finishes it anyway (before it saw the FREE): its slot is free now,
    # and the FREE already sent drops the result
    assert w1.abandoned == [("a", None)]
    state.task_finished(w1, "a", "result", 5)
    assert state.take_outbox() == [] and w1.abandoned == []
    assert_empty(state)


def test_releasing_key_with_pending_dependents_keeps_it_until_they_finish():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x", nbytes=10)
    submit(state, c, "other")
    out = submit(state, c, "y", deps=["x", "other"])      # y waits on "other"
    assert computes(out) == []
    state.release(c, ["x"])
    assert state.take_outbox() == []                      # y still needs x
    assert state.tasks["x"].state == "memory" and state.tasks["x"].who_has == {w1}
    out = finish(state, "other")
    assert [k for _, k in computes(out)] == ["y"]
    compute = messages(out, Msg.COMPUTE)[0]
    assert ["x", ["w1"]] in compute[4]
    out = finish(state, "y")
    assert ("w1", "x") in freed(out)                      # now nobody needs x's data
    assert keys_of(out, Msg.TASK_DONE) == ["y"]
    assert "x" in state.tasks and state.tasks["x"].state == "released"  # recipe kept
    check_invariants(state)
    state.release(c, ["y", "other"])
    state.take_outbox()
    assert_empty(state)


# Regression (bug found in state.py at commit 8a45086, since fixed): forgetting a task
# that is processing (release, cancel) gives its worker room but never calls _fill, so
# tasks waiting in the ready heap are not handed out and an idle worker stalls forever
# (state.py SchedulerState._forget: the 'ts.processing_on.processing.discard(ts)'
# branch)
def test_releasing_or_cancelling_a_running_task_hands_queued_work_to_its_worker():
    state, (w1,), c = cluster(1)
    for key in ("a", "b", "c"):
        submit(state, c, key)
    assert [state.tasks[k].state for k in "abc"] == ["processing", "ready", "ready"]
    state.release(c, ["a"])
    out = state.take_outbox()
    assert freed(out) == {("w1", "a")}
    assert computes(out) == []             # its thread still runs a (issue 8 item 6)
    state.task_released(w1, "a")           # ... until the worker says it ended
    assert computes(state.take_outbox()) == [("w1", "b")]
    state.cancel(["b"], "no")
    out = state.take_outbox()
    assert freed(out) == {("w1", "b")}
    assert computes(out) == []
    state.task_failed(w1, "b", "exc", "tb")     # a report of a freed task frees it too
    assert computes(state.take_outbox()) == [("w1", "c")]


def test_remove_client_releases_all_its_keys():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "a")
    submit(state, c, "b", deps=["a"])
    finish(state, "a")
    finish(state, "b")
    submit(state, c, "pending")
    state.remove_client("c1")
    out = state.take_outbox()
    assert {k for _, k in freed(out)} == {"a", "b", "pending"}
    assert "c1" not in state.clients
    assert_empty(state)


# --- failures and retries ---------------------------------------------------------------

def test_failed_task_with_retries_left_is_requeued():
    state, (w1,), c = cluster(1)
    submit(state, c, "x", retries=2)
    out = fail(state, "x")
    assert computes(out) == [("w1", "x")] and messages(out, Msg.TASK_ERRED) == []
    out = fail(state, "x")
    assert computes(out) == [("w1", "x")] and messages(out, Msg.TASK_ERRED) == []
    out = fail(state, "x", exc="E3", tb="TB3")
    assert computes(out) == []
    assert messages(out, Msg.TASK_ERRED, c) == [[Msg.TASK_ERRED, "x", "E3", "TB3"]]
    assert state.tasks["x"].state == "erred"
    check_invariants(state)


def test_failure_without_retries_errs_task_and_dependents_with_same_exception():
    state, (w1, w2), c1 = cluster(2)
    c2 = state.add_client("c2")
    submit(state, c1, "x")
    submit(state, c1, "y", deps=["x"])
    submit(state, c1, "z", deps=["y"])
    submit(state, c2, "z")
    submit(state, c1, "unrelated")
    out = fail(state, "x", exc="BOOM", tb="Traceback: BOOM")
    erred = messages(out, Msg.TASK_ERRED)
    assert sorted(m[1] for m in erred) == ["x", "y", "z", "z"]
    assert all(m[2:] == ["BOOM", "Traceback: BOOM"] for m in erred)
    assert keys_of(out, Msg.TASK_ERRED, c2) == ["z"]
    assert computes(out) == []
    assert {state.tasks[k].state for k in "xyz"} == {"erred"}
    assert state.tasks["unrelated"].state == "processing"
    check_invariants(state)
    state.release(c1, ["x", "y", "z", "unrelated"])
    state.release(c2, ["z"])
    state.take_outbox()
    assert_empty(state)


# Regression (bug found in state.py at commit 8a45086, since fixed): when a task errs,
# its dependencies are not re-checked with _maybe_forget, so an input the client
# released while the task was pending stays in worker memory until the erred key itself
# is released (state.py SchedulerState._err, and _lose likewise)
def test_inputs_of_failed_task_are_freed_when_nobody_else_needs_them():
    state, (w1,), c = cluster(1)
    submit(state, c, "x")
    finish(state, "x", nbytes=100)
    submit(state, c, "y", deps=["x"])
    state.release(c, ["x"])
    assert state.take_outbox() == []                      # y still needs x
    out = fail(state, "y")
    assert keys_of(out, Msg.TASK_ERRED) == ["y"]
    assert ("w1", "x") in freed(out)                      # now nobody does
    assert w1.nbytes == 0


def test_submit_on_erred_dependency_errs_at_once():
    state, (w1,), c = cluster(1)
    submit(state, c, "x")
    fail(state, "x", exc="E", tb="TB")
    out = submit(state, c, "y", deps=["x"])
    assert out == [(c, [Msg.TASK_ERRED, "y", "E", "TB"])]
    c2 = state.add_client("c2")
    assert submit(state, c2, "x") == [(c2, [Msg.TASK_ERRED, "x", "E", "TB"])]
    state.release(c, ["x", "y"])
    state.release(c2, ["x"])
    assert_empty(state)


def test_failure_report_from_worker_not_running_the_task_is_ignored():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    state.task_failed(w2, "x", "E", "TB")
    state.task_failed(w2, "nonexistent", "E", "TB")
    assert state.take_outbox() == [] and state.tasks["x"].state == "processing"


# --- cancelling ------------------------------------------------------------------------

def test_cancel_sends_task_cancelled_for_task_and_dependents_and_forgets_them():
    state, (w1, w2), c1 = cluster(2)
    c2 = state.add_client("c2")
    submit(state, c1, "keep")
    finish(state, "keep")
    submit(state, c1, "x")
    submit(state, c1, "y", deps=["x", "keep"])
    submit(state, c2, "z", deps=["y"])
    x_on = where(state, "x")
    state.cancel(["x"], "user asked")
    out = state.take_outbox()
    cancelled = messages(out, Msg.TASK_CANCELLED)
    assert sorted(m[1] for m in cancelled) == ["x", "y", "z"]
    assert all(m[2] == "user asked" for m in cancelled)
    assert keys_of(out, Msg.TASK_CANCELLED, c2) == ["z"]
    assert freed(out) == {(x_on, "x")}                    # x was running: stop it
    assert set(state.tasks) == {"keep"}
    assert state.tasks["keep"].dependents == set()
    check_invariants(state)
    state.cancel(["x", "nonexistent"], "again")           # nothing left to cancel
    assert state.take_outbox() == []
    state.release(c1, ["keep"])
    state.take_outbox()
    assert_empty(state)


def test_cancelled_ready_task_is_never_computed():
    state, (w1,), c = cluster(1)
    submit(state, c, "run")
    submit(state, c, "queued")
    assert state.tasks["queued"].state == "ready"
    state.cancel(["queued"], "no")
    assert keys_of(state.take_outbox(), Msg.TASK_CANCELLED) == ["queued"]
    out = finish(state, "run")
    assert computes(out) == []
    state.release(c, ["run"])
    state.take_outbox()
    assert_empty(state)


def test_submit_depending_on_unknown_key_is_cancelled_with_clear_reason():
    state, (w1,), c = cluster(1)
    submit(state, c, "known")
    out = submit(state, c, "y", deps=["known", "ghost"])
    (msg,) = messages(out, Msg.TASK_CANCELLED, c)
    assert msg[1] == "y" and "ghost" in msg[2]
    assert computes(out) == []
    assert "y" not in state.tasks
    assert state.tasks["known"].dependents == set()
    check_invariants(state)


# --- losing workers --------------------------------------------------------------------

def test_remove_worker_reschedules_its_tasks_on_another_worker():
    state, (w1, w2), c = cluster(2, nthreads=3)
    submit(state, c, "a")
    submit(state, c, "b")
    submit(state, c, "c")
    assert [where(state, k) for k in "abc"] == ["w1", "w2", "w1"]
    state.remove_worker("w1", "it closed")
    out = state.take_outbox()
    assert sorted(computes(out)) == [("w2", "a"), ("w2", "c")]
    assert [d for d, _ in out if d is w1] == []           # nothing sent to the dead one
    assert "w1" not in state.workers and state.counts["workers_lost"] == 1
    check_invariants(state)
    state.remove_worker("w1", "again")                    # unknown address: no-op
    assert state.take_outbox() == []


def test_tasks_of_removed_worker_wait_when_no_worker_has_room():
    state, (w1,), c = cluster(1)
    submit(state, c, "a")
    state.remove_worker("w1", "gone")
    assert state.take_outbox() == [] and state.tasks["a"].state == "ready"
    state.add_worker("w2")
    assert computes(state.take_outbox()) == [("w2", "a")]
    check_invariants(state)


def test_task_is_killed_after_allowed_failures_plus_one_deaths():
    state, workers, c = cluster(3, allowed_failures=1)
    submit(state, c, "x")
    submit(state, c, "y", deps=["x"])
    assert where(state, "x") == "w1"
    state.worker_exited("w1", "pid 41, exit code -9")
    out = state.take_outbox()
    assert [k for _, k in computes(out)] == ["x"]         # 1 death: tried again
    assert messages(out, Msg.TASK_LOST) == []
    second = where(state, "x")
    state.remove_worker(second, "its connection closed")
    out = state.take_outbox()
    assert computes(out) == []
    lost = messages(out, Msg.TASK_LOST, c)
    assert sorted(m[1] for m in lost) == ["x", "y"]       # its dependent fails with it
    (msg,) = [m for m in lost if m[1] == "x"]
    assert msg[2] == "killed"
    reason = msg[3]
    assert "w1" in reason and "pid 41, exit code -9" in reason
    assert second in reason and "its connection closed" in reason
    assert "allowed_failures" in reason
    assert state.tasks["x"].state == "erred"
    # a client that asks later gets the same answer
    c2 = state.add_client("c2")
    assert submit(state, c2, "x") == [(c2, [Msg.TASK_LOST, "x", "killed", reason])]
    check_invariants(state)


def test_exit_reported_before_removal_is_used_in_the_kill_message():
    state, workers, c = cluster(2, allowed_failures=0)
    submit(state, c, "x")
    state.worker_exited("w1", "pid 7, exit code 3")       # removes w1 itself
    (msg,) = messages(state.take_outbox(), Msg.TASK_LOST, c)
    assert msg[1:3] == ["x", "killed"]
    assert "w1 (pid 7, exit code 3)" in msg[3]
    assert "w1" not in state.workers


def test_lost_only_copy_needed_by_pending_task_is_recomputed_from_lineage():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "a")
    finish(state, "a", nbytes=5)                          # a on w1
    submit(state, c, "x", deps=["a"])
    assert where(state, "x") == "w1"                      # locality
    submit(state, c, "slow")
    assert where(state, "slow") == "w2"
    finish(state, "x", nbytes=5)
    state.release(c, ["a"])                               # a's data freed, recipe kept
    assert freed(state.take_outbox()) == {("w1", "a")}
    assert state.tasks["a"].state == "released"
    out = submit(state, c, "y", deps=["x", "slow"])
    assert computes(out) == []

    state.remove_worker("w1", "killed")                   # the only copy of x goes
    out = state.take_outbox()
    assert computes(out) == [] and messages(out, Msg.TASK_LOST) == []
    # x must be computed again, and for that a first; w2 is busy, so a waits its turn
    assert state.tasks["x"].state == "waiting"
    assert state.tasks["x"].waiting_on == {state.tasks["a"]}
    assert state.tasks["a"].state == "ready"
    assert {t.key for t in state.tasks["y"].waiting_on} == {"x", "slow"}
    check_invariants(state)

    out = finish(state, "slow")
    assert computes(out) == [("w2", "a")]
    out = finish(state, "a")
    assert computes(out) == [("w2", "x")]
    assert keys_of(out, Msg.TASK_DONE) == []              # nobody wants a now
    out = finish(state, "x")
    assert computes(out) == [("w2", "y")]
    assert ("w2", "a") in freed(out)                      # a's data is let go again
    check_invariants(state)
    finish(state, "y")
    state.release(c, ["x", "y", "slow"])
    state.take_outbox()
    assert_empty(state)


def test_lost_data_nobody_needs_is_dropped_quietly():
    state, (w1, w2), c = cluster(2)
    state.scatter(c, [("d", 100)], workers=["w1"])
    submit(state, c, "busy")                              # w1 full
    submit(state, c, "y", deps=["d"])
    assert (where(state, "busy"), where(state, "y")) == ("w1", "w2")
    finish(state, "y")
    state.release(c, ["d"])                               # y is done: nobody needs d
    assert state.take_outbox() == []
    state.remove_worker("w1", "gone")
    out = state.take_outbox()
    assert computes(out) == [("w2", "busy")]
    assert messages(out, Msg.TASK_LOST) == []
    check_invariants(state)
    finish(state, "busy")
    state.release(c, ["y", "busy"])
    state.take_outbox()
    assert_empty(state)


def test_lost_result_wanted_by_client_is_recomputed():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x", inline=False)          # large: the client must fetch it
    state.remove_worker("w1", "gone")
    out = state.take_outbox()
    assert computes(out) == [("w2", "x")]
    out = finish(state, "x", payload="again")
    assert messages(out, Msg.TASK_DONE, c) == [[Msg.TASK_DONE, "x", "again", "w2", 1]]
    check_invariants(state)


def test_lost_result_the_client_already_holds_is_not_recomputed_until_needed():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x")                        # small: the value went to the client
    state.remove_worker("w1", "gone")
    assert computes(state.take_outbox()) == []
    assert state.tasks["x"].state == "released"
    out = submit(state, c, "y", deps=["x"])   # a task needs it on a worker: recompute
    assert computes(out) == [("w2", "x")]
    out = finish(state, "x")
    assert computes(out) == [("w2", "y")]
    check_invariants(state)


# Regression (bug found in state.py at commit 8a45086, since fixed): remove_worker
# reschedules the dead worker's tasks before removing the dead worker from who_has of
# the data it held, so data locality sends the task straight back to the dead worker,
# where it hangs forever (state.py SchedulerState.remove_worker: the ws.processing loop
# runs before the ws.has_what loop)
def test_task_on_dead_worker_whose_input_died_with_it_is_recomputed_elsewhere():
    state, (w1, w2), c = cluster(2, nthreads=2)
    submit(state, c, "x")
    finish(state, "x", nbytes=100)                        # x only on w1
    submit(state, c, "y", deps=["x"])
    assert where(state, "y") == "w1"                      # locality
    state.remove_worker("w1", "killed")
    out = state.take_outbox()
    assert [m for d, m in out if d is w1] == []           # nothing for the dead worker
    for m in messages(out, Msg.COMPUTE):
        assert all("w1" not in holders for _, holders in m[4]), m
    assert computes(out) == [("w2", "x")]                 # x is computed again first
    assert state.tasks["y"].state == "waiting"
    check_invariants(state)
    out = finish(state, "x")
    assert computes(out) == [("w2", "y")]
    assert messages(out, Msg.COMPUTE)[0][4] == [["x", ["w2"]]]
    check_invariants(state)


def run_all(state, ws) -> list:
    """Finish everything ``ws`` is given, round after round; returns all that caused."""
    out = []
    while ws.processing:
        for ts in sorted(ws.processing, key=lambda t: t.key):
            out += finish(state, ts.key, payload=f"again-{ts.key}", ws=ws)
    return out


# Regression (bug found in state.py at commit 8a45086, since fixed): remove_worker's
# has_what loop drops the dead worker from one key's who_has at a time and recomputes
# lost keys as it goes, so a lost key handled before its lost input still sees that
# input 'in memory' on the dead worker and is sent there (state.py
# SchedulerState.remove_worker: the ws.has_what loop)
def test_chains_lost_with_a_worker_are_recomputed_on_the_survivors():
    # Ten chains t0 -> t1 -> ... -> t4, every result held only by w1. Which lost key
    # remove_worker handles first is up to set order; whatever it is, each key must be
    # computed again on w2 after its input. (With the bug, 0 of 40000 runs passed.)
    state, (w1, w2), c = cluster(2, nthreads=100)
    chains, length = 10, 5
    for i in range(chains):
        for j in range(length):
            submit(state, c, f"c{i}-t{j}", deps=[f"c{i}-t{j - 1}"] if j else [])
            finish(state, f"c{i}-t{j}", inline=False)
    assert all(ts.who_has == {w1} for ts in state.tasks.values())
    state.remove_worker("w1", "gone")
    out = state.take_outbox()
    assert [m for d, m in out if d is w1] == []           # nothing for the dead worker
    assert sorted(k for _, k in computes(out)) == [f"c{i}-t0" for i in range(chains)]
    check_invariants(state)
    out += run_all(state, w2)
    done = keys_of(out, Msg.TASK_DONE, c)
    assert sorted(done) == sorted(state.tasks) and len(done) == chains * length
    assert all(ts.state == "memory" and ts.who_has == {w2} for ts in state.tasks.values())


def test_lost_scattered_data_is_reported_lost():
    state, (w1, w2), c = cluster(2)
    placed = state.scatter(c, [("d", 100)], workers=["w2"])
    assert placed == {"d": w2} and state.tasks["d"].state == "memory"
    submit(state, c, "other")
    assert where(state, "other") == "w1"
    out = submit(state, c, "y", deps=["d", "other"])      # waits on "other"
    assert computes(out) == []
    state.remove_worker("w2", "gone")
    out = state.take_outbox()
    lost = messages(out, Msg.TASK_LOST, c)
    assert sorted(m[1] for m in lost) == ["d", "y"]
    assert all(m[2] == "lost" for m in lost)
    (msg,) = [m for m in lost if m[1] == "d"]
    assert "scatter" in msg[3]
    assert computes(out) == []
    check_invariants(state)
    state.release(c, ["d", "y", "other"])
    state.take_outbox()
    assert_empty(state)


def test_scattered_data_is_used_in_place_and_freed_on_release():
    state, (w1, w2), c = cluster(2)
    state.scatter(c, [("d", 100)], workers=["w2"])
    out = submit(state, c, "y", deps=["d"])
    assert computes(out) == [("w2", "y")]
    assert messages(out, Msg.COMPUTE)[0][4] == [["d", ["w2"]]]
    finish(state, "y")
    state.release(c, ["d", "y"])
    assert {k for _, k in freed(state.take_outbox())} == {"d", "y"}
    assert_empty(state)


# --- missing data and stale reports ------------------------------------------------------

def test_missing_data_reschedules_the_task():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x")                                    # x on w1
    submit(state, c, "y", deps=["x"])
    assert where(state, "y") == "w1"
    # w1 says it could not fetch x from a holder the scheduler no longer knows
    state.missing_data(w1, "y", "x", "w9")
    out = state.take_outbox()
    assert [k for _, k in computes(out)] == ["y"]         # x is still on w1: try again
    assert messages(out, Msg.COMPUTE)[0][4] == [["x", ["w1"]]]
    check_invariants(state)


def test_missing_data_from_only_holder_recomputes_the_dependency():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x", nbytes=10)                         # x on w1
    submit(state, c, "busy")                              # w1 full
    submit(state, c, "y", deps=["x"])
    assert where(state, "y") == "w2"
    state.missing_data(w2, "y", "x", "w1")
    out = state.take_outbox()
    assert state.tasks["x"].who_has == set() and w1.nbytes == 0
    assert computes(out) == [("w2", "x")]                 # w1 is still full
    assert state.tasks["y"].state == "waiting"
    assert state.tasks["y"].waiting_on == {state.tasks["x"]}
    out = finish(state, "x")
    assert computes(out) == [("w2", "y")]
    check_invariants(state)


# Regression (bug found in state.py at commit 8a45086, since fixed): missing_data drops
# a live holder from who_has (and its nbytes) without telling it to FREE the key, so if
# the holder still has the data it is orphaned there: tracked by nobody, never freed
# (state.py SchedulerState.missing_data)
def test_missing_data_tells_live_holder_to_drop_the_key_it_is_no_longer_tracked_for():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x", nbytes=10)                         # x on w1
    submit(state, c, "busy")                              # w1 full
    submit(state, c, "y", deps=["x"])                     # on w2
    state.missing_data(w2, "y", "x", "w1")                # e.g. a transient network error
    out = state.take_outbox()
    assert w1 not in state.tasks["x"].who_has and w1.nbytes == 0
    assert ("w1", "x") in freed(out)                      # so w1 must not keep it


def test_missing_data_for_task_no_longer_there_is_ignored():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x")
    submit(state, c, "y", deps=["x"])                     # on w1
    state.missing_data(w2, "y", "x", "w9")
    state.missing_data(w2, "nonexistent", "x", "w9")
    assert state.take_outbox() == [] and where(state, "y") == "w1"


def test_stale_task_finished_from_former_worker_gets_free():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    assert where(state, "x") == "w1"
    state.remove_worker("w1", "its connection closed")
    assert computes(state.take_outbox()) == [("w2", "x")]
    # the old worker's late report must not count, and it must drop the result
    state.task_finished(w1, "x", "stale", 3)
    out = state.take_outbox()
    assert out == [(w1, [Msg.FREE, ["x"]])]
    assert where(state, "x") == "w2" and state.tasks["x"].state == "processing"
    out = finish(state, "x", payload="fresh")
    assert messages(out, Msg.TASK_DONE, c) == [[Msg.TASK_DONE, "x", "fresh", "w2", 1]]
    check_invariants(state)


def test_stale_task_finished_after_missing_data_gets_free():
    state, (w1, w2), c = cluster(2)
    submit(state, c, "x")
    finish(state, "x")                                    # x on w1
    submit(state, c, "busy")                              # w1 full
    submit(state, c, "y", deps=["x"])
    assert where(state, "y") == "w2"
    finish(state, "busy")                                 # w1 has room again
    state.missing_data(w2, "y", "x", "w9")
    assert computes(state.take_outbox()) == [("w1", "y")]   # next to its input
    state.task_finished(w2, "y", "stale", 1)              # w2 had it after all
    assert state.take_outbox() == [(w2, [Msg.FREE, ["y"]])]
    assert where(state, "y") == "w1"
    check_invariants(state)


def test_task_finished_for_forgotten_key_gets_free():
    state, (w1,), c = cluster(1)
    state.task_finished(w1, "never-heard-of", "payload", 1)
    assert state.take_outbox() == [(w1, [Msg.FREE, ["never-heard-of"]])]
    assert_empty(state)


# --- resubmitting released keys ----------------------------------------------------------

def test_new_dependent_of_released_key_recomputes_it():
    state, (w1,), c = cluster(1)
    submit(state, c, "x")
    submit(state, c, "y", deps=["x"])
    finish(state, "x")
    finish(state, "y")
    state.release(c, ["x"])
    state.take_outbox()
    assert state.tasks["x"].state == "released"
    out = submit(state, c, "z", deps=["x"])
    assert computes(out) == [("w1", "x")]
    out = finish(state, "x")
    assert computes(out) == [("w1", "z")]
    assert keys_of(out, Msg.TASK_DONE) == []              # c released x
    check_invariants(state)


# Regression (bug found in state.py at commit 8a45086, since fixed): submit() of a key
# whose data was released but whose recipe is kept (state 'released') only adds the
# client to who_wants; nothing recomputes it, so the client never hears back (state.py
# SchedulerState._want has no branch for 'released')
def test_resubmitting_a_released_key_recomputes_it():
    state, (w1,), c = cluster(1)
    submit(state, c, "x")
    submit(state, c, "y", deps=["x"])
    finish(state, "x")
    finish(state, "y")
    state.release(c, ["x"])
    state.take_outbox()
    assert state.tasks["x"].state == "released"
    out = submit(state, c, "x")                           # the same client asks again
    assert computes(out) == [("w1", "x")]
    out = finish(state, "x", payload="again")
    assert messages(out, Msg.TASK_DONE, c) == [[Msg.TASK_DONE, "x", "again", "w1", 1]]


def test_releasing_the_end_of_a_long_chain_forgets_every_link():
    """Forgetting walks a worklist: a 5,000-task chain once overflowed the stack."""
    from mpnet.config import make_config
    from mpnet.scheduler.state import SchedulerState
    s = SchedulerState(make_config())
    ws = s.add_worker("tcp://w:1", nthreads=1)
    cs = s.add_client("c")
    n = 5000
    for i in range(n):
        s.submit(cs, f"k{i}", "fn", "args", [f"k{i - 1}"] if i else [])
        s.task_finished(ws, f"k{i}", None, 1)
        if i:
            s.release(cs, [f"k{i - 1}"])
    s.take_outbox()
    s.release(cs, [f"k{n - 1}"])
    assert len(s.tasks) == 0
