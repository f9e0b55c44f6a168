"""Reading the workers table: who is online, how stale each heartbeat is, and how busy."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from storage.schema import workers

# celery.events.state: a worker is alive until freq * HEARTBEAT_EXPIRE_WINDOW% after its last
# heartbeat; celery's workers beat every 2 seconds unless they announce another freq.
HEARTBEAT_EXPIRE_WINDOW = 200
DEFAULT_FREQ = 2.0

WORKER_FIELDS = (
    "hostname", "state", "status", "last_heartbeat", "heartbeat_age", "active", "processed",
    "loadavg", "freq", "software", "first_seen",
)


def worker_state(status: str, age: float | None, freq: float | None) -> str:
    """online, offline, or lost: it said online but its heartbeats stopped (killed, network gone)."""
    if status != "online":
        return "offline"
    if age is None or age > (freq or DEFAULT_FREQ) * HEARTBEAT_EXPIRE_WINDOW / 100:
        return "lost"
    return "online"


def list_workers(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Every worker ever seen, by hostname, with its state as of ``now``."""
    out = []
    for row in conn.execute(select(workers).order_by(workers.c.hostname)).mappings():
        age = (now - row["last_heartbeat"]).total_seconds() if row["last_heartbeat"] else None
        entry = {k: row[k] for k in WORKER_FIELDS if k in row}
        entry.update(state=worker_state(row["status"], age, row["freq"]), heartbeat_age=age)
        out.append({k: entry[k] for k in WORKER_FIELDS})
    return out
