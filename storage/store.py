"""The history store as it is: is it there, is it a database, which schema revision it has.

No SQLAlchemy and no Alembic here: a read command asks these questions with the standard
library (one query for the revision), and reaches for Alembic only when an upgrade is due.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote, unquote

# The newest migration in storage/migrations/versions: what the code expects to find.
# tests/test_store_head.py checks it against Alembic's head.
SCHEMA_HEAD = "0016_pg_search_index"


class DatabaseError(RuntimeError):
    """The history store cannot be reached, opened or upgraded; the message says what to do."""


def sqlite_file(url: str) -> str | None:
    """The file a plain ``sqlite:///path`` URL names; None for other databases, in-memory ones and
    URLs with options (those are left to SQLAlchemy)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("sqlite", "sqlite+pysqlite") or not rest.startswith("/") or "?" in rest:
        return None
    path = unquote(rest[1:])
    return path if path not in ("", ":memory:") else None


def missing_message(path: str) -> str:
    return (f"no taskmon history at {path}: the file does not exist; `taskmon run` or `taskmon db upgrade` "
            "creates it, or point --db / TASKMON_DATABASE_URL at an existing one")


def not_a_database_message(path: str, reason: str) -> str:
    return f"{path} is not a SQLite database ({reason}): point --db / TASKMON_DATABASE_URL at taskmon's history file"


def no_schema_message(where: str) -> str:
    return f"{where} holds no taskmon history yet (no schema): `taskmon db upgrade` or `taskmon run` creates it"


def require_file(path: str) -> None:
    """DatabaseError unless ``path`` exists: reading a history must never create an empty one."""
    if not Path(path).exists():
        raise DatabaseError(missing_message(path))


def open_history(path: str, timeout: float = 30) -> tuple[sqlite3.Connection, str | None]:
    """A plain connection to the existing SQLite history file ``path`` and its schema revision (None:
    no schema), in one query; DatabaseError when there is no such file or it is not a database.

    Opened read-write (mode=rw never creates a file) so that SQLite may create the WAL's
    shared-memory file; nothing is written."""
    require_file(path)
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=timeout)
    except sqlite3.OperationalError as exc:
        raise DatabaseError(f"cannot open the SQLite database {path}: {exc}") from None
    try:
        from storage import search_index

        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        search_index.attach(conn)
    except sqlite3.OperationalError as exc:
        if missing_table(exc):
            return conn, None
        conn.close()
        raise DatabaseError(f"cannot read the SQLite database {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:  # the file's header is not SQLite's
        conn.close()
        raise DatabaseError(not_a_database_message(path, str(exc))) from None
    return conn, (row[0] if row else None)


def missing_table(exc: BaseException) -> bool:
    """Whether a driver error says the table does not exist (SQLite, PostgreSQL)."""
    return getattr(exc, "sqlstate", None) == "42P01" or "no such table" in str(exc)
