"""/api/v1/schedule: the beat schedule in the database (as `taskmon schedule`): list, add, edit, switch, remove, run."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import Depends, Path, Request
from pydantic import BaseModel, Field

from monitor.http.audit import audited
from monitor.http.auth import allow
from monitor.http.models import RequestBody
from monitor.http.payload import json_response
from monitor.http.problems import api_router, Problem, bad_request, not_found, responses
from storage.schedules import DEFINITION_COLUMNS, DuplicateSchedule, UnknownSchedule, add_schedule, get_schedule, \
    list_schedules, remove_schedule, update_schedule
from tasks.application import QUEUE_NAMES, make_app
from tasks.cron import ScheduleError, check_args, check_kwargs, check_queue, check_task, definition, describe, \
    next_run, schedule_fields

router = api_router("schedule")
NAME = Path(..., min_length=1, max_length=200, description="The schedule entry's name.")


class ScheduleEntry(BaseModel):
    name: str
    task: str
    schedule: str
    minute: str | None
    hour: str | None
    day_of_month: str | None
    month_of_year: str | None
    day_of_week: str | None
    interval_seconds: int | None
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    enabled: bool
    description: str | None
    last_run_at: datetime | None
    next_run_at: datetime | None
    total_run_count: int
    created_at: datetime
    updated_at: datetime


class NewEntry(RequestBody):
    name: str = Field(..., min_length=1, max_length=200)
    task: str = Field(..., min_length=1, max_length=255, description="module.task")
    cron: str | None = Field(None, max_length=200, description='Crontab in the configured zone, "M H DOM MON DOW".')
    every: int | None = Field(None, ge=1, le=10**9, description="Or: every this many seconds.")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = Field(None, max_length=255)
    enabled: bool = True
    description: str | None = Field(None, max_length=2000)


class EntryChanges(RequestBody):
    task: str | None = Field(None, min_length=1, max_length=255)
    cron: str | None = Field(None, max_length=200)
    every: int | None = Field(None, ge=1, le=10**9)
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    queue: str | None = Field(None, max_length=255, description='"" for the task\'s route.')
    enabled: bool | None = None
    description: str | None = Field(None, max_length=2000)


def _app(request: Request):
    state = request.app.state
    if getattr(state, "tasks_app", None) is None:
        state.tasks_app = make_app(state.settings, set_as_current=False)
    return state.tasks_app


def _shown(request: Request, row: dict) -> dict:
    now = datetime.now(timezone.utc)
    try:
        row["next_run_at"] = next_run(row, _app(request), now) if row["enabled"] else None
    except ScheduleError:
        row["next_run_at"] = None
    row["schedule"] = describe(row)
    row.pop("id", None)
    return row


def _edit(request: Request, action: str, name: str, edit) -> dict | None:
    """One edit in one transaction; its audit entry says what the definition became."""
    with audited(request, f"schedule.{action}", name) as entry:
        try:
            with request.app.state.engine.begin() as conn:
                row = edit(conn)
        except UnknownSchedule as exc:
            raise not_found(str(exc)) from None
        except DuplicateSchedule as exc:
            raise Problem(409, "Conflict", str(exc)) from None
        if row:
            entry.detail = {k: row[k] for k in DEFINITION_COLUMNS if k != "name"}
    return row


@router.get("/schedule", response_model=list[ScheduleEntry], dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 503), summary="Every schedule entry with its last and next run")
def schedule(request: Request):
    with request.app.state.engine.connect() as conn:
        rows = list_schedules(conn)
    return json_response([_shown(request, r) for r in rows], request.app.state.settings.tz)


@router.post("/schedule", response_model=ScheduleEntry, status_code=201, dependencies=[Depends(allow("operator"))],
             responses=responses(400, 401, 403, 409, 422, 503), summary="Add a schedule entry")
def add_entry(request: Request, body: NewEntry):
    try:
        row = definition(body.name, body.task, cron=body.cron, every=body.every, args=body.args, kwargs=body.kwargs,
                         queue=body.queue, queues=QUEUE_NAMES, enabled=body.enabled, description=body.description)
    except ScheduleError as exc:
        raise bad_request(str(exc)) from None
    added = _edit(request, "add", body.name, lambda conn: add_schedule(conn, row, datetime.now(timezone.utc)))
    return json_response(_shown(request, added), request.app.state.settings.tz, status=201)


@router.patch("/schedule/{name}", response_model=ScheduleEntry, dependencies=[Depends(allow("operator"))],
              responses=responses(400, 401, 403, 404, 422, 503),
              summary="Change an entry; what is not given stays, and so does its run history")
def edit_entry(request: Request, body: EntryChanges, name: str = NAME):
    changes: dict[str, Any] = {}
    try:
        if body.task is not None:
            changes["task"] = check_task(body.task)
        if body.cron is not None or body.every is not None:
            changes.update(schedule_fields(body.cron, body.every))
        if body.args is not None:
            changes["args"] = check_args(body.args)
        if body.kwargs is not None:
            changes["kwargs"] = check_kwargs(body.kwargs)
        if body.queue is not None:
            changes["queue"] = check_queue(body.queue, QUEUE_NAMES)
    except ScheduleError as exc:
        raise bad_request(str(exc)) from None
    if body.enabled is not None:
        changes["enabled"] = body.enabled
    if body.description is not None:
        changes["description"] = body.description
    if not changes:
        raise bad_request("nothing to change: give task, cron, every, args, kwargs, queue, enabled or description")
    row = _edit(request, "set", name, lambda conn: update_schedule(conn, name, changes, datetime.now(timezone.utc)))
    return json_response(_shown(request, row), request.app.state.settings.tz)


def _switch(request: Request, name: str, enabled: bool):
    row = _edit(request, "enable" if enabled else "disable", name,
                lambda conn: update_schedule(conn, name, {"enabled": enabled}, datetime.now(timezone.utc)))
    return json_response(_shown(request, row), request.app.state.settings.tz)


@router.post("/schedule/{name}/enable", response_model=ScheduleEntry, dependencies=[Depends(allow("operator"))],
             responses=responses(401, 403, 404, 422, 503), summary="Switch an entry on")
def enable_entry(request: Request, name: str = NAME):
    return _switch(request, name, True)


@router.post("/schedule/{name}/disable", response_model=ScheduleEntry, dependencies=[Depends(allow("operator"))],
             responses=responses(401, 403, 404, 422, 503), summary="Switch an entry off")
def disable_entry(request: Request, name: str = NAME):
    return _switch(request, name, False)


@router.delete("/schedule/{name}", status_code=204, dependencies=[Depends(allow("operator"))],
               responses=responses(401, 403, 404, 422, 503), summary="Remove an entry")
def remove_entry(request: Request, name: str = NAME):
    from fastapi.responses import Response

    _edit(request, "remove", name, lambda conn: remove_schedule(conn, name))
    return Response(status_code=204)


class RunNow(RequestBody):
    name: str
    task: str
    task_id: str
    queue: str | None


@router.post("/schedule/{name}/run", response_model=RunNow, status_code=202, dependencies=[Depends(allow("operator"))],
             responses=responses(401, 403, 404, 422, 503),
             summary="Send an entry's task now, with its args, kwargs and queue (beat's own timing is unchanged)")
def run_entry(request: Request, name: str = NAME):
    from monitor.http.replaying import send_now

    with audited(request, "schedule.run", name) as entry:
        with request.app.state.engine.connect() as conn:
            try:
                row = get_schedule(conn, name)
            except UnknownSchedule as exc:
                raise not_found(str(exc)) from None
        task_id = send_now(request, row["task"], args=row["args"], kwargs=row["kwargs"], queue=row["queue"])
        entry.detail = {"task": row["task"], "task_id": task_id}
    return json_response({"name": name, "task": row["task"], "task_id": task_id, "queue": row["queue"]},
                         request.app.state.settings.tz, status=202)
