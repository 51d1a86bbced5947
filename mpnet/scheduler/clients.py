"""The scheduler's client sessions: what a registered client may ask, and its handlers.

::

    REGISTER_CLIENT (on a new link) ──► register_client ──► ClientSession(link, ClientState)
    SUBMIT/RELEASE/CANCEL/...  ──► ClientSession.<handler> ──► SchedulerState (loop thread)
    link closed ──► ClientSession.on_close ──► the client's keys and actor handles released

Requests that span the cluster (``run``, ``restart``, plugins, logs) are served here too:
only a registered client may make them. Runs on the scheduler's loop thread. ``server``
is the :class:`~mpnet.scheduler.server.Scheduler`; only its public names are used.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from ..comm.protocol import Msg
from ..comm.serialize import dumps, dumps_exception, loads
from ..comm.session import Role, Session
from ..errors import ProtocolError
from ..plugins import call_hook
from ..versions import format_mismatches, get_versions, mismatches
from . import operations
from .taskstate import ClientState

__all__ = ["ClientSession", "register_client", "client_role", "HOLDER_HANDLERS", "put_done"]

log = logging.getLogger("mpnet.scheduler")


def register_client(server: Any, link: Any, req_id: int, client_id: str,
                    versions: dict) -> None:
    """REGISTER_CLIENT on a link with no session: bind a :class:`ClientSession`."""
    cs = server.state.add_client(client_id, {"versions": versions}, link=link)
    server.sessions.bind(link, ClientSession(link, server.client_role, server, cs))
    server.monitoring.client_changed(client_id, joined=True)
    call_hook(server.plugins, "add_client", server, client_id)
    everyone = {"scheduler": get_versions(), "client": versions,
                **{a: w.info.get("versions", {}) for a, w in server.state.workers.items()}}
    link.reply(req_id, True, {"id": server.id, "address": server.address,
                              "version_mismatch": format_mismatches(mismatches(everyone))})


class ClientSession(Session):
    """A registered client: its :class:`ClientState` and the scheduler serving it."""

    __slots__ = ("server", "client")

    def __init__(self, link: Any, role: Role, server: Any, client: ClientState):
        super().__init__(link, role)
        self.server = server
        self.client = client

    @property
    def holder(self) -> ClientState:
        """The record that holds this peer's actor handles."""
        return self.client

    def on_close(self, exc: BaseException | None) -> None:
        cs = self.client
        if cs.link is not self.link:
            return       # the client registered again on another link: that one holds it
        server = self.server
        server.state.remove_client(cs.id)
        server.monitoring.client_changed(cs.id, joined=False)
        call_hook(server.plugins, "remove_client", server, cs.id)

    # --- tasks -------------------------------------------------------------------------
    def submit(self, key: str, fn: Any, args: Any, deps: list, priority: int, retries: int,
               resources: dict | None = None, workers: list | None = None) -> None:
        state = self.server.state
        state.submit(self.client, key, fn, args, deps, priority, retries, resources, workers)
        state.monitor.adopt(state.tasks.get(key))   # counted even while it waits

    def release(self, keys: list) -> None:
        self.server.state.release(self.client, keys)

    def cancel(self, keys: list, reason: str) -> None:
        self.server.state.cancel(keys, reason, self.client)

    def try_cancel(self, req_id: int, keys: list) -> None:
        """``Future.cancel()``: what has not started. Tasks sent to a worker are cancelled
        only once that worker confirms it had not started them (and now never will)."""
        server, cs = self.server, self.client
        reason = "cancelled before it started (Future.cancel())"
        done, ask = server.state.try_cancel(cs, keys, reason)
        workers = [ws for ws in ask if ws.link is not None]
        if not workers:
            self.reply(req_id, True, done)
            return

        def answered(results: list) -> None:
            live = cs if server.state.clients.get(cs.id) is cs else None
            for ws, (ok, stopped) in zip(workers, results):
                if ok:
                    done.extend(server.state.cancel_unstarted(live, ws, stopped, reason))
            self.reply(req_id, True, done)
        server.when_all([ws.link.request(Msg.TRY_CANCEL, ask[ws]) for ws in workers],
                        answered)

    def scatter(self, req_id: int, items: list, workers: list | None) -> None:
        server = self.server
        try:
            placed = server.state.scatter(self.client, [(k, p.nbytes) for k, p in items],
                                          workers)
        except RuntimeError as e:
            self.reply(req_id, False, str(e))
            return
        acks = [placed[key].link.request(Msg.STORE, key, payload) for key, payload in items]
        server.when_all(acks, lambda results: self.reply(
            req_id, True, {key: placed[key].address for key, _ in items}))

    def place(self, req_id: int, sizes: list, workers: list | None,
              broadcast: bool) -> None:
        """A large scatter's first step (docs/data.md, "Direct put"): choose the
        worker(s) for each value, least-loaded first, changing nothing. The client then
        sends the data straight there, and the worker tells us (PUT_DONE)."""
        live = [ws for ws in self.server.state.workers.values() if ws.link is not None]
        pool = [ws for ws in live if ws.address in workers or ws.name in workers] \
            if workers else live
        if not pool:
            self.reply(req_id, False, "no workers to scatter to" + (
                f" (none of {workers} is connected)" if workers else ""))
            return
        if broadcast:
            self.reply(req_id, True, [[ws.address for ws in pool]] * len(sizes))
            return
        load = {ws: ws.nbytes for ws in pool}
        out = []
        for nbytes in sizes:
            ws = min(pool, key=load.__getitem__)
            load[ws] += nbytes
            out.append([ws.address])
        self.reply(req_id, True, out)

    def who_has(self, req_id: int, keys: list) -> None:
        tasks = self.server.state.tasks
        self.reply(req_id, True, {k: [w.address for w in tasks[k].who_has]
                                  for k in keys if k in tasks})

    # --- the cluster -------------------------------------------------------------------
    def info(self, req_id: int) -> None:
        self.reply(req_id, True, self.server.info())

    def run(self, req_id: int, fn: Any, workers: list | None) -> None:
        targets = [ws for ws in self.server.state.workers.values() if ws.link is not None
                   and (workers is None or ws.address in workers or ws.name in workers)]
        futures = [ws.link.request(Msg.RUN, fn) for ws in targets]
        self.server.when_all(futures, lambda results: self.reply(req_id, True, [
            [ws.address, ok, value] for ws, (ok, value) in zip(targets, results)]))

    def run_on_scheduler(self, req_id: int, fn: Any) -> None:
        # Explicitly asked for by a token holder: the one place a payload is unpickled.
        try:
            func = loads(fn, what="function")
            params = inspect.signature(func).parameters
            kwargs = {name: self.server for name in ("mpnet_scheduler", "dask_scheduler")
                      if name in params}
            result = dumps(func(**kwargs), oob_threshold=self.server.config.oob_threshold,
                           what="result")
            self.reply(req_id, True, [True, result, ""])
        except Exception as e:   # the user's function: its error goes back to the caller
            payload, tb = dumps_exception(e)
            self.reply(req_id, True, [False, payload, tb])

    def restart(self, req_id: int, addresses: list | None, timeout: float) -> None:
        operations.restart(self.server, addresses, timeout,
                           lambda ok, text: self.reply(req_id, ok, text))

    def retire_workers(self, req_id: int, addresses: list) -> None:
        operations.retire(self.server, addresses, self.server.config.close_timeout * 10,
                          lambda ok, text: self.reply(req_id, ok, text))

    def register_plugin(self, req_id: int, kind: str, name: str, payload: Any) -> None:
        """``client.register_plugin``: install now everywhere, and on every later join."""
        server = self.server
        if kind == "scheduler":
            try:   # explicitly asked for by a token holder, as run_on_scheduler
                server.add_plugin(loads(payload, what="scheduler plugin"), name)
            except Exception as e:
                self.reply(req_id, False, f"scheduler plugin {name!r}: {e}")
                return
            self.reply(req_id, True, None)
            return
        if kind == "worker":
            server.worker_plugins[name] = payload
            targets = [ws.link for ws in server.state.workers.values() if ws.link is not None]
        else:
            server.nanny_plugins[name] = payload
            targets = list(server.nannies.values())
        acks = [link.request(Msg.PLUGIN_INSTALL, name, payload) for link in targets]
        server.when_all(acks, lambda results: self.reply(req_id, True, [
            value for ok, value in results if not ok or value]))

    # --- actors ------------------------------------------------------------------------
    def kill_actor(self, req_id: int, key: str) -> None:
        self.reply(req_id, True, self.server.state.kill_actor(key, "killed by a client"))

    def list_actors(self, req_id: int) -> None:
        self.reply(req_id, True, self.server.state.list_actors())


def put_done(session: Any, req_id: int, client_id: str, items: list) -> None:
    """PUT_DATA's last step, from the worker ``session`` (a WorkerSession) that stored
    a client's values: they are that client's scattered data from now on. Refused when
    the client or the worker is gone: the worker then drops them, nothing stays."""
    state = session.server.state
    cs, ws = state.clients.get(client_id), session.worker
    if cs is None or state.workers.get(ws.address) is not ws:
        session.reply(req_id, False, f"client {client_id} or worker {ws.address} is gone: "
                      "the scattered data was dropped")
        return
    state.scatter(cs, [(key, nbytes) for key, nbytes in items], [ws.address])
    session.reply(req_id, True, None)


# --- actor handles: held by clients, and by workers whose tasks use handles ------------
# Each session names the record that holds them as ``session.holder``.
def _create_actor(session: Any, key: str, name: str | None, cls: Any, args: Any,
                  options: dict) -> None:
    if (cls is None) != (args is None):
        # The class travels with its arguments (a new actor) or neither does (one
        # more handle): half of it would reach the worker as a HOST_ACTOR it must
        # refuse, and the worker would lose its scheduler link over it.
        raise ProtocolError(f"CREATE_ACTOR from {session.peer} carries a class without "
                            "its arguments, or arguments without a class")
    session.server.state.create_actor(session.holder, key, name, cls, args, options)


def _create_named_actor(session: Any, req_id: int, key: str, name: str, cls: Any,
                        args: Any, options: dict, get_if_exists: bool) -> None:
    session.reply(req_id, True, session.server.state.create_named_actor(
        session.holder, key, name, cls, args, options, get_if_exists))


def _lookup_actor(session: Any, req_id: int, key_or_name: str) -> None:
    session.server.state.lookup_actor(session.holder, req_id, key_or_name)


def _release_actor(session: Any, key: str) -> None:
    session.server.state.release_actor(session.holder, key)


#: the actor-handle messages, for every role that may hold handles
HOLDER_HANDLERS = {Msg.CREATE_ACTOR: _create_actor,
                   Msg.CREATE_NAMED_ACTOR: _create_named_actor,
                   Msg.LOOKUP_ACTOR: _lookup_actor, Msg.RELEASE_ACTOR: _release_actor}


def client_role(monitoring_handlers: dict) -> Role:
    """The client's message table (one per scheduler: monitoring's handlers are bound)."""
    S = ClientSession
    return Role("client", {
        Msg.SUBMIT: S.submit, Msg.RELEASE: S.release, Msg.CANCEL: S.cancel,
        Msg.TRY_CANCEL: S.try_cancel, Msg.SCATTER: S.scatter, Msg.PLACE: S.place,
        Msg.WHO_HAS: S.who_has,
        Msg.INFO: S.info, Msg.RUN: S.run, Msg.RUN_ON_SCHEDULER: S.run_on_scheduler,
        Msg.RESTART: S.restart, Msg.RETIRE_WORKERS: S.retire_workers,
        Msg.REGISTER_PLUGIN: S.register_plugin, Msg.KILL_ACTOR: S.kill_actor,
        Msg.LIST_ACTORS: S.list_actors, **HOLDER_HANDLERS, **monitoring_handlers,
    })
