"""alert_groups and alerts: group state, the notification history and its delivery status.

Delivery is claimed atomically (pending/failed -> sending), so a task sent twice for the same
alert (a daemon re-send racing a retry) mails it once.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from sqlalchemy import Connection, and_, desc, or_, select, update

from storage.db import dialect_insert
from storage.schema import alert_groups, alerts

DELIVERY_STATES = ("pending", "sending", "sent", "failed")
GROUP_COLUMNS = ("rule", "status", "task_name", "exception_type", "target", "since", "first_seen", "last_seen",
                 "total_count", "pending_count", "notified_at", "last_task_id", "message", "resolved_at")
# A claim older than this (a worker that died while sending) may be taken again.
STALE_CLAIM = timedelta(minutes=10)


def open_groups(conn: Connection) -> list[dict[str, Any]]:
    """Groups that are watching or open (resolved ones are history)."""
    query = select(alert_groups).where(alert_groups.c.status != "resolved")
    return [dict(r) for r in conn.execute(query).mappings()]


def save_groups(conn: Connection, groups: Iterable[Mapping[str, Any]], now: datetime) -> None:
    rows = [{"group_key": g["group_key"], **{c: g.get(c) for c in GROUP_COLUMNS}, "updated_at": now} for g in groups]
    if not rows:
        return
    stmt = dialect_insert(conn)(alert_groups)
    sets = {c: stmt.excluded[c] for c in (*GROUP_COLUMNS, "updated_at")}
    conn.execute(stmt.on_conflict_do_update(index_elements=[alert_groups.c.group_key], set_=sets), rows)


def insert_alert(conn: Connection, row: Mapping[str, Any]) -> int:
    values = dict(row)
    values["detail"] = json.dumps(values.get("detail") or {}, sort_keys=True, default=str)
    return conn.execute(alerts.insert().values(**values).returning(alerts.c.id)).scalar_one()


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["detail"] = json.loads(out.get("detail") or "{}")
    return out


def get_alert(conn: Connection, alert_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
    return _decode(row) if row is not None else None


def claim(conn: Connection, alert_id: int, now: datetime) -> bool:
    """Take an alert for sending; False when it is sent, or being sent by someone else."""
    result = conn.execute(
        update(alerts)
        .where(alerts.c.id == alert_id,
               or_(alerts.c.status.in_(("pending", "failed")),
                   and_(alerts.c.status == "sending", alerts.c.updated_at < now - STALE_CLAIM)))
        .values(status="sending", attempts=alerts.c.attempts + 1, updated_at=now)
    )
    return result.rowcount == 1


def mark_sent(conn: Connection, alert_id: int, now: datetime) -> None:
    conn.execute(update(alerts).where(alerts.c.id == alert_id).values(
        status="sent", sent_at=now, last_error=None, next_attempt_at=None, updated_at=now))


def mark_failed(conn: Connection, alert_id: int, error: str, now: datetime, next_attempt_at: datetime | None) -> None:
    conn.execute(update(alerts).where(alerts.c.id == alert_id, alerts.c.status == "sending").values(
        status="failed", last_error=error, next_attempt_at=next_attempt_at, updated_at=now))


def due_for_resend(conn: Connection, now: datetime, limit: int = 100) -> list[int]:
    """Pending or failed alerts whose next attempt is overdue: their task was lost, or never sent."""
    query = (select(alerts.c.id)
             .where(alerts.c.status.in_(("pending", "failed")), alerts.c.next_attempt_at <= now)
             .order_by(alerts.c.next_attempt_at).limit(limit))
    return [r[0] for r in conn.execute(query)]


def set_next_attempt(conn: Connection, ids: Iterable[int], at: datetime) -> None:
    ids = list(ids)
    if ids:
        conn.execute(update(alerts).where(alerts.c.id.in_(ids), alerts.c.status.in_(("pending", "failed")))
                     .values(next_attempt_at=at))


def list_alerts(conn: Connection, *, since: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    query = select(alerts).order_by(desc(alerts.c.created_at), desc(alerts.c.id))
    if since is not None:
        query = query.where(alerts.c.created_at >= since)
    if limit:
        query = query.limit(limit)
    return [_decode(r) for r in conn.execute(query).mappings()]
