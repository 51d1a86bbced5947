"""Every exception mpnet raises, in one place.

::

    MpnetError
     ├── ProtocolError            a peer broke the wire protocol (one connection closes)
     ├── AuthenticationError      the peer does not hold the cluster's token
     │    └── TokenFileError      a token file is empty, unreadable or open to others
     ├── TLSError                 a TLS file or setting is wrong, or TLS with a peer failed
     ├── CommClosedError          a connection closed while something waited on it
     │    ├── ConnectTimeoutError nothing answered at an address within the timeout
     │    └── LinkLostError       a link to the scheduler gave up (or was closed): what it
     │                            still had to send or was waiting for is lost
     ├── SerializationError       an object could not be pickled / unpickled
     ├── FrameTooLargeError       a value is over max_frame_bytes: it cannot travel
     ├── ClusterClosedError       the client, cluster or scheduler is closed
     ├── LifecycleError           a server was asked to move between states it cannot
     ├── WorkerLostError          data or a task was lost with a worker
     │    └── KilledWorkerError   a task was on every worker that died running it
     ├── UnsatisfiableError       no worker could ever run a task or host an actor
     ├── KeyConflictError         a key already names another computation (also a ValueError)
     ├── ActorDiedError           the worker hosting an actor died, or it was killed
     ├── VersionMismatchError     software differs between client, scheduler and workers
     ├── SchedulerFileError       a scheduler file (--scheduler-file) cannot be used
     │    ├── SchedulerFileTimeoutError  it did not appear in time (also a TimeoutError)
     │    ├── StaleSchedulerFileError    its scheduler does not answer (also a RuntimeError)
     │    └── InvalidSchedulerFileError  it is unreadable or not one (also a ValueError)
     ├── PreloadError             a --preload could not be imported or set up
     │    └── PreloadOptionError  its command-line options did not parse
     ├── SSHError                 a host could not be reached, logged into or started on
     └── RankError                an MPI rank cannot take part in the job (mpnet mpi)

    concurrent.futures.CancelledError  a cancelled future (the standard one, so
                                       ``concurrent.futures`` code keeps working)
    RemoteTraceback                    the remote traceback chained as ``__cause__``
                                       of a task's re-raised exception

Messages say what happened, where (address, pid, exit code) and what to do next.
"""

from __future__ import annotations

from concurrent.futures import CancelledError

__all__ = [
    "MpnetError",
    "ProtocolError",
    "AuthenticationError",
    "TokenFileError",
    "TLSError",
    "CommClosedError",
    "ConnectTimeoutError",
    "LinkLostError",
    "SerializationError",
    "FrameTooLargeError",
    "ClusterClosedError",
    "LifecycleError",
    "WorkerLostError",
    "KilledWorkerError",
    "UnsatisfiableError",
    "KeyConflictError",
    "ActorDiedError",
    "VersionMismatchError",
    "SchedulerFileError",
    "SchedulerFileTimeoutError",
    "StaleSchedulerFileError",
    "InvalidSchedulerFileError",
    "PreloadError",
    "PreloadOptionError",
    "SSHError",
    "RankError",
    "CancelledError",
    "RemoteTraceback",
]


class MpnetError(Exception):
    """Base of every error mpnet raises itself."""


class ProtocolError(MpnetError):
    """A peer sent something that is not mpnet's protocol: the connection is closed."""


class AuthenticationError(MpnetError):
    """The peer did not prove it holds the cluster's token (or we could not)."""


class TokenFileError(AuthenticationError):
    """A token file (or scheduler file) is empty, unreadable, or open to other users:
    mpnet refuses it rather than run without authentication or with a leaked token."""


class TLSError(MpnetError):
    """TLS could not be set up (a missing or unreadable certificate or key, a tls://
    address without them), or the TLS handshake with a peer failed (a certificate
    from another CA, no client certificate where mutual TLS wants one, a peer that
    does not speak TLS). The message names the file or the address."""


class CommClosedError(MpnetError):
    """A connection closed while a request on it was still waiting for its answer."""


class ConnectTimeoutError(CommClosedError, TimeoutError):
    """Nothing accepted a connection at an address before the timeout ran out."""


class LinkLostError(CommClosedError):
    """A reconnecting link (mpnet.comm.link) is down for good: it did not reconnect and
    register again within its time (``death_timeout``), or its owner closed it. Requests
    waiting on it and messages queued for the reconnect fail with it."""


class SerializationError(MpnetError):
    """An object could not be pickled or unpickled; the message names its type."""


class FrameTooLargeError(MpnetError):
    """A result, argument or reply is larger than one message may be
    (``max_frame_bytes``): it would be refused by whoever received it."""

    @classmethod
    def for_size(cls, what: str, nbytes: int, limit: int) -> "FrameTooLargeError":
        from .config import format_bytes
        return cls(
            f"{what} is {format_bytes(nbytes)} ({nbytes} bytes) pickled, over the limit "
            f"of {format_bytes(limit)} ({limit} bytes) for one message (max_frame_bytes). "
            f"Return or pass it in smaller parts, keep it where it is made (e.g. write it "
            f"to shared storage), or raise the limit on every process of the cluster: "
            f"MPNET_MAX_FRAME_BYTES={max(nbytes * 2, 1 << 30)} or max_frame_bytes= in the "
            f"Python API")


class ClusterClosedError(MpnetError):
    """The client, cluster or scheduler this call needs has been closed."""


class LifecycleError(MpnetError, RuntimeError):
    """A server, worker, nanny or client was asked to move between two states its
    lifecycle does not allow (``start()`` twice, ``start()`` after ``close()``); the
    message names both states."""


class WorkerLostError(MpnetError):
    """A worker died or left holding the only copy of some data or a running task."""


class KilledWorkerError(WorkerLostError):
    """A task was running on ``allowed_failures + 1`` workers and each of them died.

    The task probably kills its worker itself (a segfault, ``os._exit``, running out of
    memory); mpnet stops retrying it so the cluster does not restart forever.
    """


class UnsatisfiableError(MpnetError):
    """No worker of the cluster has the resources or name a task or actor asks for."""


class KeyConflictError(MpnetError, ValueError):
    """A task's ``key=`` already names a different computation (another function, other
    arguments, or scattered data) that is still alive: a result is never handed out for
    arguments it was not computed from. Choose another key."""


class ActorDiedError(MpnetError):
    """The actor cannot answer: its worker died (restarts used up), or it was killed.

    The message says whether the call may have run before the worker died.
    """


class VersionMismatchError(MpnetError):
    """Client, scheduler and workers run different versions of important packages."""


class SchedulerFileError(MpnetError):
    """A scheduler file cannot be used; the message names the file and what to do."""


class SchedulerFileTimeoutError(SchedulerFileError, TimeoutError):
    """The scheduler file did not appear within the wait (``timeout`` seconds): the
    scheduler is not running, or was given another ``--scheduler-file``."""


class StaleSchedulerFileError(SchedulerFileError, RuntimeError):
    """The file names a scheduler that is not running any more."""


class InvalidSchedulerFileError(SchedulerFileError, ValueError):
    """The file cannot be read, or is not an mpnet scheduler file (no JSON with an
    ``address``)."""


class PreloadError(MpnetError, RuntimeError):
    """A preload (``--preload``) could not be imported, its command-line options did not
    parse, or its ``mpnet_setup`` raised: the service does not start."""


class PreloadOptionError(PreloadError):
    """A preload's ``mpnet_setup`` is a click command and the options given for it do not
    parse (an unknown option, a bad value): found before the service listens."""


class SSHError(MpnetError):
    """A host could not be reached, logged into, or started on. The message names it."""


class RankError(MpnetError, RuntimeError):
    """This MPI rank cannot take part in the job: the message says why and what to do.

    ``alone`` is True when the other ranks go on without knowing (this rank's worker
    failed to start, or the lead rank never answered): ending together with them would
    mean waiting for ranks that are not ending.
    """

    def __init__(self, message: str, *, alone: bool = False):
        super().__init__(message)
        self.alone = alone


class RemoteTraceback(Exception):
    """Carries the text of a traceback that happened in another process.

    A task's exception is re-raised on the client as its original type; this is set as
    its ``__cause__`` so the remote frames are printed too.
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\n" + self.tb.rstrip("\n")
