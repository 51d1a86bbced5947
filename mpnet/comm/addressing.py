"""Addresses: ``tcp://host:port`` and ``tls://host:port`` strings and the ``(host, port)``
pairs behind them. The scheme says how to talk to the address: plain TCP, or TLS
(:mod:`mpnet.comm.tls`); the token handshake runs on both."""

from __future__ import annotations

import socket

__all__ = ["parse_address", "address_scheme", "format_address", "parse_port_range",
           "outward_host", "route_address", "advertised_host", "SCHEMES"]

SCHEMES = ("tcp", "tls")


def parse_address(address: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``"tcp://10.0.0.1:8786"``, ``"tls://10.0.0.1:8786"``, ``"10.0.0.1:8786"``,
    ``":8786"``, ``"[::1]:8786"`` → ``(host, port)``. A missing host is ``""`` (all
    interfaces when listening). The scheme is :func:`address_scheme`'s business."""
    if not isinstance(address, str):
        raise TypeError(f"an address must be a string like 'tcp://host:8786', "
                        f"not {type(address).__name__}")
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    if scheme not in SCHEMES:
        raise ValueError(f"cannot use address {address!r}: only tcp:// and tls:// "
                         "addresses are supported")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    host = host.rstrip("/")
    port_text = port_text.rstrip("/")
    if not port_text:
        if default_port is None:
            raise ValueError(f"address {address!r} has no port: write it as tcp://host:port")
        port = default_port
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"address {address!r} has a port that is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address {address!r}: port {port} is outside 0-65535")
    return host, port


def address_scheme(address: str) -> str:
    """``"tls://h:1"`` → ``"tls"``, ``"tcp://h:1"`` → ``"tcp"``, ``"h:1"`` → ``""``."""
    scheme, sep, _ = address.strip().partition("://")
    return scheme if sep else ""


def format_address(host: str, port: int, scheme: str = "tcp") -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def parse_port_range(spec: int | str | None) -> list[int]:
    """``9000`` → [9000]; ``"9000:9003"`` → [9000, 9001, 9002, 9003]; None → [0]."""
    if spec is None or spec == "":
        return [0]
    if isinstance(spec, int):
        return [spec]
    low, sep, high = str(spec).partition(":")
    try:
        if not sep:
            return [int(low)]
        first, last = int(low), int(high)
    except ValueError:
        raise ValueError(f"port {spec!r} must be a number or a range like 9000:9100") from None
    if last < first:
        raise ValueError(f"port range {spec!r} is empty")
    return list(range(first, last + 1))


def outward_host() -> str:
    """The address other machines reach this one at, for a server on every interface.

    The host name often resolves to loopback (Debian maps it to 127.0.1.1), which would
    send remote workers to themselves: prefer the first IPv4 address of an interface that
    is up and not loopback.
    """
    import psutil
    try:
        stats = psutil.net_if_stats()
        for nic, addrs in psutil.net_if_addrs().items():
            if not stats.get(nic) or not stats[nic].isup:
                continue
            for a in addrs:
                if a.family == socket.AF_INET and not a.address.startswith("127."):
                    return a.address
    except (OSError, psutil.Error):
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def route_address(host: str) -> str:
    """This machine's address on its route to ``host``: the one ``host`` can reach it at.

    A UDP ``connect`` sends nothing; it only asks the kernel which source address it
    would use. On a machine with several networks this picks the right one, where the
    first interface that is up (:func:`outward_host`) may be on another network.
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return outward_host()


_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def advertised_host(listen_host: str | None, peer: str) -> str:
    """What a server listening on ``listen_host`` tells others to dial: that host, or
    for every interface (``""``, ``0.0.0.0``, ``::``), its address on the route to
    ``peer`` (an address like ``tcp://host:port``), never the wildcard itself."""
    if listen_host and listen_host not in _WILDCARDS:
        return listen_host
    peer_host = parse_address(peer)[0]
    if peer_host and peer_host not in _WILDCARDS and not peer_host.startswith("127."):
        return route_address(peer_host)
    return outward_host()
