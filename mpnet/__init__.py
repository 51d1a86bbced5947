"""mpnet: a fast, authenticated task and actor cluster on multiprocessing."""

from __future__ import annotations

__version__ = "0.1.0"

from .client.client import Client
from .client.futures import Future, as_completed, wait
from .config import Config
from .deploy.local import LocalCluster
from .errors import (ActorDiedError, AuthenticationError, CancelledError, ClusterClosedError,
                     CommClosedError, ConnectTimeoutError, KilledWorkerError, MpnetError,
                     ProtocolError, SerializationError, VersionMismatchError, WorkerLostError)
from .nanny.nanny import Nanny
from .plugins import NannyPlugin, SchedulerPlugin, WorkerPlugin
from .scheduler.server import Scheduler
from .worker.worker import Worker

__all__ = [
    "Client", "Future", "LocalCluster", "Scheduler", "Worker", "Nanny", "Config",
    "wait", "as_completed", "SchedulerPlugin", "WorkerPlugin", "NannyPlugin",
    "MpnetError", "ProtocolError", "AuthenticationError", "CommClosedError",
    "ConnectTimeoutError", "SerializationError", "ClusterClosedError", "WorkerLostError",
    "KilledWorkerError", "ActorDiedError", "VersionMismatchError", "CancelledError",
]
