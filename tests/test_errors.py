"""Bad input gets a clear error; nothing already computed is lost."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

import mpnet
from mpnet import Client, LocalCluster


def inc(x):
    return x + 1


def die(code):
    os._exit(code)


def make_lock():
    return threading.Lock()


class Unimportable:
    """Pickled by reference to a module the worker cannot import."""


def test_unpicklable_argument_names_its_type(client):
    with pytest.raises(mpnet.SerializationError, match="_thread.lock"):
        client.submit(inc, threading.Lock())
    assert client.submit(inc, 1).result(timeout=10) == 2


def test_unpicklable_result_names_its_type(client):
    f = client.submit(make_lock)
    with pytest.raises(mpnet.SerializationError, match="lock"):
        f.result(timeout=10)


def test_function_that_cannot_be_unpickled_on_the_worker(client, tmp_path, monkeypatch):
    # A module importable here but not on the workers (they do not have tmp_path).
    (tmp_path / "only_here.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here
    f = client.submit(only_here.f, 1)
    with pytest.raises(mpnet.SerializationError, match="could not unpickle the function"):
        f.result(timeout=10)
    assert client.submit(inc, 1).result(timeout=10) == 2


def test_task_that_exits_names_worker_and_exit_code():
    with LocalCluster(n_workers=2, allowed_failures=1) as c, Client(c) as client:
        f = client.submit(die, 3)
        with pytest.raises(mpnet.KilledWorkerError) as info:
            f.result(timeout=30)
        msg = str(info.value)
        assert "exit code 3" in msg and "tcp://127.0.0.1:" in msg and "allowed_failures" in msg
        # the cluster keeps working, with its workers back
        assert client.submit(inc, 1).result(timeout=30) == 2
        deadline = time.monotonic() + 10
        while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(client.scheduler_info()["workers"]) == 2


def test_submit_after_close(cluster):
    client = Client(cluster)
    client.close()
    with pytest.raises(mpnet.ClusterClosedError, match="closed"):
        client.submit(inc, 1)


def test_pending_futures_fail_when_client_closes(cluster):
    client = Client(cluster)
    f = client.submit(time.sleep, 5)
    client.close()
    with pytest.raises(mpnet.ClusterClosedError):
        f.result(timeout=5)


def test_nothing_listening_names_the_address():
    with socket.socket() as s:      # find a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(mpnet.ConnectTimeoutError, match=f"127.0.0.1:{port}"):
        Client(f"tcp://127.0.0.1:{port}", token="x", timeout=0.5)
    assert time.monotonic() - start < 3


def test_bad_addresses_are_clear_errors():
    with pytest.raises(ValueError, match="no port"):
        Client("tcp://127.0.0.1", token="x", timeout=0.5)
    with pytest.raises(ValueError, match="only tcp://"):
        Client("udp://127.0.0.1:1", token="x", timeout=0.5)
    with pytest.raises(TypeError, match="address"):
        Client(12345, token="x")


def test_wrong_token_is_refused_with_a_readable_message(cluster):
    with pytest.raises(mpnet.AuthenticationError) as info:
        Client(cluster.scheduler_address, token="wrong", timeout=2)
    msg = str(info.value)
    assert cluster.scheduler_address in msg and "MPNET_TOKEN" in msg
    with Client(cluster) as ok:                 # the scheduler kept serving
        assert ok.submit(inc, 1).result(timeout=10) == 2


def test_missing_token_is_refused(cluster, monkeypatch, tmp_path):
    monkeypatch.delenv("MPNET_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))    # no per-user token file
    with pytest.raises(mpnet.AuthenticationError, match="requires a token"):
        Client(cluster.scheduler_address, timeout=2)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\x00\x00\x10\x00\x00\x00\x00" + b"\xc1" * 16,          # a frame of invalid msgpack
    b"\xff" * 64,                                              # an absurd length prefix
    os.urandom(3000),
])
def test_garbage_on_the_port_is_dropped_and_serving_goes_on(cluster, garbage):
    from mpnet.comm.addressing import parse_address
    host, port = parse_address(cluster.scheduler_address)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(garbage)
        s.settimeout(5)
        try:
            while s.recv(4096):    # the server hangs up on us
                pass
        except ConnectionResetError:
            pass
    with Client(cluster) as ok:
        assert ok.submit(inc, 2).result(timeout=10) == 3


def test_silent_peer_is_dropped_after_the_handshake_timeout():
    with LocalCluster(n_workers=0, processes=False, handshake_timeout=0.3) as c:
        from mpnet.comm.addressing import parse_address
        host, port = parse_address(c.scheduler_address)
        with socket.create_connection((host, port), timeout=5) as s:
            s.settimeout(5)
            start = time.monotonic()
            while s.recv(4096):
                pass
            assert time.monotonic() - start < 3


def test_nothing_is_unpickled_before_authentication(cluster, monkeypatch):
    """A stranger's pickle is never loaded: the handshake decodes plain msgpack only."""
    import pickle
    loaded = []
    real = pickle.loads
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: loaded.append(a) or real(*a, **k))
    from mpnet.comm.addressing import parse_address
    from mpnet.comm.protocol import HEADER
    import msgpack
    host, port = parse_address(cluster.scheduler_address)
    evil = pickle.dumps(print)
    body = msgpack.packb([1, "client", os.urandom(32), b"forged", {"x": evil}])
    with socket.create_connection((host, port), timeout=5) as s:
        s.recv(4096)                                  # the scheduler's hello
        s.sendall(HEADER.pack(len(body), 0) + body)
        s.settimeout(5)
        reply = s.recv(4096)
        assert b"refused" in reply
    assert loaded == []


@pytest.mark.parametrize("options, match", [
    ({"resources": "GPU"}, "resources= must be a dict"),
    ({"resources": {"GPU": "one"}}, "resources= must be a dict"),
    ({"workers": [1, 2]}, "workers= must be worker addresses"),
    ({"priority": "high"}, "priority= must be an integer"),
    ({"retries": -1}, "retries= must be 0 or more"),
])
def test_wrong_task_options_fail_at_the_call_not_later(client, options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        client.submit(inc, 1, **options)
    if "resources" in options or "workers" in options:      # actors check them too
        with pytest.raises(TypeError, match=match):
            client.actor(dict, **options)
    assert client.submit(inc, 1).result(timeout=10) == 2     # the client is fine after


def test_a_single_worker_name_is_not_split_into_letters(client, cluster):
    address = next(iter(client.scheduler_info()["workers"]))
    assert client.submit(inc, 1, workers=address).result(timeout=10) == 2


def test_wrong_actor_options(client):
    with pytest.raises(ValueError, match="max_concurrency"):
        client.actor(dict, max_concurrency=0)
    with pytest.raises(TypeError, match="needs a class"):
        client.actor(len)
