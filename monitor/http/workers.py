"""/api/v1/workers: the stored workers (as `taskmon workers`), with live `inspect` data on request."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field

from monitor.http.auth import allow
from monitor.http.payload import json_response
from monitor.http.problems import api_router, responses
from monitor.worker_list import workers_seen

router = api_router("workers")


class Inspect(str, Enum):
    active = "active"
    reserved = "reserved"
    scheduled = "scheduled"
    registered = "registered"
    stats = "stats"
    conf = "conf"
    active_queues = "active_queues"
    revoked = "revoked"


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
    first_seen: datetime | None
    live: dict[str, Any] | None = Field(None, description="With inspect: what the worker answered, by question.")


def stored_workers(request: Request) -> list[dict]:
    with request.app.state.engine.connect() as conn:
        return workers_seen(conn, datetime.now(timezone.utc), request.app.state.settings)


@router.get("/workers", response_model=list[Worker], dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 503),
            summary="Workers seen: online, offline, lost or unknown, heartbeat age, load (as `taskmon workers`)")
def list_workers(request: Request,
                 inspect: list[Inspect] = Query([], description="Also ask the workers live (repeatable): "
                                                                 "active, reserved, scheduled, registered, stats, "
                                                                 "conf, active_queues, revoked."),
                 timeout: float = Query(2.0, gt=0, le=10, description="Seconds to wait for the workers' answers.")):
    rows = stored_workers(request)
    if inspect:
        from monitor.broker.live import inspect as ask
        from monitor.http.replaying import client

        answers = ask(client(request), [i.value for i in dict.fromkeys(inspect)], timeout=timeout)
        by_name = {row["hostname"]: row for row in rows}
        for row in rows:
            row["live"] = answers.get(row["hostname"], {})
        for hostname in sorted(set(answers) - set(by_name)):  # answered, but no heartbeat stored yet
            rows.append({"hostname": hostname, "state": "online", "status": "unknown", "last_heartbeat": None,
                         "heartbeat_age": None, "active": 0, "processed": 0, "loadavg": None, "freq": None,
                         "software": None, "first_seen": None, "live": answers[hostname]})
    return json_response(rows, request.app.state.settings.tz)
