"""Reading the workers table: each worker's stored status, how stale its heartbeat is, and how busy.

Whether a worker is gone is not decided here: monitor.detectors.lost.worker_presence is the one
rule, and `taskmon workers` applies it to these rows.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from storage.schema import workers

WORKER_FIELDS = (
    "hostname", "state", "status", "last_heartbeat", "heartbeat_age", "active", "processed",
    "loadavg", "freq", "software", "first_seen",
)


def list_workers(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Every worker ever seen, by hostname, with its heartbeat's age at ``now`` (``state`` left for the caller)."""
    out = []
    for row in conn.execute(select(workers).order_by(workers.c.hostname)).mappings():
        age = (now - row["last_heartbeat"]).total_seconds() if row["last_heartbeat"] else None
        out.append({k: age if k == "heartbeat_age" else row.get(k) for k in WORKER_FIELDS})
    return out
