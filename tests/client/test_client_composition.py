"""The client is composed of parts with narrow interfaces, not mixed in; its public face
is what README.md and docs/ describe, name for name and signature for signature; the
client package imports nothing above or beside it but comm and the package-level
modules."""

from __future__ import annotations

import ast
import inspect
import pathlib

import mpnet
from mpnet import Client

CLIENT = pathlib.Path(mpnet.__file__).parent / "client"

# Client's public names and their signatures (properties: "property"), as documented.
PUBLIC = {
    "actor": "(self, cls: 'type', /, *args: 'Any', name: 'str | None' = None, "
             "max_restarts: 'int' = 0, max_task_retries: 'int' = 0, max_concurrency: 'int' "
             "= 1, resources: 'dict | None' = None, workers: 'Iterable[str] | None' = None, "
             "lifetime: 'str | None' = None, get_if_exists: 'bool' = False, **kwargs: 'Any')"
             " -> 'ActorHandle'",
    "actor_caller": "property",
    "as_completed": "(self, futures: 'Iterable[Future]' = (), **kw: 'Any') -> 'as_completed'",
    "cancel": "(self, futures: 'Any', reason: 'str' = 'cancelled by the client') -> 'None'",
    "close": "(self, timeout: 'float | None' = None) -> 'None'",
    "gather": "(self, futures: 'Any', errors: 'str' = 'raise', timeout: 'float | None' = "
              "None) -> 'Any'",
    "get_actor": "(self, name: 'str', timeout: 'float | None' = None) -> 'ActorHandle'",
    "get_executor": "(self, **submit_kwargs: 'Any') -> \"'ClientExecutor'\"",
    "get_scheduler_logs": "(self, n: 'int' = 100, timeout: 'float | None' = None) -> 'list'",
    "get_status": "(self, *, history: 'bool' = False, events: 'int' = 20, timeout: "
                  "'float | None' = None) -> 'dict'",
    "get_task_stream": "(self, since: 'float' = 0.0, n: 'int | None' = None, timeout: "
                       "'float | None' = None) -> 'list[dict]'",
    "get_versions": "(self, check: 'bool' = False, packages: 'Iterable[str]' = ()) -> 'dict'",
    "get_worker_logs": "(self, n: 'int' = 100, workers: 'Iterable[str] | None' = None, "
                       "timeout: 'float | None' = None) -> 'dict'",
    "kill_actor": "(self, handle: 'ActorHandle') -> 'bool'",
    "list_actors": "(self) -> 'list[dict]'",
    "map": "(self, fn: 'Callable', /, *iterables: 'Iterable', key: 'str | list | None' = "
           "None, retries: 'int' = 0, priority: 'int' = 0, pure: 'bool | None' = None, "
           "batch_size: 'int | None' = None, **kwargs: 'Any') -> 'list[Future]'",
    "register_plugin": "(self, plugin: 'Any', name: 'str | None' = None) -> 'None'",
    "restart": "(self, timeout: 'float' = 60.0) -> 'None'",
    "restart_workers": "(self, workers: 'Iterable[str]', timeout: 'float' = 60.0) -> 'dict'",
    "retire_workers": "(self, workers: 'Iterable[str]', timeout: 'float' = 60.0) -> 'dict'",
    "run": "(self, fn: 'Callable', /, *args: 'Any', workers: 'Iterable[str] | None' = None, "
           "timeout: 'float | None' = None, **kwargs: 'Any') -> 'dict'",
    "run_on_scheduler": "(self, fn: 'Callable', /, *args: 'Any', timeout: 'float | None' = "
                        "None, **kwargs: 'Any') -> 'Any'",
    "scatter": "(self, data: 'Any', workers: 'Iterable[str] | None' = None, "
               "broadcast: 'bool' = False, hash: 'bool' = False, "
               "timeout: 'float | None' = None) -> 'Any'",       # docs/data.md
    "scheduler": "property",
    "scheduler_info": "(self, timeout: 'float | None' = None) -> 'dict'",
    "status": "property",
    "submit": "(self, fn: 'Callable', /, *args: 'Any', key: 'str | None' = None, retries: "
              "'int' = 0, priority: 'int' = 0, resources: 'dict | None' = None, workers: "
              "'Iterable[str] | None' = None, actor: 'bool' = False, pure: 'bool | None' = "
              "None, **kwargs: 'Any') -> 'Future'",
    "wait": "(self, futures: 'Any', timeout: 'float | None' = None, return_when: 'str' = "
            "'ALL_COMPLETED') -> 'Any'",
    "wait_for_scheduler": "(self, timeout: 'float' = 30.0) -> 'None'",
}


def test_client_is_composed_not_mixed_in():
    assert Client.__bases__ == (object,)


def test_client_public_names_and_signatures_are_as_documented():
    found = {}
    for name in dir(Client):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(Client, name)
        found[name] = ("property" if isinstance(attr, property)
                       else str(inspect.signature(getattr(Client, name))))
    assert found == PUBLIC


def test_handed_methods_keep_their_docstrings():
    for name in ("run", "restart", "get_status", "actor", "get_versions"):
        assert getattr(Client, name).__doc__, name


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute names of the mpnet modules ``path`` imports, at any depth of the code."""
    package = "mpnet.client"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            if node.module is None:          # from .. import context
                names.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "mpnet" or n.startswith("mpnet.")}


def test_the_client_package_imports_no_server_or_deploy_module():
    above = ("mpnet.worker", "mpnet.scheduler", "mpnet.nanny", "mpnet.deploy",
             "mpnet.cli", "mpnet.diagnostics")
    bad = sorted(f"{path.name} -> {name}" for path in CLIENT.glob("*.py")
                 for name in _imports(path)
                 if any(name == p or name.startswith(p + ".") for p in above))
    assert not bad, bad


def test_the_client_package_has_no_import_circle():
    graph = {f"mpnet.client.{p.stem}": {n for n in _imports(p) if n.startswith("mpnet.client.")}
             for p in CLIENT.glob("*.py")}

    def visit(node, path):
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):]
                                                                 + [node]))
        for nxt in graph.get(node, ()):
            visit(nxt, path + [node])
    for module in graph:
        visit(module, [])


def test_actor_requests_between_links_fail_at_once():
    """While the client reconnects its session has no link: a request the actors part
    makes on the loop thread fails as on a closed link, instead of raising
    AttributeError on the loop (where nobody would see it, and the call would wait)."""
    from mpnet.client.actor_api import ClientActors
    from mpnet.comm.protocol import Msg
    from mpnet.errors import CommClosedError

    class Reconnecting:
        link = None
    actors = ClientActors(None, Reconnecting(), loop=None, config=None, token=None,
                          client_id="client-test")
    reply = actors._request_on_loop(Msg.LOOKUP_ACTOR, "Counter-1")
    assert isinstance(reply.exception(timeout=0), CommClosedError)
