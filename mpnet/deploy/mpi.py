"""One mpnet cluster as one MPI job: which rank does what, and how the ranks talk.

::

    mpirun -np N …
      scheduler rank (0) ── HELLO {address, token} ─────────► every other rank
      each worker rank ──── STARTED {rank, error} ──────────► the client rank (batch mode)
      whoever ends the job ─ EXIT {code, why} ──────────────► every rank still serving
          (the client rank when its script ends; the scheduler rank on a signal)
      then every rank: close its service ─ Ibarrier ─ MPI_Finalize ─ exit(code)

MPI carries only these few messages, on each rank's main thread, at the start and at the
end; tasks and data travel over mpnet's own authenticated connections. The token rides
in HELLO, so it is never on a command line. Every MPI wait here is a non-blocking request
polled under a deadline: a rank that died or hangs delays the others by that deadline at
most, never forever. dask-mpi's hangs came from waits without one: workers reconnecting
forever after the scheduler closed under them (dask-mpi #58), a shutdown sent from an
``atexit`` hook through an event loop that Python >= 3.9 no longer runs at exit
(dask-mpi #87), a non-daemon thread holding ``sys.exit`` (distributed #8644). Here the
end is an MPI message from the main thread, services close under ``close_timeout``, and
a rank that cannot finish with the others leaves by ``os._exit`` after ``EXIT_TIMEOUT``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

from ..errors import RankError    # noqa: F401  (defined with every other error; was here)

__all__ = ["Layout", "RankComm", "RankError", "RankOptions", "RankLogger", "import_mpi",
           "exit_now", "run_service_rank", "serve_scheduler_rank", "serve_worker_rank",
           "services_finished", "INSTALL_HINT",
           "TAG_HELLO", "TAG_STARTED", "TAG_EXIT", "START_TIMEOUT", "EXIT_GRACE",
           "EXIT_TIMEOUT", "POLL_INTERVAL"]

log = logging.getLogger("mpnet.mpi")

INSTALL_HINT = ("mpnet's MPI support needs mpi4py: pip install 'mpnet[mpi]' (it uses the MPI "
                "that mpirun belongs to: on a cluster, load that MPI first, e.g. "
                "'module load openmpi')")

# Message tags: arbitrary, but away from 0 so that a user script's own MPI traffic on
# COMM_WORLD with small tags never matches ours.
TAG_HELLO, TAG_STARTED, TAG_EXIT = 7801, 7802, 7803

#: seconds a rank waits for the scheduler rank's HELLO (or a worker rank's STARTED)
START_TIMEOUT = 60.0
#: seconds a worker rank whose worker stopped by itself waits for the EXIT note that
#: usually follows (the scheduler closes right after telling the ranks); none means the
#: scheduler rank is gone
EXIT_GRACE = 2.0
#: seconds a rank waits for every other rank at the end before leaving without them
EXIT_TIMEOUT = 10.0
#: seconds MPI_Finalize may take once every rank is there
FINALIZE_TIMEOUT = 5.0
#: how often a serving rank looks for an EXIT note (the main thread is idle otherwise)
POLL_INTERVAL = 0.1


def import_mpi() -> Any:
    """``mpi4py.MPI``, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} [{e}]") from None
    return MPI


def exit_now(code: int) -> None:
    """Leave this process at once with ``code``: output flushed, no atexit hook, no thread
    to wait for (a leftover non-daemon thread must not keep a rank alive)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Who is who: ``scheduler_rank`` is None when joining an outside scheduler
    (``--no-scheduler``); ``client_rank`` is set in batch mode only."""

    size: int
    scheduler_rank: int | None = 0
    client_rank: int | None = None

    def check(self) -> None:
        """Raise RankError (one line) when the ranks cannot hold this layout."""
        special = [r for r in (self.scheduler_rank, self.client_rank) if r is not None]
        for r in special:
            if not 0 <= r < self.size:
                raise RankError(f"rank {r} does not exist in a job of {self.size} rank(s): "
                                f"give --scheduler-rank between 0 and {self.size - 1}")
        needed = len(special) + 1
        if self.size < needed:
            roles = ["a scheduler"] * (self.scheduler_rank is not None) + \
                    ["the client script"] * (self.client_rank is not None) + ["a worker"]
            listed = ", ".join(roles[:-1]) + " and " + roles[-1]
            raise RankError(f"{self.size} MPI rank(s) cannot hold {listed}: run with at "
                            f"least 'mpirun -np {needed}'")

    def role(self, rank: int) -> str:
        if rank == self.scheduler_rank:
            return "scheduler"
        if rank == self.client_rank:
            return "client"
        return "worker"

    @property
    def lead_rank(self) -> int:
        """The rank that tells the others where the scheduler is."""
        return 0 if self.scheduler_rank is None else self.scheduler_rank

    def workers(self) -> list[int]:
        return [r for r in range(self.size) if self.role(r) == "worker"]

    def others(self, rank: int) -> list[int]:
        return [r for r in range(self.size) if r != rank]


class RankComm:
    """This rank's side of the job's few messages; every wait has a deadline (seconds)."""

    def __init__(self, MPI: Any, comm: Any = None):
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._pending: list = []     # sends not yet complete; kept alive until they are

    def send(self, ranks: list[int], tag: int, message: Any, timeout: float) -> list[int]:
        """Send ``message`` to each of ``ranks``; return those that did not take it in time."""
        requests = [(r, self.comm.isend(message, dest=r, tag=tag)) for r in ranks]
        self._pending.extend(req for _, req in requests)
        deadline = time.monotonic() + timeout
        late = [r for r, req in requests if not _wait(lambda: req.test()[0], deadline)]
        return late

    def receive(self, source: int, tag: int, timeout: float) -> Any:
        """The next message from ``source`` with ``tag``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        if not _wait(lambda: self.comm.iprobe(source=source, tag=tag), deadline):
            raise TimeoutError(f"no word from rank {source} within {timeout:.0f}s")
        return self.comm.recv(source=source, tag=tag)

    def poll(self, tag: int) -> Any:
        """A waiting message with ``tag`` from any rank, or None. Never blocks."""
        if self.comm.iprobe(source=self.MPI.ANY_SOURCE, tag=tag):
            return self.comm.recv(source=self.MPI.ANY_SOURCE, tag=tag)
        return None

    def local_size(self) -> int:
        """How many ranks of this job share this machine (collective: every rank calls it)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def finish(self, code: int, *, with_others: bool = True, timeout: float = EXIT_TIMEOUT
               ) -> bool:
        """End this rank's part in the job: meet every rank (up to ``timeout`` seconds),
        then MPI_Finalize. Returns True if finalized; False if some rank never came, in
        which case finalizing would wait for it forever and the caller must exit hard."""
        while self.poll(TAG_EXIT) is not None:   # notes that crossed ours: match them
            pass
        if not with_others:
            return False
        barrier = self.comm.Ibarrier()
        if not _wait(lambda: barrier.Test(), time.monotonic() + timeout):
            log.error("rank %d: not every rank reached the end within %.0fs; leaving "
                      "without MPI_Finalize (mpirun will report it)", self.rank, timeout)
            return False
        while self.poll(TAG_EXIT) is not None:   # sent before their sender's barrier
            pass
        _finalize(self.MPI, code)
        return True


def _wait(ready: Callable[[], Any], deadline: float) -> bool:
    """Poll ``ready()`` until true or ``deadline`` (monotonic) passes, backing off to
    POLL_INTERVAL: an MPI request has no file descriptor to wait on, and spinning would
    take a core from an oversubscribed node."""
    delay = 0.001
    while True:
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, POLL_INTERVAL)


def _finalize(MPI: Any, code: int) -> None:
    """MPI_Finalize under a watchdog: every rank is there, but a broken network could
    still hold it, and a rank must never outlive its job."""
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(FINALIZE_TIMEOUT):
            os.write(2, f"mpnet: MPI_Finalize did not return within {FINALIZE_TIMEOUT:.0f}s; "
                        "exiting without it\n".encode())
            os._exit(code or 1)
    t = threading.Thread(target=watchdog, name="mpnet-mpi-finalize-watchdog", daemon=True)
    t.start()
    try:
        if not MPI.Is_finalized():
            MPI.Finalize()
    finally:
        done.set()
        t.join()


class RankLogger:
    """A scheduler plugin that names worker ranks as they join and leave: an MPI user
    thinks in ranks, the scheduler in addresses. Workers are named ``NAME-RANK``."""

    name = "mpnet-mpi-ranks"

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.state.workers.get(worker)
        self._names[worker] = str(ws.name) if ws is not None else worker

    def remove_worker(self, scheduler: Any, worker: str) -> None:
        name = self._names.pop(worker, worker)
        rank = name.rsplit("-", 1)[-1]
        if scheduler.status == "running":   # the scheduler's own line says why, if lost
            log.info("worker rank %s (%s at %s) left the cluster", rank, name, worker)


def services_finished(services: list) -> bool:
    """True once every worker or nanny stopped by itself (told to leave, or its scheduler
    gone for longer than its death timeout)."""
    from ..nanny.nanny import Nanny
    for s in services:
        if isinstance(s, Nanny):
            if s.status not in ("closing", "closed"):
                return False
        elif not s.wait_closed(0):
            return False
    return True


def serve_scheduler_rank(rc: RankComm, layout: Layout, scheduler: Any, shutdown: Any,
                         *, batch: bool) -> int:
    """Serve until an EXIT note, a signal, or the scheduler closing by itself; tell the
    worker ranks; close. Returns the exit code."""
    note: dict | None = None

    def done() -> bool:
        nonlocal note
        note = note or rc.poll(TAG_EXIT)
        return note is not None or scheduler.wait_closed(0)
    shutdown.wait(done)
    if note is not None:
        code, why = int(note["code"]), note["why"]
    elif shutdown.received:
        code, why = 0, f"the scheduler rank received {shutdown.reason}"
    else:
        code, why = 0, "the scheduler closed"
    log.info("rank %d: %s; ending the job (exit code %d)", rc.rank, why, code)
    if note is None or not batch:
        # Before closing: the worker ranks then leave on our word, not on a lost
        # connection they would try to re-establish.
        told = [r for r in layout.workers() if note is None or r != note.get("from")]
        rc.send(told, TAG_EXIT, {"code": code, "why": why, "from": rc.rank}, EXIT_GRACE)
    scheduler.close()
    return code


def serve_worker_rank(rc: RankComm, layout: Layout, services: list, shutdown: Any
                      ) -> tuple[int, bool]:
    """Serve until an EXIT note, a signal, or the workers stopping by themselves; close.
    Returns (exit code, whether to end together with the other ranks)."""
    note: dict | None = None

    def done() -> bool:
        nonlocal note
        note = note or rc.poll(TAG_EXIT)
        return note is not None or services_finished(services)
    shutdown.wait(done)
    together = True
    if note is None and not shutdown.received:
        # Told to leave by the scheduler, or it is gone: its EXIT note tells which.
        deadline = time.monotonic() + EXIT_GRACE
        while note is None and time.monotonic() < deadline:
            note = rc.poll(TAG_EXIT)
            if note is None:
                time.sleep(POLL_INTERVAL / 2)
        if note is None and layout.scheduler_rank is not None:
            log.error("rank %d: the scheduler (rank %d) is gone and did not come back "
                      "within the death timeout; exiting with code 1", rc.rank,
                      layout.scheduler_rank)
            together = False    # waiting for a rank that is gone would only delay us
            note = {"code": 1, "why": "the scheduler rank is gone"}
    if note is not None:
        code, why = int(note["code"]), note["why"]
    elif shutdown.received:
        code, why = 0, f"received {shutdown.reason}"
    else:
        code, why = 0, "the scheduler told the workers to leave"
    log.info("rank %d: %s; closing (exit code %d)", rc.rank, why, code)
    from ..nanny.nanny import close_all
    close_all(services, services[0].config.close_timeout if services else 3.0)
    return code, together


@dataclasses.dataclass(frozen=True)
class RankOptions:
    """What a rank builds its scheduler or worker from: the options of ``mpnet mpi`` and
    the arguments of ``initialize()``, one for one (see docs/mpi.md)."""

    interface: str | None = None
    nthreads: int = 1
    memory_limit: int = 0                # bytes per worker rank, 0 = none
    nanny: bool = False
    name: str = "mpi"                    # workers are NAME-RANK
    scheduler_port: int = 0
    scheduler_file: str | None = None
    dashboard_address: str | None = None
    token: str | None = None             # the scheduler rank's, if given explicitly
    token_file: str | None = None        # ... or read (created if missing) there
    auth: bool = True
    death_timeout: float | None = None   # seconds; None: the configured default
    local_directory: str | None = None

    def host(self) -> str | None:
        """The interface's address, looked up on the rank that uses it: hosts differ."""
        if not self.interface:
            return None
        import click
        from ..cli.common import interface_address   # the same lookup as every command
        try:
            return interface_address(self.interface)
        except click.BadParameter as e:
            raise ValueError(e.format_message()) from None

    def make_scheduler(self) -> Any:
        from ..scheduler.server import Scheduler
        token = self.token
        if self.token_file:
            from ..cli.common import read_token_file
            token = read_token_file(self.token_file, create=True)
        return Scheduler(self.host(), self.scheduler_port, token=token, auth=self.auth,
                         scheduler_file=self.scheduler_file,
                         dashboard_address=self.dashboard_address)

    def make_workers(self, rank: int, address: str, token: str | None) -> list:
        """This rank's one worker (or nanny). No token from the lead rank means the
        cluster runs without one: ``False`` keeps the worker from looking for its own."""
        from ..nanny.nanny import Nanny
        from ..worker.worker import Worker
        kind = Nanny if self.nanny else Worker
        return [kind(address, name=f"{self.name}-{rank}", nthreads=self.nthreads,
                     host=self.host(), token=token or False, memory_limit=self.memory_limit,
                     local_directory=self.local_directory,
                     connect_timeout=self.death_timeout, death_timeout=self.death_timeout)]


def _one_line(e: BaseException) -> str:
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return " ".join(text.split()) or type(e).__name__


def run_service_rank(rc: RankComm, layout: Layout, shutdown: Any, options: RankOptions, *,
                     read_hello: Callable[[], dict] | None = None,
                     start_timeout: float = START_TIMEOUT, batch: bool = False
                     ) -> tuple[int, bool]:
    """The life of a scheduler or worker rank, from start to the end of serving.

    ``options`` builds the services; ``read_hello()`` gives ``{address, token}`` on the
    lead rank when there is no scheduler rank (``--no-scheduler``). Raises RankError if
    this rank cannot start; else returns (exit code, whether to end together with the
    other ranks).
    """
    role = layout.role(rc.rank)
    others = layout.others(rc.rank)
    if role == "scheduler":
        scheduler, failure = None, None
        try:
            scheduler = options.make_scheduler()
            scheduler.add_plugin(RankLogger())
            scheduler.start()
            hello = {"address": scheduler.address, "token": scheduler.token}
            log.info("rank %d of %d: scheduler at %s", rc.rank, rc.size, scheduler.address)
        except Exception as e:    # every rank must hear of it, or they would wait
            failure, hello = e, {"error": _one_line(e)}
        late = rc.send(others, TAG_HELLO, hello, start_timeout)
        if late:
            log.warning("rank %d: ranks %s did not take the scheduler's address within "
                        "%.0fs", rc.rank, late, start_timeout)
        if failure is not None:     # every rank heard of it: they all end, together
            raise RankError(f"rank {rc.rank}: the scheduler did not start: "
                            f"{hello['error']}") from failure
        return serve_scheduler_rank(rc, layout, scheduler, shutdown, batch=batch), True
    if rc.rank == layout.lead_rank and read_hello is not None:
        try:
            hello = read_hello()
        except Exception as e:
            rc.send(others, TAG_HELLO, {"error": _one_line(e)}, start_timeout)
            raise RankError(f"rank {rc.rank}: {_one_line(e)}") from e
        rc.send(others, TAG_HELLO, hello, start_timeout)
    else:
        # Longer than the lead rank's own wait (for a scheduler file, say), so that it
        # can tell us why it failed rather than leave us guessing.
        wait = start_timeout + EXIT_TIMEOUT
        try:
            hello = rc.receive(layout.lead_rank, TAG_HELLO, wait)
        except TimeoutError:
            raise RankError(f"rank {rc.rank}: rank {layout.lead_rank} did not say where the "
                            f"scheduler is within {wait:.0f}s", alone=True) from None
        if "error" in hello:
            what = ("did not start the scheduler" if layout.scheduler_rank is not None
                    else "could not find the scheduler")
            raise RankError(f"rank {rc.rank}: rank {layout.lead_rank} {what}: "
                            f"{hello['error']}")
    from ..worker.worker import Worker
    services: list = []
    try:
        services = options.make_workers(rc.rank, hello["address"], hello["token"])
        _start(services)
    except Exception as e:
        if batch:
            rc.send([layout.client_rank], TAG_STARTED, {"rank": rc.rank,
                                                        "error": _one_line(e)}, start_timeout)
        from ..nanny.nanny import close_all
        close_all(services, 3.0)
        raise RankError(f"rank {rc.rank}: the worker did not start: {_one_line(e)}",
                        alone=True) from e
    log.info("rank %d of %d: %d worker(s) joined %s", rc.rank, rc.size, len(services),
             hello["address"])
    if batch:
        names = [s.name if isinstance(s, Worker) else s.worker_kwargs["name"]
                 for s in services]
        rc.send([layout.client_rank], TAG_STARTED, {"rank": rc.rank, "error": None,
                                                    "names": names}, start_timeout)
    return serve_worker_rank(rc, layout, services, shutdown)


def _start(services: list) -> None:
    """Nannies spawn their worker processes all at once; workers start here."""
    from ..nanny.nanny import Nanny
    nannies = [s for s in services if isinstance(s, Nanny)]
    for nanny in nannies:
        nanny.start_nowait()
    for nanny in nannies:
        nanny.wait_started()
    for s in services:
        if not isinstance(s, Nanny):
            s.start()
