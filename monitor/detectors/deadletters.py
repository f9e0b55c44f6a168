"""Which tasks ended for good, and why: the dead-letter rule.

A celery task that fails and will be retried sends task-retried (state RETRY, ``retries``
counted); task-failed is sent only when no retry is left. So FAILURE is final, like TIMEOUT,
LOST and a REJECTED without requeue. A task that comes back (a redelivery received again, a
late success) resolves its dead letter by itself; REVOKED keeps it (a person stopped the task).
"""
from __future__ import annotations

from typing import Any, Mapping

REASONS = {"FAILURE": "failure", "TIMEOUT": "timeout", "LOST": "lost", "REJECTED": "rejected"}
DEAD_STATES = tuple(REASONS)
KEEP_OPEN_STATES = DEAD_STATES + ("REVOKED",)
_TIME_FIELDS = ("seen_at", "sent_at", "received_at", "started_at", "finished_at")


def dead_letter(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The dead letter of a task_runs row, or None when the task is not dead."""
    reason = REASONS.get(row["state"])
    if reason is None:
        return None
    if row["state"] == "REJECTED" and (row.get("exception") or "").endswith("requeue=True)"):
        return None  # the broker delivers it again
    last_seen = max(t for t in (row.get(c) for c in _TIME_FIELDS) if t is not None)
    return {
        "task_id": row["task_id"], "name": row.get("name"), "reason": reason,
        "exception_type": row.get("exception_type"), "exception": row.get("exception"),
        "queue": row.get("queue"), "worker": row.get("worker"),
        "first_seen": row["seen_at"], "last_seen": last_seen, "dead_at": row.get("state_at") or last_seen,
    }


def recovery(state: str) -> str | None:
    """Why an open dead letter no longer holds when its task is now in ``state``; None if it still does."""
    if state in KEEP_OPEN_STATES:
        return None
    if state == "SUCCESS":
        return "recovered: the task succeeded after all"
    return f"recovered: a later event shows the task {state}"
