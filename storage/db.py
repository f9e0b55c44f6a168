"""Engines and schema upgrades: the one place that knows how to open the history store.

Alembic is imported only when a migration runs: the revision is one query on ``alembic_version``,
and commands that find the schema current never pay for Alembic's import.
"""
from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from storage import search_index
from storage.store import (SCHEMA_HEAD, DatabaseError, missing_message, missing_table, no_schema_message,
                           not_a_database_message, open_history)

from storage.errors import first_line

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url_or_engine: str | Engine, **kwargs) -> Engine:
    """An Engine for a URL (or the Engine itself), SQLite tuned for one writer and many readers."""
    if isinstance(url_or_engine, Engine):
        return url_or_engine
    url = make_url(url_or_engine)
    if url.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def insert_for(dialect_name: str):
    """The INSERT construct of a database, the one with ON CONFLICT (upserts)."""
    from sqlalchemy.dialects import postgresql, sqlite  # the PostgreSQL dialect's import is ~10% of SQLAlchemy's

    if dialect_name == "sqlite":
        return sqlite.insert
    if dialect_name == "postgresql":
        return postgresql.insert
    raise ValueError(f"unsupported database {dialect_name!r}")


def dialect_insert(conn: Connection):
    """The INSERT construct of the connection's database, the one with ON CONFLICT (upserts)."""
    return insert_for(conn.dialect.name)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (CLI, reports) never block the daemon's writer, nor it them.
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across process crashes in WAL mode; only power loss can drop the last commits.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # The default page cache (2 MB). A larger one did not make the writer's SQL faster once its
    # batches were prepared by the helper process, and every pooled connection fills its own.
    cur.close()
    search_index.attach(dbapi_conn)  # the history search's text index, when `taskmon serve` keeps one


def release_idle_connections(engine: Engine) -> None:
    """SQLite: close the pooled connections nobody holds. Each keeps its page cache and its compiled
    statements (the writer's multi-row upserts with their triggers: ~1 MB each) in this process;
    called once a burst is over, they are opened again on next use. PostgreSQL keeps that memory
    in its server, and its connections stay."""
    if sqlite_path(engine) is not None:
        engine.dispose()


def sqlite_path(engine: Engine) -> str | None:
    """The file of a SQLite engine; None for PostgreSQL and in-memory databases."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _alembic_config(engine: Engine | None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The newest schema revision this code expects (the last migration's)."""
    return SCHEMA_HEAD


def migrations_head() -> str:
    """The newest revision among the migration scripts, as Alembic finds it."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision, read from ``alembic_version``; None when it has no schema."""
    with engine.connect() as conn:
        try:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except DBAPIError as exc:
            if missing_table(exc.orig):
                return None
            raise


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Create or bring the schema to ``revision``; return (before, after). Safe to run again."""
    from alembic import command

    _create_parent_dir(engine)
    try:
        before = current_revision(engine)
        command.upgrade(_alembic_config(engine), revision)
        return before, current_revision(engine)
    except SQLAlchemyError as exc:
        raise _store_error(engine, exc) from exc


def ensure_schema(engine: Engine) -> None:
    """Create the store or upgrade it when it is behind; one query when it is current.

    For what creates a history: `taskmon run`, the demo, the tasks app's worker and beat."""
    _create_parent_dir(engine)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        raise _store_error(engine, exc) from exc
    if current != SCHEMA_HEAD:
        log.info("upgrading %s from %s to %s", safe_url(engine), current, SCHEMA_HEAD)
        upgrade(engine)


def check_schema(engine: Engine) -> None:
    """An existing store, upgraded when it is behind: DatabaseError when there is none.

    For the commands that read or edit a history: they never create the file, nor the schema, and
    a SQLite file is looked at with the standard library first (SQLAlchemy's connection would make
    an empty file a WAL database)."""
    path = sqlite_path(engine)
    if path is not None:
        conn, current = open_history(path)
        conn.close()
    else:
        try:
            current = current_revision(engine)
        except SQLAlchemyError as exc:
            raise _store_error(engine, exc) from exc
    if current is None:
        raise DatabaseError(no_schema_message(sqlite_path(engine) or safe_url(engine)))
    if current != SCHEMA_HEAD:
        log.info("upgrading %s from %s to %s", safe_url(engine), current, SCHEMA_HEAD)
        upgrade(engine)


def require_existing(engine: Engine) -> None:
    """DatabaseError when the engine's SQLite file does not exist: connecting would create it."""
    path = sqlite_path(engine)
    if path is not None and not Path(path).exists():
        raise DatabaseError(missing_message(path))


def _create_parent_dir(engine: Engine) -> None:
    path = sqlite_path(engine)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _store_error(engine: Engine, exc: SQLAlchemyError) -> DatabaseError:
    if isinstance(exc, OperationalError) or _not_a_database(engine, exc):
        return DatabaseError(unreachable_message(engine, exc))
    reason = exc.orig if hasattr(exc, "orig") else exc
    return DatabaseError(f"cannot upgrade {safe_url(engine)}: {exc.__class__.__name__}: {first_line(reason)}")


def _not_a_database(engine: Engine, exc: BaseException) -> bool:
    import sqlite3

    orig = getattr(exc, "orig", exc)
    return (engine.dialect.name == "sqlite" and isinstance(orig, sqlite3.DatabaseError)
            and not isinstance(orig, sqlite3.OperationalError))


def safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def unreachable_message(engine: Engine, exc: Exception) -> str:
    """One line: why the store cannot be used, and what to do."""
    if isinstance(exc, DatabaseError):
        return str(exc)
    orig = getattr(exc, "orig", exc)
    reason = first_line(orig)
    path = sqlite_path(engine)
    if path is not None and _not_a_database(engine, exc):
        return not_a_database_message(path, reason)
    if engine.dialect.name == "postgresql" and _missing_database(orig):
        name = engine.url.database
        return (f"database {name!r} does not exist at {safe_url(engine)}: create it (createdb {name}), "
                "then `taskmon db upgrade`; or set TASKMON_DATABASE_URL")
    return f"cannot reach the database at {safe_url(engine)}: {reason}; start it or set TASKMON_DATABASE_URL"


def _missing_database(orig: BaseException) -> bool:
    """Whether PostgreSQL refused the connection because the database does not exist (3D000)."""
    return getattr(orig, "sqlstate", None) == "3D000" or ("database" in str(orig) and "does not exist" in str(orig))
