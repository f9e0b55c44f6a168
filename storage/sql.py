"""SQL text on either connection: a SQLAlchemy ``Connection`` or a plain ``sqlite3`` one.

The history's read queries (storage.history) are written as SQL text with ``:name`` parameters so
that `taskmon history` and `show` can run them on a SQLite file without importing SQLAlchemy,
whose import alone takes longer than such a command should in all. Values are bound and read back
as the schema's SQLAlchemy types would do it: times as UTC (text on SQLite), UTC-aware datetimes
and bools out.
"""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from storage.params import bind_time

UTC = timezone.utc


def dialect(conn) -> str:
    """"sqlite" or "postgresql": the database behind ``conn``."""
    return "sqlite" if isinstance(conn, sqlite3.Connection) else conn.dialect.name


def bind(conn_dialect: str, value: datetime) -> Any:
    """A time as a parameter: what storage.types.UTCDateTime binds on that database."""
    return bind_time(value, as_text=conn_dialect == "sqlite")


def epoch_seconds(conn_dialect: str, column: str) -> str:
    """SQL for ``column`` (a stored time) as whole seconds since 1970, rounded down: steps of a
    series are integer divisions of it, exact at every boundary."""
    if conn_dialect == "sqlite":
        return f"CAST(strftime('%s', {column}) AS INTEGER)"
    return f"CAST(floor(extract(epoch from {column})) AS BIGINT)"


def to_utc(value) -> datetime | None:
    """A stored time read back: UTC text (SQLite) or a datetime, as a UTC-aware datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            # SQLite's text is UTC without an offset; parsing it with one is a single C call,
            # where datetime.replace(tzinfo=...) alone costs several times the parse.
            parsed = datetime.fromisoformat(value + "+00:00")
        except ValueError:  # text that carries its own offset
            parsed = None
        if parsed is not None and parsed.tzinfo is UTC:
            return parsed
        value = datetime.fromisoformat(value)
    if value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_bool(value) -> bool | None:
    return None if value is None else bool(value)


def sqlite_driver(conn) -> sqlite3.Connection | None:
    """The sqlite3 connection under a SQLAlchemy one on SQLite, else None.

    The same SQL text runs on it with the same ``:name`` parameters; SQLAlchemy's statement and
    result machinery cost more than SQLite took to answer a page of the API (about 0.5 ms of a
    1 ms request). It is the connection SQLAlchemy holds, so what this transaction wrote is seen.
    """
    if getattr(getattr(conn, "dialect", None), "name", None) != "sqlite":
        return None
    driver = conn.connection.driver_connection
    return driver if isinstance(driver, sqlite3.Connection) else None


def fetch(conn, sql: str, params: Mapping[str, Any], decode: Mapping[str, Callable[[Any], Any]]) -> list[dict[str, Any]]:
    """The rows of ``sql`` as dicts, each column whose name is in ``decode`` passed through its function."""
    raw = conn if isinstance(conn, sqlite3.Connection) else sqlite_driver(conn)
    if raw is not None:
        cursor = raw.execute(sql, params)
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    else:
        from sqlalchemy import text

        result = conn.execute(text(sql), dict(params))
        names = list(result.keys())
        rows = result.fetchall()
    decoders = [(i, decode[n]) for i, n in enumerate(names) if n in decode]
    out = []
    for row in rows:
        values = list(row)
        for i, fn in decoders:
            values[i] = fn(values[i])
        out.append(dict(zip(names, values)))
    return out
