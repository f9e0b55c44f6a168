"""Detectors: what no event says, decided from stored rows and ``now`` by pure functions.

``timeout``, ``lost`` and ``stuck`` find tasks and workers in trouble, ``deadletters`` decides
which tasks ended for good; ``sweep`` reads what they need, applies their findings and the dead
letters in one transaction, and is what the daemon's scheduler runs. Redeliveries are flagged
where both receipts meet, in the merge (storage.runs.merge_receipts).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class TaskVerdict:
    """A task's new state (LOST or TIMEOUT), applied only if the row still is as it was read."""

    task_id: str
    name: str | None
    state: str
    at: datetime  # when the condition began: becomes state_at
    exception_type: str
    message: str
    seen_state: str
    seen_state_at: datetime | None


@dataclass(frozen=True)
class StuckTask:
    task_id: str
    name: str | None
    at: datetime  # when it became overdue: becomes stuck_at
    seen_sent_at: datetime | None
    message: str


@dataclass(frozen=True)
class GoneWorker:
    hostname: str
    at: datetime  # when it counts as gone
    last_heartbeat: datetime
    grace: timedelta  # how long silence must last before the worker or one of its tasks counts as gone
    how: str  # "offline" (it said so), "silent" (heartbeats stopped) or "lost" (the sweep said so before)
    message: str


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
