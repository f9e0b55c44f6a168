"""Loss accounting and daemon liveness: receiver_gaps and daemon_status."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, desc, insert, select, update

from storage.db import dialect_insert
from storage.schema import daemon_status, receiver_gaps


def record_gap(conn: Connection, *, source: str, reason: str, started_at: datetime, ended_at: datetime | None,
               now: datetime, events_lost: int | None = None, detail: str = "") -> int:
    """Record an interval in which events may have been lost; returns the gap's id."""
    result = conn.execute(insert(receiver_gaps).values(
        source=source, reason=reason, started_at=started_at, ended_at=ended_at,
        events_lost=events_lost, detail=detail[:2000], recorded_at=now,
    ))
    return result.inserted_primary_key[0]


def set_reconciled(conn: Connection, gap_id: int, count: int) -> None:
    conn.execute(update(receiver_gaps).where(receiver_gaps.c.id == gap_id).values(reconciled=count))


def list_gaps(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(select(receiver_gaps).order_by(desc(receiver_gaps.c.started_at)).limit(limit)).mappings()
    return [dict(r) for r in rows]


def write_status(conn: Connection, *, daemon_id: str, hostname: str, pid: int, sources: str,
                 started_at: datetime, heartbeat_at: datetime, counters: dict, stopped_at: datetime | None = None,
                 source_states: dict[str, dict] | None = None, writer_lag: float | None = None,
                 feed_since: datetime | None = None, stop_reason: str | None = None,
                 role: str | None = None) -> None:
    """Insert or refresh the daemon's row; ``source_states``: {source: {"connected", "since", ...}}."""
    values = dict(daemon_id=daemon_id, hostname=hostname, pid=pid, sources=sources, started_at=started_at,
                  heartbeat_at=heartbeat_at, stopped_at=stopped_at, counters=orjson.dumps(counters).decode(),
                  source_states=None if source_states is None else orjson.dumps(source_states).decode(),
                  writer_lag=writer_lag, feed_since=feed_since, stop_reason=stop_reason, role=role)
    stmt = dialect_insert(conn)(daemon_status).values(**values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[daemon_status.c.daemon_id],
        set_={k: stmt.excluded[k] for k in ("heartbeat_at", "stopped_at", "counters", "sources", "source_states",
                                            "writer_lag", "feed_since", "stop_reason", "role",
                                            "started_at", "pid", "hostname")},
    ))


def latest_status(conn: Connection) -> dict[str, Any] | None:
    """The newest heartbeat, counters and source_states decoded (source_states None from older daemons)."""
    row = conn.execute(select(daemon_status).order_by(desc(daemon_status.c.heartbeat_at)).limit(1)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["counters"] = orjson.loads(out["counters"])
    out["source_states"] = orjson.loads(out["source_states"]) if out["source_states"] else None
    return out
