"""Watching several daemons on one PostgreSQL history: their status rows, the leader, a wait that says what it waited for."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from storage.cluster import all_status


def statuses(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {row["daemon_id"]: row for row in all_status(conn)}


def leader_of(engine) -> str | None:
    """The one live daemon whose status row says it leads, or None."""
    now = datetime.now(timezone.utc)
    alive = [r for r in statuses(engine).values() if r["role"] == "leader" and r["stopped_at"] is None
             and (now - r["heartbeat_at"]).total_seconds() < 3]
    return alive[0]["daemon_id"] if len(alive) == 1 else None


def follower_besides(engine, leader: str) -> str | None:
    return next((i for i, r in statuses(engine).items() if i != leader and r["role"] == "follower"), None)


def wait_until(check, what, timeout=60.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s: {what}")
