"""What each field of each message may be: checked on arrival, before any handler runs.

The dispatcher (:class:`~mpnet.comm.dispatch.Dispatcher`) checks a message's field count
against its handler and then every field against :data:`FIELDS`: a field of the wrong
type or out of range is a :class:`~mpnet.errors.ProtocolError` that closes that one
connection and reaches no state (a ``resources={"GPU": "1"}`` parked in the scheduler
would make every later placement raise). msgpack decodes to exact builtin types, so the
checks compare exact types: ``True`` is not an int here, ``1`` is not a bool.

A message with no entry (a type added without one) is checked for its field count
only; :func:`test_every_message_has_fields` in the tests keeps the table complete.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import ProtocolError
from .protocol import Msg
from .serialize import Payload

__all__ = ["FIELDS", "check_fields", "record", "Check"]

Check = Callable[[Any], bool]


def _exact(*types: type) -> Check:
    allowed = frozenset(types)
    return lambda v: type(v) in allowed


ANY: Check = lambda v: True          # noqa: E731  (opaque values: errors, results)
STR = _exact(str)
INT = _exact(int)
BOOL = _exact(bool)
DICT = _exact(dict)
PAYLOAD = _exact(Payload)
NONE = _exact(type(None))


def _finite(v: Any) -> bool:
    return type(v) is int or (type(v) is float and math.isfinite(v))


NUM: Check = _finite


def nonneg(check: Check) -> Check:
    return lambda v: check(v) and v >= 0


def opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check) -> Check:
    return lambda v: type(v) is list and all(check(x) for x in v)


def dict_of(key: Check, value: Check) -> Check:
    return lambda v: type(v) is dict and all(key(k) and value(x) for k, x in v.items())


def pair(first: Check, second: Check) -> Check:
    return lambda v: type(v) is list and len(v) == 2 and first(v[0]) and second(v[1])


def one_of(*values: Any) -> Check:
    allowed = frozenset(values)
    return lambda v: type(v) is str and v in allowed


def record(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    """A dict with these keys (others allowed: newer peers may send more)."""
    optional = optional or {}

    def check(v: Any) -> bool:
        if type(v) is not dict:
            return False
        if any(k not in v or not c(v[k]) for k, c in required.items()):
            return False
        return all(c(v[k]) for k, c in optional.items() if k in v)
    return check


KEYS = list_of(STR)
AMOUNTS = dict_of(STR, nonneg(NUM))                 # resources: {"GPU": 1}
HOLDERS = list_of(pair(STR, list_of(STR)))         # [[key, [worker address, ...]], ...]

WORKER_INFO = record(
    {"address": STR, "nthreads": nonneg(INT)},
    {"name": opt(STR), "pid": nonneg(INT), "nanny": opt(STR), "resources": AMOUNTS,
     "memory_limit": nonneg(INT), "versions": dict_of(STR, ANY)})
# What a worker's heartbeat says (mpnet.worker.worker.Worker.metrics): the status view,
# /metrics and the monitor's rates do arithmetic on these, so a wrong type parked here
# would break them for everyone until the next good heartbeat.
HEARTBEAT_METRICS = record({}, {
    "memory": nonneg(INT), "cpu": nonneg(NUM), "paused": BOOL, "executing": nonneg(INT),
    "ready": nonneg(INT), "stored": nonneg(INT), "nbytes": nonneg(INT), "time": NUM,
    "actors": dict_of(STR, pair(nonneg(INT), nonneg(INT)))})
ACTOR_OPTIONS = record({}, {
    "max_restarts": INT, "max_task_retries": INT, "max_concurrency": nonneg(INT),
    "resources": opt(AMOUNTS), "workers": opt(KEYS), "lifetime": opt(STR),
    "methods": KEYS, "cls_name": opt(STR)})

#: Msg → the checks of its fields, in order (trailing optional fields may be absent)
FIELDS: dict[int, tuple[Check, ...]] = {
    Msg.REPLY: (INT, BOOL, ANY),
    Msg.REGISTER_CLIENT: (INT, STR, dict_of(STR, ANY)),
    Msg.SUBMIT: (STR, PAYLOAD, PAYLOAD, KEYS, INT, nonneg(INT), opt(AMOUNTS), opt(KEYS)),
    Msg.RELEASE: (KEYS,),
    Msg.CANCEL: (KEYS, STR),
    Msg.SCATTER: (INT, list_of(pair(STR, PAYLOAD)), opt(KEYS)),
    Msg.RUN: (INT, PAYLOAD, opt(KEYS)),
    Msg.RUN_ON_SCHEDULER: (INT, PAYLOAD),
    Msg.INFO: (INT,),
    Msg.WHO_HAS: (INT, KEYS),
    Msg.REGISTER_PLUGIN: (INT, one_of("scheduler", "worker", "nanny"), STR, PAYLOAD),
    Msg.RESTART: (INT, opt(KEYS), nonneg(NUM)),
    Msg.RETIRE_WORKERS: (INT, KEYS),
    Msg.CREATE_ACTOR: (STR, opt(STR), opt(PAYLOAD), opt(PAYLOAD), ACTOR_OPTIONS),
    Msg.LOOKUP_ACTOR: (INT, STR),
    Msg.RELEASE_ACTOR: (STR,),
    Msg.KILL_ACTOR: (INT, STR),
    Msg.LIST_ACTORS: (INT,),
    Msg.HOST_ACTOR: (STR, opt(STR), PAYLOAD, PAYLOAD, dict_of(STR, ANY), nonneg(INT), ANY),
    Msg.DROP_ACTOR: (STR, STR),
    Msg.ACTOR_STARTED: (STR,),
    Msg.ACTOR_FAILED: (STR, ANY, STR),
    Msg.ACTOR_CHECKPOINT: (STR, ANY),
    Msg.ACTOR_CALL: (INT, STR, STR, ANY, ANY, one_of("call", "getattr")),
    Msg.ACTOR_RESULT: (INT, BOOL, ANY, opt(STR)),
    Msg.TASK_DONE: (STR, opt(PAYLOAD), STR, nonneg(INT)),
    Msg.TASK_ERRED: (STR, ANY, STR),
    Msg.TASK_CANCELLED: (STR, STR),
    Msg.TASK_LOST: (STR, STR, STR),
    Msg.COMPUTE: (STR, PAYLOAD, PAYLOAD, HOLDERS, ANY),
    Msg.FREE: (KEYS,),
    Msg.STORE: (INT, STR, PAYLOAD),
    Msg.CLOSE_WORKER: (STR, STR),
    Msg.PLUGIN: (STR, PAYLOAD),
    Msg.PLUGIN_INSTALL: (INT, STR, PAYLOAD),
    Msg.ACQUIRE: (INT, HOLDERS),
    Msg.REGISTER_WORKER: (INT, WORKER_INFO),
    Msg.TASK_FINISHED: (STR, opt(PAYLOAD), nonneg(INT)),
    Msg.TASK_FAILED: (STR, ANY, STR),
    Msg.MISSING_DATA: (STR, STR, STR),
    Msg.HEARTBEAT: (HEARTBEAT_METRICS,),
    Msg.GOODBYE: (STR,),
    Msg.REGISTER_NANNY: (INT, record({"address": STR})),
    Msg.WORKER_EXITED: (STR, opt(INT), opt(INT), STR, BOOL, opt(KEYS)),
    Msg.RESTART_WORKER: (STR,),
    Msg.GET_DATA: (INT, KEYS),
    Msg.PUT_DATA: (INT, list_of(pair(STR, PAYLOAD))),
    Msg.PUT_DONE: (INT, STR, list_of(pair(STR, nonneg(INT)))),
    Msg.PLACE: (INT, list_of(nonneg(INT)), opt(KEYS), BOOL),
    Msg.STATUS: (INT, dict_of(STR, ANY)),
    Msg.TASK_STREAM: (INT, NUM, opt(nonneg(INT))),
    Msg.GET_LOGS: (INT, one_of("scheduler", "workers"), nonneg(INT), opt(KEYS)),
    Msg.LOGS: (INT, nonneg(INT)),
    Msg.TRY_CANCEL: (INT, KEYS),
    Msg.TASK_RELEASED: (STR,),
    Msg.CREATE_NAMED_ACTOR: (INT, STR, STR, PAYLOAD, PAYLOAD, ACTOR_OPTIONS, BOOL),
    Msg.ACTOR_STOPPED: (STR,),
}


def check_fields(msg: list, checks: tuple[Check, ...] | None = None) -> None:
    """Raise :class:`ProtocolError` naming the first field of ``msg`` that is wrong."""
    if checks is None:
        checks = FIELDS.get(msg[0])
        if checks is None:
            return
    for i, (check, value) in enumerate(zip(checks, msg[1:])):
        if not check(value):
            shown = repr(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            raise ProtocolError(f"malformed {Msg(msg[0]).name} message: field {i + 1} is "
                                f"{type(value).__name__} {shown}, which it may not be")
