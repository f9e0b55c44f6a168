"""/api/v1/tasks: the history (as `taskmon history` and `show`), sending, revoking and replaying tasks."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Path, Query, Request

from monitor.http.auth import allow
from monitor.http.models import RunDetail, RunList
from monitor.http.params import resolve, since_query, until_query
from monitor.http.payload import json_response
from monitor.http.problems import bad_request, not_found, responses
from storage.history import RunFilter, UnknownState, check_states, list_runs, run_detail

router = APIRouter(prefix="/api/v1", tags=["tasks"])
TASK_ID = Path(..., min_length=1, max_length=255, description="The task id.")


@router.get("/tasks", response_model=RunList, dependencies=[Depends(allow("viewer"))],
            responses=responses(400, 401, 403, 503), summary="Task runs, newest first (as `taskmon history`)")
def list_tasks(
    request: Request,
    limit: int = Query(50, ge=1, le=1000, description="At most this many runs."),
    name: str | None = Query(None, max_length=255, description="Task name or glob (* ? [...])."),
    state: list[str] = Query([], description="Only runs in this state (repeatable), e.g. FAILURE."),
    worker: str | None = Query(None, max_length=255, description="Only runs on this worker (celery@host)."),
    queue: str | None = Query(None, max_length=255, description="Only runs sent to this queue."),
    since: str | None = since_query(),
    until: str | None = until_query(),
):
    now = datetime.now(timezone.utc)
    f = RunFilter(name=name or None, states=tuple(s for s in state if s), worker=worker or None,
                  queue=queue or None, since=resolve(request, "since", since, now),
                  until=resolve(request, "until", until, now))
    with request.app.state.engine.connect() as conn:
        try:
            check_states(conn, f.all_states())
        except UnknownState as exc:
            raise bad_request(f"state: {exc}") from None
        runs = list_runs(conn, f, limit=limit)
    return json_response({"count": len(runs), "results": runs, "next_cursor": None}, request.app.state.settings.tz)


@router.get("/tasks/{task_id}", response_model=RunDetail, dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 404, 503), summary="One task run: fields, timeline, workflow (as `show`)")
def task_detail(request: Request, task_id: str = TASK_ID):
    with request.app.state.engine.connect() as conn:
        detail = run_detail(conn, task_id)
    if detail is None:
        raise not_found(f"no task run with id {task_id!r} in the history")
    return json_response(detail, request.app.state.settings.tz)
