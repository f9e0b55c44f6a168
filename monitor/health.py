"""Is the daemon alive, listening and keeping up, and the database reachable? (what `taskmon check` answers)

Judged from the newest heartbeat in daemon_status: fresh, every source connected (its thread
alive), and the writer not behind; a source down or the writer behind for longer than the stale
threshold fails, a shorter blip (a reconnect) does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from storage.db import DatabaseError, current_revision, head_revision, unreachable_message
from storage.cluster import all_status


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str
    status: dict[str, Any] | None = field(default=None)
    leader: str | None = None  # the cluster leader's daemon_id, when there is one (whatever this daemon's health)
    unknown_daemon: bool = False  # the daemon asked about has never run against this history


def check(engine: Engine, now: datetime, stale_seconds: float, daemon_id: str = "") -> Health:
    """This daemon (``daemon_id``; empty: the one with the newest heartbeat), and whether the cluster has a leader."""
    try:
        if current_revision(engine) != head_revision():
            return Health(False, "database schema is not current: run `taskmon db upgrade`")
        with engine.connect() as conn:
            rows = all_status(conn)
    except (SQLAlchemyError, DatabaseError) as exc:
        return Health(False, unreachable_message(engine, exc))
    if not rows:
        return Health(False, "no taskmon daemon has run against this database: start `taskmon run`")
    leader = cluster_leader(rows, now, stale_seconds)
    leader_id = leader["daemon_id"] if leader is not None else None
    status = next((r for r in rows if r["daemon_id"] == daemon_id), None) if daemon_id else rows[0]
    if status is None:
        return Health(False, f"no daemon {daemon_id} has run against this database (daemon_name)", leader=leader_id,
                      unknown_daemon=True)
    health = judge(status, now, stale_seconds)
    if not health.ok:
        return replace(health, leader=leader_id)
    if leader is None:
        return Health(False, f"{health.reason}, but no daemon leads the cluster: detectors, alerts and "
                             "reconciliation are not running", status)
    return Health(True, f"{health.reason}; cluster leader {leader_id}", status, leader_id)


def is_alive(status: dict[str, Any], now: datetime, stale_seconds: float) -> bool:
    return status["stopped_at"] is None and (now - status["heartbeat_at"]).total_seconds() <= stale_seconds


def cluster_leader(rows: list[dict[str, Any]], now: datetime, stale_seconds: float) -> dict[str, Any] | None:
    """The live daemon that says it leads; a row without a role (a daemon before the cluster schema) leads alone."""
    alive = [r for r in rows if is_alive(r, now, stale_seconds)]
    return next((r for r in alive if r.get("role") in ("leader", None)), None)


def judge(status: dict[str, Any], now: datetime, stale_seconds: float) -> Health:
    """The verdict on one daemon_status row at ``now``."""
    daemon = f"daemon {status['daemon_id']}"
    if status["stopped_at"] is not None:
        why = f": {status['stop_reason']}" if status.get("stop_reason") else ""
        return Health(False, f"{daemon} stopped at {status['stopped_at'].isoformat()}{why}", status)
    age = (now - status["heartbeat_at"]).total_seconds()
    if age > stale_seconds:
        return Health(False, f"{daemon} heartbeat is {age:.0f}s old (limit {stale_seconds:.0f}s)", status)
    for name, state in sorted((status.get("source_states") or {}).items()):
        if state["connected"]:
            continue
        down = (now - datetime.fromisoformat(state["since"])).total_seconds()
        if down > stale_seconds:
            how = "thread is dead" if not state["alive"] else "disconnected"
            error = f": {state['error']}" if state.get("error") else ""
            return Health(False, f"{daemon}: source {name} {how} for {down:.0f}s (limit {stale_seconds:.0f}s){error}",
                          status)
    lag = status.get("writer_lag") or 0.0
    if lag > stale_seconds:
        return Health(False, f"{daemon}: the writer is {lag:.0f}s behind (limit {stale_seconds:.0f}s): events "
                             f"received are not committed; is the database slow or locked?", status)
    return Health(True, f"{daemon} alive, heartbeat {age:.0f}s ago", status)


def listening_since(status: dict[str, Any] | None, now: datetime, stale_seconds: float) -> datetime | None:
    """Since when a running daemon has heard every event (its feed_since), or None: no fresh heartbeat."""
    if status is None or status["stopped_at"] is not None:
        return None
    if (now - status["heartbeat_at"]).total_seconds() > stale_seconds:
        return None
    return status.get("feed_since")
