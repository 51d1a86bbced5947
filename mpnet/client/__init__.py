"""The calling side: client, futures, actor handles.

Importing it provides a worker, through :mod:`mpnet.context`, with the client and the
actor caller its tasks use: the worker layer never imports this one.
"""

from .. import context as _context
from .actors import ActorCaller as _ActorCaller
from .client import Client as _Client

_context.provide("client", _Client)
_context.provide("actor_caller", _ActorCaller)
