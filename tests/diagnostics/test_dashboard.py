"""The dashboard as its users see it: Prometheus parses /metrics, a script reads
/api/status, a real browser (headless Chromium) loads the page. Nothing served changes
the cluster or shows the token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mpnet import Client, LocalCluster
from tests.utils import wait_for


def slow_inc(x):
    time.sleep(0.02)
    return x + 1


def fail(x):
    raise ValueError(x)


@pytest.fixture(scope="module")
def busy():
    """A 2-worker cluster that has run 40 slow_inc tasks and 2 failing ones."""
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        futures = client.map(slow_inc, range(40))
        client.gather(futures)
        bad = client.map(fail, range(2))
        client.wait(bad)
        yield cluster, client, futures + bad


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_metrics_parse_as_prometheus_text(busy):
    cluster, client, _ = busy
    status, ctype, text = get(cluster.dashboard_link + "metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {}
    for f in families.values():
        for s in f.samples:
            value[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert value[("mpnet_workers", ())] == 2
    assert value[("mpnet_tasks", (("state", "memory"),))] == 40
    assert value[("mpnet_tasks_finished_total", (("function", "slow_inc"),))] == 40
    assert value[("mpnet_tasks_erred_total", (("function", "fail"),))] == 2
    assert value[("mpnet_task_duration_seconds_count", (("function", "slow_inc"),))] == 40
    # every run took at least the 20 ms it sleeps
    assert value[("mpnet_task_duration_seconds_bucket",
                  (("function", "slow_inc"), ("le", "0.01")))] == 0
    assert value[("mpnet_task_duration_seconds_sum", (("function", "slow_inc"),))] >= 0.8
    assert families["mpnet_task_duration_seconds"].type == "histogram"
    assert families["mpnet_worker_restarts"].type == "counter"     # parser drops _total
    memory = [s for s in families["mpnet_worker_memory_bytes"].samples]
    assert len(memory) == 2 and all(s.value > 1e6 for s in memory)


def test_api_status_is_the_status_json(busy):
    cluster, client, _ = busy
    status, ctype, text = get(cluster.dashboard_link + "api/status")
    assert status == 200 and ctype == "application/json"
    snap = json.loads(text)
    assert snap["address"] == cluster.scheduler_address
    assert {w["address"] for w in snap["workers"]} == set(client.scheduler_info()["workers"])
    assert {g["name"]: g["done"] for g in snap["groups"]}["slow_inc"] == 40
    assert snap["dashboard"] == cluster.dashboard_link
    stream = json.loads(get(cluster.dashboard_link + "api/task-stream?n=5")[2])
    assert len(stream) == 5 and all(r["worker"] in snap["workers"][0]["address"] or
                                    r["worker"] in snap["workers"][1]["address"]
                                    for r in stream)


def test_read_only_and_never_shows_the_token(busy):
    cluster, client, _ = busy
    for path in ("", "metrics", "api/status", "api/task-stream"):
        status, _, text = get(cluster.dashboard_link + path)
        assert status == 200
        assert cluster.token not in text
    assert get(cluster.dashboard_link + "nothing-here")[0] == 404
    request = urllib.request.Request(cluster.dashboard_link + "api/status", data=b"{}",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 501
    assert len(client.scheduler_info()["workers"]) == 2


def test_dashboard_link_in_scheduler_file_and_off_switch(tmp_path):
    from mpnet import Scheduler
    path = tmp_path / "scheduler.json"
    with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0",
                   scheduler_file=str(path), token="t") as s:
        info = json.loads(path.read_text())
        assert info["dashboard"] == s.dashboard_link
        assert get(s.dashboard_link + "metrics")[0] == 200
    with LocalCluster(n_workers=0, dashboard_address=None) as cluster:
        assert cluster.dashboard_link is None


def test_worker_logs_tell_why_a_worker_died():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        (address, info), = client.scheduler_info()["workers"].items()
        pid = info["pid"]
        os.kill(pid, signal.SIGKILL)
        # The log ring is the whole test process's: the line must name this pid (an
        # earlier test's nanny may have logged a SIGKILL too).
        wait_for(lambda: any("killed by signal 9" in line[3] and f"pid {pid}" in line[3]
                             for lines in client.get_worker_logs(50).values()
                             for line in lines),
                 timeout=10, what="the nanny's line about the SIGKILL")
        wait_for(lambda: "worker-restarted" in [e["kind"] for e in
                                                client.get_status(events=50)["events"]],
                 timeout=10, what="a restart")
        logs = client.get_worker_logs(50)
        assert any(k.startswith("nanny ") for k in logs)
        assert any("Scheduler at" in line[3] or "exited" in line[3]
                   for line in client.get_scheduler_logs(100))
        kinds = [e["kind"] for e in client.get_status(events=50)["events"]]
        assert "worker-exited" in kinds and "worker-restarted" in kinds


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="chromium is not installed (.ci/run installs it)")
def test_page_in_headless_chromium(busy, tmp_path):
    cluster, client, _ = busy
    browser = _chromium()
    assert browser, "chromium should be installed in CI (.ci/run)"
    profile = tmp_path / "profile"
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(base + ["--dump-dom", cluster.dashboard_link], capture_output=True,
                         text=True, timeout=60).stdout
    workers = client.scheduler_info()["workers"]
    assert 'id="workers"' in dom and 'id="task-stream"' in dom
    for address in workers:
        assert f'data-address="{address}"' in dom
    assert dom.count('class="task"') >= 40           # a bar per task run in the timeline
    assert 'data-function="slow_inc"' in dom
    artifacts = Path(os.environ.get("MPNET_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "dashboard.png"
    subprocess.run(base + ["--hide-scrollbars", "--window-size=1200,800",
                           f"--screenshot={shot}", cluster.dashboard_link],
                   capture_output=True, timeout=60)
    assert shot.exists() and shot.stat().st_size > 5000


class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


def test_actor_calls_reach_status_and_metrics(busy):
    cluster, _, _ = busy
    with Client(cluster) as client:      # its direct link to the actor's worker closes too
        counter = client.actor(Counter)
        for _ in range(20):
            counter.incr().result()

        def reported():
            return [a for a in client.get_status()["actors"] if a["calls"] == 20]
        actor, = wait_for(reported, timeout=10, what="the heartbeat with the actor's calls")
        assert actor["class"] == "Counter" and actor["status"] == "alive"
        text = get(cluster.dashboard_link + "metrics")[2]
        samples = {(s.name, s.labels.get("class")): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("mpnet_actor_calls_total", "Counter")] == 20
        del counter


def test_notebook_and_plain_reprs(busy):
    cluster, client, _ = busy
    html = client._repr_html_()
    assert cluster.scheduler_address in html and cluster.dashboard_link in html
    assert "2 of 2" in html and cluster.token not in html
    assert f'href="{cluster.dashboard_link}"' in cluster._repr_html_()
    text = repr(cluster)
    assert "workers=2" in text and "threads=2" in text and cluster.dashboard_link in text
