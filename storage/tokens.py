"""The HTTP API's bearer tokens: created once, stored as a SHA-256 hash, looked up, revoked."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from storage.schema import api_tokens
from storage.sql import fetch

# Lowest to highest; a role may do everything the ones before it may.
ROLES = ("viewer", "operator", "admin")
PREFIX = "tm_"  # makes a leaked token easy to spot in logs and secret scanners


class TokenError(ValueError):
    """A token cannot be created or revoked as asked (a duplicate name, an unknown one)."""


def hash_token(token: str) -> str:
    # A random 256-bit token cannot be guessed, so a fast hash is enough; a slow password hash
    # would only add its cost to every request.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: Connection, now: datetime, name: str, role: str) -> str:
    """A new token for ``name`` with ``role``; returned once, only its hash is stored."""
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not name.strip():
        raise TokenError("a token needs a name (who holds it)")
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        with conn.begin_nested():
            conn.execute(api_tokens.insert().values(name=name, role=role, token_hash=hash_token(token),
                                                    created_at=now))
    except IntegrityError:
        raise TokenError(f"a token named {name!r} exists already; revoke it or pick another name") from None
    return token


def lookup(conn: Connection, token: str) -> dict[str, Any] | None:
    """The valid (not revoked) token row for a presented token, else None."""
    return lookup_hash(conn, hash_token(token))


def lookup_hash(conn: Connection, token_hash: str) -> dict[str, Any] | None:
    """The valid token row with this hash (what a dashboard session holds), else None."""
    # Every API request asks this (a revoked token is refused at once, so nothing is cached): one
    # probe of the unique token_hash index, as SQL text through storage.sql.fetch (on SQLite, the
    # sqlite3 connection itself), with none of the statement building of a select() per request.
    rows = fetch(conn, "SELECT id, name, role FROM api_tokens WHERE token_hash = :h AND revoked_at IS NULL",
                 {"h": token_hash}, {})
    return rows[0] if rows else None


def list_tokens(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.role, api_tokens.c.created_at,
                               api_tokens.c.revoked_at).order_by(api_tokens.c.id)).mappings()
    return [dict(r) for r in rows]


def revoke_token(conn: Connection, now: datetime, name: str) -> None:
    result = conn.execute(api_tokens.update().where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                          .values(revoked_at=now))
    if result.rowcount == 0:
        raise TokenError(f"no valid token named {name!r}; `taskmon token list` shows them")


def any_valid(conn: Connection) -> bool:
    return conn.execute(select(api_tokens.c.id).where(api_tokens.c.revoked_at.is_(None)).limit(1)).first() is not None
