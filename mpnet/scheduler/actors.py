"""Actors at the scheduler: where each lives, who holds it, what happens when it dies.

Owned by :class:`~.state.SchedulerState`; no I/O. It places actors through the
:class:`~.placement.Placement` it is given (fits, resources, filling a freed worker). The scheduler never sees an actor's
calls (callers talk to the hosting worker directly); it places actors, answers
``LOOKUP_ACTOR`` with their address once they are up, re-creates them when their
worker dies (while ``max_restarts`` allows), and kills them when no handle is left
(unless ``lifetime="detached"``).

::

    pending ──HOST_ACTOR──► starting ──ACTOR_STARTED──► alive ──worker lost──► restarting
       ▲ (no worker fits yet)          │ ACTOR_FAILED                        │ (restarts left)
       └───────────────────────────────┴──────────► dead ◄── kill / no handle / none left

A killed (or released) actor is dead at once for its callers, but a method it is
running cannot be interrupted: its resources stay held on its worker until the worker
says its threads have ended (ACTOR_STOPPED).
"""

from __future__ import annotations

from typing import Any, Callable

from ..comm.protocol import Msg
from .placement import Placement
from .taskstate import ClientState, WorkerState

__all__ = ["ActorState", "ActorRegistry"]


class ActorState:
    __slots__ = ("key", "name", "cls", "args", "options", "status", "worker", "restarts",
                 "holders", "waiters", "checkpoint", "reason", "error")

    def __init__(self, key: str, name: str | None, cls: Any, args: Any, options: dict):
        self.key, self.name, self.cls, self.args = key, name, cls, args
        self.options = options            # max_restarts, resources, workers, lifetime, ...
        self.status = "pending"
        self.worker: WorkerState | None = None
        self.restarts = 0
        self.holders: set[Any] = set()    # clients holding a handle
        self.waiters: list[tuple[Any, int]] = []    # (destination, req_id) of lookups
        self.checkpoint: Any = None       # the last state the actor saved
        self.reason = ""                  # why it is dead
        self.error: Any = None            # [exception payload, traceback] if __init__ raised

    def describe(self) -> dict:
        return {"key": self.key, "name": self.name, "status": self.status,
                "address": self.worker.address if self.worker else None,
                "restarts": self.restarts, "reason": self.reason,
                "detached": self.options.get("lifetime") == "detached",
                "methods": self.options.get("methods", []),
                "cls_name": self.options.get("cls_name"), "error": self.error}


class ActorRegistry:
    """Every actor the scheduler knows, by key and by name."""

    def __init__(self, workers: dict[str, WorkerState], placement: Placement,
                 send: Callable[[Any, list], None]):
        self.workers = workers                 # shared with the state: address → record
        self.placement = placement
        self._send = send
        self.actors: dict[str, ActorState] = {}
        self.names: dict[str, str] = {}        # name → key
        self.stopping: dict = {}               # key → (worker, resources) until stopped

    # --- creating and placing --------------------------------------------------------
    def create_named_actor(self, holder: Any, key: str, name: str, cls: Any, args: Any,
                           options: dict, get_if_exists: bool) -> dict:
        """Create ``name`` unless a live actor has it: then return that one (Ray's
        get-or-create, atomic here) or, without ``get_if_exists``, an ``error``."""
        other = self.actors.get(self.names.get(name, ""))
        if other is not None and other.status != "dead":
            if not get_if_exists:
                return {"refused": f"an actor named {name!r} already exists ({other.key}): "
                                 f"use get_actor({name!r}), or get_if_exists=True"}
            other.holders.add(holder)
            return {**other.describe(), "created": False}
        self.create_actor(holder, key, name, cls, args, options)
        return {**self.actors[key].describe(), "created": True}

    def create_actor(self, holder: Any, key: str, name: str | None, cls: Any, args: Any,
                     options: dict) -> None:
        if key in self.actors:
            self.actors[key].holders.add(holder)
            return
        if cls is None:          # a holder for an actor that is gone: nothing to hold
            return
        actor = self.actors[key] = ActorState(key, name, cls, args, options)
        actor.holders.add(holder)
        if name is not None:
            other = self.actors.get(self.names.get(name, ""))
            if other is not None and other.status != "dead":
                self._actor_dead(actor, f"an actor named {name!r} already exists "
                                        f"({other.key}); use get_actor({name!r})")
                return
            self.names[name] = key
        self._place_actor(actor)

    def _place_actor(self, actor: ActorState) -> None:
        resources = actor.options.get("resources")
        restrict = set(actor.options.get("workers") or ()) or None
        place = self.placement
        fits = [ws for ws in self.workers.values()
                if not ws.retiring and place.fits(ws, resources, restrict)]
        if not fits:
            why = place.unsatisfiable(resources, restrict)
            if why:
                self._actor_dead(actor, f"actor {actor.key} cannot be placed: {why}")
            else:
                actor.status = "pending"       # a worker that fits may join or free up
            return
        ws = min(fits, key=lambda w: (len(w.actors), len(w.processing) / w.nthreads))
        place.acquire(ws, resources)
        ws.actors.add(actor.key)
        actor.worker, actor.status = ws, "starting"
        self._send(ws, [Msg.HOST_ACTOR, actor.key, actor.name, actor.cls, actor.args,
                        {"max_concurrency": actor.options.get("max_concurrency", 1)},
                        actor.restarts, actor.checkpoint])

    def place_pending(self) -> None:
        """A worker joined or freed resources: place the actors still waiting."""
        for actor in list(self.actors.values()):
            if actor.status == "pending":
                self._place_actor(actor)

    def actor_started(self, ws: WorkerState, key: str) -> None:
        actor = self.actors.get(key)
        if actor is None or actor.worker is not ws:
            self._send(ws, [Msg.DROP_ACTOR, key, "no longer wanted"])
            return
        actor.status = "alive"
        self._answer_waiters(actor)

    def actor_failed(self, ws: WorkerState, key: str, exception: Any, tb: str) -> None:
        """Its constructor raised: the actor is dead, with that error for every caller."""
        actor = self.actors.get(key)
        if actor is None or actor.worker is not ws:
            return
        actor.error = [exception, tb]
        self._unhost(actor)
        self._actor_dead(actor, f"actor {key}'s constructor raised")

    def actor_checkpoint(self, key: str, payload: Any) -> None:
        actor = self.actors.get(key)
        if actor is not None:
            actor.checkpoint = payload

    # --- finding -----------------------------------------------------------------------
    def lookup_actor(self, dest: Any, req_id: int, key_or_name: str) -> None:
        """Answer once the actor is up (or dead); callers wait through restarts."""
        key = key_or_name if key_or_name in self.actors else self.names.get(key_or_name)
        actor = self.actors.get(key) if key else None
        if actor is None:
            self._send(dest, [Msg.REPLY, req_id, True, {
                "key": None, "status": "dead", "address": None, "error": None,
                "reason": f"no actor is named or keyed {key_or_name!r}"}])
        elif actor.status in ("alive", "dead"):
            self._send(dest, [Msg.REPLY, req_id, True, actor.describe()])
        else:
            actor.waiters.append((dest, req_id))

    def _answer_waiters(self, actor: ActorState) -> None:
        waiters, actor.waiters = actor.waiters, []
        for dest, req_id in waiters:
            self._send(dest, [Msg.REPLY, req_id, True, actor.describe()])

    # --- ending ------------------------------------------------------------------------
    def _unhost(self, actor: ActorState) -> None:
        ws = actor.worker
        if ws is not None:
            ws.actors.discard(actor.key)
            self.placement.release(ws, actor.options.get("resources"))
            actor.worker = None

    def _actor_dead(self, actor: ActorState, reason: str) -> None:
        actor.status, actor.reason = "dead", reason
        self._answer_waiters(actor)

    def kill_actor(self, key: str, reason: str = "killed") -> bool:
        actor = self.actors.get(key)
        if actor is None or actor.status == "dead":
            return False
        ws = actor.worker
        if ws is not None:
            # Its resources are freed when the worker says its threads ended.
            ws.actors.discard(key)
            actor.worker = None
            self.stopping[key] = (ws, actor.options.get("resources"))
            self._send(ws, [Msg.DROP_ACTOR, key, reason])
        self._actor_dead(actor, f"actor {key} was {reason}")
        return True

    def actor_stopped(self, ws: WorkerState, key: str) -> None:
        """A dropped actor's threads on ``ws`` have all ended: free its resources."""
        entry = self.stopping.get(key)
        if entry is not None and entry[0] is ws:
            del self.stopping[key]
            self.placement.release(ws, entry[1])
            self.placement.fill(ws)

    def release_actor(self, holder: Any, key: str) -> None:
        actor = self.actors.get(key)
        if actor is None:
            return
        actor.holders.discard(holder)
        if actor.holders:
            return
        if actor.options.get("lifetime") != "detached":
            self.kill_actor(key, "released: no handle to it was left")
        # Nobody can ask about it any more: a dead actor's record (its class and
        # arguments, which may be large) must not stay for the scheduler's lifetime.
        self.forget_dead(key)

    def release_all_of(self, holder: ClientState) -> None:
        for key in [a.key for a in self.actors.values() if holder in a.holders]:
            self.release_actor(holder, key)

    def lost_with(self, ws: WorkerState) -> None:
        """``ws`` is gone: re-create its actors elsewhere while restarts remain."""
        for key in [k for k, (w, _) in self.stopping.items() if w is ws]:
            del self.stopping[key]
        for key in list(ws.actors):
            actor = self.actors[key]
            self._unhost(actor)
            limit = actor.options.get("max_restarts", 0)
            if actor.restarts < limit:
                actor.restarts += 1
                actor.status = "restarting"
                self._place_actor(actor)
            else:
                self._actor_dead(actor, f"the worker hosting actor {key} died "
                                        f"({ws.exit or 'connection lost'}) and its "
                                        f"max_restarts ({limit}) are used up")

    def listing(self) -> list[dict]:
        return [a.describe() for a in self.actors.values() if a.status != "dead"]

    def forget_dead(self, key: str) -> None:
        """Drop the record of a dead actor nobody holds any more."""
        actor = self.actors.get(key)
        if actor is not None and actor.status == "dead" and not actor.holders:
            del self.actors[key]
            if actor.name is not None and self.names.get(actor.name) == key:
                del self.names[actor.name]
