"""Stuck tasks: sent (or received and held) but not started within ``stuck_after`` seconds of
being due (sent, or its ETA/countdown if later); flagged once per send, without a state change,
since the task may still run.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable, Mapping

from monitor.detectors import StuckTask, iso

WAITING_STATES = ("PENDING", "RECEIVED")


def due_at(row: Mapping) -> datetime:
    """When the latest send of the task could have started."""
    sent = row.get("sent_at") or row["seen_at"]
    eta = row.get("eta")
    return max(sent, eta) if eta is not None else sent


def stuck_tasks(rows: Iterable[Mapping], now: datetime, *, after: float) -> list[StuckTask]:
    out = []
    for row in rows:
        if row["state"] not in WAITING_STATES:
            continue
        sent = row.get("sent_at") or row["seen_at"]
        started, flagged = row.get("started_at"), row.get("stuck_at")
        if (started is not None and started >= sent) or (flagged is not None and flagged >= sent):
            continue  # the latest send started, or is flagged already
        at = due_at(row) + timedelta(seconds=after)
        if now < at:
            continue
        where = f"on worker {row['worker']}" if row["state"] == "RECEIVED" and row.get("worker") else \
            f"in queue {row.get('queue') or '?'}"
        out.append(StuckTask(row["task_id"], row.get("name"), at, row.get("sent_at"),
                             f"not started {after:g}s after it was due at {iso(due_at(row))}, {where}"))
    return out
