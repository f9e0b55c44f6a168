"""The Workers page: every worker seen, online/offline/lost by the one rule, with its last day's counts from the history."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Request

from monitor.http.pages import page, render

router = APIRouter(include_in_schema=False)
COUNTS_WINDOW = timedelta(days=1)


@router.get("/workers", dependencies=page("viewer"))
def workers_page(request: Request):
    from monitor.worker_list import workers_seen
    from storage.series import worker_counts

    now = datetime.now(timezone.utc)
    with request.app.state.engine.connect() as conn:
        rows = workers_seen(conn, now, request.app.state.settings)
        counts = worker_counts(conn, now - COUNTS_WINDOW)
    return render(request, "workers.html", workers=rows, counts=counts, now=now)
