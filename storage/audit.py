"""The audit log: who changed the schedule, what a cleanup deleted."""
from __future__ import annotations

import getpass
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from storage.schema import audit_logs


def current_actor() -> str:
    """The OS user running the command, else "unknown" (a container without a passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record(conn: Connection, now: datetime, action: str, target: str | None = None,
           detail: dict[str, Any] | None = None, actor: str | None = None) -> None:
    conn.execute(audit_logs.insert().values(
        created_at=now, actor=actor or current_actor(), action=action, target=target,
        detail=json.dumps(detail, sort_keys=True, default=str) if detail is not None else None,
    ))


def recent(conn: Connection, limit: int = 50, *, since: datetime | None = None, actor: str | None = None,
           action: str | None = None) -> list[dict[str, Any]]:
    """Newest first, optionally only at or after ``since``, by ``actor``, of ``action``."""
    query = select(audit_logs)
    if since is not None:
        query = query.where(audit_logs.c.created_at >= since)
    if actor:
        query = query.where(audit_logs.c.actor == actor)
    if action:
        query = query.where(audit_logs.c.action == action)
    rows = conn.execute(query.order_by(audit_logs.c.created_at.desc(), audit_logs.c.id.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]
