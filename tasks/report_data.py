"""What a report says about a period: from the rollups (storage.rollup_stats, and
storage.rollup_dims for exceptions and workers), ``task_runs`` only for the ragged edges;
``exact`` reads ``task_runs`` for everything.

A task belongs to the period in which taskmon first saw it (``seen_at``, indexed). Counts and
averages from the rollups equal the exact ones; the slowest tasks' maximum runtime is then the
histogram bucket it falls in (``max_runtime`` its upper bound, ``max_runtime_bounds`` both).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from storage.rollup_dims import window_counts
from storage.rollup_stats import bucket_bounds, window_sums
from storage.rollups import RUNTIME_BUCKETS
from storage.schema import task_runs
from storage.stats import read_snapshot
from tasks.periods import Period

# FAILURE from celery; TIMEOUT and LOST are what the detectors record for tasks no event ended.
FAILED_STATES = ("FAILURE", "TIMEOUT", "LOST")
TOP = 10


def build_report(conn: Connection, period: Period, exact: bool = False) -> dict[str, Any]:
    """The report of a period: what report_data says, with the period in its time zone."""
    fmt = lambda moment: moment.astimezone(period.tz).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    return {
        "kind": period.kind,
        "period": {"label": period.label, "start": fmt(period.start), "end": fmt(period.end),
                   "timezone": period.tz.key},
        **report_data(conn, period.start, period.end, exact=exact),
    }


def report_data(conn: Connection, start: datetime, end: datetime, top: int = TOP, exact: bool = False) -> dict[str, Any]:
    with read_snapshot(conn):
        data = _exact_data(conn, start, end, top) if exact else _rollup_data(conn, start, end, top)
        data["top_exceptions"] = _exceptions(conn, start, end, top, exact)
        data["workers"] = _workers(conn, start, end, top, exact)
    return data


def _in_period(start: datetime, end: datetime):
    c = task_runs.c
    return and_(c.seen_at >= start, c.seen_at < end)


def _failed():
    return func.sum(case((task_runs.c.state.in_(FAILED_STATES), 1), else_=0))


def _rows(conn: Connection, query, top: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(query.limit(top)).mappings()]


def _exception_counts(conn: Connection, start: datetime, end: datetime, exact: bool) -> dict[tuple, int]:
    """{(exception type, task name, state): runs} of the period: exception_rollups_hourly for its
    whole hours, or task_runs alone when ``exact``. NULLs are ''."""
    if not exact:
        return window_counts(conn, "exception", start, end, present="exception_type")
    c = task_runs.c
    rows = conn.execute(select(c.exception_type, c.name, c.state, func.count())
                        .where(_in_period(start, end)).group_by(c.exception_type, c.name, c.state))
    return {(e or "", n or "", s): k for e, n, s, k in rows}


def _worker_counts(conn: Connection, start: datetime, end: datetime, exact: bool) -> dict[tuple, int]:
    """{(worker, state): runs} of the period, as _exception_counts reads them."""
    if not exact:
        return window_counts(conn, "worker", start, end)
    c = task_runs.c
    rows = conn.execute(select(c.worker, c.state, func.count()).where(_in_period(start, end)).group_by(c.worker, c.state))
    return {(w or "", s): k for w, s, k in rows}


def _exceptions(conn: Connection, start: datetime, end: datetime, top: int, exact: bool) -> list[dict[str, Any]]:
    """The exception types of the most failed runs, with how many task names raised each."""
    counts: dict[str, int] = defaultdict(int)
    names: dict[str, set] = defaultdict(set)
    for (exception, name, state), runs in _exception_counts(conn, start, end, exact).items():
        if exception and state in FAILED_STATES and runs:
            counts[exception] += runs
            if name:
                names[exception].add(name)
    ranked = sorted(counts, key=lambda e: (-counts[e], e))[:top]
    return [{"exception": e, "count": counts[e], "tasks": len(names[e])} for e in ranked]


def _workers(conn: Connection, start: datetime, end: datetime, top: int, exact: bool) -> list[dict[str, Any]]:
    """The workers that ran the most tasks, with their failures."""
    tasks: dict[str, int] = defaultdict(int)
    failures: dict[str, int] = defaultdict(int)
    for (worker, state), runs in _worker_counts(conn, start, end, exact).items():
        if worker and runs:
            tasks[worker] += runs
            failures[worker] += runs if state in FAILED_STATES else 0
    ranked = sorted(tasks, key=lambda w: (-tasks[w], w))[:top]
    return [{"worker": w, "tasks": tasks[w], "failures": failures[w]} for w in ranked]


def _totals(states: dict[str, int], retries: int) -> dict[str, Any]:
    succeeded = states.get("SUCCESS", 0)
    failures = sum(states.get(s, 0) for s in FAILED_STATES)
    return {
        "tasks": sum(states.values()),
        "succeeded": succeeded,
        "failed": failures,
        "retries": int(retries),
        "failure_rate": _rate(failures, succeeded + failures),
    }


def _exact_data(conn: Connection, start: datetime, end: datetime, top: int) -> dict[str, Any]:
    c = task_runs.c
    in_period, failed, runs = _in_period(start, end), _failed(), func.count()
    states = {state: n for state, n in conn.execute(
        select(c.state, runs).where(in_period).group_by(c.state).order_by(c.state))}
    retries = conn.execute(select(func.coalesce(func.sum(c.retries), 0)).where(in_period)).scalar_one()
    top_failing = _rows(conn, select(c.name.label("task"), runs.label("runs"), failed.label("failures"))
                        .where(in_period).group_by(c.name).having(failed > 0)
                        .order_by(failed.desc(), c.name.asc().nulls_last()), top)
    for row in top_failing:
        row["failure_rate"] = _rate(row["failures"], row["runs"])
    slowest = _rows(conn, select(c.name.label("task"), func.count(c.runtime).label("runs"),
                                 func.avg(c.runtime).label("avg_runtime"), func.max(c.runtime).label("max_runtime"))
                    .where(in_period, c.runtime.is_not(None)).group_by(c.name)
                    .order_by(func.avg(c.runtime).desc(), c.name.asc().nulls_last()), top)
    for row in slowest:
        row["avg_runtime"], row["max_runtime"] = round(row["avg_runtime"], 3), round(row["max_runtime"], 3)
    queues = _rows(conn, select(c.queue, runs.label("tasks"), failed.label("failures"))
                   .where(in_period, c.queue.is_not(None)).group_by(c.queue).order_by(runs.desc(), c.queue), top)
    return {"totals": _totals(states, retries), "states": states, "top_failing": top_failing,
            "slowest": slowest, "queues": queues}


def _name_order(name: str | None) -> tuple[bool, str]:
    return name is None, name or ""


def _rollup_data(conn: Connection, start: datetime, end: datetime, top: int) -> dict[str, Any]:
    """States, retries, failing and slowest tasks and queues from the rollups of [start, end)."""
    states: dict[str, int] = defaultdict(int)
    retries = 0
    names: dict[str | None, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    queues: dict[str, dict[str, int]] = defaultdict(lambda: {"tasks": 0, "failures": 0})
    for (name, queue, state), m in window_sums(conn, start, end, ("name", "queue", "state")).items():
        runs = int(m["runs"])
        if not runs:
            continue
        failed = runs if state in FAILED_STATES else 0
        states[state] += runs
        retries += int(m["retries"])
        per = names[name or None]  # '' in the rollups: a run without a name
        per["runs"] += runs
        per["failures"] += failed
        for k in ("runtime_n", "runtime_sum", *RUNTIME_BUCKETS):
            per[k] += m[k]
        if queue:
            queues[queue]["tasks"] += runs
            queues[queue]["failures"] += failed
    failing = sorted((n for n in names if names[n]["failures"]), key=lambda n: (-names[n]["failures"], _name_order(n)))
    top_failing = [{"task": n, "runs": int(names[n]["runs"]), "failures": int(names[n]["failures"]),
                    "failure_rate": _rate(int(names[n]["failures"]), int(names[n]["runs"]))} for n in failing[:top]]
    timed = {n: names[n]["runtime_sum"] / names[n]["runtime_n"] for n in names if names[n]["runtime_n"]}
    slowest = []
    for n in sorted(timed, key=lambda n: (-timed[n], _name_order(n)))[:top]:
        lower, upper = bucket_bounds([int(names[n][b]) for b in RUNTIME_BUCKETS])
        slowest.append({"task": n, "runs": int(names[n]["runtime_n"]), "avg_runtime": round(timed[n], 3),
                        "max_runtime": upper, "max_runtime_bounds": [lower, upper]})
    busiest = sorted(queues, key=lambda q: (-queues[q]["tasks"], q))[:top]
    return {"totals": _totals(states, retries), "states": dict(sorted(states.items())),
            "top_failing": top_failing, "slowest": slowest,
            "queues": [{"queue": q, **queues[q]} for q in busiest]}


def _rate(part: int, whole: int) -> float | None:
    """A fraction to four places; None when there is nothing to divide by."""
    return round(part / whole, 4) if whole else None
