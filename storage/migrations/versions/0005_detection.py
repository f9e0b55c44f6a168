"""detection: dead_letters; redelivery, stuck and replay columns on task_runs

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


NEW_COLUMNS = ("received_attempt", "received_first_at", "redelivered", "stuck_at", "replay_of")


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch copy-and-rename: on SQLite that would drop task_runs
    # from under the report views of migration 0003.
    op.add_column("task_runs", sa.Column("received_attempt", sa.Integer))
    op.add_column("task_runs", sa.Column("received_first_at", UTCDateTime))
    op.add_column("task_runs", sa.Column("redelivered", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("task_runs", sa.Column("stuck_at", UTCDateTime))
    op.add_column("task_runs", sa.Column("replay_of", sa.String(255)))
    op.create_index("ix_task_runs_replay_of", "task_runs", ["replay_of"])
    op.create_table(
        "dead_letters",
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("exception_type", sa.String(255)),
        sa.Column("exception", sa.Text),
        sa.Column("queue", sa.String(255)),
        sa.Column("worker", sa.String(255)),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("dead_at", UTCDateTime, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="open"),
        sa.Column("replayed_as", sa.String(255)),
        sa.Column("replayed_at", UTCDateTime),
        sa.Column("resolved_at", UTCDateTime),
        sa.Column("resolution", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_dead_at", "dead_letters", ["dead_at"])
    op.create_index("ix_dead_letters_state_dead_at", "dead_letters", ["state", "dead_at"])
    op.create_index("ix_dead_letters_name_dead_at", "dead_letters", ["name", "dead_at"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("ix_task_runs_replay_of", table_name="task_runs")
    for column in reversed(NEW_COLUMNS):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE task_runs DROP COLUMN {column}")  # SQLite >= 3.35, keeps the views
        else:
            op.drop_column("task_runs", column)
