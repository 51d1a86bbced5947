"""Logging into one host with paramiko: host specs, ``~/.ssh/config``, host keys, errors.

A host is ``host``, ``user@host``, ``host:port`` or ``user@[v6addr]:port``. What the spec
says wins over the options (``--ssh-username``, ``--ssh-port``, ``--ssh-private-key``),
which win over ``~/.ssh/config`` (HostName, User, Port, IdentityFile), which wins over
OpenSSH's defaults (the local user, port 22, ``~/.ssh/id_*`` and an agent): the order
OpenSSH itself uses.

Host keys are checked against ``~/.ssh/known_hosts``. An unknown key is refused with the
host and its SHA256 fingerprint, unless ``accept_new`` is set, which records it (what
OpenSSH's ``StrictHostKeyChecking=accept-new`` does); a changed key is always refused.
Every failure is an :class:`SSHError` whose one-line message starts with the host.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from ..errors import SSHError

__all__ = ["SSHError", "HostSpec", "parse_host", "read_hostfile", "connect", "fingerprint"]


@dataclass(frozen=True)
class HostSpec:
    """One host as the user wrote it, before ``~/.ssh/config`` fills the gaps."""
    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return self.host


def parse_host(text: str) -> HostSpec:
    """``"alice@node1:2222"`` → ``HostSpec("node1", "alice", 2222)``."""
    spec = text.strip()
    user = None
    if "@" in spec:
        user, _, spec = spec.rpartition("@")
    port = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", spec)
    if m:                                   # [v6]:port
        spec, port = m.group(1), m.group(2)
    elif spec.count(":") == 1:
        spec, _, port = spec.partition(":")
    if not spec or (port is not None and not str(port).isdigit()):
        raise ValueError(f"{text!r} is not a host: write host, user@host or host:port")
    return HostSpec(spec, user or None, int(port) if port else None)


def read_hostfile(path: str | os.PathLike) -> list[HostSpec]:
    """One host per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as e:
        raise ValueError(f"cannot read host file {path}: {e.strerror}") from None
    hosts = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            hosts.append(parse_host(line))
    if not hosts:
        raise ValueError(f"host file {path} lists no host")
    return hosts


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` and OpenSSH's prompts show it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown host key, naming it; or, with ``accept_new``, record it."""

    def __init__(self, label: str, path: Path, accept_new: bool):
        self.label, self.path, self.accept_new = label, path, accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise SSHError(
                f"{self.label}: unknown host key {key.get_name()} {fingerprint(key)} (not in "
                f"{self.path}); check it, then rerun with --ssh-accept-new to accept and "
                f"record it")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


@dataclass
class ConnectOptions:
    """How to log in; ``None`` leaves a value to the host spec, ssh config or default."""
    username: str | None = None
    port: int | None = None
    key_filename: str | list[str] | None = None
    password: str | None = None
    known_hosts: str | None = None          # default ~/.ssh/known_hosts
    accept_new: bool = False
    config_file: str | None = None          # default ~/.ssh/config (if it exists)
    timeout: float = 10.0                   # seconds, for the TCP connect and each step

    @classmethod
    def from_dict(cls, options: dict | None) -> "ConnectOptions":
        options = dict(options or {})
        if "client_keys" in options:            # asyncssh's (and so dask's) name
            options.setdefault("key_filename", options.pop("client_keys"))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown connect option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**options)


def _ssh_config(path: str | None) -> paramiko.SSHConfig | None:
    target = Path(path or "~/.ssh/config").expanduser()
    if not target.exists():
        if path:
            raise ValueError(f"ssh config file {target} does not exist")
        return None
    return paramiko.SSHConfig.from_path(str(target))


def resolve(spec: HostSpec, options: ConnectOptions) -> dict[str, Any]:
    """Hostname, port, user and key files for ``spec``, in OpenSSH's order of precedence."""
    config = _ssh_config(options.config_file)
    found = config.lookup(spec.host) if config else {"hostname": spec.host}
    keys = options.key_filename
    if keys is None and "identityfile" in found:
        keys = [os.path.expanduser(k) for k in found["identityfile"]]
    return dict(hostname=found.get("hostname", spec.host),
                port=spec.port or options.port or int(found.get("port", 22)),
                username=spec.user or options.username or found.get("user")
                or getpass.getuser(),
                key_filename=keys)


def connect(spec: HostSpec, options: ConnectOptions) -> paramiko.SSHClient:
    """A logged-in client for ``spec``, or :class:`SSHError` naming the host."""
    label = str(spec)
    try:
        target = resolve(spec, options)
    except (ValueError, OSError) as e:
        raise SSHError(f"{label}: {e}") from None
    known = Path(options.known_hosts or "~/.ssh/known_hosts").expanduser()
    client = paramiko.SSHClient()
    try:
        if known.exists():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_KnownHostsPolicy(label, known, options.accept_new))
        sock = socket.create_connection((target["hostname"], target["port"]),
                                        timeout=options.timeout)
        # Without it, each of the handshake's small messages can wait for a delayed ACK
        # (40 ms on Linux): the ssh phase would be mostly waiting.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(target["hostname"], port=target["port"], username=target["username"],
                       key_filename=target["key_filename"], password=options.password,
                       timeout=options.timeout, banner_timeout=options.timeout,
                       auth_timeout=options.timeout, allow_agent=options.password is None,
                       look_for_keys=target["key_filename"] is None, sock=sock)
    except SSHError:
        client.close()
        raise
    except BaseException as e:
        client.close()
        raise SSHError(f"{label}: {_explain(e, target, options)}") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(5)      # notice a dead link from this side too
    return client


def _explain(e: BaseException, target: dict, options: ConnectOptions) -> str:
    """What went wrong, in words a user can act on."""
    where = f"{target['hostname']}:{target['port']}"
    if isinstance(e, socket.gaierror):
        return f"unknown host {target['hostname']!r} ({e.strerror})"
    if isinstance(e, paramiko.BadHostKeyException):
        return (f"the host key CHANGED: got {fingerprint(e.key)}, expected "
                f"{fingerprint(e.expected_key)}; if the host was reinstalled, remove its "
                f"line from known_hosts (ssh-keygen -R), else this may be an attack")
    if isinstance(e, paramiko.AuthenticationException):
        keys = target["key_filename"]
        tried = (f"key {keys}" if isinstance(keys, str) else f"keys {', '.join(keys)}"
                 if keys else "no key" if keys is not None else "the default keys and agent")
        if options.password is not None:
            tried += " and a password, refused"
        return (f"authentication failed for user {target['username']!r} ({tried}); "
                f"give --ssh-username or --ssh-private-key")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"cannot connect to {where}: timed out"
    if isinstance(e, paramiko.SSHException):
        return f"ssh error at {where}: {e}"
    if isinstance(e, OSError):
        return f"cannot connect to {where}: {e.strerror or e}"
    return f"{type(e).__name__} at {where}: {e}"


def close_quietly(client: paramiko.SSHClient | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):   # closing a broken transport may raise anything
            client.close()
