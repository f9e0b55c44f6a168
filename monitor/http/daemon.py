"""/api/v1/daemon and /api/v1/gaps: the daemon's newest heartbeat and the intervals events may be lost in."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Depends, Query, Request
from pydantic import BaseModel

from monitor.http.auth import allow
from monitor.http.payload import json_response
from monitor.http.problems import api_router, not_found, responses
from storage.health import latest_status, list_gaps

router = api_router("daemon")


class DaemonStatus(BaseModel):
    daemon_id: str
    hostname: str
    pid: int
    sources: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    counters: dict[str, Any]
    source_states: dict[str, Any] | None
    writer_lag: float | None
    feed_since: datetime | None
    stop_reason: str | None


class Gap(BaseModel):
    id: int
    source: str
    reason: str
    started_at: datetime
    ended_at: datetime | None
    events_lost: int | None
    detail: str | None
    reconciled: int
    recorded_at: datetime
    daemon_id: str | None = None  # the daemon that saw the gap
    reconciled_at: datetime | None = None  # null: the leader has still to ask the result backend
    reconciled_by: str | None = None


@router.get("/daemon", response_model=DaemonStatus, dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 404, 503), summary="The newest daemon heartbeat: sources, writer lag, counters")
def daemon_status(request: Request):
    with request.app.state.engine.connect() as conn:
        status = latest_status(conn)
    if status is None:
        raise not_found("no taskmon daemon has run against this database: start `taskmon run`")
    return json_response(status, request.app.state.settings.tz)


@router.get("/gaps", response_model=list[Gap], dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 503), summary="Receiver gaps: when events may have been lost, newest first")
def gaps(request: Request, limit: int = Query(100, ge=1, le=1000)):
    with request.app.state.engine.connect() as conn:
        rows = list_gaps(conn, limit)
    return json_response(rows, request.app.state.settings.tz)
