"""/api/v1/workers: the stored workers (as `taskmon workers`), with live `inspect` data on request."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import Depends, Request
from pydantic import BaseModel

from monitor.http.auth import allow
from monitor.http.payload import json_response
from monitor.http.problems import api_router, responses
from monitor.worker_list import workers_seen

router = api_router("workers")


class Worker(BaseModel):
    hostname: str
    state: str
    status: str
    last_heartbeat: datetime | None
    heartbeat_age: float | None
    active: int
    processed: int
    loadavg: str | None
    freq: float | None
    software: str | None
    first_seen: datetime


def stored_workers(request: Request) -> list[dict]:
    with request.app.state.engine.connect() as conn:
        return workers_seen(conn, datetime.now(timezone.utc), request.app.state.settings)


@router.get("/workers", response_model=list[Worker], dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 503),
            summary="Workers seen: online, offline, lost or unknown, heartbeat age, load (as `taskmon workers`)")
def list_workers(request: Request):
    return json_response(stored_workers(request), request.app.state.settings.tz)
