"""Proving both ends hold the cluster token, before anything else is read.

The handshake, three small msgpack frames (no extension types, a few KiB at most)::

    server → client   HELLO   ["mpnet", version, server role, server nonce, auth required]
    client → server   ANSWER  [version, client role, client nonce, client proof, info]
    server → client   VERDICT ["ok", server proof, server info] | ["refused", reason]

    client proof = HMAC-SHA256(token, "mpnet-client" | server nonce | client nonce)
    server proof = HMAC-SHA256(token, "mpnet-server" | client nonce | server nonce)

Nonces are 32 random bytes from each side, so neither proof can be replayed, and the
client checks the server's proof too: a client never sends work to an impostor. Proofs
are compared with :func:`hmac.compare_digest`. Only after the verdict does either side
decode a real frame, and only then can a payload ever be unpickled.

Where the token comes from, first found wins: an explicit argument, ``MPNET_TOKEN``,
the scheduler file, the per-user file ``~/.config/mpnet/token`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import AuthenticationError, ProtocolError
from .protocol import PROTOCOL_VERSION

__all__ = ["new_token", "token_file_path", "resolve_token", "Handshake", "TOKEN_HELP"]

MAGIC = "mpnet"
TOKEN_HELP = ("pass token=... (or --token-file), set MPNET_TOKEN, use the scheduler file, "
              "or share ~/.config/mpnet/token; LocalCluster's token is cluster.token")


def new_token() -> str:
    return secrets.token_hex(32)


def token_file_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "mpnet" / "token"


def resolve_token(explicit: str | None = None, *, scheduler_file_token: str | None = None,
                  create: bool = False) -> str | None:
    """The token to use, by the order above; ``create`` makes the per-user file."""
    if explicit:
        return explicit
    env = os.environ.get("MPNET_TOKEN")
    if env:
        return env
    if scheduler_file_token:
        return scheduler_file_token
    path = token_file_path()
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _mac(token: str, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token.encode(), label + first + second, hashlib.sha256).digest()


class Handshake:
    """One side's handshake as a small state machine with no I/O.

    :meth:`start` gives the first frame to send (server only); :meth:`receive` takes
    each decoded frame and returns ``(frames_to_send, done)``. On success ``peer_role``
    and ``peer_info`` describe the other side. Every failure raises
    :class:`AuthenticationError` (wrong token) or :class:`ProtocolError` (not mpnet).
    """

    def __init__(self, *, server: bool, token: str | None, role: str, info: dict,
                 address: str):
        self.server = server
        self.token = token
        self.role = role
        self.info = info
        self.address = address
        self.nonce = secrets.token_bytes(32)
        self.peer_nonce = b""
        self.peer_role = ""
        self.peer_info: dict = {}
        self._step = 0

    # -- server ---------------------------------------------------------------------
    def start(self) -> list:
        assert self.server
        return [[MAGIC, PROTOCOL_VERSION, self.role, self.nonce, self.token is not None]]

    def receive(self, frame: Any) -> tuple[list, bool]:
        if not isinstance(frame, list) or not frame:
            raise ProtocolError("handshake frame is not a list")
        if self.server:
            return self._server_receive(frame)
        if self._step == 0:
            return self._client_hello(frame)
        return self._client_verdict(frame)

    def _server_receive(self, frame: list) -> tuple[list, bool]:
        if len(frame) != 5:
            raise ProtocolError("malformed handshake answer")
        version, role, nonce, proof, info = frame
        if version != PROTOCOL_VERSION:
            return [["refused", f"protocol version {version!r} != {PROTOCOL_VERSION}"]], False
        if not isinstance(nonce, bytes) or len(nonce) != 32 or not isinstance(role, str):
            raise ProtocolError("malformed handshake answer")
        if self.token is not None:
            expected = _mac(self.token, b"mpnet-client", self.nonce, nonce)
            if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
                raise AuthenticationError(
                    f"a {role} connecting from {self.address} did not prove it holds the "
                    "cluster token; refused")
        self.peer_nonce, self.peer_role = nonce, role
        self.peer_info = info if isinstance(info, dict) else {}
        proof = _mac(self.token, b"mpnet-server", nonce, self.nonce) if self.token else b""
        return [["ok", proof, self.info]], True

    # -- client ---------------------------------------------------------------------
    def _client_hello(self, frame: list) -> tuple[list, bool]:
        if len(frame) != 5 or frame[0] != MAGIC:
            raise ProtocolError(f"{self.address} does not speak mpnet's protocol")
        _, version, role, nonce, auth_required = frame
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"{self.address} speaks mpnet protocol version {version}, "
                                f"we speak {PROTOCOL_VERSION}: install the same mpnet version")
        if not isinstance(nonce, bytes) or len(nonce) != 32:
            raise ProtocolError("malformed handshake hello")
        self.peer_nonce, self.peer_role = nonce, role
        if auth_required and self.token is None:
            raise AuthenticationError(
                f"the {role} at {self.address} requires a token and we have none: "
                + TOKEN_HELP)
        proof = _mac(self.token, b"mpnet-client", nonce, self.nonce) if self.token else b""
        self._step = 1
        self._auth_required = bool(auth_required)
        return [[PROTOCOL_VERSION, self.role, self.nonce, proof, self.info]], False

    def _client_verdict(self, frame: list) -> tuple[list, bool]:
        if frame[0] == "refused":
            reason = frame[1] if len(frame) > 1 else "no reason given"
            raise AuthenticationError(f"the {self.peer_role} at {self.address} refused the "
                                      f"connection: {reason}. To supply the right token, "
                                      + TOKEN_HELP)
        if frame[0] != "ok" or len(frame) != 3:
            raise ProtocolError("malformed handshake verdict")
        _, proof, info = frame
        if self._auth_required:
            expected = _mac(self.token, b"mpnet-server", self.nonce, self.peer_nonce)
            if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
                raise AuthenticationError(
                    f"the {self.peer_role} at {self.address} could not prove it holds our "
                    "token: it is not our cluster")
        self.peer_info = info if isinstance(info, dict) else {}
        return [], True
