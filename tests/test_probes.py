"""Holes found by probing running processes the way an attacker or an unlucky user would
(after issue 8): token files that are not files, a token holder's messages that passed
the field checks but broke things for everyone else, orders sent to a worker or nanny by
a peer instead of their scheduler, and dead actors the scheduler never forgot."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import pytest

from mpnet import Client, Nanny, Scheduler, Worker
from mpnet.comm.auth import read_token_file, resolve_token, token_file_path
from mpnet.comm.endpoints import connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import Msg
from mpnet.comm.serialize import dumps
from mpnet.config import make_config
from mpnet.errors import TokenFileError
from tests.utils import wait_for

TOKEN = "p" * 64


def inc(x):
    return x + 1


class Holder:
    def __init__(self, blob):
        self.n = len(blob)

    def size(self):
        return self.n


# --- token files that are not files ------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_token_file_is_refused_at_once(home):
    # Opening a FIFO for reading blocks until someone writes: a scheduler, worker or
    # client would hang at start. Run in a child so that a hang fails, not blocks, the test.
    path = token_file_path()
    path.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(path, 0o600)
    code = ("from mpnet.comm.auth import resolve_token\n"
            "from mpnet.errors import TokenFileError\n"
            "try:\n    resolve_token(create=True)\n"
            "except TokenFileError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=20, env=dict(os.environ))
    assert "refused:" in out.stdout and "not a regular file" in out.stdout, out
    assert str(path) in out.stdout


def test_a_folder_or_device_as_token_file_is_refused(home, tmp_path):
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    for path in (folder, "/dev/null"):
        with pytest.raises(TokenFileError, match="not a regular file"):
            read_token_file(path)


def test_a_relative_xdg_config_home_is_ignored(home, monkeypatch, tmp_path):
    # The XDG spec: a relative path is invalid and ignored. Honouring it would put the
    # token wherever the process happens to be started.
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")
    monkeypatch.chdir(tmp_path)
    assert token_file_path() == home / ".config" / "mpnet" / "token"
    token = resolve_token(create=True)
    assert token and not (tmp_path / "relative").exists()


# --- a token holder's messages that passed the checks but broke others ---------------

@pytest.fixture
def sched():
    with Scheduler(host="127.0.0.1", port=0, token=TOKEN, dashboard_address="127.0.0.1:0",
                   heartbeat_interval=0.2) as s:
        yield s


@pytest.fixture
def raw():
    loop = EventLoop("test-probe-loop").start()
    conns = []

    def open_(address, role="client"):
        conn = connect_sync(loop, address, config=make_config(), token=TOKEN, role=role,
                            info={}, handler=lambda c, m: None)
        conns.append(conn)
        return conn
    yield open_
    for c in conns:
        c.close_threadsafe()
    loop.close()


def _request(conn, *msg):
    return conn.loop.run_sync(conn.request, *msg).result(timeout=10)


@pytest.mark.parametrize("metrics", [
    {"memory": "lots"},                          # the status view divides it
    {"memory": "lots", "paused": True},
    {"actors": 5},                               # the monitor's tick iterates it
    {"actors": {"a": "xy"}},
    {"cpu": [1]},
    {"paused": "yes"},
])
def test_a_bad_heartbeat_is_refused_and_status_keeps_working(sched, raw, metrics):
    conn = raw(sched.address, "worker")
    _request(conn, Msg.REGISTER_WORKER, {"address": "tcp://127.0.0.1:9", "nthreads": 1})
    conn.send_threadsafe([Msg.HEARTBEAT, metrics])
    wait_for(lambda: conn.closed, timeout=10, what="the scheduler to drop the connection")
    wait_for(lambda: not sched.workers, timeout=10, what="the fake worker to be removed")
    with Client(sched.address, token=TOKEN, timeout=10) as c:
        status = c.loop.run_sync(c.scheduler.request, Msg.STATUS, {}).result(timeout=10)
        assert status["workers"] == [] or isinstance(status["workers"], (list, dict))
    import urllib.request
    for path in ("", "metrics", "api/status?history=1"):
        with urllib.request.urlopen(sched.dashboard_link + path, timeout=10) as r:
            assert r.status == 200


def test_a_heartbeat_of_a_real_worker_passes_the_checks(sched):
    with Worker(sched.address, token=TOKEN, host="127.0.0.1", heartbeat_interval=0.1) as w:
        ws = sched.state.workers[w.address]
        wait_for(lambda: "memory" in ws.metrics, timeout=10, what="a heartbeat")
        time.sleep(0.3)     # a few more heartbeats: none may be refused
        assert w.address in sched.state.workers and w.scheduler is not None
        assert not w.scheduler.closed


def test_an_actor_class_without_arguments_cannot_cut_a_worker_off(sched, raw):
    # Forwarded as HOST_ACTOR, it was refused by the worker, which then dropped its
    # scheduler link: any token holder could disconnect every worker, again and again.
    with Worker(sched.address, token=TOKEN, host="127.0.0.1") as w:
        link = w.scheduler
        conn = raw(sched.address)
        _request(conn, Msg.REGISTER_CLIENT, "prober", {})
        conn.send_threadsafe([Msg.CREATE_ACTOR, "a1", None, dumps(Holder), None, {}])
        wait_for(lambda: conn.closed, timeout=10, what="the scheduler to drop the prober")
        assert "a1" not in sched.state.actors
        assert w.scheduler is link and not link.closed
        with Client(sched.address, token=TOKEN, timeout=10) as c:
            assert c.submit(inc, 1).result(timeout=10) == 2


def test_released_actors_are_forgotten_with_their_arguments(sched):
    with Worker(sched.address, token=TOKEN, host="127.0.0.1"), \
            Client(sched.address, token=TOKEN, timeout=10) as c:
        for _ in range(2):
            handle = c.submit(Holder, b"x" * 100_000, actor=True).result(timeout=10)
            assert handle.size().result(timeout=10) == 100_000
            del handle
            gc.collect()
        wait_for(lambda: not sched.state.actors, timeout=10,
                 what="the scheduler to forget released actors")


# --- orders from a peer instead of the scheduler -----------------------------------

def _ran_by_peer(path):
    with open(path, "w") as f:
        f.write("ran")
    return 1


@pytest.mark.parametrize("order", ["compute", "close", "free"])
def test_a_peer_cannot_give_a_worker_orders(sched, raw, tmp_path, order):
    marker = tmp_path / "ran"
    with Worker(sched.address, token=TOKEN, host="127.0.0.1") as w, \
            Client(sched.address, token=TOKEN, timeout=10) as c:
        kept = c.submit(inc, 1)
        assert kept.result(timeout=10) == 2
        msg = {"compute": [Msg.COMPUTE, "peer-task", dumps(_ran_by_peer),
                           dumps(((str(marker),), {})), [], [0]],
               "close": [Msg.CLOSE_WORKER, "a peer says so", ""],
               "free": [Msg.FREE, [kept.key]]}[order]
        conn = raw(w.address)
        conn.send_threadsafe(msg)
        wait_for(lambda: conn.closed, timeout=10, what="the worker to drop the peer")
        assert not marker.exists()
        assert w.status == "running" and w.address in sched.state.workers
        assert kept.key in w.store
        assert c.submit(inc, kept).result(timeout=10) == 3


def test_a_nanny_takes_no_orders_on_its_own_port(sched, raw):
    with Nanny(sched.address, token=TOKEN, host="127.0.0.1") as n:
        pid = n.pid
        workers = set(sched.state.workers)
        conn = raw(n.address, "client")
        conn.send_threadsafe([Msg.RESTART_WORKER, "a stranger says so"])
        wait_for(lambda: conn.closed, timeout=10, what="the nanny to drop the connection")
        assert set(sched.state.workers) == workers
        assert n.pid == pid


# --- sockets left to the garbage collector -------------------------------------------

def test_a_dial_still_in_its_handshake_is_closed_with_its_loop():
    # A worker or client that gives up while a dial is still in its handshake (a server
    # that accepted but never spoke, such as an impostor on a freed port) closed its loop
    # and left that socket open for the GC (a ResourceWarning, a descriptor held).
    import socket as socketlib
    from mpnet.comm.endpoints import connect
    silent = socketlib.create_server(("127.0.0.1", 0))
    loop = EventLoop("test-dial-loop").start()
    try:
        fut = connect(loop, f"tcp://127.0.0.1:{silent.getsockname()[1]}", config=make_config(),
                      token=TOKEN, role="client", info={}, handler=lambda c, m: None)
        peer, _ = silent.accept()
        socks = wait_for(lambda: [k.fileobj for k in loop._selector.get_map().values()
                                  if k.fileobj is not loop._wake_r], timeout=5,
                         what="the dial to be registered")
        assert not fut.done()
    finally:
        loop.close()
        silent.close()
    try:
        assert all(s.fileno() == -1 for s in socks), "the loop left a dial's socket open"
    finally:
        peer.close()


@pytest.mark.parametrize("reply", [[Msg.REPLY, [1], True, None], [Msg.REPLY, 1, "yes", None]])
def test_a_malformed_reply_closes_the_connection(sched, raw, reply):
    # An unhashable request id raised TypeError in the loop and left the connection open.
    conn = raw(sched.address)
    _request(conn, Msg.REGISTER_CLIENT, "prober", {})
    conn.send_threadsafe(reply)
    wait_for(lambda: conn.closed, timeout=10, what="the scheduler to drop the connection")
    wait_for(lambda: "prober" not in sched.state.clients, timeout=10, what="no client left")
