"""The dashboard's shell: templates, static files, security headers, login and logout, the overview.

Pages are FastAPI routes beside the API, guarded by the same role dependency (monitor.http.auth.allow),
which also accepts the session cookie made here at login. Handlers are plain functions, so FastAPI
runs their SQL in its thread pool, off the event loop.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader

from monitor.commands.render import fmt_duration, fmt_rate, fmt_time
from monitor.http import charts, session
from monitor.http.auth import NO_AUTH, allow, session_principal
from monitor.http.payload import mask_urls
from storage.tokens import hash_token, lookup

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
NAV = (("overview", "/", "Overview"), ("tasks", "/tasks", "Tasks"), ("workers", "/workers", "Workers"),
       ("queues", "/queues", "Queues"), ("dead-letters", "/dead-letters", "Dead letters"), ("alerts", "/alerts", "Alerts"),
       ("schedule", "/schedule", "Schedule"))
# The overview's windows: label -> length.
WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(days=1), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}
# The charts' steps per window: whole minutes, or whole hours from a day up, so each step is a sum
# of whole rollup rows (storage.series.rollup_series).
CHART_STEPS = {"1h": (timedelta(minutes=2), 30), "6h": (timedelta(minutes=12), 30),
               "24h": (timedelta(hours=1), 24), "7d": (timedelta(hours=6), 28), "30d": (timedelta(days=1), 30)}

templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                        lstrip_blocks=True)
templates.filters["duration"] = fmt_duration
templates.filters["rate"] = fmt_rate
templates.filters["masked"] = lambda text: mask_urls(text) if isinstance(text, str) else text

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """A page was asked for without a session: the browser goes to the login page."""


def signed_in(request: Request) -> None:
    """Runs before the role check on pages: no session (nor bearer token) means the login page, not a 401."""
    if request.app.state.insecure_no_auth or request.headers.get("authorization"):
        return
    if session.read(request) is None or session_principal(request) is None:
        raise LoginRequired()


def page(role: str = "viewer"):
    """The dependencies of a page that needs ``role``."""
    return [Depends(signed_in), Depends(allow(role))]


def local(request: Request, value: datetime | None) -> str:
    return fmt_time(value, request.app.state.settings.tz)


def render(request: Request, template: str, /, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A template as an HTML response with the security headers; times in the configured zone."""
    tz = request.app.state.settings.tz
    principal = getattr(request.state, "principal", None)
    current = session.read(request)
    body = templates.get_template(template).render(
        request=request, principal=principal, may=(lambda role: principal is not None and principal.may(role)),
        csrf=current.csrf if current else "", zone=request.app.state.settings.timezone, nav=NAV,
        t=lambda value: fmt_time(value, tz), **context)
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def done(location: str) -> JSONResponse:
    """What an action answers the page script: where to go next."""
    return JSONResponse({"location": location}, headers={"Cache-Control": "no-store"})


# -- login / logout ---------------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    # Only a path on this server: never an open redirect to another site.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login")
def login_page(request: Request, next: str | None = Query(None, max_length=2000)):
    return render(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login")
def login(request: Request, token: str = Form("", max_length=512), next: str = Form("/", max_length=2000)):
    target = _safe_next(next)
    if request.app.state.insecure_no_auth:
        response = RedirectResponse(target, status_code=303)
        session.start(request, response, session.NO_AUTH_HASH)
        return response
    address = request.client.host if request.client else "unknown"
    limiter = request.app.state.bad_tokens
    if limiter.blocked(address):
        return render(request, "login.html", status_code=429, next=target,
                      error="too many bad tokens from this address; wait a minute and retry")
    with request.app.state.engine.connect() as conn:
        row = lookup(conn, token.strip()) if token.strip() else None
    if row is None:
        limiter.hit(address)
        return render(request, "login.html", status_code=401, next=target,
                      error="that token is not valid (unknown or revoked); `taskmon token create` makes one")
    response = RedirectResponse(target, status_code=303)
    session.start(request, response, hash_token(token.strip()))
    return response


@router.post("/logout", dependencies=page("viewer"))
def logout(request: Request):
    response = done("/login")
    session.end(request, response)
    return response


# -- overview ---------------------------------------------------------------------------------------

QUEUES_SEEN = timedelta(days=1)  # the overview's queue depths: queues that had runs in the last day


def chart_end(now: datetime, step: timedelta) -> datetime:
    """Where the charts' last step ends: the next whole hour for steps of whole hours, else the next whole minute."""
    from storage.rollups import ceil_hour, ceil_minute

    return ceil_hour(now) if step % timedelta(hours=1) == timedelta(0) else ceil_minute(now)


def overview_data(engine, settings, now: datetime, window: str) -> dict[str, Any]:
    """Everything the overview shows, read through the storage functions the CLI uses.

    Counts, charts and per-name statistics come from the rollups, so a 30-day window costs about
    what a 1-hour one does. The reads are independent, so they run at once on connections of
    their own: the page waits for the slowest read, not for their sum.
    """
    from concurrent.futures import ThreadPoolExecutor

    from monitor.health import judge
    from monitor.worker_list import workers_seen
    from storage.alerts import list_alerts
    from storage.deadletters import count_dead_letters
    from storage.health import latest_status, list_gaps
    from storage.series import queues_seen, rollup_state_counts, window_rollups

    step, steps = CHART_STEPS[window]
    end = chart_end(now, step)
    since = end - step * steps

    def rest(conn) -> dict[str, Any]:
        status = latest_status(conn)
        return {"status": status, "health": judge(status, now, settings.heartbeat_stale_seconds) if status else None,
                "workers": workers_seen(conn, now, settings), "dead_letters": count_dead_letters(conn),
                "gaps": [g for g in list_gaps(conn, limit=100) if (g.get("ended_at") or now) >= since],
                "alerts": list_alerts(conn, since=since, limit=10),
                "queue_names": queues_seen(conn, now - QUEUES_SEEN)}

    reads = {"counts": rollup_state_counts, "series": lambda conn: window_rollups(conn, end, step, steps), "rest": rest}

    def read(fn):
        with engine.connect() as conn:
            return fn(conn)

    with ThreadPoolExecutor(len(reads), thread_name_prefix="overview") as pool:
        futures = {key: pool.submit(read, fn) for key, fn in reads.items()}
        data = {key: f.result() for key, f in futures.items()}
    series = data["series"]
    done, failed = sum(series["completed"]), sum(series["failed"])
    minutes = max((now - since).total_seconds(), 1.0) / 60
    data["totals"] = {"since": since, "completed": done, "failure_rate": failed / done if done else None,
                      "throughput_per_min": done / minutes}
    return {**data.pop("rest"), **data}


@router.get("/", dependencies=page("viewer"))
def overview(request: Request, window: str = Query("1h")):
    if window not in WINDOWS:
        return render(request, "error.html", status_code=400, title="Bad window",
                      detail=f"window {window!r}: use one of {', '.join(WINDOWS)}")
    settings = request.app.state.settings
    now = datetime.now(timezone.utc)
    data = overview_data(request.app.state.engine, settings, now, window)
    series, tz = data["series"], settings.tz
    fmt = "%H:%M" if WINDOWS[window] <= timedelta(days=1) else "%m-%d %H:%M"
    labels = [s.astimezone(tz).strftime(fmt) for s in series["starts"]]
    # Per minute of each step that has passed: the last step is still filling.
    minutes = [max(min(series["step_seconds"], (now - s).total_seconds()), 1.0) / 60 for s in series["starts"]]
    throughput = charts.line_chart("completed runs per minute", labels,
                                   [("completed/min", [c / m for c, m in zip(series["completed"], minutes)])])
    failure = charts.line_chart("failure rate", labels,
                                [("failed %", [100 * f / c if c else None
                                               for f, c in zip(series["failed"], series["completed"])])], unit="%")
    slowest = sorted((t for t in series["tasks"] if t["runtime_p95"] is not None), key=lambda t: -t["runtime_p95"])[:10]
    p95 = charts.bar_chart("runtime p95 per task name (the upper bound of its histogram bucket)",
                           [(t["name"] or "-", t["runtime_p95"]) for t in slowest], unit="s")
    return render(request, "overview.html", window=window, windows=list(WINDOWS), now=now,
                  throughput=throughput, failure=failure, p95=p95,
                  queues=queue_depths(settings, data.pop("queue_names")), **data)


def queue_depths(settings, names: list[str]) -> dict[str, Any]:
    """Live depths of ``names`` (celery's default queue when none); the broker's error as text when it cannot answer."""
    from monitor.broker.queues import BrokerError, queue_depths as depths

    try:
        return {"rows": depths(settings, names or ["celery"]), "error": None}
    except BrokerError as exc:
        return {"rows": [], "error": str(exc)}


def install(app: FastAPI) -> None:
    """Serve the dashboard on ``app``: static files, pages, and the login redirect."""
    from monitor.http import pages_manage, pages_tasks, pages_workers

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    async def to_login(request: Request, exc: LoginRequired) -> Response:
        if request.method != "GET":
            return JSONResponse({"type": "about:blank", "title": "Unauthorized", "status": 401,
                                 "detail": "log in first"}, status_code=401, media_type="application/problem+json")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    app.add_exception_handler(LoginRequired, to_login)
    for r in (router, pages_tasks.router, pages_workers.router, pages_manage.router):
        app.include_router(r)
