"""Timeouts: a task STARTED longer ago than its limit (per task name, else task_time_limit).

Tasks that failed with celery's own soft or hard time-limit error are TIMEOUT already when their
task-failed event is stored (monitor.ingest.events), so only the ones still "running" are found here:
a worker without time limits, a hung process, a lost task-failed event.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Iterable, Mapping

from monitor.detectors import TaskVerdict, iso


class Limits:
    """Seconds each task name may run: an exact name, else the first matching glob, else the default."""

    def __init__(self, default: float, overrides: Iterable[tuple[str, float]] = ()):
        self.default = default
        self.exact: dict[str, float] = {}
        self.globs: list[tuple[str, float]] = []
        for pattern, seconds in overrides:
            if any(c in pattern for c in "*?["):
                self.globs.append((pattern, seconds))
            else:
                self.exact[pattern] = seconds

    def for_name(self, name: str | None) -> float:
        if name in self.exact:
            return self.exact[name]
        for pattern, seconds in self.globs:
            if name is not None and fnmatchcase(name, pattern):
                return seconds
        return self.default

    def shortest(self) -> float:
        return min([self.default, *self.exact.values(), *(s for _, s in self.globs)])


def running_over_limit(rows: Iterable[Mapping], now: datetime, limits: Limits) -> list[TaskVerdict]:
    out = []
    for row in rows:
        started = row.get("started_at")
        if row["state"] != "STARTED" or started is None:
            continue
        limit = limits.for_name(row.get("name"))
        deadline = started + timedelta(seconds=limit)
        if now < deadline:
            continue
        out.append(TaskVerdict(
            task_id=row["task_id"], name=row.get("name"), state="TIMEOUT", at=deadline,
            exception_type="TimeLimitExceeded",
            message=f"still running {limit:g}s after it started at {iso(started)} (taskmon's limit for this task)",
            seen_state=row["state"], seen_state_at=row.get("state_at"),
        ))
    return out
