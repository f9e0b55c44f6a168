"""/healthz: what `taskmon check` answers, without auth: 200 when healthy, 503 with the reason; both say
which daemon leads the cluster, if one does."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from monitor.health import Health, check
from monitor.http.payload import scrub
from monitor.http.problems import not_found, responses
from storage.db import DatabaseError

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    ok: bool
    reason: str
    daemon_id: str | None = None
    heartbeat_at: datetime | None = None
    role: str | None = Field(None, description="the checked daemon's role: leader or follower")
    leader: str | None = Field(None, description="the daemon that leads the cluster; null: none does "
                                                 "(detectors, alerts and reconciliation are not running)")


@router.get("/healthz", response_model=HealthOut,
            responses={503: {"model": HealthOut, "description": "not healthy"}, **responses(400, 404, 422)},
            summary="Daemon health (as `taskmon check`), no auth")
def healthz(request: Request, daemon: str | None = Query(
        None, max_length=255, description="the daemon to check (its daemon_id); default: the newest heartbeat")):
    state = request.app.state
    try:
        health = check(state.engine, datetime.now(timezone.utc), state.settings.heartbeat_stale_seconds, daemon or "")
    except DatabaseError as exc:
        health = Health(False, str(exc))
    if health.unknown_daemon:
        raise not_found(health.reason)  # the caller named a daemon this history has never seen
    status = health.status or {}
    body = scrub({"ok": health.ok, "reason": health.reason, "daemon_id": status.get("daemon_id"),
                  "heartbeat_at": status.get("heartbeat_at"), "role": status.get("role"), "leader": health.leader},
                 state.settings.tz)
    return JSONResponse(body, status_code=200 if health.ok else 503)
