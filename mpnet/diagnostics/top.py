"""``mpnet top``: the cluster, redrawn every second in the terminal until ``q`` or Ctrl-C.

::

    main thread: ┌─ client.get_status(history=True) ─► render(snapshot, width) ─► Live
                 └─ select(stdin, interval) ─► "q" quits; a resize redraws at once

One thread does everything (no refresh thread: ``Live(auto_refresh=False)``). The
terminal is put in cbreak mode while it runs, and restored on every way out. When stdout
is not a terminal it prints one snapshot and returns, like ``mpnet status``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from typing import Any, Iterator

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .status import render

__all__ = ["top"]


@contextlib.contextmanager
def _keys(stream: Any) -> Iterator[int | None]:
    """cbreak mode on ``stream`` (if it is a terminal): keys arrive one at a time."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    import termios
    import tty
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_key(fd: int | None, timeout: float) -> str:
    """The key pressed within ``timeout`` seconds ('' if none)."""
    if fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return ""
    data = os.read(fd, 32)
    return data.decode(errors="replace") if data else "q"     # EOF: quit


def top(client: Any, *, interval: float = 1.0, console: Console | None = None,
        stdin: Any = None, once: bool | None = None, max_frames: int | None = None) -> int:
    """Run the view; return the number of frames drawn. ``once`` (default: stdout is not
    a terminal) prints a single snapshot. ``max_frames`` stops after that many (tests)."""
    console = console or Console()
    if once is None:
        once = not console.is_terminal
    if once:
        console.print(render(client.get_status(history=True), console.width))
        return 1
    frames = 0
    with _keys(stdin if stdin is not None else sys.stdin) as fd, \
            Live(console=console, screen=True, auto_refresh=False,
                 redirect_stdout=False, redirect_stderr=False) as live:
        try:
            while max_frames is None or frames < max_frames:
                try:
                    view = render(client.get_status(history=True), console.width,
                                  events=max(3, console.height // 6))
                except TimeoutError:
                    view = Text("the scheduler did not answer within "
                                f"{max(2.0, interval * 2):.0f}s; still trying", "yellow")
                live.update(view, refresh=True)
                frames += 1
                key = _wait_key(fd, interval)
                if key and key[0] in "qQ":
                    break
        except KeyboardInterrupt:
            pass
    return frames
