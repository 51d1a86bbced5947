"""Batch mode: ``mpnet.mpi.initialize()`` at the top of a script run by ``mpirun``.

::

    mpirun -np 4 python script.py          script.py: cluster = initialize()
      rank 0: the scheduler                 ─┐ serve, never return into the script;
      ranks 2, 3: one worker each           ─┘ exit with the script's exit code
      rank 1: initialize() returns an MPICluster once every worker rank has joined;
              the rest of the script runs here, as the client:
                  with Client(cluster) as client: ...
      the script ends (normally, by an exception, by sys.exit(n)) ─► rank 1's atexit hook
          ─ EXIT {code} over MPI ─► every rank closes, meets the others, exits with code

The end needs no event loop, executor or thread on rank 1 (what broke dask-mpi's
``atexit`` shutdown on Python >= 3.9): one MPI send per rank from the main thread, then
one non-blocking barrier under a deadline. See :mod:`mpnet.deploy.mpi` for the messages.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import sys
import threading
from typing import Any

from .deploy.mpi import (EXIT_TIMEOUT, POLL_INTERVAL, START_TIMEOUT, TAG_EXIT, TAG_HELLO,
                         TAG_STARTED, Layout, RankComm, RankError, RankOptions, exit_now,
                         import_mpi, run_service_rank)

__all__ = ["initialize", "MPICluster"]

log = logging.getLogger("mpnet.mpi")


class MPICluster:
    """What rank 1 gets from :func:`initialize`: pass it to ``Client(cluster)``.

    ``scheduler_address``; ``token`` (from the scheduler rank, by MPI);
    ``worker_names`` (``NAME-RANK``); ``rank`` and ``size`` of the job.
    """

    def __init__(self, scheduler_address: str, token: str | bool, worker_names: list[str],
                 rank: int, size: int):
        self.scheduler_address = scheduler_address
        self.token = token
        self.worker_names = worker_names
        self.rank = rank
        self.size = size

    def __repr__(self) -> str:     # never the token
        return (f"<MPICluster {self.scheduler_address} workers={len(self.worker_names)} "
                f"rank={self.rank}/{self.size}>")


class _ExitCode:
    """The script's exit code, as Python will compute it, seen from an atexit hook
    (which Python does not tell): uncaught exceptions through ``sys.excepthook``,
    ``sys.exit(n)`` through a wrapper. A bare ``raise SystemExit(n)`` is not seen: the
    other ranks then exit 0 while rank 1 exits n (mpirun still returns n)."""

    def __init__(self) -> None:
        self.code = 0
        self._excepthook = sys.excepthook
        self._exit = sys.exit

    def install(self) -> None:
        sys.excepthook = self._on_exception
        sys.exit = self._on_exit

    def _on_exception(self, kind: type, value: BaseException, tb: Any) -> None:
        self.code = 130 if issubclass(kind, KeyboardInterrupt) else 1
        self._excepthook(kind, value, tb)

    def _on_exit(self, status: Any = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            self._exit(status)      # ends that thread only, not the script
        if status is None:
            self.code = 0
        elif isinstance(status, int) and not isinstance(status, bool):
            self.code = status & 0xFF
        else:
            self.code = 1       # Python prints a non-integer status and exits 1
        self._exit(status)


def initialize(*, interface: str | None = None, nthreads: int = 1,
               memory_limit: Any = "auto", nanny: bool = False, name: str = "mpi",
               scheduler_port: int = 0, scheduler_file: str | None = None,
               dashboard_address: str | None = None, token: str | None = None,
               death_timeout: float | None = None, local_directory: str | None = None,
               start_timeout: float = START_TIMEOUT, auth: bool = True,
               comm: Any = None) -> MPICluster:
    """Turn this ``mpirun`` job into a cluster; return on rank 1 only.

    Rank 0 runs the scheduler (on ``scheduler_port``, 0 = any free port; written to
    ``scheduler_file`` if given), ranks 2 and up a worker each (``nthreads`` threads,
    ``memory_limit`` bytes or ``"auto"``, named ``f"{name}-{rank}"``, in a nanny's
    child process if ``nanny``). They never return into the script: when rank 1's
    script ends, every rank exits with its exit code. ``interface`` (``"ib0"``) picks
    the network every rank listens on; ``token`` defaults to ``MPNET_TOKEN``, else the
    per-user token file, read on rank 0 only and sent to the others by MPI
    (``auth=False``: no token, anyone who reaches a port can run code).
    ``death_timeout`` (seconds) bounds how long a worker rank outlives a lost
    scheduler; ``start_timeout`` (seconds) how long ranks wait for each other to start.
    Needs at least 3 ranks.
    """
    main = sys.modules.get("__main__")
    if multiprocessing.parent_process() is not None or \
            getattr(main, "__name__", "") == "__mp_main__":
        # A nanny's worker process importing the script (as __mp_main__): not a rank.
        return None  # type: ignore[return-value]
    MPI = import_mpi()
    rc = RankComm(MPI, comm)
    layout = Layout(rc.size, scheduler_rank=0, client_rank=1)
    try:
        layout.check()
    except RankError as e:     # every rank says it, and every rank stops here
        _say(f"Error: mpnet.mpi.initialize: {e}")
        rc.finish(2)
        exit_now(2)
    from .deploy.local import memory_per_worker
    sharing = rc.local_size() if memory_limit == "auto" else 1   # collective
    memory = memory_per_worker(memory_limit, sharing)   # a bad value fails every rank
    if layout.role(rc.rank) == "client":
        return _client_rank(rc, layout, start_timeout)
    from .cli.common import setup_logging
    setup_logging()
    _service_rank(rc, layout, RankOptions(
        interface=interface, nthreads=nthreads, memory_limit=memory, nanny=nanny, name=name,
        scheduler_port=scheduler_port, scheduler_file=scheduler_file,
        dashboard_address=dashboard_address, token=token, auth=auth,
        death_timeout=death_timeout, local_directory=local_directory), start_timeout)
    raise AssertionError("unreachable: a service rank exits")   # pragma: no cover


def _say(line: str) -> None:
    """One line to stderr in one write: mpirun interleaves the ranks' writes."""
    sys.stderr.flush()
    os.write(2, (line + "\n").encode())


def _service_rank(rc: RankComm, layout: Layout, options: RankOptions,
                  start_timeout: float) -> None:
    """Rank 0 or a worker rank: serve until the script on rank 1 ends, then exit."""
    from .cli.common import Shutdown
    code, together = 1, True
    try:
        with Shutdown(f"mpnet rank {rc.rank}", interval=POLL_INTERVAL) as shutdown:
            code, together = run_service_rank(rc, layout, shutdown, options,
                                              start_timeout=start_timeout, batch=True)
    except RankError as e:
        _say(f"Error: {e}")
        together = not e.alone
    log.info("rank %d: exiting with code %d", rc.rank, code)
    finished = rc.finish(code, with_others=together)
    exit_now(code if finished else (code or 1))


def _client_rank(rc: RankComm, layout: Layout, start_timeout: float) -> MPICluster:
    """Rank 1: learn where the scheduler is, wait for the workers, arm the end."""
    try:
        hello = rc.receive(layout.scheduler_rank, TAG_HELLO, start_timeout)
    except TimeoutError:
        raise RankError(f"rank {rc.rank}: the scheduler rank {layout.scheduler_rank} did "
                        f"not start within {start_timeout:.0f}s") from None
    exit_code = _ExitCode()
    exit_code.install()
    # From here on the other ranks wait for our word: the script's end must reach them
    # however it ends, including an error raised below.
    atexit.register(_end_job, rc, layout, exit_code)
    if "error" in hello:
        raise RankError(f"the scheduler (rank {layout.scheduler_rank}) did not start: "
                        f"{hello['error']}")
    names = []
    for r in layout.workers():
        try:
            note = rc.receive(r, TAG_STARTED, start_timeout)
        except TimeoutError:
            raise RankError(f"worker rank {r} did not start within {start_timeout:.0f}s"
                            ) from None
        if note["error"]:
            raise RankError(f"worker rank {r} did not start: {note['error']}")
        names.extend(note["names"])
    # False, not None: Client(cluster) must not look for a token of its own then
    return MPICluster(hello["address"], hello["token"] or False, names, rc.rank, rc.size)


def _end_job(rc: RankComm, layout: Layout, exit_code: _ExitCode) -> None:
    """atexit on rank 1: tell every rank the script's exit code, then end together.

    Rank 1 then leaves with the code Python computed itself; if some rank never came to
    the end, it leaves at once (MPI_Finalize would wait for that rank forever)."""
    code = exit_code.code
    try:
        late = rc.send(layout.others(rc.rank), TAG_EXIT,
                       {"code": code, "why": "the client script ended", "from": rc.rank},
                       EXIT_TIMEOUT / 2)
        if late:
            log.error("rank %d: ranks %s did not take the end-of-script note", rc.rank, late)
        finished = rc.finish(code, with_others=not late)
    except Exception as e:     # MPI itself failed (a peer is gone): do not linger on it
        _say(f"mpnet: rank {rc.rank}: ending the MPI job failed: {e}")
        finished = False
    if not finished:
        exit_now(code or 1)
