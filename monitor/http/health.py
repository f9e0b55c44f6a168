"""/healthz: what `taskmon check` answers, without auth: 200 when healthy, 503 with the reason."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from monitor.health import check
from monitor.http.payload import scrub
from storage.db import DatabaseError

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    ok: bool
    reason: str
    daemon_id: str | None = None
    heartbeat_at: datetime | None = None


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut, "description": "not healthy"}},
            summary="Daemon health (as `taskmon check`), no auth")
def healthz(request: Request):
    state = request.app.state
    try:
        health = check(state.engine, datetime.now(timezone.utc), state.settings.heartbeat_stale_seconds)
    except DatabaseError as exc:
        ok, reason, status = False, str(exc), None
    else:
        ok, reason, status = health.ok, health.reason, health.status
    status = status or {}
    body = scrub({"ok": ok, "reason": reason, "daemon_id": status.get("daemon_id"),
                  "heartbeat_at": status.get("heartbeat_at")}, state.settings.tz)
    return JSONResponse(body, status_code=200 if ok else 503)
