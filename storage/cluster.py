"""The SQL of several daemons on one history: the leader's advisory lock, the status rows of all
daemons, and dead letters claimed for alerting exactly once."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

import orjson
from sqlalchemy import Connection, desc, select, text, update

from storage.schema import daemon_status, dead_letters

# The lock's key is the history's schema: two histories in one PostgreSQL database elect apart.
_LOCK_KEY = "hashtext('taskmon.leader:' || current_schema())"
# Server-side keepalives of the leader's session: a leader whose host vanished (no FIN, no RST) is
# dropped, and its lock released, within 5 + 2 x 3 = 11 s.
SESSION_KEEPALIVE = ("SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2",
                     "SET tcp_keepalives_count = 3")
# Keepalives do not see a leader that is frozen (SIGSTOP, a hung process, a paused VM): its kernel
# answers them. The leader queries its session every LEADER_POLL (2 s) outside any transaction, so
# a session silent this long is a leader that stopped working: the server ends it and frees the lock
# (idle_session_timeout, PostgreSQL 14 and later). It also bounds a vanished host sooner than 11 s.
SESSION_IDLE_TIMEOUT = 10


def prepare_leader_session(conn: Connection) -> bool:
    """Set up the leader's session; False when the server (before PostgreSQL 14) cannot end a silent one."""
    for statement in SESSION_KEEPALIVE:
        conn.execute(text(statement))
    if (conn.dialect.server_version_info or (0,)) < (14,):
        return False
    conn.execute(text(f"SET idle_session_timeout = '{SESSION_IDLE_TIMEOUT}s'"))
    return True


def try_leader_lock(conn: Connection) -> bool:
    """Take the session-level advisory lock of this history's leader; False when another session holds it."""
    return bool(conn.execute(text(f"SELECT pg_try_advisory_lock({_LOCK_KEY})")).scalar())


def holds_leader_lock(conn: Connection) -> bool:
    """Whether this session still holds the leader's lock (a query on a dead connection raises)."""
    return bool(conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() "
        f"AND objid = ({_LOCK_KEY})::oid")).scalar())


def serialize_alerts(conn: Connection) -> None:
    """One alert evaluation at a time (PostgreSQL, until the transaction ends): should a deposed leader
    not know it yet, the new one waits and then reads what it committed, instead of firing again."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('taskmon.alerts:' || current_schema()))"))


def _decode(row) -> dict[str, Any]:
    out = dict(row)
    out["counters"] = orjson.loads(out["counters"])
    out["source_states"] = orjson.loads(out["source_states"]) if out["source_states"] else None
    return out


def all_status(conn: Connection) -> list[dict[str, Any]]:
    """Every daemon's status row, newest heartbeat first."""
    rows = conn.execute(select(daemon_status).order_by(desc(daemon_status.c.heartbeat_at))).mappings()
    return [_decode(r) for r in rows]


def get_status(conn: Connection, daemon_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(daemon_status).where(daemon_status.c.daemon_id == daemon_id)).mappings().first()
    return None if row is None else _decode(row)


def alerted_already(conn: Connection, task_ids: Iterable[str]) -> set[str]:
    """Of these dead letters, the ones an earlier alert evaluation (maybe another daemon's) claimed."""
    ids = list(task_ids)
    if not ids:
        return set()
    query = select(dead_letters.c.task_id).where(dead_letters.c.task_id.in_(ids),
                                                 dead_letters.c.alerted_at.is_not(None))
    return set(conn.execute(query).scalars())


def unalerted_letters(conn: Connection, since: datetime, limit: int = 10_000) -> list[dict[str, Any]]:
    """Dead letters since ``since`` no alert evaluation has claimed: written by a leader that died before
    its evaluation committed. Locked (PostgreSQL) until the claim commits, so two evaluations never
    both take one."""
    c = dead_letters.c
    query = (select(c.task_id, c.name, c.reason, c.exception_type, c.exception, c.dead_at)
             .where(c.alerted_at.is_(None), c.dead_at >= since).order_by(c.dead_at).limit(limit))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=False)
    return [dict(r) for r in conn.execute(query).mappings()]


def mark_alerted(conn: Connection, task_ids: Iterable[str], now: datetime) -> None:
    ids = list(task_ids)
    for start in range(0, len(ids), 1000):
        conn.execute(update(dead_letters).where(dead_letters.c.task_id.in_(ids[start:start + 1000]),
                                                dead_letters.c.alerted_at.is_(None)).values(alerted_at=now))
