"""Every mutating call is audited: who (token name), what, target, and how it ended; GET /api/v1/audit."""
from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timezone
from typing import Any, Iterator

from fastapi import Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from monitor.http.auth import NO_AUTH, allow
from monitor.http.params import resolve, since_query
from monitor.http.payload import json_response
from monitor.http.problems import api_router, Problem, responses
from storage import audit as audit_log
from storage.errors import first_line

log = logging.getLogger(__name__)
router = api_router("audit")


class Entry:
    """What a handler fills in: ``result`` (a short outcome) and ``detail`` (what it did)."""

    def __init__(self):
        self.result = "ok"
        self.detail: dict[str, Any] = {}


@contextlib.contextmanager
def audited(request: Request, action: str, target: str | None = None) -> Iterator[Entry]:
    """Run a mutating call and write its audit entry afterwards, success or failure alike."""
    entry = Entry()
    try:
        yield entry
    except Problem as exc:
        entry.result = f"{exc.status}: {exc.detail}"
        _write(request, action, target, entry)
        raise
    except Exception as exc:
        entry.result = f"error: {first_line(exc)}"
        _write(request, action, target, entry)
        raise
    _write(request, action, target, entry)


def _write(request: Request, action: str, target: str | None, entry: Entry) -> None:
    principal = getattr(request.state, "principal", NO_AUTH)
    detail = {"result": entry.result, **entry.detail, "via": "api", "role": principal.role}
    try:
        with request.app.state.engine.begin() as conn:
            audit_log.record(conn, datetime.now(timezone.utc), action, (target or "")[:255] or None, detail,
                             actor=principal.name[:255])
    except SQLAlchemyError as exc:  # the action is done; a lost audit line must not hide that
        log.error("audit entry %s %s by %s not written: %s", action, target, principal.name, first_line(exc))


class AuditEntry(BaseModel):
    id: int
    created_at: datetime
    actor: str
    action: str
    target: str | None
    detail: str | None


@router.get("/audit", response_model=list[AuditEntry], dependencies=[Depends(allow("viewer"))],
            responses=responses(400, 401, 403, 503), summary="The audit log, newest first")
def audit_entries(request: Request, limit: int = Query(100, ge=1, le=1000),
                  since: str | None = since_query("Entries at or after this time."),
                  actor: str | None = Query(None, max_length=255, description="Only this actor (a token name)."),
                  action: str | None = Query(None, max_length=64, description="Only this action, e.g. task.revoke.")):
    since_at = resolve(request, "since", since)
    with request.app.state.engine.connect() as conn:
        rows = audit_log.recent(conn, limit, since=since_at, actor=actor, action=action)
    return json_response(rows, request.app.state.settings.tz)
