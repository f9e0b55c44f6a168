"""/api/v1/dead-letters: tasks that ended for good; resolve one, replay them in bulk (with a dry run)."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

from fastapi import Body, Depends, Query, Request
from pydantic import BaseModel, Field

from monitor.http.audit import audited
from monitor.http.auth import allow
from monitor.http.params import resolve, since_query
from monitor.http.payload import json_response
from monitor.http.problems import api_router, not_found, responses
from monitor.http.replaying import replay_plans
from storage.deadletters import LETTER_STATES, get_dead_letter, list_dead_letters, resolve as resolve_letter
from storage.runs import get_run
from tasks.replay import plan_many

router = api_router("dead letters")


class Reason(str, Enum):
    failure = "failure"
    timeout = "timeout"
    lost = "lost"
    rejected = "rejected"


class LetterState(str, Enum):
    open = "open"
    replayed = "replayed"
    resolved = "resolved"
    all = "all"


class DeadLetter(BaseModel):
    task_id: str
    name: str | None
    reason: str
    exception_type: str | None
    exception: str | None
    queue: str | None
    worker: str | None
    first_seen: datetime
    last_seen: datetime
    dead_at: datetime
    state: str
    replayed_as: str | None
    replayed_at: datetime | None
    resolved_at: datetime | None
    resolution: str | None
    created_at: datetime
    updated_at: datetime


@router.get("/dead-letters", response_model=list[DeadLetter], dependencies=[Depends(allow("viewer"))],
            responses=responses(400, 401, 403, 422, 503), summary="Dead letters, newest death first")
def dead_letters(request: Request,
                 name: str | None = Query(None, max_length=255, description="Task names matching this glob (* ?)."),
                 reason: Reason | None = None, since: str | None = since_query("Died at or after."),
                 state: LetterState = LetterState.open, limit: int = Query(100, ge=1, le=1000)):
    states = LETTER_STATES if state is LetterState.all else (state.value,)
    since_at = resolve(request, "since", since)
    with request.app.state.engine.connect() as conn:
        rows = list_dead_letters(conn, name=name or None, reason=reason.value if reason else None, since=since_at,
                                 states=states, limit=limit)
    return json_response(rows, request.app.state.settings.tz)


class Resolution(BaseModel):
    note: str = Field("resolved through the API", max_length=2000, description="Why (stored as the resolution).")


class Resolved(BaseModel):
    task_id: str
    state: str
    resolution: str | None
    already: bool


@router.post("/dead-letters/{task_id}/resolve", response_model=Resolved, dependencies=[Depends(allow("operator"))],
             responses=responses(401, 403, 404, 422, 503), summary="Mark a dead letter resolved")
def resolve_dead_letter(request: Request, task_id: str, body: Resolution = Body(default_factory=Resolution)):
    with audited(request, "dead_letter.resolve", task_id) as entry, request.app.state.engine.begin() as conn:
        letter = get_dead_letter(conn, task_id)
        if letter is None:
            raise not_found(f"no dead letter for task {task_id!r}")
        already = letter["state"] == "resolved"
        if not already:
            resolve_letter(conn, task_id, body.note, datetime.now(timezone.utc))
            letter = get_dead_letter(conn, task_id)
        entry.detail = {"note": body.note, "already": already}
    return {"task_id": task_id, "state": letter["state"], "resolution": letter["resolution"], "already": already}


class BulkReplay(BaseModel):
    name: str | None = Field(None, max_length=255, description="Open dead letters of task names matching this glob.")
    since: str | None = Field(None, max_length=64, description="Died at or after: ISO 8601 or an age (2h, 7d).")
    reason: Reason | None = None
    queue: str | None = Field(None, min_length=1, max_length=255, description="Send to this queue instead.")
    dry_run: bool = Field(False, description="Say what would be replayed and what cannot be; send nothing.")


class Refused(BaseModel):
    task_id: str
    reason: str


class Replayed(BaseModel):
    task_id: str
    name: str
    queue: str
    new_task_id: str | None


class BulkReplayResult(BaseModel):
    dry_run: bool
    replayed: list[Replayed]
    refused: list[Refused]


@router.post("/dead-letters/replay", response_model=BulkReplayResult, dependencies=[Depends(allow("operator"))],
             responses=responses(400, 401, 403, 422, 503),
             summary="Replay open dead letters matching name/since/reason (exact args only), or a dry run")
def replay_dead_letters(request: Request, body: BulkReplay):
    from monitor.http.problems import bad_request

    if not (body.name or body.since):
        raise bad_request("give name and/or since: a bulk replay needs a filter")
    since_at = resolve(request, "since", body.since)
    engine = request.app.state.engine
    with audited(request, "dead_letter.replay" + (".dry_run" if body.dry_run else ""), body.name or body.since) as e:
        with engine.connect() as conn:
            letters = list_dead_letters(conn, name=body.name, reason=body.reason.value if body.reason else None,
                                        since=since_at, states=("open",))
            runs = {r["task_id"]: get_run(conn, r["task_id"]) for r in letters}
        plans, refused = plan_many(letters, runs, body.queue)
        done = replay_plans(request, plans, dry_run=body.dry_run)
        e.detail = {"replayed": len(done), "refused": len(refused), "filter": body.model_dump(mode="json")}
    return {"dry_run": body.dry_run, "replayed": done,
            "refused": [{"task_id": tid, "reason": why} for tid, why in refused]}
