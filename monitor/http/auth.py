"""Who is calling and what they may do: bearer token -> Principal, roles checked in one dependency.

Routes declare the least role they need with ``Depends(allow("operator"))``; pages use the same.
Repeated bad tokens from one address are refused (429) for a while, by the `limits` library.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import parse as parse_limit
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from monitor.http.problems import Problem
from storage.tokens import ROLES, lookup

bearer = HTTPBearer(auto_error=False, description="A token from `taskmon token create`.")


@dataclass(frozen=True)
class Principal:
    name: str  # the token's name; the audit log's actor
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


NO_AUTH = Principal("anonymous (--insecure-no-auth)", "admin")


class BadTokenLimiter:
    """Counts bad tokens per client address in a moving window (e.g. "20/minute")."""

    def __init__(self, limit: str):
        self.item = parse_limit(limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def blocked(self, address: str) -> bool:
        return not self.limiter.test(self.item, address)

    def hit(self, address: str) -> None:
        self.limiter.hit(self.item, address)

    def retry_after(self, address: str) -> int:
        reset, _remaining = self.limiter.get_window_stats(self.item, address)
        return max(1, int(reset - time.time()) + 1)


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, {"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller of ``request``, or a 401 (429 once an address has sent too many bad tokens)."""
    state = request.app.state
    if state.insecure_no_auth:
        return NO_AUTH
    if credentials is None:
        raise _unauthorized("send a token: Authorization: Bearer <token> (`taskmon token create` makes one)")
    address = request.client.host if request.client else "unknown"
    limiter: BadTokenLimiter = state.bad_tokens
    with state.engine.connect() as conn:
        row = lookup(conn, credentials.credentials)
    if row is not None:
        return Principal(row["name"], row["role"])
    if limiter.blocked(address):
        raise Problem(429, "Too many bad tokens", f"too many bad tokens from {address}; wait and retry",
                      {"Retry-After": str(limiter.retry_after(address)), "WWW-Authenticate": "Bearer"})
    limiter.hit(address)
    raise _unauthorized("the token is not valid (unknown or revoked)")


class Allow:
    """The dependency that lets a caller in when their role is at least ``role``."""

    def __init__(self, role: str):
        assert role in ROLES, role
        self.role = role

    def __call__(self, request: Request,
                 credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        principal = authenticate(request, credentials)
        if not principal.may(self.role):
            raise Problem(403, "Forbidden", f"this needs the {self.role} role; token {principal.name!r} is "
                                            f"{principal.role}")
        request.state.principal = principal
        return principal


_ALLOW = {role: Allow(role) for role in ROLES}


def allow(role: str) -> Allow:
    return _ALLOW[role]


def required_role(route) -> str | None:
    """The role a route needs (None: open to all), read from its dependencies (the auth matrix test)."""
    dependant = getattr(route, "dependant", None)
    for dep in dependant.dependencies if dependant is not None else ():
        if isinstance(dep.call, Allow):
            return dep.call.role
    return None
