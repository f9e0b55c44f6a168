"""Errors as RFC 9457 problem details: a 4xx for the caller's mistakes, 503 for a dependency that is down.

Handlers raise ``Problem``; the exception handlers here turn validation errors, database and broker
failures and anything unexpected into the same JSON shape, never a traceback and never a 500.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.errors import first_line
from tasks.redact import mask_url

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class ProblemDetail(BaseModel):
    """What every error response holds."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class Problem(Exception):
    """An error a handler answers with: ``status``, a short ``title``, a ``detail`` saying what to do."""

    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


def bad_request(detail: str) -> Problem:
    return Problem(400, "Bad request", detail)


def not_found(detail: str) -> Problem:
    return Problem(404, "Not found", detail)


def unavailable(detail: str) -> Problem:
    return Problem(503, "Service unavailable", detail)


def problem_response(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": mask_url(detail)}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc.status, exc.title, exc.detail, exc.headers)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return problem_response(422, "Invalid request", _validation_detail(exc))


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized", 403: "Forbidden"}
    detail = exc.detail if isinstance(exc.detail, str) else titles.get(exc.status_code, "error")
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.url.path}"
    return problem_response(exc.status_code, titles.get(exc.status_code, "Error"), detail, exc.headers)


async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
    log.warning("%s %s: database error: %s", request.method, request.url.path, first_line(exc))
    return problem_response(503, "Database unavailable", f"the history database failed: {first_line(exc)}")


def dependency_down(title: str):
    """A handler answering an exception whose message says what is down: 503 with that message."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, first_line(exc))
        return problem_response(503, title, str(exc))

    return handler


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not the caller's fault and not a dependency down: logged with its traceback under a
    # reference the answer gives, so the operator can find it; the caller sees no internals.
    ref = uuid.uuid4().hex[:12]
    log.error("%s %s: unexpected error (ref %s)", request.method, request.url.path, ref, exc_info=exc)
    return problem_response(503, "Service unavailable", f"unexpected error, logged as ref {ref}")


def install(app: FastAPI, extra: dict[type[BaseException], Any] | None = None) -> None:
    """Register the handlers; ``extra`` maps more exception types (a broker error) to their 503 detail."""
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(SQLAlchemyError, _database)
    app.add_exception_handler(Exception, _unexpected)
    for exc_type, handler in (extra or {}).items():
        app.add_exception_handler(exc_type, handler)


# The problem responses every route can give, for the OpenAPI document.
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ProblemDetail, "content": {MEDIA_TYPE: {}}, "description": "problem details"}
            for s in statuses}


# Every /api/v1 route may answer these; routes add their own (404, 409).
COMMON = (400, 401, 403, 422, 429, 503)


def api_router(tag: str):
    """A router under /api/v1 whose routes document the common problem responses."""
    from fastapi import APIRouter

    return APIRouter(prefix="/api/v1", tags=[tag], responses=responses(*COMMON))
