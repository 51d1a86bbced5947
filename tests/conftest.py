"""Shared fixtures. Every test is checked for leaked threads, child processes and
sockets: a test that leaves any behind fails, with the list of what it left."""

from __future__ import annotations

import gc
import os
import threading
import time

import psutil
import pytest

from tests.hosts import hosts  # noqa: F401  (session fixture: namespace hosts with sshd)


def _children() -> set[int]:
    """Child processes, except multiprocessing's resource tracker (one per interpreter,
    started by the first spawned process, by design alive until the interpreter exits)."""
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE or "resource_tracker" in " ".join(p.cmdline()):
                continue
        except psutil.Error:
            continue
        found.add(p.pid)
    return found


def _inet_sockets() -> set:
    try:
        return {(c.laddr, c.raddr, c.status) for c in psutil.Process().net_connections("inet")}
    except psutil.Error:
        return set()


@pytest.fixture(autouse=True)
def check_leaks(request):
    threads_before = set(threading.enumerate())
    children_before = _children()
    sockets_before = _inet_sockets()
    yield
    gc.collect()

    def leftover_threads():
        return [t for t in threading.enumerate()
                if t not in threads_before and t.is_alive()
                and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (leftover_threads() or _children() - children_before):
        time.sleep(0.02)
    threads = leftover_threads()
    children = _children() - children_before
    for pid in children:   # do not let one leak cascade into every later test
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    assert not threads, f"test left threads running: {[t.name for t in threads]}"
    assert not children, f"test left child processes: {sorted(children)}"
    sockets = {s for s in _inet_sockets() - sockets_before if s[2] != psutil.CONN_TIME_WAIT}
    deadline = time.monotonic() + 2
    while sockets and time.monotonic() < deadline:
        time.sleep(0.02)
        sockets = {s for s in _inet_sockets() - sockets_before if s[2] != psutil.CONN_TIME_WAIT}
    assert not sockets, f"test left sockets open: {sorted(map(str, sockets))}"


@pytest.fixture
def token():
    return "test-token-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def cluster():
    """One 2-process cluster shared by a module's tests (start-up costs ~0.3 s)."""
    from mpnet import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture
def client(cluster):
    from mpnet import Client
    with Client(cluster) as c:
        yield c


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, empty home: no token file, no MPNET_TOKEN."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(h / ".config"))
    monkeypatch.delenv("MPNET_TOKEN", raising=False)
    return h
