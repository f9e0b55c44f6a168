"""The Workers pages: every worker seen (online/offline/lost by the one rule, its last day in the history), and
one worker live (inspect) with the admin's controls, which call the API's /workers/{hostname}/... endpoints."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import json

from fastapi import APIRouter, Path, Request

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


LIVE_QUESTIONS = ("active", "reserved", "scheduled", "revoked", "active-queues", "stats", "conf")
LIVE_TIMEOUT = 1.5  # seconds each question waits for the worker


@router.get("/workers/{hostname}", dependencies=page("viewer"))
def worker_page(request: Request, hostname: str = Path(..., min_length=1, max_length=255)):
    """One worker: its stored row, its last day in the history, and what it answers live (inspect)."""
    from monitor.broker.control import inspect
    from monitor.http.replaying import client
    from monitor.worker_list import workers_seen
    from storage.series import worker_counts
    from monitor.broker.queues import BrokerError

    now = datetime.now(timezone.utc)
    with request.app.state.engine.connect() as conn:
        row = next((w for w in workers_seen(conn, now, request.app.state.settings) if w["hostname"] == hostname), None)
        counts = worker_counts(conn, now - COUNTS_WINDOW).get(hostname, {})
    live: dict[str, object] = {}
    error = None
    if row is None or row["state"] in ("online", "unknown"):
        try:
            for question in LIVE_QUESTIONS:
                replies = inspect(client(request), question, [hostname], timeout=LIVE_TIMEOUT).replies
                if hostname in replies:
                    live[question] = replies[hostname]
        except BrokerError as exc:
            error = str(exc)
    if row is None and not live:
        return render(request, "error.html", status_code=404, title="Unknown worker",
                      detail=f"no worker {hostname!r} in the history, and none answered by that name", back="/workers")
    return render(request, "worker.html", hostname=hostname, w=row, counts=counts, live=live, error=error,
                  pretty=lambda value: json.dumps(value, indent=2, sort_keys=True, default=str))
