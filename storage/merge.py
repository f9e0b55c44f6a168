"""The merge rules of task runs, in Python: one row per task whatever order its events arrive in.

A row is a partial view of one task (what some events said about it). Two rows are merged with
celery's state precedence (celery/events/state.py): a state that logically happens-before the
stored one only fills fields that are still empty; RETRY is decided by time, because a task goes
RETRY -> RECEIVED -> STARTED again under the same id, except that SUCCESS and FAILURE always beat
it: no attempt follows them, so a task-retried stamped later comes from an earlier attempt whose
worker was slow to report it (a pool child descheduled between publishing the retry and
returning to the parent, while another child already ran the retry).

storage.runs holds the SQL twin of these rules (the upsert); tests hold the two to each other.
This module imports no SQLAlchemy: the daemon's helper process merges with it (monitor.ingest.prepare).
"""
from __future__ import annotations

from typing import Any, Mapping

# Higher wins. celery.states.PRECEDENCE, strongest first, is
# SUCCESS, FAILURE, <custom>, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING.
# taskmon adds two states (detector verdicts), placed so that real events override detector verdicts:
# - LOST (set by the detector: its worker died) sits just above PENDING: any later event of
#   the task (a redelivery's RECEIVED, a late SUCCESS) replaces it; a stale task-sent does not
#   (RETRY and REJECTED, ordered by time, replace it when they are later than the verdict).
# - TIMEOUT (a task-failed with a time-limit error, or the detector: running over its limit)
#   sits above STARTED, so a duplicate task-started cannot revive it, and below REVOKED,
#   FAILURE and SUCCESS, so the way an over-limit task really ended replaces the verdict.
STATE_RANK: dict[str, int] = {
    "PENDING": 1,
    "LOST": 2,
    "RETRY": 3,
    "REJECTED": 4,
    "RECEIVED": 5,
    "STARTED": 6,
    "TIMEOUT": 7,
    "REVOKED": 8,
    "FAILURE": 10,
    "SUCCESS": 11,
}
CUSTOM_RANK = 9  # states celery does not know, as in celery.states.precedence
# The same states as users see them listed: celery's (celery.states.ALL_STATES), then taskmon's verdicts.
CELERY_STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "REJECTED")
TASKMON_STATES = ("LOST", "TIMEOUT")
# States that end one attempt of a task that may have another under the same id: ordered by time.
TIME_ORDERED = ("RETRY", "REJECTED")
# Outcomes no attempt follows: a RETRY, whatever its time, belongs to an earlier attempt.
LAST_ATTEMPT = ("SUCCESS", "FAILURE")
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED", "TIMEOUT", "LOST"})
# Fields that describe how an attempt ended; they follow the state that wins.
OUTCOME_FIELDS = ("result", "exception", "exception_type", "traceback", "finished_at", "runtime")
OUTCOME_STATES = frozenset({"SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED", "TIMEOUT", "LOST"})
# A truncated repr is never longer than the complete one: the longer text is the more exact.
LONGEST_FIELDS = ("args", "kwargs")
# Per-attempt times: the latest attempt is the one a row describes.
LATEST_FIELDS = ("sent_at", "received_at", "started_at", "queue_wait")
# Receipts of the latest attempt (see merge_receipts): merged as one unit.
RECEIPT_FIELDS = ("received_attempt", "received_first_at", "redelivered")


def state_rank(state: str) -> int:
    return STATE_RANK.get(state, CUSTOM_RANK)


def new_wins(old_state: str, old_at, new_state: str, new_at) -> bool:
    """Whether a newly seen state replaces the stored one (the Python twin of the SQL rule)."""
    if old_state == "RETRY" and new_state in LAST_ATTEMPT:
        return True
    if new_state == "RETRY" and old_state in LAST_ATTEMPT:
        return False
    if old_state in TIME_ORDERED or new_state in TIME_ORDERED:
        return old_at is None or (new_at is not None and new_at >= old_at)
    return state_rank(new_state) >= state_rank(old_state)


# How merge_run combines each column (a dict lookup per column instead of a chain of tests).
_OTHER, _OUTCOME, _LONGEST, _LATEST, _SEEN, _RETRIES, _TRUNCATED, _UPDATED, _RECEIPT = range(9)
_MERGE_KIND: dict[str, int] = {
    **{col: _RECEIPT for col in RECEIPT_FIELDS},
    **{col: _OUTCOME for col in OUTCOME_FIELDS},
    **{col: _LONGEST for col in LONGEST_FIELDS},
    **{col: _LATEST for col in LATEST_FIELDS},
    "seen_at": _SEEN,
    "retries": _RETRIES,
    "truncated": _TRUNCATED,
    "updated_at": _UPDATED,
}


def merge_run(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two partial rows of one task exactly as ``upsert_runs`` does in SQL.

    A missing key means NULL; only the keys present in either row are visited, so merging
    the small rows events make is cheap.
    """
    if old is None:
        out = dict(new)
        out["queue_wait"] = queue_wait(out)
        return out
    return merge_into(dict(old), new)


def merge_into(row: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``merge_run(row, new)`` written into ``row`` (which the caller owns) and returned."""
    merge_fields(row, new)
    row["queue_wait"] = queue_wait(row)
    return row


def merge_fields(row: dict[str, Any], new: Mapping[str, Any]) -> None:
    """``merge_into`` without the derived ``queue_wait``, which ``prepare_runs`` derives anyway.

    Only ``new``'s columns are visited: a column only ``row`` has keeps its value, except
    where the rules say otherwise (an outcome that ``new`` replaces; retries and truncated,
    which are never NULL). The per-batch merge calls this once for nearly every event.
    """
    old_state, new_state = row["state"], new["state"]
    wins = new_wins(old_state, row.get("state_at"), new_state, new.get("state_at"))
    if "received_attempt" in new or "received_attempt" in row or "redelivered" in new or "redelivered" in row:
        row.update(merge_receipts(row, new))  # otherwise none of the three is known: NULL, NULL, false
    # Whose outcome (result, exception, ...) the row ends up with; None: the two are coalesced.
    outcome = _NEW if wins and new_state in OUTCOME_STATES else (
        _OLD if not wins and old_state in OUTCOME_STATES else None)
    if outcome is _NEW:
        for col in OUTCOME_FIELDS:
            if col not in new and col in row:
                row[col] = None
    if "retries" not in new and "retries" in row:
        row["retries"] = row["retries"] or 0
    if "truncated" not in new and "truncated" in row:
        row["truncated"] = bool(row["truncated"])
    kinds = _MERGE_KIND
    for col, value in new.items():
        kind = kinds.get(col, _OTHER)
        if kind == _RECEIPT:
            continue  # merged above, as one unit
        prev = row.get(col)
        if kind == _OTHER:
            if wins:
                row[col] = value if value is not None else prev
            else:
                row[col] = prev if prev is not None else value
        elif kind == _OUTCOME:
            if outcome is _NEW:
                row[col] = value
            elif outcome is None:
                row[col] = prev if prev is not None else value
            else:  # _OLD: the stored outcome stays
                row[col] = prev
        elif kind == _LATEST:
            row[col] = _greatest(prev, value)
        elif kind == _LONGEST:
            row[col] = _longest(value, prev) if wins else _longest(prev, value)
        elif kind == _SEEN:
            row[col] = _least(prev, value)
        elif kind == _RETRIES:
            row[col] = max(prev or 0, value or 0)
        elif kind == _TRUNCATED:
            row[col] = bool(prev) or bool(value)
        else:  # _UPDATED
            row[col] = value or prev


_NEW, _OLD = "new", "old"


def merge_receipts(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The receipts of the latest attempt: (retries of the attempt, its first receive, redelivered).

    A task-received row carries (retries, its time, False). The higher attempt wins outright;
    two receipts of the same attempt keep the earliest time and are a redelivery when their
    times differ. Duplicated events (same time) are not. Order-independent by construction.
    """
    a, b = old.get("received_attempt"), new.get("received_attempt")
    if a is None and b is None:
        return {"redelivered": bool(old.get("redelivered")) or bool(new.get("redelivered"))}
    if a is None or (b is not None and b > a):
        src = new
    elif b is None or a > b:
        src = old
    else:
        first_a, first_b = old.get("received_first_at"), new.get("received_first_at")
        return {"received_attempt": a, "received_first_at": _least(first_a, first_b),
                "redelivered": bool(old.get("redelivered")) or bool(new.get("redelivered"))
                or (first_a is not None and first_b is not None and first_a != first_b)}
    return {"received_attempt": src.get("received_attempt"), "received_first_at": src.get("received_first_at"),
            "redelivered": bool(src.get("redelivered"))}


def queue_wait(row: Mapping[str, Any]) -> float | None:
    """Seconds (to the millisecond) from the latest send to the start on a worker; None if either is unknown."""
    sent, started = row.get("sent_at"), row.get("started_at")
    if sent is None or started is None:
        return None
    return round(max((started - sent).total_seconds(), 0.0), 3)


def _coalesce(a, b):
    return a if a is not None else b


def _longest(a, b):
    if a is None or b is None:
        return _coalesce(a, b)
    return b if len(b) > len(a) else a


def _greatest(a, b):
    if a is None or b is None:
        return _coalesce(a, b)
    return max(a, b)


def _least(a, b):
    if a is None or b is None:
        return _coalesce(a, b)
    return min(a, b)
