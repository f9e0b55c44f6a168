"""/api/v1/tokens: admins manage the API's tokens (as `taskmon token`)."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

from fastapi import Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from monitor.http.audit import audited
from monitor.http.auth import allow
from monitor.http.payload import json_response
from monitor.http.problems import api_router, Problem, not_found, responses
from storage.tokens import TokenError, create_token, list_tokens, revoke_token

router = api_router("tokens")


class Role(str, Enum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


class Token(BaseModel):
    id: int
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


class NewToken(BaseModel):
    name: str = Field(..., min_length=1, max_length=255, pattern=r"\S", description="Who holds it.")
    role: Role


class CreatedToken(BaseModel):
    name: str
    role: str
    token: str = Field(..., description="Shown only this once; only its hash is stored.")


@router.get("/tokens", response_model=list[Token], dependencies=[Depends(allow("admin"))],
            responses=responses(401, 403, 503), summary="The API tokens (never the tokens themselves)")
def tokens(request: Request):
    with request.app.state.engine.connect() as conn:
        rows = list_tokens(conn)
    return json_response(rows, request.app.state.settings.tz)


@router.post("/tokens", response_model=CreatedToken, status_code=201, dependencies=[Depends(allow("admin"))],
             responses=responses(401, 403, 409, 422, 503), summary="Create a token; it is shown once")
def new_token(request: Request, body: NewToken):
    with audited(request, "token.create", body.name) as entry:
        try:
            with request.app.state.engine.begin() as conn:
                token = create_token(conn, datetime.now(timezone.utc), body.name, body.role.value)
        except TokenError as exc:
            raise Problem(409, "Conflict", str(exc)) from None
        entry.detail = {"role": body.role.value}
    return json_response({"name": body.name, "role": body.role.value, "token": token}, request.app.state.settings.tz,
                         status=201)


@router.delete("/tokens/{name}", status_code=204, dependencies=[Depends(allow("admin"))],
               responses=responses(401, 403, 404, 422, 503), summary="Revoke a token: refused from the next request on")
def revoke(request: Request, name: str = Path(..., min_length=1, max_length=255)):
    with audited(request, "token.revoke", name):
        try:
            with request.app.state.engine.begin() as conn:
                revoke_token(conn, datetime.now(timezone.utc), name)
        except TokenError as exc:
            raise not_found(str(exc)) from None
    return Response(status_code=204)
