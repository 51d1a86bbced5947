"""Attacks and accidents on authentication, tried the way an attacker or an unlucky user
would: an empty or open token file, a racing first start, a fake server on the port of a
scheduler that died. Every test runs with a HOME of its own (the machine's token file is
never read or written)."""

from __future__ import annotations

import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mpnet import Client, LocalCluster, Scheduler, Worker
from mpnet.comm.auth import read_token_file, resolve_token, token_file_path
from mpnet.comm.protocol import (HEADER, PROTOCOL_VERSION, decode_handshake,
                                 encode_handshake)
from mpnet.errors import AuthenticationError, TokenFileError
from tests.utils import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _write_token_file(text: str, mode: int = 0o600) -> Path:
    path = token_file_path()
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(text)
    os.chmod(path, mode)
    return path


# --- item 1: a token file never switches authentication off ----------------------------

@pytest.mark.parametrize("text", ["", "\n", "   \n"])
def test_empty_token_file_is_an_error_naming_it(home, text):
    path = _write_token_file(text)
    with pytest.raises(TokenFileError, match=str(path)):
        resolve_token()
    with pytest.raises(TokenFileError, match="empty"):
        Scheduler(port=0)
    with pytest.raises(TokenFileError, match="empty"):
        Client("tcp://127.0.0.1:1", timeout=0.1)


def test_empty_token_file_stops_the_scheduler_command(home, tmp_path):
    path = _write_token_file("")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mpnet.cli.main", "scheduler", "--port", "0",
                           "--host", "127.0.0.1"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_unreadable_token_file_is_an_error(home):
    path = _write_token_file("x" * 64)
    os.chmod(path, 0o000)
    if os.access(path, os.R_OK):   # root reads anything: make the path a folder instead
        path.unlink()
        path.mkdir()
    with pytest.raises(TokenFileError, match=str(path)):
        resolve_token()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_file_open_to_others_is_refused_with_the_fix(home, mode):
    path = _write_token_file(secrets.token_hex(32), mode)
    with pytest.raises(TokenFileError, match=f"chmod 600 {path}"):
        resolve_token()
    with pytest.raises(TokenFileError):
        read_token_file(path)


def test_token_file_in_a_folder_others_can_change_is_refused(home, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    path = shared / "token"
    path.write_text(secrets.token_hex(32))
    os.chmod(path, 0o600)
    with pytest.raises(TokenFileError, match="chmod go-w"):
        read_token_file(path)
    os.chmod(shared, 0o1777)        # sticky, like /tmp: others cannot replace our file
    assert read_token_file(path)


def test_token_file_is_created_private_whatever_the_umask(home):
    old = os.umask(0)
    try:
        with Scheduler(host="127.0.0.1", port=0) as s:
            token = s.token
    finally:
        os.umask(old)
    path = token_file_path()
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (path.parent, path.parent.parent):      # ~/.config/mpnet, ~/.config
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert not [p for p in path.parent.iterdir() if p.name != "token"]   # no temp file left


_RACER = """
import os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.0005)
from mpnet.comm.auth import resolve_token
print(resolve_token(create=True))
"""


def test_racing_first_starts_share_one_complete_token(home, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(4):
        cfg = home / f"cfg{attempt}"
        go = tmp_path / f"go{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(go)],
                                  env={**env, "XDG_CONFIG_HOME": str(cfg)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(8)]
        time.sleep(0.3)            # let them all import and spin on the go file
        go.touch()
        results = [p.communicate(timeout=30) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in results]
        tokens = {out.strip() for out, _ in results}
        assert len(tokens) == 1 and len(tokens.pop()) == 64, results


def test_no_auth_is_only_ever_said_out_loud(home):
    with LocalCluster(n_workers=1, processes=False, token=False) as cluster:
        assert cluster.token is None
        with Client(cluster) as c:
            assert c.submit(abs, -3).result(timeout=10) == 3
        # A client that holds a token refuses this cluster (a downgrade) ...
        with pytest.raises(AuthenticationError, match="token=False"):
            Client(cluster.scheduler_address, token="t" * 64, timeout=5)
        # ... and one that says token=False joins it.
        with Client(cluster.scheduler_address, token=False, timeout=5) as c:
            assert c.submit(abs, -4).result(timeout=10) == 4
    with pytest.raises(ValueError, match="non-empty"):
        Client("tcp://127.0.0.1:1", token="", timeout=0.1)


# --- item 2: no downgrade, first connection or reconnect ---------------------------------

class FakeServer:
    """Binds a port and answers the handshake with "no auth needed", as an attacker on
    a freed port would; records every byte a victim sends after the hello."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-fake-server")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                conn.sendall(encode_handshake(["mpnet", PROTOCOL_VERSION, "scheduler",
                                               os.urandom(32), False]))
                buf = bytearray()
                try:
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buf += data
                        if len(buf) >= HEADER.size and decode_handshake(bytearray(buf), 4096):
                            # It answered: play along as a trusting server would.
                            conn.sendall(encode_handshake(["ok", b"", {"id": "fake"}]))
                except OSError:
                    pass
                if buf:
                    self.received.append(bytes(buf))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


def test_client_with_a_token_refuses_a_server_that_asks_for_none(home, fake):
    with pytest.raises(AuthenticationError, match="does not ask for a token"):
        Client(f"tcp://127.0.0.1:{fake.port}", token="t" * 64, timeout=5)
    assert fake.connections >= 1 and fake.received == []


def test_worker_with_a_token_refuses_a_server_that_asks_for_none(home, fake):
    w = Worker(f"tcp://127.0.0.1:{fake.port}", token="t" * 64, host="127.0.0.1")
    try:
        with pytest.raises(AuthenticationError, match="does not ask for a token"):
            w.start()
    finally:
        w.close()
    assert fake.received == []


def test_workers_and_nannies_do_not_reconnect_to_an_impostor_on_the_freed_port(home):
    """kill -9 of the scheduler, then a stranger binds its port: the workers and nannies
    that try to reconnect refuse it and never send it anything; they keep trying (the
    impostor cannot make them give up), and join the real scheduler once it is back."""
    from mpnet import Nanny
    from mpnet.deploy.scheduler_file import read_scheduler_file
    token = "s" * 64
    path = home / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPNET_TOKEN": token}

    def start_scheduler(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mpnet.cli.main", "scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--scheduler-file", str(path), "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [start_scheduler(0)]
    worker = nanny = fake = None
    try:
        address = read_scheduler_file(path, timeout=30)["address"]
        port = int(address.rsplit(":", 1)[1])
        worker = Worker(address, token=token, host="127.0.0.1", death_timeout=20).start()
        nanny = Nanny(address, token=token, host="127.0.0.1", death_timeout=20).start()
        procs[0].kill()
        procs[0].wait(10)
        fake = FakeServer(port)
        wait_for(lambda: fake.connections >= 4, timeout=15, what="the reconnect attempts")
        assert fake.received == [], fake.received
        assert not worker.wait_closed(0), "an impostor must not make the worker give up"
        fake.close()
        fake = None
        procs.append(start_scheduler(port))
        with Client(address, token=token, timeout=30) as c:
            wait_for(lambda: len(c.scheduler_info()["workers"]) == 2, timeout=20,
                     what="the worker and the nanny's worker to rejoin the real scheduler")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        for service in (worker, nanny, fake):
            if service is not None:
                service.close()
