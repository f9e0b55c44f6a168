"""What a report says about a period, computed in SQL from ``task_runs``.

A task belongs to the period in which taskmon first saw it (``seen_at``, indexed).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, distinct, func, select

from storage.schema import task_runs
from tasks.periods import Period

# FAILURE from celery; TIMEOUT and LOST are what the detectors record for tasks no event ended.
FAILED_STATES = ("FAILURE", "TIMEOUT", "LOST")
TOP = 10


def build_report(conn: Connection, period: Period) -> dict[str, Any]:
    """The report of a period: what report_data says, with the period in its time zone."""
    fmt = lambda moment: moment.astimezone(period.tz).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    return {
        "kind": period.kind,
        "period": {"label": period.label, "start": fmt(period.start), "end": fmt(period.end),
                   "timezone": period.tz.key},
        **report_data(conn, period.start, period.end),
    }


def report_data(conn: Connection, start: datetime, end: datetime, top: int = TOP) -> dict[str, Any]:
    c = task_runs.c
    in_period = and_(c.seen_at >= start, c.seen_at < end)
    failed = func.sum(case((c.state.in_(FAILED_STATES), 1), else_=0))
    runs = func.count()

    states = {state: n for state, n in conn.execute(
        select(c.state, runs).where(in_period).group_by(c.state).order_by(c.state))}
    retries = conn.execute(select(func.coalesce(func.sum(c.retries), 0)).where(in_period)).scalar_one()
    succeeded = states.get("SUCCESS", 0)
    failures = sum(states.get(s, 0) for s in FAILED_STATES)

    def rows(query) -> list[dict[str, Any]]:
        return [dict(r) for r in conn.execute(query.limit(top)).mappings()]

    top_failing = rows(
        select(c.name.label("task"), runs.label("runs"), failed.label("failures")).where(in_period)
        .group_by(c.name).having(failed > 0).order_by(failed.desc(), c.name))
    for row in top_failing:
        row["failure_rate"] = _rate(row["failures"], row["runs"])
    top_exceptions = rows(
        select(c.exception_type.label("exception"), runs.label("count"), func.count(distinct(c.name)).label("tasks"))
        .where(in_period, c.state.in_(FAILED_STATES), c.exception_type.is_not(None))
        .group_by(c.exception_type).order_by(runs.desc(), c.exception_type))
    slowest = rows(
        select(c.name.label("task"), func.count(c.runtime).label("runs"), func.avg(c.runtime).label("avg_runtime"),
               func.max(c.runtime).label("max_runtime"))
        .where(in_period, c.runtime.is_not(None)).group_by(c.name)
        .order_by(func.avg(c.runtime).desc(), c.name))
    for row in slowest:
        row["avg_runtime"], row["max_runtime"] = round(row["avg_runtime"], 3), round(row["max_runtime"], 3)
    busiest = {}
    for col in ("queue", "worker"):
        busiest[col] = rows(
            select(c[col].label(col), runs.label("tasks"), failed.label("failures"))
            .where(in_period, c[col].is_not(None)).group_by(c[col]).order_by(runs.desc(), c[col]))

    return {
        "totals": {
            "tasks": sum(states.values()),
            "succeeded": succeeded,
            "failed": failures,
            "retries": int(retries),
            "failure_rate": _rate(failures, succeeded + failures),
        },
        "states": states,
        "top_failing": top_failing,
        "top_exceptions": top_exceptions,
        "slowest": slowest,
        "queues": busiest["queue"],
        "workers": busiest["worker"],
    }


def _rate(part: int, whole: int) -> float | None:
    """A fraction to four places; None when there is nothing to divide by."""
    return round(part / whole, 4) if whole else None
