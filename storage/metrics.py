"""What the metrics endpoint reads: run_totals, workers, dead letters, alerts, daemon status.

Every read here is over a table whose size does not grow with the history (run_totals has a
row per task name, worker, queue and exception type), so a scrape costs the same on 10M runs
as on 1,000. task_runs is never read.
"""
from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from storage.rollups import TOTALS_KEY, TOTALS_MEASURES
from storage.schema import alerts, daemon_status, dead_letters, run_totals, workers


def read_totals(conn: Connection) -> list[dict[str, Any]]:
    cols = [run_totals.c[c] for c in TOTALS_KEY + TOTALS_MEASURES]
    return [dict(r) for r in conn.execute(select(*cols)).mappings()]


def read_workers(conn: Connection) -> list[dict[str, Any]]:
    q = select(workers.c.hostname, workers.c.status, workers.c.active, workers.c.last_heartbeat)
    return [dict(r) for r in conn.execute(q.order_by(workers.c.hostname)).mappings()]


def open_dead_letters(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(dead_letters).where(dead_letters.c.state == "open")).scalar_one()


def alerts_by_status(conn: Connection) -> dict[str, int]:
    q = select(alerts.c.status, func.count()).group_by(alerts.c.status)
    return {status: n for status, n in conn.execute(q).all()}


def running_daemons(conn: Connection) -> list[dict[str, Any]]:
    """Daemons that have not stopped, with their counters decoded."""
    q = select(daemon_status).where(daemon_status.c.stopped_at.is_(None)).order_by(daemon_status.c.daemon_id)
    out = []
    for row in conn.execute(q).mappings():
        d = dict(row)
        d["counters"] = orjson.loads(d["counters"]) if d["counters"] else {}
        out.append(d)
    return out
