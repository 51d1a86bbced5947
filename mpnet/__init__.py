"""mpnet: a fast, authenticated task and actor cluster on multiprocessing."""

from __future__ import annotations

__version__ = "0.1.0"

from .client.actors import ActorFuture, ActorHandle
from .client.client import Client
from .client.futures import (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future,
                             as_completed, wait)
from .config import Config
from .deploy.local import LocalCluster
from .diagnostics.progress import progress
from .errors import (ActorDiedError, AuthenticationError, CancelledError, ClusterClosedError,
                     CommClosedError, ConnectTimeoutError, FrameTooLargeError,
                     InvalidSchedulerFileError, KeyConflictError, KilledWorkerError,
                     LifecycleError, LinkLostError, MpnetError, PreloadError,
                     PreloadOptionError, ProtocolError, RankError,
                     SchedulerFileError, SchedulerFileTimeoutError, SerializationError,
                     SSHError, StaleSchedulerFileError, TLSError, TokenFileError,
                     UnsatisfiableError, VersionMismatchError, WorkerLostError)
from .nanny.nanny import Nanny
from .plugins import NannyPlugin, SchedulerPlugin, WorkerPlugin
from .scheduler.server import Scheduler
from .worker.actors import get_actor_context
from .context import get_client, get_worker
from .worker.worker import Worker


def get_actor(name: str, client: Client | None = None, timeout: float | None = None
              ) -> ActorHandle:
    """The handle of the actor called ``name`` (``client`` defaults to the current one)."""
    return (client or get_client()).get_actor(name, timeout=timeout)

__all__ = [
    "Client", "Future", "LocalCluster", "Scheduler", "Worker", "Nanny", "Config",
    "wait", "as_completed", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED", "progress", "SchedulerPlugin", "WorkerPlugin", "NannyPlugin",
    "ActorHandle", "ActorFuture", "get_actor", "get_actor_context", "get_client",
    "get_worker", "UnsatisfiableError", "KeyConflictError",
    "MpnetError", "ProtocolError", "AuthenticationError", "CommClosedError",
    "ConnectTimeoutError", "SerializationError", "ClusterClosedError", "WorkerLostError",
    "KilledWorkerError", "ActorDiedError", "VersionMismatchError", "CancelledError",
    "FrameTooLargeError", "TokenFileError", "TLSError", "SchedulerFileError",
    "SchedulerFileTimeoutError", "StaleSchedulerFileError", "InvalidSchedulerFileError",
    "PreloadError", "PreloadOptionError", "SSHError", "RankError", "LifecycleError",
    "LinkLostError",
    "SSHCluster",
]


def __getattr__(name: str):
    # SSHCluster brings paramiko (~0.1 s to import): loaded only for those who use it.
    if name == "SSHCluster":
        from .deploy import ssh
        return getattr(ssh, name)
    raise AttributeError(f"module 'mpnet' has no attribute {name!r}")
