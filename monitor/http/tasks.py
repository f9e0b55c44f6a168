"""/api/v1/tasks: the history (as `taskmon history` and `show`), sending, revoking and replaying tasks."""
from __future__ import annotations

import signal
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

from fastapi import Body, Depends, Path, Query, Request
from pydantic import BaseModel, Field, model_validator

from monitor.http.audit import audited
from monitor.http.auth import allow
from monitor.http.models import RequestBody, RunDetail, RunList
from monitor.http.params import resolve, since_query, until_query
from monitor.http.payload import json_response
from monitor.http.problems import api_router, Problem, bad_request, not_found, responses
from storage.history import SORTS, BadCursor, RunFilter, UnknownState, check_states, page_runs, run_detail
from storage.names import name_counts
from storage.runs import get_run

router = api_router("tasks")
SortKey = Enum("SortKey", {key: key for key in SORTS}, type=str)
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
    q: str | None = Query(None, max_length=500,
                          description="Task id prefix, or text in name, args, kwargs, result or exception "
                                      "(case-sensitive)."),
    sort: SortKey = Query(SortKey.seen, description="Newest seen, newest started or longest runtime first "
                                                    "(started/runtime: only runs that have one)."),
    cursor: str | None = Query(None, max_length=2000, description="next_cursor of the previous page."),
):
    now = datetime.now(timezone.utc)
    f = RunFilter(name=name or None, states=tuple(s for s in state if s), worker=worker or None,
                  queue=queue or None, since=resolve(request, "since", since, now),
                  until=resolve(request, "until", until, now), search=q or None)
    with request.app.state.engine.connect() as conn:
        try:
            check_states(conn, f.all_states())
        except UnknownState as exc:
            raise bad_request(f"state: {exc}") from None
        try:
            runs, next_cursor = page_runs(conn, f, limit=limit, sort=sort.value, cursor=cursor or None)
        except BadCursor as exc:
            raise bad_request(f"cursor: {exc}") from None
    return json_response({"count": len(runs), "results": runs, "next_cursor": next_cursor},
                         request.app.state.settings.tz)


@router.get("/tasks/{task_id}", response_model=RunDetail, dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 404, 503), summary="One task run: fields, timeline, workflow (as `show`)")
def task_detail(request: Request, task_id: str = TASK_ID):
    with request.app.state.engine.connect() as conn:
        detail = run_detail(conn, task_id)
    if detail is None:
        raise not_found(f"no task run with id {task_id!r} in the history")
    return json_response(detail, request.app.state.settings.tz)


class TaskName(BaseModel):
    name: str
    runs: int


@router.get("/task-names", response_model=list[TaskName], dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 503), summary="Task names seen, with how many runs each")
def task_names(request: Request):
    with request.app.state.engine.connect() as conn:
        rows = name_counts(conn)
    return json_response(rows, request.app.state.settings.tz)


# The signals a worker may be told to send to the process running a task.
Signal = Enum("Signal", {name: name for name in sorted(signal.Signals.__members__) if not name.startswith("SIG_")},
              type=str)


class RevokeRequest(BaseModel):
    terminate: bool = Field(False, description="Also kill the worker process running it (prefork pool).")
    signal: Signal = Field(Signal.SIGTERM, description="The signal terminate sends, e.g. SIGTERM, SIGKILL, SIGUSR1.")


class Revoked(BaseModel):
    task_id: str
    terminate: bool
    signal: str | None
    known: bool = Field(..., description="Whether the history holds the task.")
    state: str | None


@router.post("/tasks/{task_id}/revoke", response_model=Revoked, dependencies=[Depends(allow("operator"))],
             responses=responses(401, 403, 422, 503),
             summary="Tell every worker not to run the task (terminate: stop it if it runs)")
def revoke_task(request: Request, task_id: str = TASK_ID, body: RevokeRequest = Body(default_factory=RevokeRequest)):
    from monitor.http.replaying import client
    from tasks.replay import revoke

    with request.app.state.engine.connect() as conn:
        row = get_run(conn, task_id)
    with audited(request, "task.revoke", task_id) as entry:
        revoke(client(request), task_id, terminate=body.terminate, signal=body.signal.value)
        entry.detail = {"terminate": body.terminate, "signal": body.signal.value if body.terminate else None}
    return {"task_id": task_id, "terminate": body.terminate, "signal": body.signal.value if body.terminate else None,
            "known": row is not None, "state": row["state"] if row else None}


class ReplayRequest(BaseModel):
    queue: str | None = Field(None, min_length=1, max_length=255, description="Send to this queue instead.")


class ReplayDone(BaseModel):
    task_id: str
    new_task_id: str
    name: str
    queue: str


@router.post("/tasks/{task_id}/replay", response_model=ReplayDone, status_code=202,
             dependencies=[Depends(allow("operator"))], responses=responses(401, 403, 404, 409, 422, 503),
             summary="Send the task again with its exact name, args, kwargs and queue")
def replay_task(request: Request, task_id: str = TASK_ID, body: ReplayRequest = Body(default_factory=ReplayRequest)):
    from monitor.http.replaying import replay_plans
    from tasks.replay import NotReplayable, plan_replay

    with audited(request, "task.replay", task_id) as entry:
        with request.app.state.engine.connect() as conn:
            row = get_run(conn, task_id)
        if row is None:
            raise not_found(f"no task run with id {task_id!r} in the history")
        try:
            plan = plan_replay(row, body.queue)
        except NotReplayable as exc:
            raise Problem(409, "Not replayable", f"cannot replay {task_id} exactly: {exc}") from None
        done = replay_plans(request, [plan], dry_run=False)[0]
        entry.detail = {"new_task_id": done["new_task_id"], "queue": plan.queue}
    return json_response(done, request.app.state.settings.tz, status=202)


class SendRequest(RequestBody):
    task_name: str = Field(..., min_length=1, max_length=255, pattern=r"^\S+$", description="The task's registered name.")
    args: list[Any] = Field([], description="Positional arguments (JSON).")
    kwargs: dict[str, Any] = Field({}, description="Keyword arguments (JSON).")
    queue: str | None = Field(None, min_length=1, max_length=255, description="Queue; default: the task's route.")
    countdown: float | None = Field(None, ge=0, le=10**8, description="Run no earlier than this many seconds from now.")
    eta: datetime | None = Field(None, description="Or: run no earlier than this time (ISO 8601).")
    expires: Annotated[float, Field(ge=0, le=10**8)] | datetime | None = Field(
        None, description="Seconds from now, or a time, after which it is dropped.")
    priority: int | None = Field(None, ge=0, le=9, description="0-9 (Redis: lower runs first; RabbitMQ: higher).")
    wait: bool = Field(False, description="Wait for the result (needs a result backend).")
    timeout: float = Field(10, gt=0, le=60, description="Seconds to wait at most.")

    @model_validator(mode="after")
    def one_start_time(self):
        if self.countdown is not None and self.eta is not None:
            raise ValueError("give countdown or eta, not both")
        if self.eta is not None and self.eta.tzinfo is None:
            raise ValueError("eta needs a time zone offset (e.g. 2026-12-02T14:00:00+08:00 or ...Z)")
        if isinstance(self.expires, datetime) and self.expires.tzinfo is None:
            raise ValueError("expires needs a time zone offset")
        return self


class TaskResult(BaseModel):
    task_id: str
    state: str
    ready: bool
    result: Any = Field(None, description="A success's return value (JSON), redacted.")
    exception: str | None = Field(None, description='A failure\'s "Type: message".')
    traceback: str | None = None
    date_done: str | None = Field(None, description="When the backend stored it (ISO 8601 UTC).")
    name: str | None = None
    args: Any = None
    kwargs: Any = None
    worker: str | None = None
    retries: int | None = None
    queue: str | None = None


class Sent(BaseModel):
    task_id: str
    task_name: str
    queue: str | None
    result: TaskResult | None = Field(None, description="With wait: what the backend held when the wait ended.")


@router.post("/tasks", response_model=Sent, status_code=202, dependencies=[Depends(allow("operator"))],
             responses={**responses(400, 401, 403, 422, 503),
                        200: {"model": Sent, "description": "with wait: the task finished within the timeout"}},
             summary="Send a task by name (args, kwargs, queue, countdown or eta, expires, priority; optional wait)")
def send_task(request: Request, body: SendRequest):
    from monitor.broker.sending import send_task as send, wait_result
    from monitor.http.replaying import client

    app = client(request)
    if body.wait:
        require_backend(app)  # before sending: there is no backend to wait on
    with audited(request, "task.send", body.task_name) as entry:
        task_id = send(app, body.task_name, body.args, body.kwargs, queue=body.queue, countdown=body.countdown,
                       eta=body.eta, expires=body.expires, priority=body.priority)
        entry.detail = {"task_id": task_id, "queue": body.queue}
    result = wait_result(app, task_id, timeout=body.timeout).as_dict() if body.wait else None
    status = 200 if result is not None and result["ready"] else 202
    return json_response({"task_id": task_id, "task_name": body.task_name, "queue": body.queue, "result": result},
                         request.app.state.settings.tz, status=status)


def require_backend(app) -> None:
    if not app.conf.result_backend:
        raise Problem(503, "No result backend", "no result backend is configured: set result_backend "
                                                "(TASKMON_RESULT_BACKEND) to the app's result backend")


@router.get("/tasks/{task_id}/result", response_model=TaskResult, dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 422, 503),
            summary="The task's state and result from the result backend (PENDING: the backend knows nothing of it)")
def task_result(request: Request, task_id: str = TASK_ID):
    from monitor.broker.sending import read_result
    from monitor.http.replaying import client

    app = client(request)
    require_backend(app)
    return json_response(read_result(app, task_id).as_dict(), request.app.state.settings.tz)
