"""The scheduler's monitor, socket-free: counts per function kept at each transition, the
task stream, events, and a snapshot whose size does not grow with the number of tasks."""

from __future__ import annotations

from rich.console import Console

from mpnet.config import make_config
from mpnet.diagnostics.status import render, sparkline
from mpnet.scheduler.monitor import Monitor, group_name
from mpnet.scheduler.state import SchedulerState


def make_cluster(n_workers: int = 2):
    state = SchedulerState(make_config(environ={}, worker_queue_extra=0))
    workers = [state.add_worker(f"w{i + 1}", nthreads=1) for i in range(n_workers)]
    client = state.add_client("c1")
    state.take_outbox()
    return state, workers, client


def submit(state, client, key, deps=()):
    state.submit(client, key, "fn", "args", list(deps), 0, 0)
    state.monitor.adopt(state.tasks.get(key))      # what the server does after SUBMIT
    state.take_outbox()


def finish(state, key):
    state.task_finished(state.tasks[key].processing_on, key, "result", 8)
    state.take_outbox()


def counts(state, name):
    return {k: v for k, v in state.monitor.groups[name].counts.items() if v}


def test_group_name_from_generated_and_user_keys():
    assert group_name("inc-3f2a9c0d11ee-7") == "inc"
    assert group_name("load_chunk-3f2a9c0d11ee-m2-15") == "load_chunk"
    assert group_name("Counter-0123456789abcdef") == "Counter"
    assert group_name("my-load-3") == "my-load"
    assert group_name("x") == "x"


def test_counts_follow_each_task_through_its_states():
    state, (w1, w2), c = make_cluster()
    for i in range(3):
        submit(state, c, f"inc-aaaaaaaaaaaa-{i}")
    submit(state, c, "total-aaaaaaaaaaaa-0", deps=[f"inc-aaaaaaaaaaaa-{i}" for i in range(3)])
    assert counts(state, "inc") == {"processing": 2, "ready": 1}
    assert counts(state, "total") == {"waiting": 1}
    for key in ("inc-aaaaaaaaaaaa-0", "inc-aaaaaaaaaaaa-1"):
        finish(state, key)
    finish(state, "inc-aaaaaaaaaaaa-2")
    assert counts(state, "inc") == {"memory": 3}
    assert counts(state, "total") == {"processing": 1}
    state.task_failed(state.tasks["total-aaaaaaaaaaaa-0"].processing_on,
                      "total-aaaaaaaaaaaa-0", "exc", "tb")
    assert counts(state, "total") == {"erred": 1}
    assert state.monitor.groups["inc"].done == 3
    assert state.monitor.task_counts()["memory"] == 3
    state.release(c, [f"inc-aaaaaaaaaaaa-{i}" for i in range(3)] + ["total-aaaaaaaaaaaa-0"])
    assert state.monitor.task_counts() == dict.fromkeys(
        ("waiting", "ready", "processing", "memory", "erred", "released"), 0)
    assert state.monitor.groups["inc"].counts["forgotten"] == 3


def test_task_stream_records_worker_times_and_status():
    state, (w1, w2), c = make_cluster()
    submit(state, c, "inc-aaaaaaaaaaaa-0")
    submit(state, c, "bad-aaaaaaaaaaaa-0")
    worker_of_inc = state.tasks["inc-aaaaaaaaaaaa-0"].processing_on.address
    finish(state, "inc-aaaaaaaaaaaa-0")
    state.task_failed(state.tasks["bad-aaaaaaaaaaaa-0"].processing_on, "bad-aaaaaaaaaaaa-0",
                      "exc", "tb")
    stream = state.monitor.task_stream()
    assert [(r["function"], r["status"]) for r in stream] == [("inc", "memory"),
                                                             ("bad", "erred")]
    assert stream[0]["worker"] == worker_of_inc
    assert stream[0]["stop"] >= stream[0]["start"] > 0
    assert state.monitor.task_stream(n=1) == stream[-1:]
    assert state.monitor.task_stream(since=stream[-1]["stop"]) == []


def test_killed_task_is_an_event():
    state, (w1,), c = make_cluster(1)
    submit(state, c, "crash-aaaaaaaaaaaa-0")
    for i in range(state.config.allowed_failures + 1):
        state.remove_worker(state.tasks["crash-aaaaaaaaaaaa-0"].processing_on.address
                            if state.tasks["crash-aaaaaaaaaaaa-0"].processing_on else "w1",
                            "died")
        state.add_worker(f"again{i}", nthreads=1)
        state.take_outbox()
        if state.tasks["crash-aaaaaaaaaaaa-0"].state == "erred":
            break
    kinds = [e["kind"] for e in state.monitor.events]
    assert "task-killed" in kinds
    assert state.monitor.groups["crash"].counts["erred"] == 1


def test_reading_costs_function_names_not_tasks():
    state, workers, c = make_cluster()
    for i in range(2000):
        submit(state, c, f"f{i % 3}-aaaaaaaaaaaa-{i}")
    assert len(state.monitor.groups) == 3
    assert sum(g.counts["ready"] + g.counts["processing"]
               for g in state.monitor.groups.values()) == 2000
    # the count lives on the groups: no per-task structure is walked to read it
    state.tasks.clear()
    assert state.monitor.task_counts()["ready"] == 1998


def test_tick_gives_rates_and_per_worker_history():
    mon = Monitor()

    class W:
        def __init__(self, address, cpu):
            self.address, self.metrics = address, {"cpu": cpu, "memory": 100}
    mon.tick([W("a", 50.0)], now=100.0)
    mon._group("f").done = 30
    mon.tick([W("a", 75.0)], now=101.5)
    assert mon.rate == 20.0 and mon.groups["f"].rate == 20.0
    assert [c for c, _ in mon.history["a"]] == [50.0, 75.0]
    mon.tick([], now=102.0)
    assert "a" not in mon.history


def _snapshot(width_workers=2):
    workers = [{"address": f"tcp://10.0.0.{i}:4000", "name": f"node{i}-0", "host": f"node{i}",
                "pid": 4100 + i, "nthreads": 1, "nanny": f"n{i}", "state": "running",
                "cpu": 98.0, "memory": 5 * 2**30, "memory_limit": 8 * 2**30, "executing": 1,
                "ready": 14, "processing": 2, "stored": 3, "nbytes": 2**30, "restarts": 0,
                "last_seen": 0.2, "actors": 0, "cpu_history": [10, 50, 98],
                "memory_history": [1, 2, 3]} for i in range(1, width_workers + 1)]
    group = {"name": "load_chunk", "waiting": 0, "ready": 0, "processing": 2, "memory": 1204,
             "erred": 0, "released": 0, "forgotten": 30, "total": 1236, "done": 1234,
             "erred_total": 0, "rate": 120.0, "active": 2}
    return {"address": "tcp://10.0.0.1:8786", "uptime": 9067, "clients": 3,
            "workers_alive": 2, "workers_expected": 2, "tasks_per_second": 1840.0,
            "cpu": 1.96, "threads": 2, "memory": 10 * 2**30, "memory_limit": 16 * 2**30,
            "memory_pause_fraction": 0.8, "memory_terminate_fraction": 0.95,
            "dashboard": None, "workers": workers, "groups": [group], "actors": [],
            "events": [{"time": 0, "kind": "worker-exited",
                        "text": "node2-1 exited: pid 7, killed by signal 9; restarting"}]}


def _text(snap, width):
    console = Console(width=width, record=True, force_terminal=False)
    console.print(render(snap, width))
    return console.export_text()


def test_render_wide_shows_every_column():
    text = _text(_snapshot(), 180)
    assert "up 2:31:07" in text and "3 clients" in text and "2/2 workers" in text
    assert "1,840 tasks/s" in text
    for word in ("node1-0", "node2-0", "98%", "5.0 GiB/8.0 GiB", "restarts", "last seen",
                 "load_chunk", "1,204", "killed by signal 9"):
        assert word in text, word
    assert sparkline([10, 50, 98], 100) in text


def test_render_narrow_drops_columns_instead_of_wrapping():
    text = _text(_snapshot(), 60)
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines)
    worker_lines = [line for line in lines if "node1-0" in line]
    assert len(worker_lines) == 1                       # one line per worker, not wrapped
    assert "98%" in worker_lines[0] and "running" in worker_lines[0]
    assert "last seen" not in text                      # a low-priority column went
