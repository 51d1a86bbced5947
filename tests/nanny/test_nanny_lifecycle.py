"""The nanny's and LocalCluster's lifecycles: failed starts, closer threads joined,
concurrent closes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from mpnet import LocalCluster, Nanny, Scheduler
from mpnet.errors import ConnectTimeoutError
from mpnet.lifecycle import Status
from tests.utils import wait_for


def test_a_nanny_whose_start_failed_is_closed_at_once(token):
    n = Nanny("tcp://127.0.0.1:9", token=token, connect_timeout=0.5)
    with pytest.raises(ConnectTimeoutError):
        n.start()
    start = time.monotonic()
    assert n.wait_closed(5)
    assert time.monotonic() - start < 4
    assert n.status is Status.CLOSED


def test_a_nanny_that_closes_itself_joins_its_closer_thread(token):
    with Scheduler("127.0.0.1", 0, token=token, dashboard_address=None) as s:
        n = Nanny(s.address, token=token, max_restarts=0).start()
        os.kill(n.pid, signal.SIGKILL)         # no restart allowed: it closes itself
        assert n.wait_closed(15)
        assert not [t.name for t in threading.enumerate()
                    if t.name.startswith("mpnet-nanny-closer")]
        assert n.status is Status.CLOSED


def test_a_second_close_of_a_cluster_waits_for_the_first():
    cluster = LocalCluster(n_workers=1, dashboard_address=None)
    nanny = cluster.workers[0]
    first = threading.Thread(target=cluster.close, name="test-first-close")
    first.start()
    wait_for(lambda: cluster.status != "running", what="the first close to begin")
    cluster.close()                            # returns once the cluster is closed
    assert cluster.status is Status.CLOSED
    assert nanny.status is Status.CLOSED
    first.join(10)
