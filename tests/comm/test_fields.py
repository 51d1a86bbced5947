"""The field table covers every message, and its checks say what they refuse."""

from __future__ import annotations

import pytest

from mpnet.comm.fields import FIELDS, check_fields
from mpnet.comm.dispatch import Dispatcher
from mpnet.comm.protocol import Msg
from mpnet.comm.serialize import dumps
from mpnet.errors import ProtocolError


def test_every_message_has_fields():
    assert set(Msg) - set(FIELDS) == set()


def test_a_wrong_field_is_named():
    p = dumps(abs)
    with pytest.raises(ProtocolError, match="field 6"):
        check_fields([Msg.SUBMIT, "k", p, p, [], 0, -1, None, None])


def test_dispatcher_checks_types_before_the_handler_runs():
    called = []
    d = Dispatcher("worker", {Msg.FREE: lambda conn, keys: called.append(keys)})
    d(None, [Msg.FREE, ["a", "b"]])
    with pytest.raises(ProtocolError, match="FREE"):
        d(None, [Msg.FREE, ["a", 1]])
    assert called == [["a", "b"]]
