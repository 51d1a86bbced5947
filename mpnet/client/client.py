"""The client: submits tasks, tracks their futures, fetches results.

::

    user threads ── submit/map (pickle here) ──► call_soon_threadsafe ──► loop thread
                                                                            │ SUBMIT, RELEASE
    futures ◄── set_result / set_exception ◄── TASK_DONE / TASK_ERRED ◄─────┤ scheduler
    result() of a large value ── GET_DATA ──► the worker holding it, directly

The client shares the event loop of a :class:`~mpnet.LocalCluster` it is given, or
runs its own (``mpnet-client-loop``). User objects are pickled on the calling thread;
small results are unpickled on the loop thread as they arrive.

**Threads.** Any number of user threads may call one client at once. What they share
with the loop thread (the status, the scheduler link, the futures table) lives in
:class:`~mpnet.client.session.Session`, under its one lock, whose rule is written at the
top of ``session.py``: every change takes it, the loop thread alone replaces the link,
no user code runs while it is held, and ``Future.__del__`` never takes it. Everything
else a client holds is either set once in ``__init__`` or owned by the loop thread
(worker connections in ``fetch.py``, actor calls in ``actors.py``).

**Parts.** A client is composed, not mixed in: it submits, gathers and scatters here,
and hands every other call to one part, each in a file of its own, each given only what
it needs::

    Client ─┬─ Session      session.py      status, scheduler link, futures table
            ├─ Fetcher      fetch.py        large results, directly from workers
            ├─ ClientActors actor_api.py    actors, their handles and references
            ├─ Operations   operations.py   run, restarts, retirement, plugins, versions
            └─ Monitoring   monitoring.py   status, task stream, logs, notebook view

The futures call back into the client through three methods only (``_fetch``,
``_release``, ``_try_cancel``: ``futures.Owner``); the parts never call each other.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import logging
import multiprocessing
import uuid
import warnings
from html import escape
from typing import Any, Callable, Iterable

from ..comm import tls
from ..comm.auth import resolve_token, token_arg
from ..comm.eventloop import EventLoop
from ..comm.protocol import Msg
from .. import context
from ..comm.serialize import Payload, dumps, dumps_task_args
from ..config import Config, make_config, tune_gc
from ..errors import FrameTooLargeError
from ..lifecycle import Status
from .actor_api import ClientActors
from .callbacks import CallbackThread
from .fetch import DIRECT_PUT_BYTES, Fetcher, digest, is_large
from .keys import FunctionCache, check_key, task_options, track_for_exit, untrack
from .keys import recipe as task_recipe
from .monitoring import Monitoring
from .operations import Operations
from .futures import Future, as_completed, wait
from .session import Session
from .structures import ClientExecutor, flatten, rebuild

__all__ = ["Client"]

log = logging.getLogger("mpnet.client")

def _fits(payload: Payload, key: str, limit: int) -> Payload:
    if payload.nbytes > limit:
        raise FrameTooLargeError.for_size(f"scattered value {key}", payload.nbytes, limit)
    return payload


def _funcname(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return name if name != "<lambda>" else "lambda"


def _by(part: str, method: Callable) -> Any:
    """A method of Client that hands the call to its part ``part`` (an attribute), with
    ``method``'s name, signature and docstring."""
    name = method.__name__

    @functools.wraps(method)
    def handed(self: "Client", /, *args: Any, **kwargs: Any) -> Any:
        return getattr(getattr(self, part), name)(*args, **kwargs)
    return handed


class Client:
    """Connect to a cluster: ``Client(address | cluster, *, scheduler_file=, token=,
    timeout=)``. ``timeout`` (seconds) bounds connecting; it defaults to
    ``config.connect_timeout`` (10 s)."""

    def __init__(self, address: Any = None, *, scheduler_file: str | None = None,
                 token: str | None = None, timeout: float | None = None,
                 config: Config | None = None, default: bool = True,
                 **config_overrides: Any):
        if config is None and hasattr(address, "config"):
            # Client(cluster) speaks to the cluster as its members do: with its TLS files
            config_overrides = {**tls.settings(address.config), **config_overrides}
        self.config = make_config(config, **config_overrides)
        loop = inproc = None
        file_token = None
        if address is not None and not isinstance(address, str):
            cluster = address                   # a LocalCluster (or anything alike)
            if not hasattr(cluster, "scheduler_address"):
                raise TypeError(f"Client() takes an address like 'tcp://host:8786' or a "
                                f"cluster, not {type(cluster).__name__}")
            address = cluster.scheduler_address
            if token is None:
                token = token_arg(cluster.token)
            loop = getattr(cluster, "loop", None)
            # A LocalCluster of this process: its scheduler is reached without a socket
            scheduler = getattr(cluster, "scheduler", None)
            inproc = scheduler if hasattr(scheduler, "connect_inproc") and loop else None
        if scheduler_file is not None:
            from ..scheduler_file import read_scheduler_file
            found = read_scheduler_file(scheduler_file, timeout=timeout)
            address, file_token = found["address"], found.get("token")
        if address is None:
            raise ValueError("Client needs an address ('tcp://host:8786'), a LocalCluster, "
                             "or scheduler_file=")
        self.scheduler_address = address
        self.token = resolve_token(token, scheduler_file_token=file_token)
        self.id = f"client-{uuid.uuid4().hex[:12]}"
        self._own_loop = loop is None
        self.loop = loop or EventLoop("mpnet-client-loop")
        self._fn_cache = FunctionCache(self.config.oob_threshold)
        self._function_payload = self._fn_cache.payload
        self._counter = itertools.count()
        self._session = Session(self, self.loop, address, config=self.config,
                                token=self.token, client_id=self.id, inproc=inproc)
        self._callbacks = CallbackThread(f"mpnet-client-callbacks-{self.id[7:]}")
        self._fetcher = Fetcher(self, self.loop, config=self.config, token=self.token,
                                client_id=self.id, dispatch=self._session.dispatch)
        self._actors = ClientActors(self, self._session, self.loop, config=self.config,
                                    token=self.token, client_id=self.id)
        self._operations = Operations(self._session, self.loop)
        self._monitoring = Monitoring(self._session)
        tune_gc(self.config)
        self._callbacks.start()
        self.loop.start()
        try:
            welcome = self._session.connect(timeout)
            self.scheduler_id = welcome["id"]
            if welcome.get("version_mismatch"):
                warnings.warn("mpnet: this client, the scheduler and the workers run "
                              "different software:\n" + welcome["version_mismatch"],
                              RuntimeWarning, stacklevel=2)
        except BaseException:
            self.close()
            raise
        track_for_exit(self)
        if default:
            context.set_default_client(self)

    def __repr__(self) -> str:
        return f"<Client {self.id} scheduler={self.scheduler_address} {self.status}>"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the session (session.py): status, scheduler link, futures table ------------
    @property
    def status(self) -> Status:
        """``connecting``, ``open``, ``reconnecting``, ``disconnected`` or ``closed``."""
        return self._session.status

    @property
    def scheduler(self) -> Any:
        """The link to the scheduler (read it on the loop thread: it is replaced there
        on reconnect)."""
        return self._session.link

    @property
    def _futures(self) -> Any:
        return self._session.futures

    # --- what futures call back (futures.Owner) -------------------------------------
    def _release(self, key: str) -> None:
        self._session.release(key)

    def _fetch(self, futures: list[Future], timeout: float | None) -> list:
        return self._fetcher.fetch(futures, timeout)

    def wait_for_scheduler(self, timeout: float = 30.0) -> None:
        """Block until the client is connected (after a scheduler restart, say), at
        most ``timeout`` seconds; ClusterClosedError if it is not."""
        self._session.wait_open(timeout)

    # --- submitting ------------------------------------------------------------------
    def _new_key(self, fn: Any) -> str:
        return f"{_funcname(fn)}-{self.id[7:]}-{next(self._counter)}"

    def submit(self, fn: Callable, /, *args: Any, key: str | None = None, retries: int = 0,
               priority: int = 0, resources: dict | None = None,
               workers: Iterable[str] | None = None, actor: bool = False,
               pure: bool | None = None, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; return its :class:`Future`.

        Futures anywhere in the arguments (inside lists, dicts, objects) are replaced
        by their results on the worker. ``retries`` re-runs a task that raised;
        ``priority`` runs higher numbers first. ``key`` (a non-empty str) names the
        task: submitting the same computation under a key that exists gives the existing
        future; a different computation under it raises :class:`~mpnet.KeyConflictError`.
        """
        self._session.check_open("submit")
        if not callable(fn):
            raise TypeError(f"submit() needs a callable first, not {type(fn).__name__}")
        resources, workers = task_options(resources, workers, priority, retries)
        if actor:
            return self._actors.submit(fn, args, kwargs, resources=resources, workers=workers)
        if key is not None:
            check_key(key)
        return self._submit(fn, args, kwargs, key, priority, retries, resources, workers)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict, key: str | None,
                priority: int, retries: int, resources: dict | None, workers: list | None,
                fresh: bool = False) -> Future:
        """``fresh``: ``key`` was made here, unique: no need to look for a conflict."""
        fn_payload = self._function_payload(fn)
        if any(map(is_large, args)) or (kwargs and any(map(is_large, kwargs.values()))):
            # a user's key must name the same computation each time: hash keys then
            args, kwargs = self._put_args(args, kwargs, workers, hash=key is not None)
        args_payload, deps = dumps_task_args(args, kwargs,
                                             oob_threshold=self.config.oob_threshold)
        recipe = None
        if key is None:
            key = self._new_key(fn)
        elif not fresh:
            recipe = task_recipe(fn_payload, args_payload)
        size = fn_payload.nbytes + args_payload.nbytes
        if size > self.config.max_frame_bytes:
            raise FrameTooLargeError.for_size(f"task {key} (its function and arguments)",
                                              size, self.config.max_frame_bytes)
        return self._session.add(key, recipe, [Msg.SUBMIT, key, fn_payload, args_payload,
                                               deps, priority, retries, resources, workers],
                                 "submit")

    def _put_args(self, args: tuple, kwargs: dict, workers: list | None,
                  hash: bool) -> tuple[tuple, dict]:
        """Large top-level arguments go straight to a worker first (a direct put, as
        ``scatter``), and the task takes their futures: the data crosses one TCP hop
        instead of two, and the scheduler never holds a copy. The futures stay alive
        (in the returned arguments) until the task is queued, so the task holds them
        from then on. Not on the loop thread, which the put waits on."""
        if self.loop.in_loop_thread():
            return args, kwargs

        def put(v: Any) -> Any:
            return self.scatter(v, workers=workers, hash=hash) if is_large(v) else v
        return tuple(map(put, args)), {k: put(v) for k, v in kwargs.items()}

    def map(self, fn: Callable, /, *iterables: Iterable, key: str | list | None = None,
            retries: int = 0, priority: int = 0, pure: bool | None = None,
            batch_size: int | None = None, **kwargs: Any) -> list[Future]:
        """``[submit(fn, *args, **kwargs) for args in zip(*iterables)]``, cheaper.

        ``key`` is a prefix (each call adds a suffix of its own, so two calls never
        share keys) or a list of keys, one per task."""
        self._session.check_open("map")
        if isinstance(key, list):
            return [self.submit(fn, *args, key=k, retries=retries, priority=priority,
                                **kwargs) for k, args in zip(key, zip(*iterables))]
        if not callable(fn):
            raise TypeError(f"map() needs a callable first, not {type(fn).__name__}")
        if kwargs.pop("actor", False):
            raise TypeError("map() does not create actors: call actor() for each")
        resources, workers = task_options(kwargs.pop("resources", None),
                                          kwargs.pop("workers", None), priority, retries)
        # A prefix gets a suffix of its own per call: keys never collide with an
        # earlier call's (which would hand back results of other arguments).
        prefix = (f"{check_key(key) if key is not None else _funcname(fn)}-"
                  f"{self.id[7:]}-m{next(self._counter)}")
        return [self._submit(fn, args, kwargs, f"{prefix}-{i}", priority, retries, resources,
                             workers, fresh=True)
                for i, args in enumerate(zip(*iterables))]

    # --- results ---------------------------------------------------------------------
    def gather(self, futures: Any, errors: str = "raise", timeout: float | None = None) -> Any:
        """Results of futures, in the same structure (a future, list, tuple, dict)."""
        if hasattr(futures, "__next__"):        # a generator or iterator of futures
            futures = list(futures)
        flat = [f for f in flatten(futures) if isinstance(f, Future)]
        done, not_done = cf.wait(flat, timeout=timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {len(flat)} futures unfinished after "
                               f"{timeout}s")
        if errors == "raise":
            for f in flat:
                if f.cancelled() or f.exception() is not None:
                    f.result()     # raises the original exception (or CancelledError)
        remote = [f for f in flat if f._needs_fetch()]
        if remote:
            self._fetch(remote, timeout)
        values = {}
        for f in flat:
            if f.cancelled() or f.exception() is not None:
                values[f.key] = f if errors == "skip" else None
            else:
                values[f.key] = f.result()
        return rebuild(futures, values, skip=errors == "skip")

    def scatter(self, data: Any, workers: Iterable[str] | None = None,
                broadcast: bool = False, hash: bool = False,
                timeout: float | None = None) -> Any:
        """Put local data on workers: a list gives a list of futures, a dict a dict.

        ``workers`` limits where it goes; ``broadcast=True`` puts every value on each
        of them (all workers by default). ``hash=True`` names each value by a digest of
        its bytes (dask's default; it reads the whole value once), so scattering equal
        data twice gives the same key; otherwise every call makes new keys.
        From ``DIRECT_PUT_BYTES`` (1 MiB in all) up, and always with ``broadcast``, the
        data goes straight to the chosen workers, not through the scheduler
        (docs/data.md, "Direct put"); ``timeout`` (seconds) bounds that transfer.
        """
        self._session.check_open("scatter")
        if isinstance(data, range):
            data = list(data)          # as dask: a range scatters as a list
        if isinstance(data, dict):
            keys, values = list(data), list(data.values())
        elif isinstance(data, (list, tuple, set, frozenset)):
            values = list(data)
            keys = None
        else:
            return self.scatter([data], workers=workers, broadcast=broadcast, hash=hash,
                                timeout=timeout)[0]
        payloads = [dumps(v, oob_threshold=self.config.oob_threshold, what="scattered data")
                    for v in values]
        if keys is None:
            keys = [f"{type(v).__name__}-{digest(p) if hash else self._scatter_id()}"
                    for v, p in zip(values, payloads)]
        for k, p in zip(keys, payloads):
            _fits(p, k, self.config.max_frame_bytes)
        if isinstance(workers, str):
            workers = [workers]
        workers = list(workers) if workers else None
        # A hash key names its value: equal data scattered again gives the live future
        hashed = hash and not isinstance(data, dict)
        futures = [self._session.add(k, b"scatter" if hashed else None, None, "scatter")
                   for k in keys]
        new = [i for i, f in enumerate(futures) if not f.done()]
        if new:
            where = self._put([keys[i] for i in new], [payloads[i] for i in new], workers,
                              broadcast, timeout)
            for i in new:
                futures[i].worker = where.get(keys[i], "")
                futures[i]._set_value(values[i])
        if isinstance(data, dict):
            return dict(zip(keys, futures))
        if isinstance(data, (tuple, set, frozenset)):
            return type(data)(futures)      # the container type is kept, as in dask
        return futures

    def _put(self, keys: list, payloads: list, workers: list | None, broadcast: bool,
             timeout: float | None) -> dict:
        """Put the values on workers; ``{key: a worker holding it}``. Large ones (or a
        broadcast) go straight there: the scheduler chooses where (PLACE), the client
        sends (PUT_DATA), each worker stores and tells the scheduler before it answers.
        Small ones take one request through the scheduler, which relays them."""
        if broadcast or sum(p.nbytes for p in payloads) >= DIRECT_PUT_BYTES:
            where = self._session.request(Msg.PLACE, [p.nbytes for p in payloads],
                                          workers, bool(broadcast), timeout=timeout)
            self._fetcher.put(keys, payloads, where, timeout)
            return {key: placed[0] for key, placed in zip(keys, where)}
        return self._session.request(Msg.SCATTER, [list(i) for i in zip(keys, payloads)],
                                     workers, timeout=timeout)

    def _scatter_id(self) -> str:
        return f"{self.id[7:]}-s{next(self._counter)}"

    def cancel(self, futures: Any, reason: str = "cancelled by the client") -> None:
        """dask's cancel: stop caring about these futures, running or not. Work already
        running is abandoned (its result dropped); its worker's thread counts as busy
        until it ends. A key another client wants too stays theirs. Compare
        :meth:`Future.cancel`, which cancels only what has not started."""
        if hasattr(futures, "__next__"):
            futures = list(futures)
        keys = [f.key for f in flatten(futures) if isinstance(f, Future)]
        if keys:
            self._session.send([Msg.CANCEL, keys, reason])

    def _try_cancel(self, futures: list[Future]) -> set[str]:
        """The stdlib's cancel for ``futures``: the keys cancelled (those that had not
        started). One round trip to the scheduler, which asks the workers concerned."""
        futures = [f for f in futures if not f.done()]
        if not futures or self.status != Status.OPEN:
            return set()
        if self.loop.in_loop_thread():
            raise RuntimeError("Future.cancel() cannot wait for the cluster's answer on "
                               "the client's loop thread; call client.cancel(futures) "
                               "there instead")
        answer: cf.Future = cf.Future()
        reason = "cancelled before it started (Future.cancel())"

        def on_loop() -> None:
            def answered(reply: cf.Future) -> None:
                cancelled = set() if reply.exception() else set(reply.result())
                for f in futures:        # at once, before cancel() returns
                    if f.key in cancelled:
                        f._set_cancelled(reason)
                answer.set_result(cancelled)
            link = self.scheduler
            if link is None:        # between links (reconnecting): nothing was cancelled
                answer.set_result(set())
                return
            link.request(Msg.TRY_CANCEL, [f.key for f in futures]).add_done_callback(answered)
        self.loop.call_soon_threadsafe(on_loop)
        cancelled = answer.result()
        if cancelled:          # their callbacks have run when cancel() returns (stdlib)
            self._callbacks.drain()
        return cancelled

    def wait(self, futures: Any, timeout: float | None = None,
             return_when: str = "ALL_COMPLETED") -> Any:
        if hasattr(futures, "__next__"):
            futures = list(futures)
        return wait(flatten(futures), timeout=timeout, return_when=return_when)

    def as_completed(self, futures: Iterable[Future] = (), **kw: Any) -> as_completed:
        return as_completed(futures, **kw)

    # --- handed to the parts ---------------------------------------------------------
    actor = _by("_actors", ClientActors.actor)
    get_actor = _by("_actors", ClientActors.get_actor)
    list_actors = _by("_actors", ClientActors.list_actors)
    kill_actor = _by("_actors", ClientActors.kill_actor)
    actor_caller = property(lambda self: self._actors.actor_caller,
                            doc="This client's caller of actors (made on first use).")

    run = _by("_operations", Operations.run)
    run_on_scheduler = _by("_operations", Operations.run_on_scheduler)
    scheduler_info = _by("_operations", Operations.scheduler_info)
    restart = _by("_operations", Operations.restart)
    restart_workers = _by("_operations", Operations.restart_workers)
    retire_workers = _by("_operations", Operations.retire_workers)
    register_plugin = _by("_operations", Operations.register_plugin)
    get_versions = _by("_operations", Operations.get_versions)

    get_status = _by("_monitoring", Monitoring.get_status)
    get_task_stream = _by("_monitoring", Monitoring.get_task_stream)
    get_scheduler_logs = _by("_monitoring", Monitoring.get_scheduler_logs)
    get_worker_logs = _by("_monitoring", Monitoring.get_worker_logs)

    def _repr_html_(self) -> str:
        return self._monitoring.html(f"Client {escape(self.id)}", self.scheduler_address)

    def get_executor(self, **submit_kwargs: Any) -> "ClientExecutor":
        """A ``concurrent.futures.Executor`` that submits through this client."""
        return ClientExecutor(self, **submit_kwargs)

    # --- closing ---------------------------------------------------------------------
    def _finish_at_exit(self) -> None:
        """Interpreter exit: wait for the work still wanted, then close. (Not in a
        worker process: its clients belong to tasks that are gone.)"""
        if self.status == Status.OPEN and multiprocessing.parent_process() is None:
            pending = [f for f in self._session.snapshot() if not f.done()]
            if pending:
                cf.wait(pending)
        self.close()

    def close(self, timeout: float | None = None) -> None:
        """Disconnect; the cluster releases this client's data. Idempotent."""
        if not self._session.begin_close():
            return
        untrack(self)
        try:
            self.loop.run_sync(self._close_on_loop, timeout=timeout or 5)
        except Exception as e:   # loop gone or stuck: its sockets close with it
            log.debug("client close on loop: %s", e)
        self._session.fail_pending(f"client {self.id} was closed")
        self._callbacks.close(self.config.close_timeout)
        if self._own_loop:
            self.loop.close()

    def _close_on_loop(self) -> None:
        self._actors.close_on_loop()
        self._fetcher.close_on_loop()
        self._session.close_on_loop()
