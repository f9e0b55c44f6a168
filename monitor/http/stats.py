"""/api/v1/stats and /api/v1/reports: the figures `taskmon stats` and `taskmon report` print."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from fastapi import Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from monitor.http.auth import allow
from monitor.http.params import resolve, since_query, until_query
from monitor.http.payload import json_response, mask_urls
from monitor.http.problems import api_router, bad_request, responses
from storage.history import RunFilter
from storage.rollup_stats import rollup_task_stats
from storage.stats import task_stats
from tasks.errors import BadInput
from tasks.periods import parse_day, report_period
from tasks.report_data import build_report
from tasks.report_format import render

router = api_router("stats")


class TaskStats(BaseModel):
    name: str | None
    total: int
    states: dict[str, int]
    completed: int
    failure_rate: float | None
    throughput_per_min: float | None
    runtime: dict[str, Any] = Field(description="p50, p95, p99, max; from the rollups each is the upper bound "
                                                  "of its histogram bucket, with both bounds under 'bounds'")
    queue_wait: dict[str, Any]


class Stats(BaseModel):
    since: datetime | None
    until: datetime
    window_seconds: float | None
    percentiles: str = Field("exact", description="'buckets' (from the rollups: bucket bounds) or 'exact'")
    tasks: list[TaskStats]
    totals: TaskStats


@router.get("/stats", response_model=Stats, dependencies=[Depends(allow("viewer"))],
            responses=responses(400, 401, 403, 503),
            summary="Per task name: counts by state, failure rate, throughput, runtime and wait percentiles")
def stats(request: Request, since: str | None = since_query("Runs first seen at or after (default: all history)."),
          until: str | None = until_query(),
          name: str | None = Query(None, max_length=255, description="Task name or glob (* ? [...])."),
          exact: bool = Query(False, description="Read every run for exact percentiles; default: the rollups, "
                                                  "percentiles as histogram bucket bounds.")):
    now = datetime.now(timezone.utc)
    f = RunFilter(name=name or None, since=resolve(request, "since", since, now),
                  until=resolve(request, "until", until, now))
    if f.since and f.until and f.since >= f.until:
        raise bad_request("since must be before until")
    with request.app.state.engine.connect() as conn:
        figures = task_stats(conn, f, now) if exact else rollup_task_stats(conn, f, now)
    if exact:
        figures["percentiles"] = "exact"
    return json_response(figures, request.app.state.settings.tz)


class ReportKind(str, Enum):
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"


class ReportFormat(str, Enum):
    json = "json"
    text = "text"
    md = "md"
    csv = "csv"


class Report(BaseModel):
    kind: str
    period: dict[str, str]
    totals: dict[str, Any]
    states: dict[str, int]
    top_failing: list[dict[str, Any]]
    top_exceptions: list[dict[str, Any]]
    slowest: list[dict[str, Any]]
    queues: list[dict[str, Any]]
    workers: list[dict[str, Any]]


@router.get("/reports/{kind}", response_model=Report, dependencies=[Depends(allow("viewer"))],
            responses={**responses(400, 401, 403, 422, 503),
                       200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "the report (JSON, or text/md/csv with format)"}},
            summary="The daily, weekly or monthly report (as `taskmon report`), computed now")
def report(request: Request, kind: ReportKind,
           date: str | None = Query(None, pattern=r"^\d{4}-\d{2}-\d{2}$",
                                    description="A day in the period, YYYY-MM-DD (default: the last complete period)."),
           format: ReportFormat = Query(ReportFormat.json, description="json, or as `taskmon report --format`."),
           exact: bool = Query(False, description="Read every run for the exact maximum runtimes; default: the "
                                                  "rollups, maximum runtimes as histogram bucket bounds.")):
    settings = request.app.state.settings
    try:
        period = report_period(kind.value, settings.tz, now=datetime.now(timezone.utc),
                               day=parse_day(date) if date else None)
    except BadInput as exc:
        raise bad_request(f"date: {exc}") from None
    with request.app.state.engine.connect() as conn:
        data = build_report(conn, period, exact=exact)
    if format is ReportFormat.json:
        return json_response(data, settings.tz)
    return PlainTextResponse(mask_urls(render(data, format.value)))
