"""task_runs: text search over name, args, kwargs, result and exception; started_at and runtime indexes

SQLite: no search index (an FTS5 trigram table kept by triggers tripled the writer's cost per
event); the search scans. PostgreSQL: a pg_trgm GIN index over the same columns joined by a newline, which serves
``LIKE '%text%'``. When pg_trgm cannot be created (not installed, or no right to create it) the
migration logs why and goes on: search then scans, with the same results, only slower.
storage.search writes the queries that use them.

Revision ID: 0012_history_search
Revises: 0009_api_tokens
"""
import logging

import sqlalchemy as sa
from alembic import op

revision = "0012_history_search"
down_revision = "0009_api_tokens"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

COLUMNS = ("name", "args", "kwargs", "result", "exception")
# Frozen copy of storage.search.PG_SEARCH_TEXT: the query must name the indexed expression exactly.
PG_SEARCH_TEXT = ("(COALESCE(task_id, '') || E'\\n' || COALESCE(name, '') || E'\\n' || COALESCE(args, '') || E'\\n' "
                  "|| COALESCE(kwargs, '') || E'\\n' || COALESCE(result, '') || E'\\n' || COALESCE(exception, ''))")
PG_INDEX = "ix_task_runs_search_trgm"


def _pg_up() -> None:
    bind = op.get_bind()
    available = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).first()
    if available is None:
        log.warning("pg_trgm is not installed on this PostgreSQL server: history search will scan task_runs "
                    "(install the postgresql-contrib package and run `taskmon db upgrade` again to index it)")
        return
    with bind.begin_nested() as savepoint:
        try:
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        except sa.exc.DBAPIError as exc:
            savepoint.rollback()
            log.warning("cannot create the pg_trgm extension (%s): history search will scan task_runs; "
                        "a superuser can run CREATE EXTENSION pg_trgm in this database",
                        str(exc.orig).splitlines()[0])
            return
    op.execute(f"CREATE INDEX {PG_INDEX} ON task_runs USING gin ({PG_SEARCH_TEXT} gin_trgm_ops)")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        _pg_up()
    op.create_index("ix_task_runs_started_at", "task_runs", ["started_at"])
    op.create_index("ix_task_runs_runtime", "task_runs", ["runtime"])


def downgrade() -> None:
    op.drop_index("ix_task_runs_runtime", table_name="task_runs")
    op.drop_index("ix_task_runs_started_at", table_name="task_runs")
    if op.get_bind().dialect.name != "sqlite":
        op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
