"""create_app: the FastAPI application `taskmon serve` runs; one router per area, auth in monitor.http.auth."""
from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from monitor.broker.calls import BadRequest
from monitor.broker.queues import BrokerError as QueueBrokerError
from monitor.http import alerts, audit, control, daemon, deadletters, health, metrics, problems, queues, schedule, \
    stats, tasks, tokens, workers
from monitor.http import pages, session  # the dashboard
from monitor.http.auth import BadTokenLimiter
from tasks.replay import BrokerError as SendBrokerError, RecordError
from tasks.settings import Settings

API_PREFIX = "/api/v1"
ROUTERS = (health.router, tasks.router, stats.router, workers.router, queues.router, deadletters.router,
           alerts.router, schedule.router, daemon.router, audit.router, tokens.router, control.router, metrics.router)
# What a broker that went away raises, in each module that talks to it: each a 503 with its message.
BROKER_ERRORS = (QueueBrokerError, SendBrokerError, RecordError)


def create_app(settings: Settings, engine: Engine, *, insecure_no_auth: bool = False, routers=(),
               session_secret: bytes | None = None) -> FastAPI:
    """The app over one history ``engine``; ``routers`` adds more (the dashboard's pages).

    ``session_secret`` signs the dashboard's session cookies; the server processes of one
    `taskmon serve` share it (without it, a fresh one per app)."""
    from importlib.metadata import version

    app = FastAPI(
        title="taskmon",
        version=version("taskmon"),
        summary="Persistent Celery history, the broker and the workers over HTTP.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,  # bearer tokens only: no OAuth2 login to come back from
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.insecure_no_auth = insecure_no_auth
    app.state.bad_tokens = BadTokenLimiter(settings.bad_token_limit)
    if session_secret is not None:
        app.state.session_signer = session.signer(session_secret)
    problems.install(app, {BadRequest: problems.caller_error,
                           **{exc: problems.dependency_down("Broker unavailable") for exc in BROKER_ERRORS}})
    app.add_middleware(problems.RejectNul)
    for router in (*ROUTERS, *routers):
        app.include_router(router)
    pages.install(app)  # the dashboard, on the same app and roles
    return app


def iter_routes(routes):
    """Every route of an app or router, those of included routers too (FastAPI may wrap them lazily)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from iter_routes(included.routes)
        else:
            yield route
