"""Frames, payloads, limits and the handshake, without sockets."""

from __future__ import annotations

import os
import pickle

import msgpack
import pytest

from mpnet.comm.auth import Handshake
from mpnet.comm.protocol import (HEADER, FrameDecoder, FrameEncoder, Msg, decode_handshake,
                                 encode_handshake)
from mpnet.comm.serialize import (RAW_BYTES, Payload, dumps, dumps_exception,
                                  dumps_task_args, loads, loads_exception, loads_task_args)
from mpnet.errors import AuthenticationError, ProtocolError, RemoteTraceback


def roundtrip(messages, *, pieces=1, threshold=1024, direct=1024):
    frame = FrameEncoder(threshold).encode(messages)
    data = b"".join(bytes(memoryview(p)) for p in frame)
    dec = FrameDecoder(1 << 30, direct_threshold=direct)
    out = []
    step = max(1, len(data) // pieces)
    i = 0
    while i < len(data):
        target = dec.direct_target()
        if target is not None:            # the large-buffer path, as the socket reader does
            n = min(len(target), len(data) - i)
            target[:n] = data[i:i + n]
            out += dec.direct_received(n)
            i += n
        else:
            out += dec.feed(data[i:i + step])
            i += step
    assert not dec.mid_frame
    return out, frame


def test_a_batch_is_one_frame_and_comes_back_in_order():
    msgs = [[Msg.SUBMIT, f"k{i}", None, None, [], 0, 0] for i in range(100)]
    out, frame = roundtrip(msgs)
    assert out == msgs
    assert len(frame) == 2     # prefix and body: one sendmsg, no buffers


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_frames_split_anywhere_reassemble(pieces):
    big = os.urandom(200_000)
    msgs = [[Msg.TASK_DONE, "k", dumps(big, oob_threshold=1024), "tcp://x:1", len(big)],
            [Msg.RELEASE, ["a", "b"]]]
    out, _ = roundtrip(msgs, pieces=pieces)
    assert loads(out[0][2]) == big and out[1] == msgs[1]


def test_large_buffers_travel_out_of_band_without_copy():
    np = pytest.importorskip("numpy")
    arr = np.arange(100_000, dtype="int64")
    payload = dumps(arr, oob_threshold=1024)
    assert payload.buffers and payload.nbytes >= arr.nbytes
    frame = FrameEncoder(1024).encode([[Msg.TASK_DONE, "k", payload, "", 0]])
    # the array's own memory is one of the pieces handed to sendmsg: no copy was made
    assert any(np.shares_memory(np.frombuffer(p, dtype="int64"), arr) for p in frame[2:]
               if memoryview(p).nbytes == arr.nbytes)
    out, _ = roundtrip([[Msg.TASK_DONE, "k", payload, "", 0]])
    assert (loads(out[0][2]) == arr).all()


def test_top_level_bytes_are_raw_buffers():
    data = b"z" * 100_000
    p = dumps(data, oob_threshold=1024)
    assert p.kind == RAW_BYTES and p.buffers[0] is data
    assert loads(p) == data


def test_frame_over_the_limit_is_a_protocol_error():
    dec = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        dec.feed(HEADER.pack(1000, 0))


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1, 2]),
                                  msgpack.packb([[]]), msgpack.packb([["x"]])])
def test_malformed_bodies_are_protocol_errors(body):
    with pytest.raises(ProtocolError):
        FrameDecoder(1 << 20).feed(HEADER.pack(len(body), 0) + body)


def test_unknown_extension_type_is_a_protocol_error():
    body = msgpack.packb([[1, msgpack.ExtType(9, b"x" * 12)]])
    with pytest.raises(ProtocolError, match="extension"):
        FrameDecoder(1 << 20).feed(HEADER.pack(len(body), 0) + body)


def test_handshake_frames_are_small_and_plain():
    buf = bytearray(encode_handshake(["mpnet", 1]))
    assert decode_handshake(buf, 4096) == ["mpnet", 1]
    with pytest.raises(ProtocolError):
        decode_handshake(bytearray(HEADER.pack(10_000, 0)), 4096)
    ext = msgpack.packb(msgpack.ExtType(1, b"x"))
    with pytest.raises(ProtocolError):
        decode_handshake(bytearray(HEADER.pack(len(ext), 0) + ext), 4096)


def _handshake(server_token, client_token):
    server = Handshake(server=True, token=server_token, role="scheduler", info={"s": 1},
                       address="tcp://client:1")
    client = Handshake(server=False, token=client_token, role="client", info={"c": 2},
                       address="tcp://server:2")
    [hello] = server.start()
    [answer], done = client.receive(hello)
    assert not done
    [verdict], done = server.receive(answer)
    assert done
    _, done = client.receive(verdict)
    return server, client, done


def test_handshake_with_the_same_token_succeeds_both_ways():
    server, client, done = _handshake("secret", "secret")
    assert done and server.peer_role == "client" and client.peer_info == {"s": 1}


def test_handshake_with_a_wrong_token_fails_on_the_server():
    with pytest.raises(AuthenticationError, match="did not prove"):
        _handshake("secret", "guess")


def test_client_refuses_a_server_that_cannot_prove_the_token():
    server = Handshake(server=True, token="theirs", role="scheduler", info={}, address="a")
    client = Handshake(server=False, token="ours", role="client", info={}, address="b")
    [hello] = server.start()
    client.receive(hello)
    forged = ["ok", b"\0" * 32, {}]
    with pytest.raises(AuthenticationError, match="not our cluster"):
        client.receive(forged)


def test_no_auth_server_accepts_anyone():
    _, _, done = _handshake(None, None)
    assert done


def test_task_args_record_dependencies_at_any_depth():
    class Dep:
        def __init__(self, key):
            self.key = key

        def __mpnet_dep__(self):
            return self.key

    class Box:
        def __init__(self, inner):
            self.inner = inner
    args = ([Dep("a"), (Dep("b"),)], {"k": Box(Dep("c"))})
    payload, deps = dumps_task_args(args, {"x": Dep("a")}, oob_threshold=1024)
    assert deps == ["a", "b", "c"]
    (got_args, got_kwargs) = loads_task_args(payload, {"a": 1, "b": 2, "c": 3})
    assert got_args[0] == [1, (2,)] and got_args[1]["k"].inner == 3 and got_kwargs == {"x": 1}


def test_exceptions_come_back_as_their_type_with_the_remote_traceback():
    try:
        raise KeyError("missing")
    except KeyError as e:
        payload, tb = dumps_exception(e)
    exc = loads_exception(payload, tb)
    assert isinstance(exc, KeyError) and isinstance(exc.__cause__, RemoteTraceback)
    assert "raise KeyError" in str(exc.__cause__)


def test_unpicklable_exceptions_become_runtime_errors_naming_them():
    class Weird(Exception):
        def __reduce__(self):
            raise TypeError("no")
    payload, tb = dumps_exception(Weird("boo"))
    exc = loads_exception(payload, tb)
    assert isinstance(exc, RuntimeError) and "Weird" in str(exc)


def test_payloads_are_opaque_to_the_scheduler():
    """A relayed payload is re-sent as the same bytes, never unpickled on the way."""
    p = dumps({"x": 1}, oob_threshold=1024)
    out, _ = roundtrip([[Msg.SUBMIT, "k", p, p, [], 0, 0]])
    relayed = out[0][2]
    assert isinstance(relayed, Payload) and relayed.header == p.header
    assert pickle.loads(relayed.header) == {"x": 1}


def test_dispatcher_checks_types_and_field_counts():
    from mpnet.comm.dispatch import Dispatcher
    seen = []

    def release(conn, keys):
        seen.append(keys)
    d = Dispatcher("scheduler", {Msg.RELEASE: release})
    d(None, [Msg.RELEASE, ["a"]])
    assert seen == [["a"]]
    with pytest.raises(ProtocolError, match="expects 1 to 1"):
        d(None, [Msg.RELEASE])
    with pytest.raises(ProtocolError, match="expects 1 to 1"):
        d(None, [Msg.RELEASE, ["a"], "extra"])
    with pytest.raises(ProtocolError, match="no handler for message type 31"):
        d(None, [Msg.FREE, []])
    with pytest.raises(ValueError):
        Dispatcher("x", {999: release})
