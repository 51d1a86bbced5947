"""One worker process: spawning it, watching it, stopping it by escalation.

::

    nanny's work thread ── spawn (multiprocessing, "spawn" start method) ──► child: worker_main
    nanny's loop: watches what follows
         ▲  pipe: ("started", address) / ("failed", text) ◄────────────┤
         │  pipe: ("leaving", why) before a planned exit ◄──────────────┤
         │  pipe: ("close",) / ("ping",) ───────────────────────────────► │ ("pong",)
         └─ process sentinel readable = the child is gone (exit code read then)

Blocking calls (:meth:`WorkerProcess.spawn`, :meth:`~WorkerProcess.reap`,
:meth:`~WorkerProcess.rss`) run on the nanny's work thread (``blocking.BlockingWork``),
never on its loop; the rest on the loop thread.

Stopping escalates: ask over the pipe, SIGTERM after a grace period, SIGKILL after
another. :meth:`WorkerProcess.stop` does it blocking (for close), and
:meth:`WorkerProcess.stop_soon` with loop timers (for restarts, on the loop thread).

The child watches its end of the pipe: when the nanny dies, the pipe reads EOF and
the worker exits at once, so no worker outlives its nanny.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import psutil

from ..comm import shm
from ..comm.eventloop import EventLoop
from ..config import tune_gc
from ..errors import PreloadOptionError
from ..worker.running import RunningSlots, make_shared_slots

__all__ = ["WorkerProcess", "child_env", "describe_exit", "worker_main"]

log = logging.getLogger("mpnet.nanny")


def describe_exit(code: int | None) -> str:
    """``-9`` → ``killed by signal 9 (SIGKILL)``; ``3`` → ``exit code 3``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def child_env(env: dict | None, gpus: Any, nthreads: int,
              resources: dict | None) -> tuple[dict, dict | None]:
    """The environment a worker process starts with, and its resources."""
    env = dict(env or {})
    if gpus is not None:
        # The worker sees only its GPUs (numbered from 0 inside it) and offers as
        # many "GPU" resources, unless told otherwise.
        ids = [str(g) for g in (gpus.split(",") if isinstance(gpus, str) else gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        resources = {"GPU": len(ids), **(resources or {})}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if var not in os.environ and var not in env:
            # one worker thread = one BLAS thread, or threads fight over the cores
            env[var] = str(nthreads)
    return env, resources


class WorkerProcess:
    """A child process running a :class:`~mpnet.worker.Worker`, owned by one nanny.

    ``on_started(address)``, ``on_failed(text)`` and ``on_exit()`` are called on the loop
    thread; ``on_exit`` means the child is gone and ``reap()`` gives its exit code.
    Made on the loop thread; :meth:`spawn` then runs on a thread that may block, and
    :meth:`watch` back on the loop.
    """

    def __init__(self, loop: EventLoop, worker_kwargs: dict, *, start_method: str,
                 on_started: Callable[[str], None], on_failed: Callable[[str], None],
                 on_exit: Callable[[], None], env: dict | None = None):
        self.loop = loop
        self.worker_kwargs = worker_kwargs
        self.env = env or {}
        self._ctx = multiprocessing.get_context(start_method)
        self._on_started, self._on_failed, self._on_exit = on_started, on_failed, on_exit
        self.process: Any = None
        self.pipe: Any = None
        self._fds: list = []
        self._ps: psutil.Process | None = None
        self.address = ""
        self.exitcode: int | None = None
        self.leaving = ""                 # why the worker said it is exiting on purpose
        self.released = False
        self.last_pong = time.monotonic()
        self.started_at = time.monotonic()
        # Made by spawn(): which task each executor thread of the child runs, readable
        # here after the child died (see mpnet.worker.running).
        self._running_buf: Any = None
        self._running: RunningSlots | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def spawn(self) -> None:
        """Start the child (blocks: call it off the loop thread); then :meth:`watch`."""
        nthreads = int(self.worker_kwargs.get("nthreads", 1))
        self._running_buf = make_shared_slots(self._ctx, nthreads)
        self._running = RunningSlots(self._running_buf, nthreads)
        parent, child = self._ctx.Pipe()
        kwargs = {**self.worker_kwargs, "running": self._running_buf}
        self.process = self._ctx.Process(target=worker_main, args=(child, kwargs),
                                         name="mpnet-worker", daemon=True)
        with _environ(self.env):
            self.process.start()
        child.close()
        self.pipe = parent
        self.started_at = self.last_pong = time.monotonic()
        try:
            self._ps = psutil.Process(self.process.pid)
        except psutil.Error:
            self._ps = None

    def watch(self) -> None:
        """Loop thread, after :meth:`spawn`: hear the child's pipe and its exit."""
        # Registered by file descriptor: the selector must be able to forget them even
        # after the objects are closed.
        self._fds = [_Fd(self.pipe.fileno()), _Fd(self.process.sentinel)]
        self.loop.register(self._fds[0], 1, self._on_pipe)
        self.loop.register(self._fds[1], 1, self._on_sentinel)

    def _on_pipe(self, mask: int) -> None:
        if self.pipe.closed:
            return
        try:
            msg = self.pipe.recv()
        except (EOFError, OSError):
            self.loop.unregister(self._fds[0])
            return
        self._handle(msg)

    def _handle(self, msg: tuple) -> None:
        if msg[0] == "pong":
            self.last_pong = time.monotonic()
        elif msg[0] == "started":
            self.address = msg[1]
            self.last_pong = time.monotonic()
            self._on_started(msg[1])
        elif msg[0] == "failed":
            self._on_failed(msg[1])
        elif msg[0] == "leaving":
            self.leaving = msg[1]

    def ping(self) -> None:
        self._send(("ping",))

    def rss(self) -> int:
        """Resident memory of the worker process in bytes (0 if unknown)."""
        try:
            return self._ps.memory_info().rss if self._ps is not None else 0
        except psutil.Error:
            return 0

    def _send(self, msg: tuple) -> None:
        try:
            self.pipe.send(msg)
        except (OSError, ValueError, AttributeError):
            pass   # the child is gone or going: its sentinel will tell

    def _on_sentinel(self, mask: int) -> None:
        # Read what the child said last ("failed: …", "leaving") before forgetting the
        # pipe: its exit may be noticed before its last message. EOF ends it.
        for _ in range(16):
            try:
                if self.pipe is None or self.pipe.closed or not self.pipe.poll():
                    break
                msg = self.pipe.recv()
            except (EOFError, OSError):
                break
            self._handle(msg)
        # Only tell the owner: exactly one thread may reap the child (waitpid), and
        # while the nanny is closing that is the thread running stop().
        self._forget_fds()
        self._on_exit()

    def running_keys(self) -> list[str]:
        """The tasks the child's executor threads were running (read after it died)."""
        return self._running.keys() if self._running is not None else []

    def exit_code_now(self) -> int | None:
        """The exit code if the child is gone and reapable without waiting (a
        non-blocking ``waitpid``); None otherwise: then :meth:`reap`, off the loop."""
        code = self.process.exitcode
        if code is not None:
            self.exitcode = code
        return code

    def reap(self) -> int | None:
        """The exit code of a child whose sentinel fired (reaps it; may block briefly:
        call it off the loop thread)."""
        self.process.join(timeout=1.0)
        self.exitcode = self.process.exitcode
        return self.exitcode

    def _forget_fds(self) -> None:
        for fd in self._fds:
            self.loop.unregister(fd)

    def ask_to_close(self) -> None:
        """First step of stopping: ask the worker to leave the scheduler and exit."""
        self._send(("close",))

    def stop_soon(self, grace: float) -> None:
        """Escalate without blocking (loop thread): ask now, SIGTERM after ``grace``
        seconds, SIGKILL after ``grace`` more. The sentinel reports the exit."""
        proc = self.process
        self.ask_to_close()

        def escalate(sig: int) -> None:
            if not self.released and proc.is_alive():   # released: gone, handle closed
                log.warning("worker pid %s did not stop within %.1fs; sending %s",
                            proc.pid, grace, signal.Signals(sig).name)
                os.kill(proc.pid, sig)
                if sig == signal.SIGTERM:
                    self.loop.call_later(grace, escalate, signal.SIGKILL)
        self.loop.call_later(grace, escalate, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL now (a hung worker cannot handle anything gentler)."""
        try:
            self.process.kill()
        except (OSError, ValueError):
            pass

    def is_alive(self) -> bool:
        return self.process is not None and not self.released and self.process.is_alive()

    def stop(self, deadline: float) -> int | None:
        """Escalate until the child is gone: wait for it (asked already), SIGTERM, SIGKILL.

        Blocks the calling thread (never the loop thread) until ``deadline``
        (``time.monotonic()``) at most, plus a short wait after SIGKILL.
        """
        proc = self.process
        if proc is None or self.released or proc.pid is None:   # never started
            return self.exitcode
        proc.join(max(0.0, deadline - time.monotonic()) * 0.6)
        if proc.is_alive():
            log.warning("worker pid %s did not stop when asked; sending SIGTERM", proc.pid)
            proc.terminate()
            proc.join(max(0.05, deadline - time.monotonic()))
        if proc.is_alive():
            log.warning("worker pid %s ignored SIGTERM; sending SIGKILL", proc.pid)
            proc.kill()
            proc.join(2.0)
        return proc.exitcode

    def release(self) -> None:
        """Free the pipe and the process handle (after the child is gone). Idempotent."""
        if self.released:
            return
        self.released = True
        if self.loop.running and not self.loop.in_loop_thread():
            try:
                self.loop.run_sync(self._forget_fds, timeout=2)
            except Exception:   # the loop is stopping: nothing left to unregister from
                pass
        else:
            self._forget_fds()
        if self.pipe is not None:
            self.pipe.close()
        if self.process is not None and not self.process.is_alive():
            shm.sweep(self.process.pid)    # what a killed worker could not unlink
            self.process.close()


class _Fd:
    """Lets the selector watch a bare file descriptor (the process sentinel)."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Fd) and other.fd == self.fd

    def __hash__(self) -> int:
        return hash(self.fd)


_environ_lock = threading.Lock()


class _environ:
    """Set environment variables for the duration of a spawn (the child inherits them)."""

    def __init__(self, env: dict):
        self.env = env
        self.saved: dict = {}

    def __enter__(self) -> None:
        if not self.env:
            return
        _environ_lock.acquire()
        for k, v in self.env.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = str(v)

    def __exit__(self, *exc: Any) -> None:
        if not self.env:
            return
        for k, old in self.saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        _environ_lock.release()


# --- the child side ------------------------------------------------------------------

def worker_main(pipe: Any, kwargs: dict) -> None:
    """Entry point of a worker process: run a Worker until told to stop or orphaned."""
    from ..worker.worker import Worker    # imported here: the child needs it, not the nanny
    import traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the nanny's to handle
    logging.basicConfig(level=kwargs.pop("log_level", logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        worker = Worker(**kwargs)      # a preload's bad option fails here, before listening
        tune_gc(worker.config)
        worker.start()
    except BaseException as e:   # report why, with the traceback, so the user sees it
        text = str(e) if isinstance(e, PreloadOptionError) else \
            "".join(traceback.format_exception(e)).rstrip()     # a usage error: one line
        try:
            pipe.send(("failed", text))
        finally:
            sys.exit(1)
    pipe.send(("started", worker.address))

    def on_sigterm(signum: int, frame: Any) -> None:
        # A job scheduler's scancel/qdel signals every process of the job: leave
        # cleanly (the handler only asks; the loop does the work).
        worker.loop.call_soon_threadsafe(worker.stop_serving, "SIGTERM")
    signal.signal(signal.SIGTERM, on_sigterm)

    def on_pipe(mask: int) -> None:
        try:
            msg = pipe.recv()
        except (EOFError, OSError):
            msg = ("orphaned",)
        if msg[0] == "ping":
            pipe.send(("pong",))
            return
        worker.loop.unregister(pipe_fd)
        if msg[0] == "orphaned":
            # The nanny is gone (killed, crashed): nobody would ever stop us.
            log.warning("worker %s: its nanny is gone; exiting", worker.address)
        worker.stop_serving("asked by its nanny" if msg[0] == "close" else "orphaned")

    def on_leave(reason: str) -> None:
        try:
            pipe.send(("leaving", reason))
        except OSError:
            pass
    pipe_fd = _Fd(pipe.fileno())
    worker.on_leave = on_leave
    worker.loop.run_sync(worker.loop.register, pipe_fd, 1, on_pipe)
    worker.wait_closed()
    worker.close(wait_for_tasks=False)   # a task stuck in user code ends with the process
    pipe.close()
