"""The Tasks page (filters, search, keyset pages, columns, export, live rows) and the Task page.

The Task page's buttons call the API (/api/v1/tasks/ID/replay, /revoke) with the session cookie.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from monitor.commands.render import fmt_duration, fmt_time, one_line
from monitor.http.pages import page, render
from monitor.http.payload import mask_urls
from monitor.http.problems import Problem, bad_request
from monitor.http.search import QUALIFIERS, SearchError, parse_search
from storage.history import SUMMARY_FIELDS, RunFilter, UnknownState, check_states, page_runs
from storage.search import SORTS, BadCursor

router = APIRouter(include_in_schema=False)
STATE_BUTTONS = ("SUCCESS", "FAILURE", "STARTED", "RETRY", "RECEIVED", "PENDING", "REVOKED", "LOST", "TIMEOUT")
COLUMNS = (("task_id", "Task id"), ("name", "Name"), ("state", "State"), ("worker", "Worker"), ("queue", "Queue"),
           ("seen_at", "Seen"), ("started_at", "Started"), ("runtime", "Runtime"), ("retries", "Retries"),
           ("exception", "Exception"))
PAGE_SIZES = (25, 50, 100, 200)
POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
EXPORT_MAX = 100_000
EXPORT_PAGE = 1000


@dataclass(frozen=True)
class Listing:
    """What the tasks page was asked for: the filter (with the search), the order, and the query for links."""

    filter: RunFilter
    sort: str
    params: dict[str, str]  # the query without the cursor


def listing(request: Request, q: str, state: str, since: str | None, until: str | None, sort: str) -> Listing:
    """The search box and the filter fields as the history's RunFilter (the API's `q` is its free text)."""
    from monitor.http.params import resolve

    if sort not in SORTS:
        raise bad_request(f"sort: {sort!r}; use one of {', '.join(SORTS)}")
    try:
        s = parse_search(q)
    except SearchError as exc:
        raise bad_request(str(exc)) from None
    states = tuple(x for x in (*s.states, *(v.strip().upper() for v in state.split(",") if v.strip())))
    now = datetime.now(timezone.utc)
    contains = tuple(sorted(s.terms.items()))
    # A field qualifier alone still finds its candidates through the text index: every run whose
    # args contain "42" is among those whose searched text does.
    search = s.text or (contains[0][1] if contains else None)
    f = RunFilter(name=s.name, states=states, worker=s.worker, queue=s.queue,
                  since=resolve(request, "since", since or None, now), until=resolve(request, "until", until or None, now),
                  search=search, contains=contains)
    params = {k: v for k, v in (("q", q), ("state", state), ("since", since or ""), ("until", until or ""),
                                ("sort", sort if sort != "seen" else "")) if v}
    return Listing(f, sort, params)


def cells(request: Request, run: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The tasks table's cells of one run, as text: the page and the live rows build the same row from these."""
    tz = request.app.state.settings.tz
    state = run["state"] or ""
    exc = mask_urls(run["exception"] or "")
    return {
        "task_id": {"text": run["task_id"], "href": f"/tasks/{run['task_id']}", "cls": "mono"},
        "name": {"text": run["name"] or "-"},
        "state": {"text": state, "cls": f"state state-{state}"},
        "worker": {"text": run["worker"] or "-"},
        "queue": {"text": run["queue"] or "-"},
        "seen_at": {"text": fmt_time(run["seen_at"], tz)},
        "started_at": {"text": fmt_time(run["started_at"], tz)},
        "runtime": {"text": fmt_duration(run["runtime"]), "cls": "num"},
        "retries": {"text": str(run["retries"] or 0), "cls": "num"},
        "exception": {"text": one_line(exc, 80), "title": exc, "cls": "cut"},
    }


def _page(conn, lst: Listing, cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    try:
        check_states(conn, lst.filter.all_states())
        return page_runs(conn, lst.filter, limit=limit, sort=lst.sort, cursor=cursor)
    except UnknownState as exc:
        raise bad_request(f"state: {exc}") from None
    except BadCursor as exc:
        raise bad_request(f"cursor: {exc}") from None


@router.get("/tasks", dependencies=page("viewer"))
def tasks_page(request: Request, q: str = Query("", max_length=500), state: str = Query("", max_length=200),
               since: str | None = Query(None, max_length=50), until: str | None = Query(None, max_length=50),
               sort: str = Query("seen"), cursor: str | None = Query(None, max_length=2000),
               limit: int = Query(50, ge=1, le=500)):
    from storage.history import latest_update

    try:
        lst = listing(request, q, state, since, until, sort)
        with request.app.state.engine.connect() as conn:
            rows, next_cursor = _page(conn, lst, cursor, limit)
            latest = latest_update(conn)
    except Problem as exc:  # a bad search or filter: the page says so, with the form to fix it
        return render(request, "error.html", status_code=exc.status, title=exc.title, detail=exc.detail, back="/tasks")
    next_url = f"/tasks?{urlencode({**lst.params, 'limit': limit, 'cursor': next_cursor})}" if next_cursor else None
    # New runs stream in only on the first page of the newest-first order (a later page would shift).
    live = cursor is None and sort == "seen"
    stream = f"/tasks/stream?{urlencode({**lst.params, 'after': (latest or datetime.now(timezone.utc)).isoformat()})}"
    return render(request, "tasks.html", rows=[cells(request, r) | {"_id": {"text": r["task_id"]}} for r in rows],
                  columns=COLUMNS, states=STATE_BUTTONS, chosen=set(lst.filter.all_states()), state_param=state, q=q, since=since or "",
                  until=until or "", sort=sort, sorts=list(SORTS), limit=limit, page_sizes=PAGE_SIZES,
                  next_url=next_url, first_url=f"/tasks?{urlencode(lst.params)}" if cursor else None,
                  stream=stream if live else None, qualifiers=QUALIFIERS,
                  state_url=lambda s: f"/tasks?{urlencode({**{k: v for k, v in lst.params.items() if k != 'state'}, **({'state': s} if s else {})})}",
                  export=urlencode(lst.params))


@router.get("/tasks/stream", dependencies=page("viewer"))
async def tasks_stream(request: Request, after: str = Query(..., max_length=50), q: str = Query("", max_length=500),
                       state: str = Query("", max_length=200), since: str | None = Query(None, max_length=50),
                       until: str | None = Query(None, max_length=50)):
    """Server-sent events: each run the history writes (new or changed) that matches the page's filter."""
    from storage.history import changed_since

    lst = await run_in_threadpool(listing, request, q, state, since, until, "seen")
    # A reconnecting EventSource sends the id of the last event it got: go on from there.
    last = _stream_time("after", request.headers.get("last-event-id") or after)
    engine = request.app.state.engine

    def poll(since_update: datetime) -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return changed_since(conn, lst.filter, since_update, limit=200)

    async def events() -> AsyncIterator[str]:
        nonlocal last
        idle = 0.0
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            rows = await run_in_threadpool(poll, last)
            for run in rows:
                last = max(last, run["updated_at"])
                data = json.dumps({"task_id": run["task_id"], "cells": cells(request, run)})
                yield f"id: {last.isoformat()}\nevent: run\ndata: {data}\n\n"
            idle = 0.0 if rows else idle + POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _stream_time(name: str, text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise bad_request(f"{name}: {text!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise bad_request(f"{name}: give the time with its UTC offset")
    return at


def _csv_cell(value: Any, tz) -> str:
    text = fmt_time(value, tz) if isinstance(value, datetime) else "" if value is None else mask_urls(str(value))
    # A spreadsheet runs a cell that starts like a formula: keep task text inert.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@router.get("/tasks/export.{fmt}", dependencies=page("viewer"))
def tasks_export(request: Request, fmt: str = Path(..., pattern="^(csv|json)$"), q: str = Query("", max_length=500),
                 state: str = Query("", max_length=200), since: str | None = Query(None, max_length=50),
                 until: str | None = Query(None, max_length=50), sort: str = Query("seen"),
                 limit: int = Query(10_000, ge=1, le=EXPORT_MAX)):
    """Every run of the current filter (up to ``limit``), read in keyset pages of EXPORT_PAGE."""
    lst = listing(request, q, state, since, until, sort)
    tz = request.app.state.settings.tz
    rows: list[dict[str, Any]] = []
    with request.app.state.engine.connect() as conn:
        cursor = None
        while len(rows) < limit:
            chunk, cursor = _page(conn, lst, cursor, min(EXPORT_PAGE, limit - len(rows)))
            rows.extend(chunk)
            if cursor is None:
                break
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Disposition": f'attachment; filename="taskmon-tasks-{stamp}.{fmt}"', "Cache-Control": "no-store"}
    if fmt == "json":
        from monitor.http.payload import json_response

        response = json_response(rows, tz)
        response.headers.update(headers)
        return response
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(SUMMARY_FIELDS)
    for r in rows:
        writer.writerow([_csv_cell(r[k], tz) for k in SUMMARY_FIELDS])
    return StreamingResponse(iter([out.getvalue()]), media_type="text/csv; charset=utf-8", headers=headers)


# -- one task ---------------------------------------------------------------------------------------

TASK_ID = Path(..., min_length=1, max_length=255)


@router.get("/tasks/{task_id}", dependencies=page("viewer"))
def task_page(request: Request, task_id: str = TASK_ID):
    from storage.deadletters import get_dead_letter, replays_of
    from storage.history import run_detail

    with request.app.state.engine.connect() as conn:
        detail = run_detail(conn, task_id)
        if detail is None:
            return render(request, "error.html", status_code=404, title="Unknown task",
                          detail=f"no task run with id {task_id!r} in the history")
        replays = replays_of(conn, task_id)
        letter = get_dead_letter(conn, task_id)
    return render(request, "task.html", d=detail, run=detail["run"], replays=replays, letter=letter,
                  cells=lambda r: cells(request, r), columns=COLUMNS)
