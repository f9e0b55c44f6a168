"""The Workers page: every worker seen, online/offline/lost by the one rule, with counts from the history."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request

from monitor.http.pages import page, render

router = APIRouter(include_in_schema=False)


def workers_with_presence(conn, settings, now: datetime) -> list[dict[str, Any]]:
    """The stored workers, each with ``state`` judged as `taskmon workers` judges it."""
    from monitor.detectors.lost import watching_since, worker_presence
    from monitor.health import listening_since
    from storage.detection import latest_gap_end
    from storage.health import latest_status
    from storage.worker_status import list_workers

    rows = list_workers(conn, now)
    watch_since = watching_since(listening_since(latest_status(conn), now, settings.heartbeat_stale_seconds),
                                 latest_gap_end(conn))
    for row in rows:
        row["state"] = worker_presence(row, now, multiple=settings.lost_after_heartbeats,
                                       watch_since=watch_since).state
    return rows


@router.get("/workers", dependencies=page("viewer"))
def workers_page(request: Request):
    now = datetime.now(timezone.utc)
    with request.app.state.engine.connect() as conn:
        rows = workers_with_presence(conn, request.app.state.settings, now)
    return render(request, "workers.html", workers=rows, now=now)
