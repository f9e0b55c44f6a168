"""Runs per time step over a window: the overview's throughput and failure-rate charts.

The overview reads the rollups (storage/rollups.py): steps that start and end on whole minutes
(or whole hours) are sums of run_rollups (or run_rollups_hourly) rows, so a 30-day chart reads a
few rows per hour and task name, not every run. finished_series reads the runs themselves.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from storage.rollups import LEVELS, RUNTIME_BUCKETS, quantile
from storage.sql import bind, dialect, epoch_seconds, fetch

MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)


def _window(end: datetime, step: timedelta) -> str:
    """The rollup level whose rows make up steps of ``step`` ending at ``end``: hours when both are whole hours."""
    if step <= timedelta(0) or step % MINUTE or end != end.replace(second=0, microsecond=0):
        raise ValueError(f"the rollups answer steps of whole minutes ending on a whole minute; got {step} ending {end}")
    return "hour" if end.minute == 0 and step % HOUR == timedelta(0) else "minute"


def rollup_series(conn, end: datetime, step: timedelta, steps: int) -> dict[str, Any]:
    """finished_series's answer for the ``steps`` steps of ``step`` that end at ``end``, from the rollups.

    ``end`` and ``step`` must be whole minutes (whole hours read the hourly level): then every
    step is a sum of whole rollup rows and the counts are exact. The rollups hold the current
    minute and hour as they fill, so a step that ends after now counts what has run so far.
    """
    w = window_rollups(conn, end, step, steps)
    return {k: w[k] for k in ("starts", "step_seconds", "completed", "failed")}


def window_rollups(conn, end: datetime, step: timedelta, steps: int) -> dict[str, Any]:
    """rollup_series's steps, and per task name its runs by state and runtime p95, in one read of the rollups.

    The p95 is the upper bound of the histogram bucket that holds it (None: above the last bound),
    as storage.rollup_stats reports it; the overview needs nothing else per name.
    """
    table, column = LEVELS[_window(end, step)]
    db = dialect(conn)
    since = end - step * steps
    index = f"({epoch_seconds(db, column)} - :since_s) / :step_s"  # integers: exact, no rounding at a boundary
    buckets = ", ".join(f"sum({c}) AS {c}" for c in RUNTIME_BUCKETS)
    sql = (f"SELECT {index} AS i, name, state, sum(runs) AS runs, {buckets} FROM {table} "
           f"WHERE {column} >= :since AND {column} < :end GROUP BY 1, 2, 3")
    rows = fetch(conn, sql, {"since": bind(db, since), "end": bind(db, end), "since_s": int(since.timestamp()),
                             "step_s": int(step.total_seconds())}, {})
    completed, failed = [0] * steps, [0] * steps
    names: dict[str | None, dict[str, Any]] = {}
    for r in rows:
        i, runs = int(r["i"]), int(r["runs"] or 0)
        if not 0 <= i < steps or not runs:
            continue
        if r["state"] in ("SUCCESS", "FAILURE"):
            completed[i] += runs
            failed[i] += runs if r["state"] == "FAILURE" else 0
        entry = names.setdefault(r["name"] or None, {"states": {}, "buckets": [0] * len(RUNTIME_BUCKETS)})
        entry["states"][r["state"]] = entry["states"].get(r["state"], 0) + runs
        entry["buckets"] = [a + int(r[c] or 0) for a, c in zip(entry["buckets"], RUNTIME_BUCKETS)]
    tasks = []
    for name in sorted(names, key=lambda n: (n is None, n or "")):
        q = quantile(names[name]["buckets"], 0.95)
        tasks.append({"name": name, "states": names[name]["states"], "total": sum(names[name]["states"].values()),
                      "runtime_p95": None if q is None or math.isinf(q[2]) else q[2]})
    return {"starts": [since + step * i for i in range(steps)], "step_seconds": step.total_seconds(),
            "completed": completed, "failed": failed, "tasks": tasks}


def rollup_state_counts(conn) -> dict[str, int]:
    """storage.history.state_counts's answer (runs per state, whole history) from the hourly rollups."""
    rows = fetch(conn, "SELECT state, sum(runs) AS n FROM run_rollups_hourly GROUP BY state HAVING sum(runs) > 0", {}, {})
    return {r["state"]: int(r["n"]) for r in sorted(rows, key=lambda r: r["state"])}


def finished_series(conn, since: datetime, until: datetime, steps: int) -> dict[str, Any]:
    """Completed (SUCCESS + FAILURE) and failed runs first seen in each of ``steps`` equal steps of [since, until)."""
    db = dialect(conn)
    step = (until - since).total_seconds() / steps
    if db == "sqlite":  # CAST truncates, which floors the offsets here (never negative)
        index = "CAST((julianday(seen_at) - julianday(:since)) * 86400.0 / :step AS INTEGER)"
    else:  # PostgreSQL's CAST rounds: floor first
        index = "CAST(floor(extract(epoch from (seen_at - :since)) / :step) AS INTEGER)"
    sql = (f"SELECT {index} AS i, "
           "sum(CASE WHEN state = 'FAILURE' THEN 1 ELSE 0 END) AS failed, count(*) AS completed "
           "FROM task_runs WHERE seen_at >= :since AND seen_at < :until AND state IN ('SUCCESS', 'FAILURE') "
           "GROUP BY 1")
    rows = fetch(conn, sql, {"since": bind(db, since), "until": bind(db, until), "step": step}, {})
    completed, failed = [0] * steps, [0] * steps
    for r in rows:
        i = min(max(int(r["i"]), 0), steps - 1)
        completed[i] += int(r["completed"])
        failed[i] += int(r["failed"])
    starts = [since + timedelta(seconds=step * i) for i in range(steps)]
    return {"starts": starts, "step_seconds": step, "completed": completed, "failed": failed}


def queues_seen(conn, since: datetime) -> list[str]:
    """The queues of the runs first seen since ``since`` (through the seen_at index, not the whole history)."""
    db = dialect(conn)
    rows = fetch(conn, "SELECT DISTINCT queue FROM task_runs WHERE seen_at >= :since AND queue IS NOT NULL",
                 {"since": bind(db, since)}, {})
    return sorted(r["queue"] for r in rows)


def worker_counts(conn, since: datetime) -> dict[str, dict[str, int]]:
    """{worker: {"succeeded": n, "failed": n, "total": n}} of the runs first seen since ``since``."""
    db = dialect(conn)
    rows = fetch(conn, "SELECT worker, sum(CASE WHEN state = 'SUCCESS' THEN 1 ELSE 0 END) AS succeeded, "
                       "sum(CASE WHEN state = 'FAILURE' THEN 1 ELSE 0 END) AS failed, count(*) AS total "
                       "FROM task_runs WHERE seen_at >= :since AND worker IS NOT NULL GROUP BY worker",
                 {"since": bind(db, since)}, {})
    return {r["worker"]: {k: int(r[k]) for k in ("succeeded", "failed", "total")} for r in rows}
