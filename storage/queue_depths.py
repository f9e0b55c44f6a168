"""Queue depths over time: the leader's samples of messages waiting per queue, and their history per step."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import Connection, insert

from storage.schema import queue_depths
from storage.sql import bind, dialect, epoch_seconds, fetch, to_utc


def record_depths(conn: Connection, at: datetime, rows: Iterable[dict[str, Any]]) -> int:
    """One sample per queue at ``at``: ``rows`` as monitor.broker.queues.queue_depths returns them
    (messages None: the broker has no such queue). Returns how many were stored."""
    values = [{"sampled_at": at, "queue": r["name"][:255], "messages": r.get("messages"),
               "consumers": r.get("consumers")} for r in rows]
    if values:
        conn.execute(insert(queue_depths), values)
    return len(values)


def depth_history(conn, end: datetime, step: timedelta, steps: int, limit: int = 20) -> dict[str, Any]:
    """Per queue sampled in the ``steps`` steps of ``step`` ending at ``end``, the most messages
    waiting in any sample of each step (None: no sample in that step), and the newest sample.

    Peaks, not means: a backlog that came and went within a step still shows. At most ``limit``
    queues, the deepest first.
    """
    db = dialect(conn)
    since = end - step * steps
    index = f"({epoch_seconds(db, 'sampled_at')} - :since_s) / :step_s"
    rows = fetch(conn, f"SELECT queue, {index} AS i, max(messages) AS peak, count(*) AS samples FROM queue_depths "
                       "WHERE sampled_at >= :since AND sampled_at < :end GROUP BY queue, 2",
                 {"since": bind(db, since), "end": bind(db, end), "since_s": int(since.timestamp()),
                  "step_s": int(step.total_seconds())}, {})
    series: dict[str, list[int | None]] = {}
    for r in rows:
        i = int(r["i"])
        if 0 <= i < steps:
            points = series.setdefault(r["queue"], [None] * steps)
            points[i] = None if r["peak"] is None else int(r["peak"])
    latest = fetch(conn, "SELECT max(sampled_at) AS at FROM queue_depths WHERE sampled_at >= :since",
                   {"since": bind(db, since)}, {"at": to_utc})[0]["at"]
    deepest = sorted(series, key=lambda q: (-max((v for v in series[q] if v is not None), default=-1), q))[:limit]
    return {"starts": [since + step * i for i in range(steps)], "step_seconds": step.total_seconds(),
            "queues": {q: series[q] for q in deepest}, "latest": latest, "more": max(len(series) - limit, 0)}
