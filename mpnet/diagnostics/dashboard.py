"""The scheduler's HTTP dashboard: ``/``, ``/metrics``, ``/api/status``, ``/api/task-stream``.

::

    browser / Prometheus ── GET ──► mpnet-dashboard thread (stdlib http.server, one
                                    request at a time) ── loop.run_sync ──► a snapshot
                                    built on the scheduler's loop ──► HTML / text / JSON

Read-only: only GET and HEAD, no query changes anything, and nothing served holds the
token. One named thread accepts; each request runs in a thread of its own
(``mpnet-dashboard-request``, at most ``_MAX_REQUESTS`` at once, every one joined at
close), which must receive the whole request head within ``_REQUEST_TIMEOUT`` seconds in
all, however slowly it trickles in: a client that sends a byte at a time (slowloris) or
sends nothing is dropped then, and meanwhile others are served. At the cap, a new
connection takes the place of the oldest one still sending its head (a real client
sends its head at once; only slow or stalled ones are ever waiting there), so a flood
of stalled connections cannot keep a browser or Prometheus out.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ..comm.addressing import outward_host, parse_address
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import render as render_metrics
from .page import render_page

__all__ = ["Dashboard", "DEFAULT_PORT"]

log = logging.getLogger("mpnet.dashboard")

DEFAULT_PORT = 8787
_REQUEST_TIMEOUT = 5.0       # seconds a client may take to send its whole request head
_MAX_REQUESTS = 32           # requests served at once; more connections are closed
_MAX_HEAD = 64 * 1024        # bytes of request line and headers


class _Server(HTTPServer):
    """An HTTPServer that serves each request in a named, counted, joined thread."""

    allow_reuse_address = True
    request_queue_size = 128     # the stdlib's 5 drops connections in a burst
    dashboard: "Dashboard"

    def __init__(self, *args: Any, **kwargs: Any):
        # _requests_lock guards both: the threads serving, and the sockets of those
        # still reading their head (oldest first), which a newcomer may evict.
        self._requests: set[threading.Thread] = set()
        self._heads: dict[socket.socket, None] = {}
        self._requests_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._requests_lock:
            busy = len(self._requests) >= _MAX_REQUESTS
            if busy and self._heads:
                # Evict the oldest connection still sending its head: its thread's recv
                # returns at once and the thread ends. Under the lock, so that the
                # handler cannot close that socket meanwhile (it leaves _heads first).
                victim = next(iter(self._heads))
                del self._heads[victim]
                try:
                    victim.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                busy = False
            if not busy:
                thread = threading.Thread(target=self._serve_one, args=(request, client_address),
                                          name="mpnet-dashboard-request", daemon=True)
                self._requests.add(thread)
        if busy:    # every slot is answering a request: those end within their timeout
            log.debug("dashboard busy (%d requests): dropped %s", _MAX_REQUESTS,
                      client_address)
            self.shutdown_request(request)
            return
        thread.start()

    def reading_head(self, sock: socket.socket, reading: bool) -> None:
        with self._requests_lock:
            if reading:
                self._heads[sock] = None
            else:
                self._heads.pop(sock, None)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._requests_lock:
                self._requests.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer, or sent garbage: nothing to print on stderr.
        log.debug("dashboard request from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        with self._requests_lock:
            threads = list(self._requests)
        for thread in threads:       # each ends within its deadline
            thread.join(2 * _REQUEST_TIMEOUT)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _REQUEST_TIMEOUT
    server_version = "mpnet-dashboard"
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        # Read the whole head here under one deadline: the stdlib reads line by line
        # with a timeout per read, which a client sending a byte every few seconds
        # never trips. The handler then parses it from memory.
        super().setup()
        deadline = time.monotonic() + _REQUEST_TIMEOUT
        head = bytearray()
        self.server.reading_head(self.connection, True)
        try:
            while (b"\r\n\r\n" not in head and b"\n\n" not in head
                   and len(head) <= _MAX_HEAD):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                try:
                    chunk = self.connection.recv(4096)
                except OSError:     # timed out, reset, or evicted by a newcomer
                    break
                if not chunk:
                    break
                head += chunk
        finally:
            self.server.reading_head(self.connection, False)
        self.connection.settimeout(max(0.5, deadline - time.monotonic() + _REQUEST_TIMEOUT))
        self.rfile = io.BytesIO(bytes(head))

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        route = self.server.dashboard.routes.get(url.path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", body)
            return
        try:
            content_type, data = route(query)
        except Exception as e:   # the scheduler is closing or stuck: say so, keep serving
            log.debug("dashboard %s failed: %s", url.path, e)
            self._send(503, "text/plain; charset=utf-8",
                       f"the scheduler did not answer: {e}\n".encode(), body)
            return
        self._send(200, content_type, data, body)

    def _send(self, code: int, content_type: str, data: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 (stdlib name)
        log.debug("dashboard %s: " + format, self.address_string(), *args)


class Dashboard:
    """Serve the dashboard at ``address`` (``":8787"``, ``"host:port"``, ``"8787"``).

    ``snapshot(history=, events=)`` and ``task_stream(since, n)`` are called on the HTTP
    thread and must be safe there (the scheduler passes functions that hop onto its
    loop). The default port, when taken, falls back to a free one, as dask does.
    """

    def __init__(self, address: str, snapshot: Callable[..., dict],
                 task_stream: Callable[..., list], *, default_host: str = ""):
        text = str(address).strip()
        if text.isdigit():
            text = ":" + text
        host, port = parse_address(text, default_port=DEFAULT_PORT)
        self.host = host or default_host
        self.port = port
        self.snapshot = snapshot
        self.task_stream = task_stream
        self.routes: dict[str, Callable[[dict], tuple[str, bytes]]] = {
            "/": self._page, "/index.html": self._page, "/metrics": self._metrics,
            "/api/status": self._status, "/api/task-stream": self._stream}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> "Dashboard":
        try:
            self._server = _Server((self.host, self.port), _Handler)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or self.port != DEFAULT_PORT:
                raise OSError(e.errno, f"cannot serve the dashboard on "
                                       f"{self.host or '*'}:{self.port}: {e.strerror}; "
                                       "pick another --dashboard-address or use "
                                       "--no-dashboard") from None
            log.info("port %d is taken: serving the dashboard on a free port instead",
                        self.port)
            self._server = _Server((self.host, 0), _Handler)
        self._server.dashboard = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="mpnet-dashboard", daemon=True)
        self._thread.start()
        return self

    @property
    def link(self) -> str:
        host = self.host if self.host not in ("", "0.0.0.0") else outward_host()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the thread. Idempotent."""
        with self._lock:
            if self._closed or self._server is None:
                self._closed = True
                return
            self._closed = True
        # shutdown() waits for serve_forever to notice (at most poll_interval).
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- routes ----------------------------------------------------------------------
    def _page(self, query: dict) -> tuple[str, bytes]:
        snap = self.snapshot(events=20)
        stream = self.task_stream(snap["time"] - 60, 2000)
        return "text/html; charset=utf-8", render_page(snap, stream).encode()

    def _metrics(self, query: dict) -> tuple[str, bytes]:
        return METRICS_TYPE, render_metrics(self.snapshot(events=0)).encode()

    def _status(self, query: dict) -> tuple[str, bytes]:
        history = query.get("history", ["0"])[0] not in ("0", "false", "")
        return "application/json", json.dumps(self.snapshot(history=history)).encode()

    def _stream(self, query: dict) -> tuple[str, bytes]:
        since = float(query.get("since", ["0"])[0])
        n = int(query.get("n", ["1000"])[0])
        return "application/json", json.dumps(self.task_stream(since, n)).encode()
