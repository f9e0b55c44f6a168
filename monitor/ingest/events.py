"""Celery event dicts -> partial rows for task_runs and workers (pure functions, no I/O).

Event timestamps are epoch seconds from the sender's clock (time.time()); they are UTC
whatever ``utcoffset`` says, so taskmon ignores that field.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, NamedTuple

from tasks.redact import redact_repr, truncate

# task event type -> state, as celery.events.state.TASK_EVENT_TO_STATE
TASK_EVENT_STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
WORKER_EVENTS = {"worker-online": "online", "worker-heartbeat": "online", "worker-offline": "offline"}
FINISH_EVENTS = {"task-succeeded", "task-failed", "task-retried", "task-revoked", "task-rejected"}
TEXT_FIELDS = ("args", "kwargs", "result", "exception", "traceback")
# A task that failed with one of these hit its soft or hard time limit: state TIMEOUT, not FAILURE.
TIME_LIMIT_ERRORS = frozenset({"TimeLimitExceeded", "SoftTimeLimitExceeded"})
REDACTED_FIELDS = frozenset({"args", "kwargs"})
SHORT_FIELDS = ("name", "queue", "routing_key", "exchange", "root_id", "parent_id")
SHORT_MAX = 255


class Malformed(ValueError):
    """An event taskmon cannot use; ``reason`` is the counter it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Update(NamedTuple):  # a NamedTuple: made once per event, three times cheaper than a dataclass
    kind: str  # "task" or "worker"
    key: str  # task_id or hostname
    row: dict[str, Any]  # a fresh dict: whoever receives it may keep it and merge into it


def _timestamp(event: dict) -> datetime:
    ts = event.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise Malformed("bad_field_type", f"timestamp {ts!r}")
    try:
        return datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise Malformed("bad_field_type", f"timestamp {ts!r} out of range") from None


def _iso(value: Any, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Malformed("bad_field_type", f"{field} {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Malformed("bad_field_type", f"{field} {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; the same row must be storable on both databases.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _text(event: dict, field: str) -> str | None:
    value = event.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, (int, float, bool, list, dict)):
        return repr(value)  # some clients send structures instead of reprs
    raise Malformed("bad_field_type", field)


def _short(event: dict, field: str) -> str | None:
    value = event.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed("bad_field_type", field)
    return _clean(value[:SHORT_MAX])


def exception_type(exception: str | None) -> str | None:
    """'ValueError("boom")' -> 'ValueError'; celery puts the exception's repr in events."""
    if not exception:
        return None
    head = exception.split("(", 1)[0].strip()
    if head and len(head) <= SHORT_MAX and all(part.isidentifier() for part in head.split(".")):
        return head
    return None


def is_time_limit_error(exc_type: str | None) -> bool:
    return bool(exc_type) and exc_type.rsplit(".", 1)[-1] in TIME_LIMIT_ERRORS


def to_update(event: Any, field_max_bytes: int, redacted: dict[str, str] | None = None) -> Update:
    """Validate one event and turn it into a partial row; raise Malformed otherwise.

    The row holds only what the event says: a field the event lacks (or sends as None) is
    left out, which the merge and the upsert read as NULL (truncated: false). Fewer keys, less
    merging. ``redacted``: texts already redacted in this batch (task-received repeats the
    args and kwargs of task-sent), filled as it goes.
    """
    if not isinstance(event, dict):
        raise Malformed("not_dict", type(event).__name__)
    kind = event.get("type")
    if not isinstance(kind, str):
        raise Malformed("missing_type")
    if kind in WORKER_EVENTS:
        return _worker_update(kind, event)
    state = TASK_EVENT_STATES.get(kind)
    if state is None:
        raise Malformed("unknown_type", kind[:60])
    task_id = event.get("uuid")
    if not isinstance(task_id, str) or not task_id or len(task_id) > SHORT_MAX or "\x00" in task_id:
        raise Malformed("missing_uuid", kind)
    at = _timestamp(event)
    row: dict[str, Any] = {"task_id": task_id, "state": state, "state_at": at, "seen_at": at, "updated_at": at}
    truncated = False
    # The loops below run for every event: plain strings (the usual case) take the short way,
    # anything else goes through _text/_short, which convert or refuse it.
    for field in TEXT_FIELDS:
        value = event.get(field)
        if value is None:
            continue
        if value.__class__ is not str or "\x00" in value:
            value = _text(event, field)
        if field in REDACTED_FIELDS:
            if redacted is None:
                value = redact_repr(value)
            else:
                known = redacted.get(value)
                if known is None:
                    known = redacted[value] = redact_repr(value)
                value = known
        if field_max_bytes > 0 and len(value) * 4 > field_max_bytes:
            value, cut = truncate(value, field_max_bytes)
            truncated |= cut
        row[field] = value
    for field in SHORT_FIELDS:
        value = event.get(field)
        if value is None:
            pass
        elif value.__class__ is str and "\x00" not in value:
            row[field] = value if len(value) <= SHORT_MAX else value[:SHORT_MAX]
        else:
            row[field] = _short(event, field)
    if truncated:
        row["truncated"] = True
    if kind != "task-sent":  # task-sent's hostname is the client's, not a worker
        hostname = _short(event, "hostname")
        if hostname is not None:
            row["worker"] = hostname
    retries = event.get("retries")
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise Malformed("bad_field_type", "retries")
        row["retries"] = retries
    for field in ("eta", "expires"):
        value = event.get(field)
        if value is not None:
            value = _iso(value, field)
            if value is not None:
                row[field] = value
    if kind == "task-sent":
        row["sent_at"] = at
    elif kind == "task-received":
        row["received_at"] = at
        # Which attempt this receipt belongs to: a second receipt of one attempt is a redelivery.
        row["received_attempt"] = row.get("retries") or 0
        row["received_first_at"] = at
    elif kind == "task-started":
        row["started_at"] = at
    if kind in FINISH_EVENTS:
        row["finished_at"] = at
    if kind == "task-succeeded":
        runtime = event.get("runtime")
        if runtime is not None and (isinstance(runtime, bool) or not isinstance(runtime, (int, float))):
            raise Malformed("bad_field_type", "runtime")
        if runtime is not None:
            row["runtime"] = float(runtime)
    if kind in ("task-failed", "task-retried"):
        name = exception_type(row.get("exception"))
        if name is not None:
            row["exception_type"] = name
            if kind == "task-failed" and is_time_limit_error(name):
                row["state"] = "TIMEOUT"
    if kind == "task-rejected":
        # requeue=True: the broker delivers the task again, so it is not dead (see dead letters).
        row["exception"] = f"Reject(requeue={bool(event.get('requeue'))})"
        row["exception_type"] = "Reject"
    if kind == "task-revoked":
        flags = [f for f in ("terminated", "expired") if event.get(f)]
        signum = event.get("signum")
        detail = ", ".join(flags + ([f"signal {signum}"] if signum else []))
        row["exception"] = f"revoked ({detail})" if detail else "revoked"
        row["exception_type"] = "Revoked"
    return Update("task", task_id, row)


def _worker_update(kind: str, event: dict) -> Update:
    hostname = event.get("hostname")
    if not isinstance(hostname, str) or not hostname or len(hostname) > SHORT_MAX or "\x00" in hostname:
        raise Malformed("missing_hostname", kind)
    at = _timestamp(event)
    loadavg = event.get("loadavg")
    if isinstance(loadavg, (list, tuple)) and all(isinstance(x, (int, float)) for x in loadavg):
        loadavg = ",".join(f"{x:g}" for x in loadavg[:3])
    else:
        loadavg = None
    software = " ".join(str(event[k]) for k in ("sw_ident", "sw_ver", "sw_sys") if isinstance(event.get(k), str))
    row = {
        "hostname": hostname,
        "status": WORKER_EVENTS[kind],
        "last_heartbeat": at,
        "software": software[:SHORT_MAX] or None,
        "active": _count(event, "active"),
        "processed": _count(event, "processed"),
        "loadavg": loadavg,
        "freq": event.get("freq") if isinstance(event.get("freq"), (int, float)) else None,
        "first_seen": at,
        "updated_at": at,
    }
    return Update("worker", hostname, row)


def _count(event: dict, field: str) -> int | None:
    value = event.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed("bad_field_type", field)
    return value
