"""The dashboard's HTTP port, probed as an attacker would: slow and stalled clients,
other methods, paths outside the routes, and looking for the token."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from mpnet import Scheduler
from mpnet.diagnostics import dashboard

TOKEN = "d" * 64


@pytest.fixture
def sched():
    with Scheduler(host="127.0.0.1", port=0, token=TOKEN, dashboard_address="127.0.0.1:0") as s:
        yield s


def _port(s) -> int:
    return int(s.dashboard_link.rstrip("/").rsplit(":", 1)[1])


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(data)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


def test_slow_and_stalled_clients_do_not_keep_others_out(sched):
    port = _port(sched)
    stop = threading.Event()

    def trickle() -> None:          # slowloris: a header line every 0.2 s, forever
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"GET / HTTP/1.1\r\n")
            while not stop.wait(0.2):
                try:
                    c.sendall(b"X-a: b\r\n")
                except OSError:
                    return
    slow = [threading.Thread(target=trickle, name=f"test-slowloris-{i}") for i in range(4)]
    for t in slow:
        t.start()
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * dashboard._MAX_REQUESTS)]
    try:
        time.sleep(0.3)     # let the server take them all in
        start = time.monotonic()
        with urllib.request.urlopen(sched.dashboard_link + "metrics", timeout=20) as r:
            assert r.status == 200
        assert time.monotonic() - start < dashboard._REQUEST_TIMEOUT
    finally:
        stop.set()
        for t in slow:
            t.join()
        for c in stalled:
            c.close()


def test_a_trickling_client_is_dropped_at_the_deadline(sched, monkeypatch):
    monkeypatch.setattr(dashboard, "_REQUEST_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", _port(sched)), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 5:
            try:
                c.sendall(b"X-a: b\r\n")
                c.settimeout(0.1)
                if c.recv(65536) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed, "a client sending a header line every 0.1 s was never dropped"


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", b"501"),
    (b"PUT /metrics HTTP/1.0\r\n\r\n", b"501"),
    (b"DELETE / HTTP/1.0\r\n\r\n", b"501"),
    (b"GET /../../etc/passwd HTTP/1.0\r\n\r\n", b"404"),
    (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.0\r\n\r\n", b"404"),
    (b"GET //etc/passwd HTTP/1.0\r\n\r\n", b"404"),
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
])
def test_other_methods_and_paths_are_refused(sched, request_bytes, status):
    answer = _exchange(_port(sched), request_bytes)
    assert status in answer.split(b"\r\n", 1)[0] or status in answer[:400]
    assert b"root:" not in answer


def test_no_route_serves_the_token(sched):
    port = _port(sched)
    for path in ("/", "/index.html", "/metrics", "/api/status?history=1",
                 "/api/task-stream?since=0&n=10"):
        answer = _exchange(port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.0 200"), answer[:100]
        assert TOKEN.encode() not in answer
