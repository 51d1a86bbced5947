"""The commands with --tls-cert, --tls-key and --tls-ca-file, as a user runs them (the
``cmd`` fixture of test_cli.py: real processes, a HOME of their own, all killed after)."""

from __future__ import annotations

import json
import signal
import sys

import pytest

from mpnet import Client
from tests.cli.test_cli import WAIT, cmd, one_line_error, worker_count  # noqa: F401 (fixture)
from tests.comm.certs import make_certificates
from tests.utils import wait_for


@pytest.fixture
def certs(tmp_path):
    pytest.importorskip("trustme")
    return make_certificates(tmp_path / "certs")


def test_scheduler_and_worker_commands_over_tls(cmd, certs, tmp_path):
    tls = ["--tls-cert", certs.cert_only, "--tls-key", certs.key, "--tls-ca-file", certs.ca]
    sched, info = cmd.scheduler(*tls)                      # mpnet scheduler ...
    assert info["address"].startswith("tls://127.0.0.1:")
    path = str(tmp_path / "scheduler.json")
    worker = cmd.spawn([sys.executable, "-m", "mpnet.cli.worker",   # mpnet-worker ...
                        "--scheduler-file", path, "--nthreads", "1", "--memory-limit", "0",
                        *tls])
    with Client(scheduler_file=path, timeout=WAIT, tls_cert=certs.cert_only,
                tls_key=certs.key, tls_ca_file=certs.ca) as client:
        wait_for(lambda: worker_count(client) == 1, timeout=WAIT, what="the worker")
        assert all(a.startswith("tls://") for a in client.scheduler_info()["workers"])
        assert client.submit(pow, 3, 2).result(timeout=WAIT) == 9
    # mpnet status (like top and logs) takes the same options to reach a tls:// scheduler
    code, out, err = cmd.run("status", "--scheduler-file", path, "--json", *tls)
    assert code == 0, err
    assert len(json.loads(out)["workers"]) == 1
    code, _, err = cmd.run("status", "--scheduler-file", path)
    assert code == 1 and "needs the CA certificate" in one_line_error(err)
    code, _, err = cmd.finish(sched, signal.SIGTERM)
    assert code == 0, err
    assert f"Scheduler at: {info['address']}" in err
    assert cmd.finish(worker)[0] == 0     # it leaves when the scheduler goes


def test_tls_mistakes_are_one_line_errors(cmd, certs, tmp_path):
    code, _, err = cmd.run("scheduler", "--port", "0", "--tls-cert", str(tmp_path / "no.pem"))
    assert code == 2 and "does not exist" in err, err
    # A worker of a tls:// scheduler serves its peers over TLS too: it needs a certificate.
    code, _, err = cmd.run("worker", "tls://127.0.0.1:1", "--no-nanny",
                           "--tls-ca-file", certs.ca, env={"MPNET_TOKEN": "a-token"})
    assert code == 1
    assert "needs a certificate and its key" in one_line_error(err)
