"""Is the daemon alive and the database reachable? (what `taskmon check` answers)"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from storage.db import DatabaseError, current_revision, head_revision, unreachable_message
from storage.health import latest_status


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str
    status: dict[str, Any] | None = field(default=None)


def check(engine: Engine, now: datetime, stale_seconds: float) -> Health:
    try:
        if current_revision(engine) != head_revision():
            return Health(False, "database schema is not current: run `taskmon db upgrade`")
        with engine.connect() as conn:
            status = latest_status(conn)
    except (SQLAlchemyError, DatabaseError) as exc:
        return Health(False, unreachable_message(engine, exc))
    if status is None:
        return Health(False, "no taskmon daemon has run against this database: start `taskmon run`")
    if status["stopped_at"] is not None:
        return Health(False, f"daemon {status['daemon_id']} stopped at {status['stopped_at'].isoformat()}", status)
    age = (now - status["heartbeat_at"]).total_seconds()
    if age > stale_seconds:
        return Health(False, f"daemon {status['daemon_id']} heartbeat is {age:.0f}s old (limit {stale_seconds:.0f}s)", status)
    return Health(True, f"daemon {status['daemon_id']} alive, heartbeat {age:.0f}s ago", status)
