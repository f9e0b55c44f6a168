"""The Queues, Dead letters, Alerts and Schedule pages.

They read with the storage functions the API's handlers use; their buttons call the API's
endpoints (bulk replay with its dry run, resolve, test alert, schedule switches and run now)
with the session cookie, so each action has one implementation, one role check and one audit line.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Path, Query, Request

from monitor.http import charts
from monitor.http.pages import CHART_STEPS, WINDOWS, chart_end, page, queue_depths, render

router = APIRouter(include_in_schema=False)
LETTER_VIEWS = ("open", "replayed", "resolved", "all")


@router.get("/queues", dependencies=page("viewer"))
def queues_page(request: Request, window: str = Query("6h")):
    """The broker's depths now, and the history of the leader daemon's samples (queue_depths) over ``window``."""
    from monitor.http.queues import queue_names
    from storage.queue_depths import depth_history

    if window not in WINDOWS:
        return render(request, "error.html", status_code=400, title="Bad window",
                      detail=f"window {window!r}: use one of {', '.join(WINDOWS)}", back="/queues")
    settings = request.app.state.settings
    now = datetime.now(timezone.utc)
    step, steps = CHART_STEPS[window]
    with request.app.state.engine.connect() as conn:
        history = depth_history(conn, chart_end(now, step), step, steps)
    depths = queue_depths(settings, sorted(queue_names(request)))
    fmt = "%H:%M" if WINDOWS[window] <= timedelta(days=1) else "%m-%d %H:%M"
    labels = [s.astimezone(settings.tz).strftime(fmt) for s in history["starts"]]
    history_charts = [(name, charts.line_chart(f"{name}: most messages waiting per step", labels,
                                               [("peak waiting", points)]))
                      for name, points in history["queues"].items()]
    return render(request, "queues.html", queues=depths, now=now, window=window, windows=list(WINDOWS),
                  history=history, history_charts=history_charts,
                  sample_interval=settings.queue_sample_interval)


@router.get("/dead-letters", dependencies=page("viewer"))
def dead_letters_page(request: Request, state: str = Query("open"), name: str = Query("", max_length=255),
                      since: str = Query("", max_length=50)):
    from monitor.http.params import resolve
    from storage.deadletters import LETTER_STATES, list_dead_letters

    if state not in LETTER_VIEWS:
        return render(request, "error.html", status_code=400, title="Bad state",
                      detail=f"state {state!r}: use one of {', '.join(LETTER_VIEWS)}", back="/dead-letters")
    from monitor.http.problems import Problem

    try:
        since_at = resolve(request, "since", since or None)
    except Problem as exc:
        return render(request, "error.html", status_code=exc.status, title=exc.title, detail=exc.detail,
                      back="/dead-letters")
    with request.app.state.engine.connect() as conn:
        rows = list_dead_letters(conn, name=name or None, since=since_at,
                                 states=LETTER_STATES if state == "all" else (state,), limit=500)
    return render(request, "dead_letters.html", letters=rows, state=state, views=LETTER_VIEWS, name=name, since=since)


@router.get("/alerts", dependencies=page("viewer"))
def alerts_page(request: Request):
    from storage.alerts import list_alerts

    with request.app.state.engine.connect() as conn:
        rows = list_alerts(conn, limit=200)
    return render(request, "alerts.html", alerts=rows)


@router.get("/schedule", dependencies=page("viewer"))
def schedule_page(request: Request):
    from monitor.http.schedule import _shown
    from storage.schedules import list_schedules

    with request.app.state.engine.connect() as conn:
        rows = list_schedules(conn)
    return render(request, "schedule.html", entries=[_shown(request, r) for r in rows])


@router.get("/schedule/{name}/edit", dependencies=page("operator"))
def schedule_edit_page(request: Request, name: str = Path(..., min_length=1, max_length=200)):
    """The edit form of one entry; it sends PATCH /api/v1/schedule/NAME, where the checks, the write
    and the audit line are (storage.schedules.update_schedule, as `taskmon schedule set`)."""
    import json

    from monitor.http.schedule import _shown
    from storage.schedules import UnknownSchedule, get_schedule
    from tasks.application import QUEUE_NAMES
    from tasks.cron import CRON_FIELDS

    with request.app.state.engine.connect() as conn:
        try:
            row = get_schedule(conn, name)
        except UnknownSchedule as exc:
            return render(request, "error.html", status_code=404, title="Unknown schedule entry", detail=str(exc),
                          back="/schedule")
    entry = _shown(request, dict(row))
    cron = " ".join(str(row.get(f) or "*") for f in CRON_FIELDS)
    return render(request, "schedule_edit.html", e=entry, cron=cron, queues=QUEUE_NAMES,
                  args_json=json.dumps(row["args"]), kwargs_json=json.dumps(row["kwargs"]))
