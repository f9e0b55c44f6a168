"""Runs per time step over a window: the overview's throughput and failure-rate charts."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from storage.sql import bind, dialect, fetch


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
