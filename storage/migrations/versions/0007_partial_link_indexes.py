"""task_runs: index parent_id, root_id and replay_of only where they link two tasks

Nearly every run is a top-level task (no parent, its own root) and no replay, yet each of the
three indexes took an entry per run; root_id's, keyed by random task ids, was the costliest
index the writer maintained. Partial indexes keep only the rows that lead somewhere. Queries
name the same condition (storage.history), so both databases use them.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PARTIAL = {
    "ix_task_runs_parent_id": ("parent_id", "parent_id IS NOT NULL"),
    "ix_task_runs_root_id": ("root_id", "root_id <> task_id"),
    "ix_task_runs_replay_of": ("replay_of", "replay_of IS NOT NULL"),
}


def upgrade() -> None:
    for name, (column, where) in PARTIAL.items():
        op.drop_index(name, table_name="task_runs")
        op.create_index(name, "task_runs", [column], sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def downgrade() -> None:
    for name, (column, _) in PARTIAL.items():
        op.drop_index(name, table_name="task_runs")
        op.create_index(name, "task_runs", [column])
