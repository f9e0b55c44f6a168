"""The dashboard's session: an API token exchanged at login for a signed cookie, and its CSRF token.

The cookie holds the token's hash (never the token) and a random CSRF token, signed with
itsdangerous; every request looks the hash up again, so a revoked token is refused at once.
HttpOnly and SameSite=Strict always, Secure when the request came over TLS. State-changing
requests made with the cookie must echo the CSRF token in the X-CSRF-Token header (the page
script reads it from <meta name="csrf-token">): a form posted from another site cannot.
"""
from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "taskmon_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_AGE = 12 * 3600  # a session lasts a working day; then log in again
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_AUTH_HASH = "-"  # the session of a server started with --insecure-no-auth


@dataclass(frozen=True)
class Session:
    token_hash: str
    csrf: str


def signer(secret: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="taskmon-session")


def serializer(request: Request) -> URLSafeTimedSerializer:
    state = request.app.state
    if getattr(state, "session_signer", None) is None:
        # A fresh secret per server start: sessions end when the server restarts (log in again).
        state.session_signer = signer(secrets.token_bytes(32))
    return state.session_signer


def read(request: Request) -> Session | None:
    """The request's valid session cookie, else None (absent, forged, or older than MAX_AGE)."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = serializer(request).loads(raw, max_age=MAX_AGE)
    except BadSignature:  # also SignatureExpired
        return None
    if not isinstance(data, dict) or not isinstance(data.get("h"), str) or not isinstance(data.get("c"), str):
        return None
    return Session(data["h"], data["c"])


def start(request: Request, response: Response, token_hash: str) -> Session:
    session = Session(token_hash, secrets.token_urlsafe(32))
    value = serializer(request).dumps({"h": session.token_hash, "c": session.csrf})
    response.set_cookie(COOKIE, value, max_age=MAX_AGE, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return session


def end(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")


def csrf_ok(request: Request, session: Session) -> bool:
    """A safe method, or the X-CSRF-Token header equal to the session's token."""
    if request.method in SAFE_METHODS:
        return True
    sent = request.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent, session.csrf)
