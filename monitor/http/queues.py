"""/api/v1/queues: live depths from the broker (as `taskmon queues`), Redis priority steps included."""
from __future__ import annotations

from fastapi import Depends, Query, Request
from pydantic import BaseModel

from monitor.broker.queues import queue_depths
from monitor.http.auth import allow
from monitor.http.payload import json_response
from monitor.http.problems import api_router, responses
from storage.history import known_queues

router = api_router("queues")


class QueueDepth(BaseModel):
    name: str
    messages: int | None
    consumers: int | None
    by_priority: dict[str, int] | None
    exists: bool | None


def queue_names(request: Request, extra=()) -> set[str]:
    with request.app.state.engine.connect() as conn:
        return {"celery", *known_queues(conn), *extra}


@router.get("/queues", response_model=list[QueueDepth], dependencies=[Depends(allow("viewer"))],
            responses=responses(401, 403, 422, 503),
            summary="Messages waiting per queue: celery, the queues in the history, and `queue`")
def list_queues(request: Request,
                queue: list[str] = Query([], description="Also this queue (repeatable).")):
    names = queue_names(request, (q for q in queue if q))
    rows = queue_depths(request.app.state.settings, names)
    return json_response(rows, request.app.state.settings.tz)
