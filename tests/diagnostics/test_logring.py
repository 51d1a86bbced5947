"""The in-memory log ring: keeps lines for `mpnet logs`, changes nothing a user sees."""

from __future__ import annotations

import logging

from mpnet.diagnostics import logring


def test_ring_keeps_lines_and_warnings_still_reach_stderr(capsys):
    logring.install()
    root_handlers = logging.getLogger().handlers[:]
    logging.getLogger().handlers.clear()       # a script that configured no logging
    try:
        logging.getLogger("mpnet.test").warning("worker %s died", "w1")
    finally:
        logging.getLogger().handlers[:] = root_handlers
    assert logring.lines(1)[0][1:] == ["WARNING", "mpnet.test", "worker w1 died"]
    assert "worker w1 died" in capsys.readouterr().err   # as without the ring


def test_ring_stays_quiet_when_logging_is_configured(capsys):
    logring.install()
    handler = logging.StreamHandler()          # the program's own handler prints it once
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("mpnet.test").warning("paused")
    finally:
        logging.getLogger().removeHandler(handler)
    assert capsys.readouterr().err.count("paused") == 1
    assert logring.install() is logring.install()        # one ring per process
