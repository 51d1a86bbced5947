"""One remote process of ``mpnet ssh``: an ssh channel running ``mpnet.deploy.ssh_remote``.

::

    RemoteProcess.send(spec) ── channel stdin ──► remote process (spec line, later EOF)
    mpnet-ssh-out-<label> thread ◄── channel stdout: "MPNET-SSH {json}" → events queue,
                                                     other lines → output
    mpnet-ssh-err-<label> thread ◄── channel stderr: log lines → output

Both reader threads only read and hand lines on: to the events queue, to ``output(label,
line)`` (the terminal), to the log file, and to a bounded buffer :meth:`logs` returns.
They end when the channel reaches EOF or is closed, and :meth:`close` joins them. Reading
all the time means a chatty remote can never fill a pipe and stall.
"""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import shlex
import threading
import time
from typing import Callable, TextIO

import paramiko

from .ssh_connect import SSHError
from .ssh_remote import MARKER

__all__ = ["RemoteProcess", "remote_command"]

_MISSING = 127      # the shell's exit code for a command it cannot find


def remote_command(python: str, remote_dir: str | None) -> str:
    """The command line sshd runs: no secret in it, as ``ps`` on the host shows it."""
    cmd = f"exec {shlex.quote(python)} -m mpnet.deploy.ssh_remote"
    if remote_dir:
        cmd = f"cd {shlex.quote(remote_dir)} && {cmd}"
    return cmd


class RemoteProcess:
    """``python -m mpnet.deploy.ssh_remote`` on one host, over one ssh channel."""

    def __init__(self, client: paramiko.SSHClient, label: str, command: str, *,
                 output: Callable[[str, str], None], log_file: TextIO | None = None,
                 python: str = "python", keep_lines: int = 10_000):
        self.label, self.python = label, python
        self._output, self._log_file = output, log_file
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._lines_lock = threading.Lock()
        self.events: queue.Queue[dict | None] = queue.Queue()
        self._spec_sent = False     # keepalives only after the spec: it must be line one
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"{label}: the ssh connection is closed")
        try:
            self.channel = transport.open_session(timeout=10)
            self.channel.exec_command(command)
        except (paramiko.SSHException, OSError) as e:
            raise SSHError(f"{label}: cannot start {command!r}: {e}") from None
        self._threads = [
            threading.Thread(target=self._read, args=(self.channel.recv, True),
                             name=f"mpnet-ssh-out-{label}", daemon=True),
            threading.Thread(target=self._read, args=(self.channel.recv_stderr, False),
                             name=f"mpnet-ssh-err-{label}", daemon=True)]
        for t in self._threads:
            t.start()

    # --- reading (reader threads) ---------------------------------------------------

    def _read(self, recv: Callable[[int], bytes], is_stdout: bool) -> None:
        pending = b""
        while True:
            try:
                data = recv(65536)
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(raw.decode("utf-8", "replace").rstrip("\r"), is_stdout)
        if pending:
            self._line(pending.decode("utf-8", "replace"), is_stdout)
        if is_stdout:
            self.events.put(None)          # no more events: the process is gone

    def _line(self, line: str, is_stdout: bool) -> None:
        if is_stdout and line.startswith(MARKER):
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line[len(MARKER):]))
                return
        with self._lines_lock:
            self._lines.append(line)
            if self._log_file is not None:
                self._log_file.write(line + "\n")
                self._log_file.flush()
        self._output(self.label, line)

    # --- the conversation (caller's thread) -----------------------------------------

    def send(self, spec: dict) -> None:
        """The one line of options (with the token) the remote process waits for."""
        try:
            self.channel.sendall((json.dumps(spec) + "\n").encode())
        except (OSError, paramiko.SSHException) as e:
            raise SSHError(f"{self.label}: the ssh channel closed: {e}") from None
        self._spec_sent = True

    def next_event(self, timeout: float, waiting_for: str) -> dict:
        """The next event; an SSHError if it reports an error, the process is gone, or
        nothing comes within ``timeout`` seconds."""
        try:
            got = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise SSHError(f"{self.label}: no {waiting_for} from the remote process within "
                           f"{timeout:.0f}s; its last output: {self.last_line()}") from None
        if got is None:
            self.events.put(None)          # stays at the end for later callers
            raise SSHError(f"{self.label}: {self._why_gone()}")
        if got.get("event") == "error":
            raise SSHError(f"{self.label}: {got.get('message')}")
        return got

    def expect(self, event: str, timeout: float) -> dict:
        """The next event, which must be ``event``."""
        got = self.next_event(timeout, repr(event))
        if got.get("event") != event:
            raise SSHError(f"{self.label}: expected {event!r} from the remote process, got "
                           f"{got.get('event')!r}")
        return got

    def _why_gone(self) -> str:
        code = self.exit_status(timeout=5)
        last = self.last_line()
        if code == _MISSING or "No such file or directory" in last:
            return (f"remote python {self.python!r} not found (exit {code}): give "
                    f"--remote-python PATH")
        if "No module named" in last:
            return (f"mpnet is not installed for {self.python} there ({last.strip()}): "
                    f"install it, or give --remote-python / --remote-dir")
        return f"the remote process exited (code {code}): {last}"

    def last_line(self) -> str:
        with self._lines_lock:
            lines = [ln for ln in self._lines if ln.strip()]
        return lines[-1].strip() if lines else "(no output)"

    def logs(self) -> str:
        with self._lines_lock:
            return "\n".join(self._lines)

    def exit_status(self, timeout: float) -> int | None:
        """The remote exit code, waiting up to ``timeout`` seconds; None if still running."""
        deadline = time.monotonic() + timeout
        while not self.channel.exit_status_ready():
            if self.channel.closed or time.monotonic() > deadline:
                return None
            self.channel.status_event.wait(max(0.0, min(0.5, deadline - time.monotonic())))
        return self.channel.recv_exit_status()

    def keepalive(self) -> None:
        """One empty line: tells the remote process this side is still there. Skipped when
        the channel cannot take it at once (a stalled link must not block the caller)."""
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            if self._spec_sent and not self.channel.closed and self.channel.send_ready():
                self.channel.send(b"\n")

    def stop(self) -> None:
        """EOF on the remote stdin: the remote process closes its services and exits."""
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.shutdown_write()

    def close(self, timeout: float = 5.0) -> None:
        """Close the channel and join the reader threads. Idempotent."""
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
