"""A scheduler under pressure, in a process of its own so that its CPU time, memory and
descriptors can be measured: out of descriptors it pauses accepting instead of spinning;
frame headers that announce huge bodies cost it nothing until the bytes come."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mpnet import Client, Worker
from mpnet.comm.endpoints import connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.protocol import BUFLEN, HEADER
from mpnet.config import make_config
from tests.utils import wait_for

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

# argv: token, spare descriptors (0: no limit). Prints the address once serving and
# serves until its stdin closes.
SCHEDULER = r"""
import logging, os, resource, sys
from mpnet import Scheduler
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(levelname)s %(name)s %(message)s")
scheduler = Scheduler("127.0.0.1", 0, token=sys.argv[1]).start()
spare = int(sys.argv[2])
if spare:
    # New descriptors take the lowest free number: allow exactly `spare` more.
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (highest + 1 + spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(scheduler.address, flush=True)
sys.stdin.read()
scheduler.close()
"""


def inc(x):
    return x + 1


class SchedulerProcess:
    def __init__(self, tmp_path: Path, token: str, spare: int = 0, **env: str):
        self.log = tmp_path / "scheduler.log"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SCHEDULER, token, str(spare)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
            env={**os.environ, "PYTHONPATH": path, **env})
        self.address = self.proc.stdout.readline().strip()
        assert self.address.startswith("tcp://"), self.log_text()
        self.ps = psutil.Process(self.proc.pid)

    def log_text(self) -> str:
        return self.log.read_text()

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def scheduler_process(tmp_path, token):
    made = []

    def start(**kw):
        made.append(SchedulerProcess(tmp_path, token, **kw))
        return made[-1]
    yield start
    for s in made:
        s.close()


def test_out_of_descriptors_the_scheduler_backs_off_and_keeps_serving(scheduler_process,
                                                                      token):
    # Stalled handshakes hold their descriptors for the whole test.
    sched = scheduler_process(spare=6, MPNET_HANDSHAKE_TIMEOUT="60")
    host, port = sched.address.partition("://")[2].rsplit(":", 1)
    strangers: list[socket.socket] = []
    try:
        with Worker(sched.address, token=token) as _, \
                Client(sched.address, token=token) as client:
            assert client.submit(inc, 1).result() == 2
            for _ in range(20):   # the scheduler can take 4 more; the rest wait in its backlog
                strangers.append(socket.create_connection((host, int(port))))
            wait_for(lambda: "cannot accept connections" in sched.log_text(), timeout=10,
                     what="the scheduler to run out of descriptors")
            before = sched.cpu_seconds()
            time.sleep(1.0)   # a measuring window, not a synchronisation
            busy = sched.cpu_seconds() - before
            assert busy < 0.3, f"the scheduler used {busy:.2f}s of CPU in 1s while out of fds"
            # The connections it has are still served while it cannot accept.
            assert client.submit(inc, 2).result() == 3
            lines = sched.log_text().count("cannot accept connections")
            assert lines <= 2, sched.log_text()[-2000:]
            for s in strangers:
                s.close()
            strangers.clear()
            # Descriptors are back: it accepts again.
            with Client(sched.address, token=token, timeout=10) as second:
                assert second.submit(inc, 3).result() == 4
    finally:
        for s in strangers:
            s.close()


def test_frame_headers_announcing_huge_bodies_cost_no_memory(scheduler_process, token):
    sched = scheduler_process(MPNET_FRAME_STALL_TIMEOUT="1")
    config = make_config()
    loop = EventLoop("test-announcer-loop").start()
    conns = []
    try:
        before = sched.ps.memory_info().rss
        conns += [connect_sync(loop, sched.address, config=config, token=token, role="client",
                              info={}, handler=lambda conn, msg: None) for _ in range(3)]
        # A frame of a 1-byte body (an empty msgpack list) and one 700 MiB buffer, of
        # which only the header and the body are ever sent.
        announce = HEADER.pack(1, 1) + BUFLEN.pack(700 * MiB) + b"\x90"
        for conn in conns:
            loop.run_sync(conn._send_raw, announce)
        # One round trip on another connection: the headers, sent before it, are read.
        with Client(sched.address, token=token) as client:
            client.scheduler_info()
        grown = sched.ps.memory_info().rss - before
        assert grown < 8 * MiB, f"RSS grew by {grown / MiB:.0f} MiB for 3 frame headers"
        wait_for(lambda: all(conn.closed for conn in conns), timeout=10,
                 what="the stalled connections to be dropped")
        assert sched.log_text().count("no progress on a half-received frame") == 3
    finally:
        for conn in conns:
            loop.run_sync(conn.close)
        loop.close()


def test_a_connect_nobody_answers_gives_up_at_its_deadline():
    """A listener whose accept queue is full drops new SYNs: the dial must fail at its
    own timeout, not after the kernel's two minutes of SYN retries."""
    import socket as _socket
    import time as _time

    from mpnet.comm.endpoints import connect as _connect
    from mpnet.comm.eventloop import EventLoop as _Loop
    from mpnet.config import make_config as _config
    from mpnet.errors import ConnectTimeoutError as _Timeout

    listener = _socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    loop = _Loop("test-syn-loop").start()
    try:
        for _ in range(4):                  # fill the accept queue; never accepted
            s = _socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        _time.sleep(0.1)
        t0 = _time.monotonic()
        fut = _connect(loop, f"tcp://127.0.0.1:{port}", config=_config(), token="x" * 32,
                       role="client", info={}, handler=lambda c, m: None, timeout=0.5)
        with pytest.raises(_Timeout, match="nothing answered"):
            fut.result(timeout=10)
        assert _time.monotonic() - t0 < 5
    finally:
        loop.close()
        for s in fillers:
            s.close()
        listener.close()
