"""create_app: the FastAPI application `taskmon serve` runs; one router per area, auth in monitor.http.auth."""
from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from monitor.http import health, pages, problems, tasks
from monitor.http.auth import BadTokenLimiter
from tasks.settings import Settings

API_PREFIX = "/api/v1"
ROUTERS = (health.router, tasks.router)
DEFAULT_BAD_TOKEN_LIMIT = "20/minute"


def create_app(settings: Settings, engine: Engine, *, insecure_no_auth: bool = False,
               bad_token_limit: str = DEFAULT_BAD_TOKEN_LIMIT, routers=()) -> FastAPI:
    """The app over one history ``engine``; ``routers`` adds more (the dashboard's pages)."""
    from importlib.metadata import version

    app = FastAPI(
        title="taskmon",
        version=version("taskmon"),
        summary="Persistent Celery history, the broker and the workers over HTTP.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.insecure_no_auth = insecure_no_auth
    app.state.bad_tokens = BadTokenLimiter(bad_token_limit)
    problems.install(app)
    for router in (*ROUTERS, *routers):
        app.include_router(router)
    pages.install(app)  # the dashboard, on the same app and roles
    return app
