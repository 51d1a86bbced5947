"""The shared lifecycle helper: guarded moves, one winner per race, waits without polls."""

import threading

import pytest

from mpnet.errors import LifecycleError
from mpnet.lifecycle import Lifecycle, Status


def test_moves_follow_the_table_and_compare_as_strings():
    life = Lifecycle("scheduler")
    assert life.state == "created" and life.state is Status.CREATED
    assert life.move(Status.STARTING)
    assert life.move(Status.RUNNING)
    assert str(life.state) == "running" and life.state == "running"
    with pytest.raises(LifecycleError, match="'running' to 'starting'"):
        life.move(Status.STARTING)
    assert life.move(Status.CLOSING) and life.move(Status.CLOSED)
    assert not life.move(Status.CLOSED)            # already there: a no-op, not an error


def test_only_from_is_race_safe_one_winner():
    for _ in range(200):
        life = Lifecycle("cluster")
        life.move(Status.STARTING)
        life.move(Status.RUNNING)
        wins = []
        barrier = threading.Barrier(4)

        def close():
            barrier.wait()
            wins.append(life.move(Status.CLOSING, only_from=(Status.RUNNING,)))

        threads = [threading.Thread(target=close, name=f"closer-{i}") for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1


def test_wait_for_wakes_on_the_move_and_times_out_otherwise():
    life = Lifecycle("worker")
    assert not life.wait_for(Status.RUNNING, timeout=0.05)
    mover = threading.Timer(0.05, lambda: (life.move(Status.STARTING),
                                           life.move(Status.RUNNING)))
    mover.start()
    assert life.wait_for(Status.RUNNING, Status.FAILED, timeout=10)
    mover.join()
