"""Engines and schema upgrades: the one place that knows how to open the history store."""
from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from storage.errors import first_line

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseError(RuntimeError):
    """The history store cannot be reached or upgraded; the message says what to do."""


def make_engine(url_or_engine: str | Engine, **kwargs) -> Engine:
    """An Engine for a URL (or the Engine itself), SQLite tuned for one writer and many readers."""
    if isinstance(url_or_engine, Engine):
        return url_or_engine
    url = make_url(url_or_engine)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def insert_for(dialect_name: str):
    """The INSERT construct of a database, the one with ON CONFLICT (upserts)."""
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


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``revision``; return (before, after). Safe to run again."""
    try:
        before = current_revision(engine)
        command.upgrade(_alembic_config(engine), revision)
        return before, current_revision(engine)
    except OperationalError as exc:
        raise DatabaseError(unreachable_message(engine, exc)) from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot upgrade {safe_url(engine)}: {exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}") from exc


def ensure_schema(engine: Engine) -> None:
    """Upgrade the database when it is behind (an empty one included); cheap when it is current."""
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise DatabaseError(unreachable_message(engine, exc)) from exc
    if current != head_revision():
        log.info("upgrading %s from %s to %s", safe_url(engine), current, head_revision())
        upgrade(engine)


def safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def unreachable_message(engine: Engine, exc: Exception) -> str:
    reason = first_line(exc)
    return f"cannot reach the database at {safe_url(engine)}: {reason}; start it or set TASKMON_DATABASE_URL"
