"""PostgreSQL: the history search's trigram index moves off task_runs into run_search, kept by `taskmon serve`

The GIN index on task_runs put every written version of a run into the index, in the daemon's
write; run_search holds one entry per run, written by the server's indexer from the runs written
since its mark (storage.pg_search_index). SQLite: nothing (its search index is a file of its own).

Revision ID: 0016_pg_search_index
Revises: 0015_rollup_workers
"""
import sqlalchemy as sa
from alembic import op

revision = "0016_pg_search_index"
down_revision = "0015_rollup_workers"
branch_labels = None
depends_on = None

OLD_INDEX = "ix_task_runs_search_trgm"
# Frozen copy of storage.search.PG_SEARCH_TEXT, for the downgrade's index.
PG_SEARCH_TEXT = ("(COALESCE(task_id, '') || E'\\n' || COALESCE(name, '') || E'\\n' || COALESCE(args, '') || E'\\n' "
                  "|| COALESCE(kwargs, '') || E'\\n' || COALESCE(result, '') || E'\\n' || COALESCE(exception, ''))")


def _has_trgm() -> bool:
    return op.get_bind().execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first() is not None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("CREATE TABLE run_search (task_id VARCHAR(255) PRIMARY KEY "
               "REFERENCES task_runs (task_id) ON DELETE CASCADE, body TEXT NOT NULL)")
    op.execute("CREATE TABLE run_search_mark (id INTEGER PRIMARY KEY CHECK (id = 1), "
               "updated_at TIMESTAMP WITH TIME ZONE NOT NULL, task_id VARCHAR(255) NOT NULL)")
    if _has_trgm():  # migration 0012 made it where it could; without it searches scan
        op.execute("CREATE INDEX ix_run_search_trgm ON run_search USING gin (body gin_trgm_ops)")
    op.execute(f"DROP INDEX IF EXISTS {OLD_INDEX}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("DROP TABLE run_search_mark")
    op.execute("DROP TABLE run_search")
    if _has_trgm():
        op.execute(f"CREATE INDEX {OLD_INDEX} ON task_runs USING gin ({PG_SEARCH_TEXT} gin_trgm_ops)")
