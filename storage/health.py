"""Loss accounting and daemon liveness: receiver_gaps and daemon_status."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, desc, insert, or_, select, update

from storage.db import dialect_insert
from storage.schema import daemon_status, receiver_gaps


def record_gap(conn: Connection, *, source: str, reason: str, started_at: datetime, ended_at: datetime | None,
               now: datetime, events_lost: int | None = None, detail: str = "", daemon_id: str | None = None) -> int:
    """Record an interval in which events may have been lost; returns the gap's id.

    A gap that lost nothing (``events_lost`` 0: a durable source, the broker kept its events) needs no
    reconciliation and is recorded as done; any other waits for the leader (``unreconciled_gaps``).
    """
    result = conn.execute(insert(receiver_gaps).values(
        source=source, reason=reason, started_at=started_at, ended_at=ended_at,
        events_lost=events_lost, detail=detail[:2000], recorded_at=now, daemon_id=daemon_id,
        reconciled_at=now if events_lost == 0 else None,
    ))
    return result.inserted_primary_key[0]


def unreconciled_gaps(conn: Connection, since: datetime, limit: int = 100) -> list[dict[str, Any]]:
    """Gaps recorded since ``since`` (by any daemon) that no leader has reconciled yet, oldest first."""
    c = receiver_gaps.c
    query = (select(c.id, c.source, c.reason, c.started_at, c.ended_at, c.events_lost, c.daemon_id)
             .where(c.reconciled_at.is_(None), c.recorded_at >= since,
                    or_(c.events_lost.is_(None), c.events_lost != 0))
             .order_by(c.id).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]


def set_reconciled(conn: Connection, gap_id: int, count: int, now: datetime, daemon_id: str | None) -> bool:
    """Mark the gap reconciled, in the transaction that stores what the result backend said.

    False when another daemon marked it first: the caller rolls back, so a gap's answer is stored
    once. (On PostgreSQL a second UPDATE waits for the first to commit, then finds reconciled_at set.)
    """
    result = conn.execute(update(receiver_gaps)
                          .where(receiver_gaps.c.id == gap_id, receiver_gaps.c.reconciled_at.is_(None))
                          .values(reconciled=count, reconciled_at=now, reconciled_by=daemon_id))
    return result.rowcount == 1


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
