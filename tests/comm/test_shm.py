"""Shared memory between workers of one host: data arrives, and no segment outlives it
(a released key, a SIGKILLed producer or consumer, a closed cluster)."""

from __future__ import annotations

import os
import signal

import msgpack
import pytest

from mpnet import Client, LocalCluster
from mpnet.comm import shm
from mpnet.comm.serialize import dumps, loads
from mpnet.config import make_config
from tests.utils import wait_for

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not shm.available(), reason="no usable /dev/shm")

N = 2 * 1024 * 1024      # over shm_min_bytes (1 MiB)


def segments(pid: int) -> list[str]:
    return sorted(n for n in os.listdir(shm.DIRECTORY) if n.startswith(f"{shm.PREFIX}{pid}-"))


def make(n: int):
    import numpy
    return numpy.arange(n, dtype=numpy.uint8)


def describe(x) -> tuple:
    return type(x).__name__, bool(x.flags.writeable), int(x.sum(dtype="uint64"))


def die_while_holding(x) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


EXPECTED = int(np.arange(N, dtype=np.uint8).sum(dtype="uint64"))


# --- the module on its own --------------------------------------------------------------

def test_export_attach_survives_unlink():
    payload = dumps(np.arange(N, dtype=np.uint8))
    segment = shm.export(payload)
    assert os.path.exists(os.path.join(shm.DIRECTORY, segment.name))
    value = loads(shm.attach(segment.ref.header))
    segment.close()                       # the producer releases: the name goes ...
    assert not os.path.exists(os.path.join(shm.DIRECTORY, segment.name))
    assert not value.flags.writeable      # ... the consumer's read-only view stays valid
    assert int(value.sum(dtype="uint64")) == EXPECTED
    with pytest.raises(OSError):
        shm.attach(segment.ref.header)


def test_bytes_and_a_dropped_segment():
    data = os.urandom(N)
    segment = shm.export(dumps(data))
    got = loads(shm.attach(segment.ref.header))
    assert type(got) is bytes and got == data
    name = segment.name
    del segment                           # never stored anywhere: unlinked when dropped
    assert not os.path.exists(os.path.join(shm.DIRECTORY, name))


def test_several_buffers_in_one_segment():
    value = {"a": np.arange(N // 8, dtype="int64"), "b": np.ones(N, dtype="uint8")[::2],
             "small": b"x" * 10}
    segment = shm.export(dumps(value))
    got = loads(shm.attach(segment.ref.header))
    segment.close()
    assert (got["a"] == value["a"]).all() and (got["b"] == value["b"]).all()
    assert got["small"] == b"x" * 10


def test_sweep_removes_only_that_pid_and_refuses_strangers():
    mine = shm.export(dumps(os.urandom(N)))
    assert shm.sweep(os.getpid()) == 1 and segments(os.getpid()) == []
    mine.close()
    with pytest.raises(ValueError):
        shm.attach(msgpack.packb([0, b"", "../etc/passwd", []]))


def test_setting_and_host_decide():
    on, off = make_config(), make_config(shm_enabled=False)
    here = {"host": shm.host_id()}
    assert shm.threshold(on, here) == on.shm_min_bytes
    assert shm.threshold(on, {"host": "elsewhere/boot"}) == 0    # another host: TCP
    assert shm.threshold(on, {"id": "client-1"}) == 0            # a client: TCP
    assert shm.threshold(off, here) == 0 and shm.local_threshold(off) == 0
    assert shm.advertise(off) == {} and shm.advertise(on) == here
    assert make_config(environ={"MPNET_SHM_ENABLED": "0"}).shm_enabled is False


# --- a cluster ----------------------------------------------------------------------------

@pytest.fixture
def shm_client():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def two_workers(client) -> tuple[tuple[str, int], tuple[str, int]]:
    wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=10,
             what="two workers")
    pids = client.run(os.getpid)
    a, b = sorted(pids)
    return (a, pids[a]), (b, pids[b])


def test_release_and_a_sigkilled_consumer(shm_client):
    (a, pid_a), (b, pid_b) = two_workers(shm_client)
    source = shm_client.submit(make, N, workers=[a], pure=False)
    wait_for(lambda: segments(pid_a), what="the result's segment")
    kind, writeable, total = shm_client.submit(describe, source, workers=[b]).result(10)
    assert (kind, writeable, total) == ("ndarray", False, EXPECTED)   # mapped, read-only
    source.release()
    wait_for(lambda: not segments(pid_a), what="the released key's segment to go")

    source = shm_client.submit(make, N, workers=[a], pure=False)
    doomed = shm_client.submit(die_while_holding, source, workers=[b], pure=False)
    wait_for(lambda: b not in shm_client.scheduler_info()["workers"], timeout=10,
             what="the consumer's death")
    doomed.release()
    assert segments(pid_b) == []          # a consumer only maps: it made none
    assert segments(pid_a)                # the producer still holds the data
    source.release()
    wait_for(lambda: not segments(pid_a), what="the released key's segment to go")


def test_sigkilled_producer_is_swept_by_its_nanny(shm_client):
    (a, pid_a), _ = two_workers(shm_client)
    source = shm_client.submit(make, N, workers=[a], pure=False)
    wait_for(lambda: segments(pid_a), what="the result's segment")
    os.kill(pid_a, signal.SIGKILL)
    wait_for(lambda: not segments(pid_a), timeout=10, what="the nanny's sweep")
    source.release()


def test_closed_cluster_leaves_nothing_and_the_setting_switches_it_off():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        (a, pid_a), (b, pid_b) = two_workers(client)
        held = [client.submit(make, N, workers=[w], pure=False) for w in (a, b)]
        wait_for(lambda: segments(pid_a) and segments(pid_b), what="segments on both")
    assert segments(pid_a) == [] and segments(pid_b) == []
    del held
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      shm_enabled=False) as cluster, Client(cluster) as client:
        (a, pid_a), (b, _) = two_workers(client)
        source = client.submit(make, N, workers=[a], pure=False)
        # over TCP the consumer gets its own writable copy, and no segment is made
        assert client.submit(describe, source, workers=[b]).result(10) == (
            "ndarray", True, EXPECTED)
        assert segments(pid_a) == []
