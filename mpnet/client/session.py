"""A client's session with its scheduler: the link, the status, the futures table.

::

    user threads ─┬─ add(key, msg) ── under the lock: status open? key free? insert ──┐
                  │                   then queue the SUBMIT for the link seen there    │
                  └─ request(...) ───────────────────────────────────────────────┐     │
    loop thread ── send_on_loop(link, msg, fut): link open? send : fail fut ◄────┴─────┘
                   TASK_DONE / ERRED / CANCELLED / LOST ── futures.get(key) ── set it
                   link lost: fail what is pending, status "reconnecting", reconnect,
                              REGISTER_CLIENT again, status "open"

**The lock rule.** One ``RLock`` (``self.lock``) guards ``status``, ``link`` and the
``futures`` table. Every change to any of them takes it; so does every read that must
agree with another (is the client open *and* is this key free?). The loop thread alone
replaces ``link`` and may read it without the lock; other threads read it under the lock
and only to hand it to the loop. Nothing that can run user code (a done-callback, an
unpickling) runs while the lock is held: futures are completed after it is let go.
``release()`` (called from ``Future.__del__``, which may run inside any allocation on
any thread, even one that holds this lock) takes no lock: it only queues on the loop.

A message never disappears: one queued for a link that closed before it went out fails
its future with :class:`~mpnet.ClusterClosedError`. The messages without a future
(RELEASE, CANCEL, actor holds) concern state the scheduler dropped with the old link.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import weakref
from typing import Any

from ..comm.connection import Connection
from ..comm.dispatch import Dispatcher
from ..comm.inproc import dialer
from ..comm.link import Link
from ..comm.protocol import Msg
from ..comm.serialize import Payload, loads, loads_exception
from ..errors import (ClusterClosedError, CommClosedError, KeyConflictError,
                      KilledWorkerError, UnsatisfiableError, WorkerLostError)
from ..versions import get_versions
from .actors import binding
from .futures import Future, Packed, Remote

__all__ = ["Session"]

log = logging.getLogger("mpnet.client")

_LOST = {"killed": KilledWorkerError, "conflict": KeyConflictError,
         "unsatisfiable": UnsatisfiableError}


class Session:
    """Owned by one :class:`~mpnet.Client` (``owner``: what futures and actor handles
    made here belong to). ``status`` is ``connecting``, ``open``, ``reconnecting``,
    ``disconnected`` or ``closed``."""

    def __init__(self, owner: Any, loop: Any, address: str, *, config: Any, token: Any,
                 client_id: str, inproc: Any = None):
        self.owner, self.loop, self.address = owner, loop, address
        self.config, self.token, self.id = config, token, client_id
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.status = "connecting"
        self.futures: weakref.WeakValueDictionary[str, Future] = weakref.WeakValueDictionary()
        self.dispatch = Dispatcher("client", {
            Msg.TASK_DONE: self._task_done,
            Msg.TASK_ERRED: self._task_erred,
            Msg.TASK_CANCELLED: self._task_cancelled,
            Msg.TASK_LOST: self._task_lost,
        }, with_conn=False)
        # The one reconnecting link (mpnet.comm.link); ``link`` is its registered
        # connection, replaced by the loop thread after a reconnect.
        self._link = Link(loop, address, config=config, token=token, role="client",
                          info={"id": client_id}, handler=self.dispatch,
                          register=lambda conn: conn.request(Msg.REGISTER_CLIENT, client_id,
                                                             get_versions()),
                          name=f"client {client_id}", on_lost=self._link_lost,
                          on_restored=self._reconnected, on_gave_up=self._gave_up,
                          on_too_large=self._too_large,
                          # a Scheduler of this process (Client(cluster)): no socket
                          dial=None if inproc is None else dialer(inproc, client_id))

    @property
    def link(self) -> Connection | None:
        return self._link.conn

    def connect(self, timeout: float | None) -> dict:
        """Connect and register (the calling thread waits): the scheduler's welcome."""
        try:
            welcome = self._link.open(timeout, on_waiting=log.warning)
        except CommClosedError as e:
            if isinstance(e, TimeoutError):
                raise
            raise ClusterClosedError(f"lost the scheduler at {self.address}: {e}") from None
        self._set_status("open", only_from=("connecting",))
        return welcome

    def _set_status(self, status: str, only_from: tuple = ()) -> bool:
        with self.lock:
            if only_from and self.status not in only_from:
                return False
            self.status = status
            self._changed.notify_all()
        return True

    def check_open(self, what: str) -> None:
        status = self.status
        if status == "reconnecting":
            raise ClusterClosedError(f"{what}(): the client lost its scheduler and is "
                                     "reconnecting; try again (or wait_for_scheduler())")
        if status != "open":
            raise ClusterClosedError(f"{what}() called on a client that is {status}: "
                                     "create a new Client")

    # --- the futures table ---------------------------------------------------------
    def add(self, key: str, recipe: bytes | None, msg: list | None, what: str) -> Future:
        """A new future for ``key``, its message (if any) queued for the scheduler.

        ``recipe`` (a key the user chose): the same computation under a live key gives
        the existing future; another one raises :class:`~mpnet.KeyConflictError`."""
        with self.lock:
            self.check_open(what)
            if recipe is not None:
                existing = self.futures.get(key)
                if existing is not None:
                    if existing._recipe == recipe:
                        return existing
                    raise KeyConflictError(
                        f"the key {key!r} already names another computation of this "
                        f"client ({existing!r}); give this one another key, or drop that "
                        "future first")
            fut = Future(key, self.owner)
            fut._recipe = recipe
            self.futures[key] = fut
            if msg is not None:
                self.loop.call_soon_threadsafe(self._send_on_loop, self.link, msg, fut)
        return fut

    def snapshot(self) -> list[Future]:
        # Not futures.values(): the garbage collector removes dead entries from any
        # thread, without our lock, and can do so in the middle of that iteration
        # (the dictionary's own guard has a gap). dict.copy() runs in C, all at once.
        with self.lock:
            refs = self.futures.data.copy()
        return [f for f in (ref() for ref in refs.values()) if f is not None]

    def fail_pending(self, why: str) -> None:
        for fut in self.snapshot():
            fut._set_error(ClusterClosedError(why))

    # --- talking to the scheduler --------------------------------------------------
    def send(self, msg: list) -> None:
        with self.lock:
            self.loop.call_soon_threadsafe(self._send_on_loop, self.link, msg, None)

    def _send_on_loop(self, link: Connection, msg: list, fut: Future | None) -> None:
        if link is not None and link.state == "open":
            link.send(msg)
        elif fut is not None:
            fut._set_error(ClusterClosedError(
                f"the connection to the scheduler at {self.address} was lost before "
                f"{fut.key} could be sent; resubmit it (the client reconnects by itself)"))
        else:   # a RELEASE, CANCEL or actor hold: the scheduler dropped that state already
            log.debug("client %s: not sent, the link is down: %s", self.id, Msg(msg[0]).name)

    def request(self, *msg: Any, timeout: float | None = None) -> Any:
        def on_loop() -> cf.Future:
            return self._link.request(*msg)    # (waits for a reconnect, if any)
        try:
            return self.loop.run_sync(on_loop).result(timeout)
        except CommClosedError as e:
            raise ClusterClosedError(f"lost the scheduler at {self.address}: {e}") from None

    def release(self, key: str) -> None:
        """From ``Future.__del__`` on any thread: no lock (see the module's rule). The
        RELEASE goes through the same queue as SUBMIT, so it never overtakes a task
        submitted before it that depends on this key."""
        if self.status != "open":
            return
        try:
            self.loop.call_soon_threadsafe(self._release_on_loop, key)
        except RuntimeError:   # interpreter shutting down
            pass

    def _release_on_loop(self, key: str) -> None:
        # Always sent: a future made again for this key (only possible once the old one
        # is gone) submits after this RELEASE, in order, and so is computed afresh.
        if self.link is not None and self.link.state == "open":
            self.link.send([Msg.RELEASE, [key]])

    def _too_large(self, conn: Connection, msg: list, err: BaseException) -> None:
        """Loop thread: a SUBMIT whose whole message (not only its payloads, checked at
        the call) is over max_frame_bytes was not sent: its future fails instead."""
        if msg[0] == Msg.SUBMIT:
            fut = self.futures.get(msg[1])
            if fut is not None:
                fut._set_error(err)

    # --- messages from the scheduler (loop thread) ---------------------------------
    def _task_done(self, key: str, payload: Payload | None, worker: str, nbytes: int) -> None:
        fut = self.futures.get(key)
        if fut is None:
            return
        fut.worker = worker
        # Unpickled where it is wanted (Future.result(), on the caller's thread): never
        # on this loop, which is the scheduler's own in a LocalCluster.
        fut._set_value(Remote(worker, nbytes) if payload is None
                       else Packed(self._result_of, payload, key))

    def _result_of(self, payload: Payload, key: str) -> Any:
        with binding(self.owner):      # actor handles inside bind to this client
            return loads(payload, what=f"result of {key}")

    def _task_erred(self, key: str, exc: Payload, tb: str) -> None:
        fut = self.futures.get(key)
        if fut is not None:
            fut._set_error(Packed(loads_exception, exc, tb))

    def _task_cancelled(self, key: str, reason: str) -> None:
        fut = self.futures.get(key)
        if fut is not None:
            fut._set_cancelled(reason)

    def _task_lost(self, key: str, kind: str, reason: str) -> None:
        fut = self.futures.get(key)
        if fut is None:
            return
        if kind == "lost":       # its data is gone from the cluster, even if we hold a
            fut._set_lost(WorkerLostError(reason))     # copy (scattered): so say
        else:
            fut._set_error(_LOST.get(kind, WorkerLostError)(reason))

    # --- losing the link and getting it back (loop thread; the link reconnects) -----
    def _link_lost(self, exc: BaseException | None) -> None:
        # Failed first, then the status changes: whoever sees "reconnecting" finds its
        # earlier futures failed. A SUBMIT queued meanwhile meets the closed link and
        # fails its own future (_send_on_loop).
        self.fail_pending(f"the connection to the scheduler at {self.address} was lost"
                          f"{f' ({exc})' if exc else ''}: its tasks are gone; resubmit "
                          "them (the client reconnects by itself)")
        if self._set_status("reconnecting", only_from=("open",)):
            log.warning("client %s lost its scheduler %s (%s); reconnecting for up to "
                        "%.0fs", self.id, self.address, exc or "closed",
                        self.config.death_timeout)

    def _reconnected(self, welcome: Any) -> None:
        if self._set_status("open", only_from=("reconnecting",)):
            log.info("client %s reconnected to %s", self.id, self.address)

    def _gave_up(self, error: BaseException) -> None:
        if self._set_status("disconnected", only_from=("reconnecting",)):
            log.error("client %s: the scheduler did not come back: %s", self.id, error)

    def wait_open(self, timeout: float) -> None:
        """Block while reconnecting (``timeout`` seconds at most)."""
        with self.lock:
            self._changed.wait_for(lambda: self.status != "reconnecting", timeout)
            if self.status != "open":
                raise ClusterClosedError(f"client is {self.status}, not connected to "
                                         f"{self.address}")

    # --- closing -------------------------------------------------------------------
    def begin_close(self) -> bool:
        """Mark closed (no new future from now on); False if it already was."""
        with self.lock:
            if self.status == "closed":
                return False
            self.status = "closed"
            self._changed.notify_all()
        return True

    def close_on_loop(self) -> None:
        self._link.close()
