"""TLS under mpnet's connections: contexts from the configured files, and a connection
that runs the TLS handshake before the token handshake.

::

    Listener (tls)  accept ─ wrap_socket(server_side) ─► TLSConnection ─┐
    connect(tls://) connect ─ wrap_socket(client) ────► TLSConnection ─┤
                                                                        ▼
          TLS handshake, non-blocking (do_handshake on each readiness event)
          then the HMAC token handshake of mpnet.comm.auth, inside TLS
          then frames, written in chunks with send() (SSLSocket has no sendmsg)
          and read until the SSL layer has nothing left (records may sit decrypted in
          its buffer while the socket itself is not readable)

Who checks whom:

* a server shows ``tls_cert`` (with ``tls_key``, or the key inside the same file);
  given ``tls_ca_file`` it also demands a client certificate signed by that CA
  (mutual TLS);
* a client verifies the server's certificate against ``tls_ca_file`` (required to dial
  tls://) and shows ``tls_cert`` when it has one. Host names are not checked: the CA is
  the cluster's own, anything it signed is a member wherever it runs, and members are
  reached at IP addresses that certificates rarely list.

The token handshake still runs: TLS keeps the connection private and proves the peer
holds a certificate of the cluster's CA; the token proves it holds the cluster's
secret. Everything here runs on the loop thread, except building contexts, which
:class:`~mpnet.comm.endpoints.Listener` and :func:`~mpnet.comm.endpoints.connect` do
when they are created, so that a bad file is an error at once, not at the first peer.
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import ssl
from typing import Any, Mapping

from ..config import Config
from ..errors import CommClosedError, TLSError
from .connection import Connection

__all__ = ["listen_context", "dial_context", "settings", "describe_failure", "TLSConnection"]

log = logging.getLogger("mpnet.comm")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_RECV_SIZE = 64 * 1024       # SSL reads return one record (16 KiB) at most
# One SSL write: large enough to amortise the call over 16 records, small enough that
# a retry after "would block" (which must repeat the same bytes) stays cheap.
_CHUNK = 256 * 1024
# Reads per readiness event before the loop serves the other sockets again.
_READS_PER_EVENT = 64

_OPTIONS = "tls_cert (--tls-cert)", "tls_key (--tls-key)", "tls_ca_file (--tls-ca-file)"

# OpenSSL reasons seen by a client whose certificate the server refused.
_REFUSED_US = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
               "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
               "TLSV1_ALERT_ACCESS_DENIED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
               "SSLV3_ALERT_CERTIFICATE_EXPIRED", "TLSV1_ALERT_DECRYPT_ERROR"}
# ... and by either side when the other one is not speaking TLS at all.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "UNEXPECTED_RECORD"}


# --- contexts ------------------------------------------------------------------------

def settings(config: Config | Mapping[str, Any]) -> dict[str, str]:
    """The TLS fields set in ``config`` (a Config, or a mapping of overrides such as
    SSHCluster's), for a Client inheriting its cluster's."""
    get = config.get if isinstance(config, Mapping) else functools.partial(getattr, config)
    return {k: v for k in ("tls_cert", "tls_key", "tls_ca_file") if (v := get(k, ""))}


def listen_context(config: Config, scheme: str | None) -> ssl.SSLContext | None:
    """The server context for a listener, or None for plain TCP.

    ``scheme`` "tls" requires a certificate; "tcp" refuses TLS options that would then
    silently go unused; None (or "") means TLS exactly when a certificate is set.
    """
    given = settings(config)
    if scheme == "tcp":
        if given:
            raise TLSError(f"TLS options are set ({', '.join(given)}) but the address to "
                           "listen on says tcp://: use a tls:// address, or drop the TLS "
                           "options to serve without TLS")
        return None
    if not config.tls_cert:
        if scheme == "tls":
            raise TLSError("serving on tls:// (as every member of a tls:// cluster does) "
                           "needs a certificate and its key: "
                           f"set {_OPTIONS[0]} and {_OPTIONS[1]} (docs/security-tls.md "
                           "shows how to make them)")
        if given:
            raise TLSError(f"{' and '.join(given)} given without tls_cert: a server "
                           f"needs its own certificate to speak TLS; set {_OPTIONS[0]}")
        return None
    return _context(True, *_stamps(config))


def dial_context(config: Config, scheme: str, address: str) -> ssl.SSLContext | None:
    """The client context to dial ``address`` (whose scheme is ``scheme``), or None."""
    given = settings(config)
    if scheme == "tcp":
        if given:
            rest = address.partition("://")[2]
            raise TLSError(f"TLS options are set ({', '.join(given)}) but {address} says "
                           f"tcp://: connect to tls://{rest}, or drop the TLS options")
        return None
    if scheme == "" and not given:
        return None
    if not config.tls_ca_file:
        raise TLSError(f"connecting to {address} over TLS needs the CA certificate that "
                       f"signed the server's certificate: set {_OPTIONS[2]}")
    if config.tls_key and not config.tls_cert:
        raise TLSError(f"tls_key is set without tls_cert: set {_OPTIONS[0]} too")
    return _context(False, *_stamps(config))


def _stamps(config: Config) -> tuple:
    """The files and their (mtime, size): a replaced certificate gets a new context."""
    out: list = []
    for path, option in zip((config.tls_cert, config.tls_key, config.tls_ca_file), _OPTIONS):
        if not path:
            out += ["", None]
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            raise TLSError(_file_problem(path, option, e)) from None
        out += [path, (st.st_mtime_ns, st.st_size)]
    return tuple(out)


@functools.lru_cache(maxsize=32)
def _context(server: bool, cert: str, _c: Any, key: str, _k: Any, ca: str,
             _a: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if cert:
        _load_chain(ctx, cert, key)
    if ca:
        _read_check(ca, _OPTIONS[2])
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as e:
            raise TLSError(f"the CA file {ca} ({_OPTIONS[2]}) holds no usable PEM "
                           f"certificate: {e.reason or e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED       # servers: mutual TLS
    if not server:
        ctx.check_hostname = False                # see the module docstring
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    _read_check(cert, _OPTIONS[0])
    if key:
        _read_check(key, _OPTIONS[1])

    def no_password() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal: a hang in a daemon.
        raise TLSError(f"the private key in {key or cert} is encrypted: mpnet needs an "
                       "unencrypted key (protect the file with mode 0600 instead)")
    try:
        ctx.load_cert_chain(cert, key or None, password=no_password)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TLSError(f"the private key in {key} does not belong to the certificate "
                           f"in {cert}") from None
        if not key:
            raise TLSError(f"cannot load a certificate and private key from {cert} "
                           f"({e.reason or e}): give the key with {_OPTIONS[1]}, or put it "
                           "in the certificate file after the certificate") from None
        raise TLSError(f"cannot load the certificate {cert} with the key {key} "
                       f"({e.reason or e}): both must be PEM files") from None


def _read_check(path: str, option: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TLSError(_file_problem(path, option, e)) from None


def _file_problem(path: str, option: str, e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return f"the TLS file {path} given as {option} does not exist"
    if isinstance(e, IsADirectoryError):
        return f"the TLS file {path} given as {option} is a folder, not a PEM file"
    if isinstance(e, PermissionError):
        return (f"cannot read the TLS file {path} given as {option}: permission denied "
                "(it must be readable by the user running mpnet)")
    return f"cannot read the TLS file {path} given as {option}: {e.strerror or e}"


# --- failures ------------------------------------------------------------------------

def describe_failure(e: ssl.SSLError, *, server: bool, peer: str, config: Config) -> str:
    """What a failed TLS exchange with ``peer`` most likely means, and what to do."""
    reason = getattr(e, "reason", None) or ""
    rest = peer.partition("://")[2] or peer
    if isinstance(e, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
        detail = getattr(e, "verify_message", "") or reason
        if server:
            return (f"the certificate of the client at {rest} is not signed by our CA "
                    f"({config.tls_ca_file}): {detail}; refused")
        return (f"the certificate of {peer} is not signed by the CA in {config.tls_ca_file} "
                f"({detail}): it belongs to another cluster, or {_OPTIONS[2]} names the "
                "wrong CA")
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return (f"the client at {rest} sent no certificate, and this server requires one "
                f"signed by {config.tls_ca_file} (mutual TLS); refused")
    if reason in _REFUSED_US and not server:
        if not config.tls_cert:
            return (f"{peer} requires a client certificate (mutual TLS) and we have none: "
                    f"set {_OPTIONS[0]} and {_OPTIONS[1]}, signed by the cluster's CA")
        return (f"{peer} refused our certificate {config.tls_cert} ({reason}): it must be "
                "signed by the CA the server trusts (its --tls-ca-file)")
    if reason in _NOT_TLS:
        if server:
            return f"the client at {rest} does not speak TLS (a tcp:// client?); refused"
        return (f"{peer} does not answer in TLS: it is probably a plain server; connect "
                f"to tcp://{rest} without the TLS options")
    return f"TLS with {peer} failed: {reason or e}"


# --- the connection ------------------------------------------------------------------

class TLSConnection(Connection):
    """A :class:`Connection` over an ``ssl.SSLSocket`` made with
    ``do_handshake_on_connect=False``: the TLS handshake runs step by step on readiness
    events, then the token handshake and the frames run as on a plain connection.

    Writes: the pieces of a frame are sent in chunks of up to ``_CHUNK`` bytes (small
    pieces joined, large buffers sliced, never copied). After "would block" OpenSSL must
    be given the very same bytes again, which ``_inflight`` keeps.
    """

    # An SSL object must not write in one thread while the loop reads in another: sends
    # from other threads go through the loop (Connection.send_direct hops).
    direct_writes = False
    _tls_open = False
    _inflight: memoryview | None = None
    _send_waits_read = False
    _events = _READ

    def _begin(self) -> None:
        self._tls_handshake()

    def _tls_handshake(self, mask: int = 0) -> None:
        if self.state == "closed":
            return
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.loop.modify(self.sock, _READ, self._tls_handshake)
            return
        except ssl.SSLWantWriteError:
            self.loop.modify(self.sock, _WRITE, self._tls_handshake)
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as e:
            # A peer that hung up (a port scanner, a liveness check, a plain client
            # giving up): nothing to report beyond the close itself.
            self.close(CommClosedError(f"{self.peer} closed the connection during the TLS "
                                       f"handshake ({e.__class__.__name__})"))
            return
        except ssl.SSLError as e:
            self._protocol_failure(TLSError(describe_failure(
                e, server=self._hs.server, peer=self.peer, config=self.config)))
            return
        except OSError as e:
            self.close(CommClosedError(f"connection to {self.peer} broke during the TLS "
                                       f"handshake: {e}"))
            return
        self._tls_open = True
        self._events = _READ
        self.loop.modify(self.sock, _READ, self._on_event)
        Connection._begin(self)          # the token handshake, now inside TLS
        self._on_event(_READ)            # records may already wait decrypted

    # --- receiving -----------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self.sock
        for _ in range(_READS_PER_EVENT):
            target = self._decoder.direct_target() if self.state == "open" else None
            try:
                if target is not None:
                    n = sock.recv_into(target)
                    data = None
                else:
                    data = sock.recv(_RECV_SIZE)
                    n = len(data)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._set_events(_READ | _WRITE)
                break
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                n, data = 0, b""            # the peer hung up: the same as a plain EOF
            except ssl.SSLError as e:
                self._tls_failed(e)
                return
            except OSError as e:
                self.close(CommClosedError(f"connection to {self.peer} broke: {e}"))
                return
            self._received(n, data)
            if self.state == "closed":
                return
        else:
            if sock.pending():   # decrypted bytes the socket will not signal: come back
                self.loop.call_soon(self._read_more)
        if self._send_waits_read:
            self._send_waits_read = False
            self._pump()

    def _read_more(self) -> None:
        if self.state != "closed":
            self._on_event(_READ)

    def _tls_failed(self, e: ssl.SSLError) -> None:
        if self.state == "handshake":
            # TLS 1.3 reports a refused client certificate only here, after the client
            # finished its side of the TLS handshake.
            self._protocol_failure(TLSError(describe_failure(
                e, server=self._hs.server, peer=self.peer, config=self.config)))
        else:
            self.close(CommClosedError(f"TLS connection to {self.peer} broke: "
                                       f"{e.reason or e}"))

    # --- sending -------------------------------------------------------------------
    def _write(self, pieces: list) -> None:
        idle = not self._wbuf
        self._wbuf.extend(memoryview(p).cast("B") for p in pieces)
        if idle and self._tls_open:
            self._pump()

    def _on_writable(self) -> None:
        self._pump()

    def _pump(self) -> None:
        wbuf = self._wbuf
        while wbuf:
            chunk = self._inflight if self._inflight is not None else self._next_chunk()
            try:
                sent = self.sock.send(chunk)
            except ssl.SSLWantWriteError:
                self._inflight = chunk
                self._set_events(_READ | _WRITE)
                return
            except ssl.SSLWantReadError:
                self._inflight = chunk
                self._send_waits_read = True
                return
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError,
                    ConnectionResetError):
                self._peer_gone()
                return
            except OSError as e:
                self.close(CommClosedError(f"connection to {self.peer} broke: {e}"))
                return
            self._inflight = None
            head = wbuf[0]
            if sent >= head.nbytes:
                wbuf.pop(0)
            else:
                wbuf[0] = head[sent:]
        self._set_events(_READ)
        if self._close_when_flushed:
            self.close()

    def _peer_gone(self) -> None:
        # The peer hung up while we wrote. What it sent before (a worker's GOODBYE, say)
        # may still wait in our receive buffer: read it, then close as on a plain EOF.
        self._wbuf.clear()
        self._inflight = None
        if self.state == "open":
            self._on_event(_READ)
        if self.state != "closed":
            self._received(0, None)

    def _next_chunk(self) -> memoryview:
        """The next bytes to write: ``wbuf[0]``'s first ``_CHUNK``, or small pieces joined."""
        wbuf = self._wbuf
        head = wbuf[0]
        total, k = 0, 0
        while k < len(wbuf) and total + wbuf[k].nbytes <= _CHUNK:
            total += wbuf[k].nbytes
            k += 1
        if k <= 1:
            return head[:_CHUNK]
        joined = memoryview(b"".join(wbuf[:k]))
        wbuf[:k] = [joined]
        return joined

    def _set_events(self, events: int) -> None:
        if events != self._events and self.state != "closed":
            self._events = events
            self.loop.modify(self.sock, events, self._on_event)
