"""The stored workers with the one "is it gone?" verdict applied: what `taskmon workers` and the API list."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from monitor.detectors.lost import watching_since, worker_presence
from monitor.health import listening_since
from storage.detection import latest_gap_end
from storage.health import latest_status
from storage.worker_status import list_workers
from tasks.settings import Settings


def workers_seen(conn, now: datetime, settings: Settings) -> list[dict[str, Any]]:
    """Every worker seen, by hostname, its ``state`` (online, offline, lost, unknown) judged at ``now``."""
    rows = list_workers(conn, now)
    watch_since = watching_since(listening_since(latest_status(conn), now, settings.heartbeat_stale_seconds),
                                 latest_gap_end(conn))
    for row in rows:
        row["state"] = worker_presence(row, now, multiple=settings.lost_after_heartbeats, watch_since=watch_since).state
    return rows
