"""/metrics: the Prometheus exposition (monitor.metrics), for a viewer token.

Prometheus sends the token with ``authorization: {type: Bearer, credentials_file: ...}`` in its
scrape config. taskmon_* series are read from daemon_status, one per running daemon.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from monitor.http.auth import allow
from monitor.metrics import render

router = APIRouter(tags=["metrics"])


@router.get("/metrics", dependencies=[Depends(allow("viewer"))], response_class=Response,
            summary="Prometheus metrics: celery-exporter's names and labels, and taskmon's own")
def metrics(request: Request) -> Response:
    body, content_type = render(request.app.state.engine, request.app.state.settings)
    return Response(body, media_type=content_type)
