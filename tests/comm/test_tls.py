"""TLS: clusters over tls://, mutual TLS refusing strangers, the token still checked
inside TLS, and clear errors (never hangs) for every way the settings can be wrong.

Certificates are made for the module by trustme (tests/comm/certs.py)."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from mpnet import Client, LocalCluster, Scheduler, Worker
from mpnet.comm.endpoints import Listener, connect_sync
from mpnet.comm.eventloop import EventLoop
from mpnet.comm.serialize import dumps, loads
from mpnet.config import make_config
from mpnet.errors import AuthenticationError, ConnectTimeoutError, ProtocolError, TLSError
from tests.comm.certs import make_certificates
from tests.utils import wait_for


def inc(x):
    return x + 1


def pattern(n):
    return bytes(range(256)) * (n // 256)


def digest(data):
    return hashlib.sha256(data).hexdigest()


class Counter:
    def __init__(self, start):
        self.n = start

    def incr(self, k):
        self.n += k
        return self.n


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    pytest.importorskip("trustme")
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def mtls(certs):
    """What every member of a mutual-TLS cluster is given."""
    return {"tls_cert": certs.cert, "tls_ca_file": certs.ca}


@pytest.fixture
def tls_scheduler(mtls, token):
    scheduler = Scheduler("127.0.0.1", 0, token=token, **mtls).start()
    try:
        yield scheduler
    finally:
        scheduler.close()


def test_local_cluster_over_tls_runs_tasks_and_moves_data(mtls, caplog):
    with LocalCluster(n_workers=2, threads_per_worker=1, **mtls) as cluster, \
            Client(cluster) as client:
        assert cluster.scheduler_address.startswith("tls://")
        a, b = (nanny.worker_address for nanny in cluster.workers)
        assert a.startswith("tls://") and b.startswith("tls://")
        assert client.submit(inc, 1).result() == 2
        assert client.gather(client.map(inc, range(300))) == list(range(1, 301))
        # 5 MB made on a, read by a task on b (worker to worker) and by the client
        # (fetched from the worker directly): chunked TLS writes, direct receives.
        data = client.submit(pattern, 5_000_000, workers=[a])
        assert client.submit(digest, data, workers=[b]).result() == digest(pattern(5_000_000))
        assert data.result() == pattern(5_000_000)
        counter = client.actor(Counter, 10)      # actor calls go to the worker directly
        assert counter.incr(5).result() == 15
    # Each worker's goodbye arrived: none was taken for lost at the close.
    assert "lost worker" not in caplog.text


def test_a_tls_connection_carries_mixed_frames_whole_and_in_order(mtls, token):
    # Sizes from empty to several MB, batched into frames of many pieces: small pieces
    # are joined, large buffers sliced, and every "would block" retried with the same
    # bytes; a mistake there is an SSL error or a corrupted message.
    config = make_config(**mtls)
    sizes = [0, 10, 1_000, 70_000, 300_000, 3_000_000, 5, 200_000] * 6
    sent = [os.urandom(n) for n in sizes]
    got: list = []
    all_in = threading.Event()

    def on_message(conn, msg):
        got.append(loads(msg[1]))
        if len(got) == len(sent):
            all_in.set()
    loop = EventLoop("test-tls-loop").start()
    listener = Listener(loop, "127.0.0.1", 0, config=config, token=token, role="test",
                        info={}, handler=on_message)
    conn = None
    try:
        conn = connect_sync(loop, listener.address_at("127.0.0.1"), config=config,
                            token=token, role="test", info={},
                            handler=lambda conn, msg: None)
        for data in sent:
            conn.send_threadsafe([99, dumps(data, oob_threshold=config.oob_threshold)])
        assert all_in.wait(30), f"{len(got)} of {len(sent)} messages arrived"
        assert got == sent
    finally:
        if conn is not None:
            loop.run_sync(conn.close)
        loop.run_sync(listener.close)
        loop.close()


def test_scheduler_worker_and_client_objects_over_tls(certs, token):
    # The key in its own file this time, and the address said explicitly.
    cfg = {"tls_cert": certs.cert_only, "tls_key": certs.key, "tls_ca_file": certs.ca}
    scheduler = Scheduler(token=token, **cfg).start("tls://127.0.0.1:0")
    try:
        with Worker(scheduler.address, token=token, **cfg) as worker, \
                Client(scheduler.address, token=token, **cfg) as client:
            assert worker.address.startswith("tls://")
            assert client.submit(inc, 41).result() == 42
            assert client.submit(pattern, 1_000_000).result() == pattern(1_000_000)
    finally:
        scheduler.close()


def test_mutual_tls_refuses_a_client_without_a_certificate(tls_scheduler, certs, token,
                                                          caplog):
    with pytest.raises(TLSError, match="requires a client certificate"):
        Client(tls_scheduler.address, token=token, tls_ca_file=certs.ca)
    wait_for(lambda: "sent no certificate" in caplog.text, what="the scheduler's log line")


def test_mutual_tls_refuses_a_certificate_from_another_ca(tls_scheduler, certs, token,
                                                         caplog):
    with pytest.raises(TLSError, match="refused our certificate"):
        Client(tls_scheduler.address, token=token, tls_cert=certs.other_cert,
               tls_ca_file=certs.ca)
    wait_for(lambda: "not signed by our CA" in caplog.text, what="the scheduler's log line")


def test_a_client_refuses_a_server_its_ca_did_not_sign(tls_scheduler, certs, token):
    with pytest.raises(TLSError, match="is not signed by the CA in"):
        Client(tls_scheduler.address, token=token, tls_cert=certs.other_cert,
               tls_ca_file=certs.other_ca)


def test_the_token_is_still_required_inside_tls(tls_scheduler, mtls, token):
    with pytest.raises(AuthenticationError):
        Client(tls_scheduler.address, token=token + "-wrong", **mtls)
    with Client(tls_scheduler.address, token=token, **mtls) as client:
        assert client.scheduler_info()["id"] == tls_scheduler.id


def test_a_tls_client_at_a_plain_server_gets_a_clear_error(mtls, token, caplog):
    scheduler = Scheduler("127.0.0.1", 0, token=token).start()
    try:
        assert scheduler.address.startswith("tcp://")
        rest = scheduler.address.partition("://")[2]
        with pytest.raises(TLSError, match="does not answer in TLS"):
            Client(f"tls://{rest}", token=token, **mtls)
        wait_for(lambda: "speaks TLS to a plain tcp:// server" in caplog.text,
                 what="the scheduler's log line")
    finally:
        scheduler.close()


def test_a_plain_client_at_a_tls_server_gets_a_clear_error(tls_scheduler, token):
    rest = tls_scheduler.address.partition("://")[2]
    # The TLS server waits for a ClientHello that never comes: the client's own
    # handshake timeout ends it, with the likely cause in the message.
    with pytest.raises((ProtocolError, ConnectTimeoutError), match=f"tls://{rest}"):
        Client(f"tcp://{rest}", token=token, handshake_timeout=0.5, timeout=3)


def test_settings_errors_name_the_file_or_the_option(certs, token, tmp_path):
    cases = [
        (dict(tls_cert=str(tmp_path / "missing.pem")), None, "missing.pem given as tls_cert"),
        ({}, "tls://127.0.0.1:0", "needs a certificate and its key"),
        (dict(tls_cert=certs.cert, tls_ca_file=certs.ca), "tcp://127.0.0.1:0",
         "says tcp://"),
        (dict(tls_cert=certs.cert_only), None, "give the key with tls_key"),
        (dict(tls_cert=certs.cert_only, tls_key=certs.other_cert), None,
         "does not belong to the certificate"),
        (dict(tls_cert=certs.cert_only, tls_key=certs.encrypted_key), None, "is encrypted"),
        (dict(tls_cert=certs.cert, tls_ca_file=str(tmp_path)), None, "is a folder"),
        (dict(tls_ca_file=certs.ca), None, "without tls_cert"),
    ]
    for cfg, address, message in cases:
        scheduler = Scheduler("127.0.0.1", 0, token=token, **cfg)
        with pytest.raises(TLSError, match=message):
            scheduler.start(address)
        scheduler.close()
    with pytest.raises(TLSError, match="needs the CA certificate"):
        Client("tls://127.0.0.1:1", token=token)


def test_the_scheduler_file_says_tls_and_holds_no_key(mtls, token, tmp_path):
    path = tmp_path / "scheduler.json"
    scheduler = Scheduler("127.0.0.1", 0, token=token, scheduler_file=str(path),
                          **mtls).start()
    try:
        text = path.read_text()
        assert json.loads(text)["address"].startswith("tls://")
        assert "PRIVATE KEY" not in text and "CERTIFICATE" not in text
        with Client(scheduler_file=str(path), **mtls) as client:
            assert client.scheduler_info()["id"] == scheduler.id
    finally:
        scheduler.close()
