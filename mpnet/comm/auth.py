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
the scheduler file, the per-user file ``~/.config/mpnet/token`` (mode 0600). ``False``
(``--no-auth``) is the only way to run without one: an empty or unreadable token file
is an error naming the file, never "no token". A side that holds a token demands the
handshake from the other side and checks its proof, every time, reconnects included: a
server that answers "no auth needed" is refused, since anyone who binds a freed port
could say that.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from ..errors import AuthenticationError, ProtocolError, TokenFileError
from .protocol import PROTOCOL_VERSION

__all__ = ["new_token", "token_file_path", "resolve_token", "resolve_server_token", "read_token_file",
           "check_private", "token_arg", "Handshake", "TOKEN_HELP"]

log = logging.getLogger("mpnet.auth")

MAGIC = "mpnet"
TOKEN_HELP = ("pass token=... (or --token-file), set MPNET_TOKEN, use the scheduler file, "
              "or share ~/.config/mpnet/token; LocalCluster's token is cluster.token")


def new_token() -> str:
    return secrets.token_hex(32)


def token_file_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):    # unset, empty or relative: the XDG spec says ignore it
        base = os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "mpnet" / "token"


def token_arg(token: str | None) -> str | bool:
    """What to hand a child or a sub-service: the token, or ``False`` for no auth."""
    return token if token else False


def resolve_token(explicit: str | bool | None = None, *,
                  scheduler_file_token: str | None = None,
                  create: bool = False) -> str | None:
    """The token to use, by the order above; ``None`` means no authentication.

    ``explicit=False`` turns authentication off (the only way to). ``create`` makes the
    per-user file when it is missing (schedulers); otherwise a missing file gives
    ``None``, which can only talk to servers that run without authentication.
    """
    if explicit is False:
        return None
    if explicit is not None and explicit is not True:
        if not isinstance(explicit, str) or not explicit.strip():
            raise ValueError(f"token must be a non-empty string (or False to run without "
                             f"authentication), not {explicit!r}")
        return explicit.strip()
    env = os.environ.get("MPNET_TOKEN", "").strip()
    if env:
        return env
    if scheduler_file_token:
        return scheduler_file_token
    path = token_file_path()
    try:
        return read_token_file(path, create=create)
    except FileNotFoundError:
        return None


def resolve_server_token(explicit: str | bool | None, role: str, *,
                         scheduler_file_token: str | None = None) -> str | None:
    """:func:`resolve_token` for a worker or nanny, which also listens: finding no token
    is an error unless ``explicit`` is ``False`` (no authentication, said out loud)."""
    token = resolve_token(explicit, scheduler_file_token=scheduler_file_token)
    if token is None and explicit is not False:
        raise AuthenticationError(
            f"a {role} needs the cluster token and none was found: {TOKEN_HELP}. To join a "
            f"scheduler that runs without authentication, pass token=False (--no-auth)")
    return token


def read_token_file(path: str | os.PathLike, *, create: bool = False) -> str:
    """The token in ``path``; ``create`` writes a new one (mode 0600) if it is missing.

    Raises :class:`FileNotFoundError` when it is missing (and not created), and
    :class:`~mpnet.errors.TokenFileError` when it is empty, unreadable, or open to
    other users.
    """
    path = Path(path).expanduser()
    if create and not path.exists():
        _create_token_file(path)
    try:
        # O_NONBLOCK: opening a FIFO (or a device) put where the token belongs would
        # otherwise block until someone writes to it; we refuse anything but a file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise TokenFileError(f"cannot read the token file {path}: {e.strerror}. Fix its "
                             f"permissions (chmod 600 {path}) or point at another with "
                             f"--token-file / MPNET_TOKEN") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"the token file {path} is not a regular file: write the "
                                 f"token into a plain file (mode 0600) or point at one "
                                 f"with --token-file / MPNET_TOKEN")
        check_private(path, st, what="token file")
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    try:
        token = data.decode().strip()
    except UnicodeDecodeError:
        token = ""
    if not token:
        raise TokenFileError(
            f"the token file {path} is empty or not text: mpnet will not run without "
            f"authentication by accident. Delete it (a scheduler writes a new one), write "
            f"a token into it, or pass --no-auth / token=False if you really want no "
            f"authentication")
    return token


def check_private(path: Path, st: os.stat_result | None = None, *,
                  what: str = "token file", folder: bool = True) -> None:
    """Refuse a secret file other users can read or write, or whose folder they can
    change (they could swap the file); warn when only the folder is readable."""
    st = st or os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(
            f"the {what} {path} can be read or written by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): anyone who reads it can run code on the "
            f"cluster. Run: chmod 600 {path}")
    if not folder:
        return
    folder = path.parent
    try:
        fst = os.stat(folder)
    except OSError:
        return
    if fst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not fst.st_mode & stat.S_ISVTX:
        raise TokenFileError(
            f"the folder {folder} of the {what} {path} can be changed by other users (mode "
            f"{stat.S_IMODE(fst.st_mode):04o}), who could replace the file. Run: "
            f"chmod go-w {folder}")
    if fst.st_mode & (stat.S_IRGRP | stat.S_IROTH) and folder.name == "mpnet":
        log.warning("the folder %s of the %s can be listed by other users: chmod 700 %s",
                    folder, what, folder)


def _make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and missing parents with mode 0700, whatever the umask."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:    # a racing process made it: fine, leave its mode be
            continue
        os.chmod(d, 0o700)


def _create_token_file(path: Path) -> None:
    """Write a new token to a temporary name, then link it into place.

    ``os.link`` fails if the file exists, so two processes racing here never see a
    half-written file and both end up reading the same token (the first to link)."""
    _make_private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_token() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            log.info("wrote a new cluster token to %s", path)
        except FileExistsError:
            pass                            # another process won the race: use its file
        except OSError:                     # no hard links here (some network filesystems)
            if not path.exists():
                os.rename(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


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
        if not auth_required and self.token is not None:
            # A downgrade: whoever bound this port (the real server started with
            # --no-auth, or anyone after the real one died) wants no proof. Holding a
            # token, we talk only to servers that prove they hold it too.
            raise AuthenticationError(
                f"the {role} at {self.address} does not ask for a token, but we hold "
                f"one: it is not our cluster, or it runs without authentication. If it "
                f"really runs with --no-auth, connect with token=False (--no-auth) too")
        proof = _mac(self.token, b"mpnet-client", nonce, self.nonce) if self.token else b""
        self._step = 1
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
        if self.token is not None:
            expected = _mac(self.token, b"mpnet-server", self.nonce, self.peer_nonce)
            if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
                raise AuthenticationError(
                    f"the {self.peer_role} at {self.address} could not prove it holds our "
                    "token: it is not our cluster")
        self.peer_info = info if isinstance(info, dict) else {}
        return [], True
