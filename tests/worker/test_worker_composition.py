"""The worker is built of parts with narrow interfaces; a task's client shares the
worker's loop."""

from __future__ import annotations

import ast
import pathlib
import threading

import mpnet
from mpnet import Client, LocalCluster

ROOT = pathlib.Path(mpnet.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """Modules a file imports (relative ones resolved), lazy imports included."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_worker_layer_imports_nothing_above_it():
    # worker → client and client → worker.context were arrows pointing up; the
    # worker's modules and actors.py ↔ worker.py made a circle.
    for path in (ROOT / "worker").glob("*.py"):
        imported = _imports(path)
        assert not {m for m in imported if m.startswith(("mpnet.client", "mpnet.deploy",
                                                          "mpnet.nanny"))}, path.name
        if path.name != "worker.py":
            assert "mpnet.worker.worker" not in imported, path.name
    assert not [m for m in _imports(ROOT / "client" / "client.py")
                if m.startswith("mpnet.worker")]
    assert not (ROOT / "worker" / "context.py").exists()


def test_worker_modules_are_short():
    for path in (ROOT / "worker").glob("*.py"):
        assert len(path.read_text().splitlines()) < 500, path.name


def _client_in_task(i):
    client = mpnet.get_client()
    worker = mpnet.get_worker()
    total = client.submit(sum, [i, 2, 3]).result(timeout=10)
    again = mpnet.get_client() is client
    return (id(client), client.loop is worker.loop, total, again,
            sorted(t.name for t in threading.enumerate() if "client-loop" in t.name))


def test_get_client_in_a_task_reuses_the_workers_loop():
    # two executor threads ask at once (two threads stay free for the tasks they
    # submit): they get one client, on the worker's loop
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        results = client.gather(client.map(_client_in_task, range(2)), timeout=30)
        client.run(lambda mpnet_worker: mpnet_worker.clients.close_client())
    assert len({r[0] for r in results}) == 1
    for i, (_, same_loop, total, again, client_threads) in enumerate(results):
        assert same_loop and again and total == i + 5
        assert client_threads == []         # no second loop (mpnet-client-loop)
