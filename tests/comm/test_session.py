"""The generic session layer: a role's table, binding, and one close per session."""

from __future__ import annotations

import pytest

from mpnet.comm.protocol import Msg
from mpnet.comm.session import Role, Session, Sessions
from mpnet.errors import ProtocolError


class Link:
    def __init__(self, peer="tcp://peer:1"):
        self.peer, self.closed, self.sent = peer, False, []

    def send(self, msg):
        self.sent.append(msg)

    def reply(self, req_id, ok, value):
        self.sent.append([Msg.REPLY, req_id, ok, value])

    def request(self, *msg):
        raise AssertionError("not used here")

    def close(self, exc=None):
        self.closed = True


class Caller(Session):
    __slots__ = ("calls", "ended")

    def __init__(self, link, role):
        super().__init__(link, role)
        self.calls, self.ended = [], []

    def get_data(self, req_id, keys, who):
        self.calls.append(keys)
        self.reply(req_id, True, {k: b"" for k in keys})

    def on_close(self, exc):
        self.ended.append(exc)


CALLER = Role("peer worker", {Msg.GET_DATA: Caller.get_data})


def make() -> Sessions:
    """A server's table whose one opening message binds a Caller session."""
    def hello(link, reason):
        sessions.bind(link, Caller(link, CALLER))
    sessions = Sessions("worker", {Msg.GOODBYE: hello})
    return sessions


def test_a_bound_link_is_served_its_roles_table_and_nothing_else():
    sessions = make()
    link = Link()
    with pytest.raises(ProtocolError, match="before registration.*GET_DATA"):
        sessions.dispatch(link, [Msg.GET_DATA, 1, ["k"], "w"])
    sessions.dispatch(link, [Msg.GOODBYE, "hello"])
    s = sessions.get(link)
    assert isinstance(s, Caller) and len(sessions) == 1
    sessions.dispatch(link, [Msg.GET_DATA, 7, ["k"], "w"])
    assert s.calls == [["k"]] and link.sent == [[Msg.REPLY, 7, True, {"k": b""}]]
    with pytest.raises(ProtocolError, match="peer worker has no handler.*GOODBYE"):
        sessions.dispatch(link, [Msg.GOODBYE, "again"])
    with pytest.raises(ProtocolError, match="malformed GET_DATA"):
        sessions.dispatch(link, [Msg.GET_DATA, 8])
    with pytest.raises(ProtocolError, match="message type 9999"):
        sessions.dispatch(link, [9999])
    assert s.calls == [["k"]]


def test_a_session_ends_once_and_a_link_binds_once():
    sessions = make()
    link = Link()
    s = sessions.bind(link, Caller(link, CALLER))
    with pytest.raises(ProtocolError, match="registered already"):
        sessions.bind(link, Caller(link, CALLER))
    err = ConnectionResetError()
    sessions.closed(link, err)
    sessions.closed(link, None)
    assert s.ended == [err] and sessions.get(link) is None and len(sessions) == 0
    s.close()
    assert link.closed and s.closed and s.peer == "tcp://peer:1"
