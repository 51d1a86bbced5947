"""The progress bar, rendered into a fixed-width capture console and read as text."""

from __future__ import annotations

import concurrent.futures as cf
import io
import time

from rich.console import Console

import mpnet


def console():
    return Console(file=io.StringIO(), width=80, force_terminal=False, color_system=None)


def test_progress_counts_finished_failed_and_cancelled():
    futures = [cf.Future() for _ in range(5)]
    for f in futures[:3]:
        f.set_result(1)
    futures[3].set_exception(ValueError("x"))
    futures[4].cancel()
    futures[4].set_running_or_notify_cancel()
    out = console()
    counts = mpnet.progress(futures, console=out, interval=0.01)
    assert counts == {"total": 5, "done": 5, "erred": 1, "cancelled": 1}
    text = out.file.getvalue()
    assert "5/5" in text and "1 failed" in text and "1 cancelled" in text


def test_progress_on_a_cluster_and_its_timeout(client):
    futures = client.map(time.sleep, [0.05] * 10)
    out = console()
    assert mpnet.progress(futures, console=out, interval=0.02)["done"] == 10
    assert "10/10" in out.file.getvalue()
    pending = cf.Future()
    start = time.monotonic()
    counts = mpnet.progress([pending], console=console(), timeout=0.2, interval=0.02)
    assert counts["done"] == 0 and time.monotonic() - start < 2


def slow(x):
    time.sleep(0.01)
    return x


def test_progress_has_a_line_per_function_and_time_left(client):
    futures = client.map(slow, range(6)) + client.map(time.sleep, [0.01] * 4)
    out = console()
    counts = mpnet.progress(futures, console=out, interval=0.02)
    assert counts["done"] == 10
    assert counts["by_function"] == {
        "slow": {"total": 6, "done": 6, "erred": 0, "cancelled": 0},
        "sleep": {"total": 4, "done": 4, "erred": 0, "cancelled": 0}}
    lines = out.file.getvalue().splitlines()
    last = {name: [line for line in lines if line.startswith(name)][-1]
            for name in ("slow", "sleep", "tasks")}
    assert "6/6" in last["slow"] and "4/4" in last["sleep"] and "10/10" in last["tasks"]
    assert "left" in last["tasks"]


def test_progress_without_waiting_draws_from_a_thread():
    pending = [cf.Future() for _ in range(3)]
    out = console()
    handle = mpnet.progress(pending, console=out, interval=0.01, wait=False)
    assert not handle.done() and handle.counts["done"] == 0
    for f in pending:
        f.set_result(None)
    assert handle.wait(5)["done"] == 3
    assert handle.done() and "3/3" in out.file.getvalue()
    # and one that is stopped before its futures finish
    handle = mpnet.progress([cf.Future()], console=console(), interval=0.01, wait=False)
    assert handle.close()["done"] == 0 and handle.done()
