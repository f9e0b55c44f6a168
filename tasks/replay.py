"""Replay a dead task with its exact name, args, kwargs and queue, and revoke tasks, through Celery.

Exact args: the durable relay stores complete reprs; pub/sub events carry celery's ``argsrepr``,
cut at 1024 characters (``'xxx...'``, ``, ...``) and at 3 levels of nesting (``[...]``). A
stored repr is replayed only when it parses as a complete literal with no sign of either cut,
and holds no secret taskmon redacted (``'***'``: the value was never stored, and a replay with
it would run the task with the wrong credentials). Anything else is refused, with the reason.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from tasks.redact import REDACTED
from storage.errors import first_line

ARGSREPR_MAX = 1024  # celery.app.amqp.AMQP.argsrepr_maxsize / kwargsrepr_maxsize
RELAY_HINT = "for exact replays install the durable relay in the app: from tasks.relay import install; install(app)"


class NotReplayable(ValueError):
    """Why a task cannot be replayed exactly, in one line."""


@dataclass(frozen=True)
class ReplayPlan:
    task_id: str  # the original
    name: str
    args: tuple
    kwargs: dict
    queue: str


def _cut(value: Any, long_text: bool) -> bool:
    """Whether a parsed repr shows celery's truncation: ``...`` (Ellipsis), or a string cut with '...'."""
    if value is Ellipsis:
        return True
    if isinstance(value, (str, bytes)):
        return long_text and value.endswith("..." if isinstance(value, str) else b"...")
    if isinstance(value, dict):
        return any(_cut(k, long_text) or _cut(v, long_text) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_cut(v, long_text) for v in value)
    return False


def parse_exact(text: str | None, field: str, kind: type) -> Any:
    """A stored args/kwargs repr -> the value, or NotReplayable saying why it is not exact."""
    if text is None:
        raise NotReplayable(f"taskmon has no {field} for it (neither its task-sent nor its task-received event was stored)")
    if REDACTED.strip("'") in text:
        raise NotReplayable(f"its {field} hold secrets taskmon redacted ('***') and never stores; "
                            f"send it again from the application")
    if "... [truncated " in text:
        raise NotReplayable(f"its {field} were cut to field_max_bytes when stored; raise field_max_bytes, and "
                            f"{RELAY_HINT}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        if "..." in text:
            raise NotReplayable(f"its {field} are celery's truncated argsrepr, not the complete values; "
                                f"{RELAY_HINT}") from None
        raise NotReplayable(f"its {field} are not Python literals ({text[:40]!r}...): only literal arguments "
                            f"can be replayed") from None
    if _cut(value, len(text) >= ARGSREPR_MAX):
        raise NotReplayable(f"its {field} are celery's truncated argsrepr (cut at {ARGSREPR_MAX} characters or "
                            f"3 levels of nesting), not the complete values; {RELAY_HINT}")
    if kind is tuple and isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, kind) or (kind is dict and not all(isinstance(k, str) for k in value)):
        raise NotReplayable(f"its {field} are not a {kind.__name__} of arguments: {text[:60]!r}")
    return value


def plan_replay(row: Mapping[str, Any], queue: str | None = None) -> ReplayPlan:
    """What a replay of the task_runs ``row`` sends; NotReplayable when it cannot be sent exactly."""
    if not row.get("name"):
        raise NotReplayable("its task name is unknown (no task-sent or task-received event was stored)")
    target = queue or row.get("queue")
    if not target:
        raise NotReplayable("its queue is unknown (no task-sent event was stored); name one with --queue")
    args = parse_exact(row.get("args"), "args", tuple)
    kwargs = parse_exact(row.get("kwargs"), "kwargs", dict)
    return ReplayPlan(row["task_id"], row["name"], args, kwargs, target)


def plan_many(letters: Iterable[Mapping[str, Any]], runs: Mapping[str, Mapping | None],
              queue: str | None = None) -> tuple[list[ReplayPlan], list[tuple[str, str]]]:
    """Plans for dead letters (oldest death first), and (task id, why) for those that cannot be replayed."""
    plans, refused = [], []
    for letter in sorted(letters, key=lambda d: d["dead_at"]):
        row = runs.get(letter["task_id"])
        try:
            if row is None:
                raise NotReplayable("its run is no longer in the history")
            plans.append(plan_replay(row, queue))
        except NotReplayable as exc:
            refused.append((letter["task_id"], str(exc)))
    return plans, refused


def replay_run(plan: ReplayPlan, new_id: str, now: datetime) -> dict[str, Any]:
    """The replay's task_runs row until its own events arrive."""
    return {"task_id": new_id, "name": plan.name, "state": "PENDING", "state_at": now, "args": repr(plan.args),
            "kwargs": repr(plan.kwargs), "queue": plan.queue, "routing_key": plan.queue, "seen_at": now,
            "sent_at": now, "updated_at": now}


class BrokerError(RuntimeError):
    """The broker refused or could not be reached; the message says which and what to do."""


def celery_client(broker_url: str):
    """A plain Celery app on the broker: sends replays (with task-sent events) and control commands."""
    from tasks.client import client_app

    return client_app(broker_url, name="taskmon-control", task_send_sent_event=True)


def _broker_error(app, exc: Exception) -> BrokerError:
    from tasks.redact import mask_url

    reason = first_line(exc)
    return BrokerError(f"cannot reach the broker at {mask_url(app.conf.broker_url)}: {reason}; "
                       f"start it or set TASKMON_BROKER_URL")


_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def send_replay(app, plan: ReplayPlan) -> str:
    """Send the task again (a new task id); return the id."""
    from kombu.exceptions import EncodeError, OperationalError

    try:
        return app.send_task(plan.name, args=plan.args, kwargs=plan.kwargs, queue=plan.queue,
                             retry=True, retry_policy=_RETRY).id
    except EncodeError as exc:
        raise BrokerError(f"cannot send {plan.task_id} again: its args do not serialize as JSON ({exc})") from None
    except (OperationalError, OSError) as exc:
        raise _broker_error(app, exc) from None


class RecordError(RuntimeError):
    """The replay was sent but could not be recorded; the message has the new task id."""


def replay(engine, app, plan: ReplayPlan) -> str:
    """Send ``plan`` and record the new run, linked to the original, and the dead letter replayed; the new id."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.deadletters import record_replay

    new_id = send_replay(app, plan)
    now = datetime.now(timezone.utc)
    try:
        with engine.begin() as conn:
            record_replay(conn, plan.task_id, replay_run(plan, new_id, now), now)
    except SQLAlchemyError as exc:  # the task is sent: say so, and with which id
        reason = first_line(exc)
        raise RecordError(f"replayed {plan.task_id} as {new_id}, but could not record it: {reason}") from None
    return new_id


def revoke(app, task_id: str, *, terminate: bool, signal: str = "SIGTERM") -> None:
    """Broadcast a revoke to every worker (with terminate: kill the process running it)."""
    from kombu.exceptions import OperationalError

    try:
        app.control.revoke(task_id, terminate=terminate, signal=signal)
    except (OperationalError, OSError) as exc:
        raise _broker_error(app, exc) from None
