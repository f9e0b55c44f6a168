"""detection: dead_letters; redelivery, stuck and replay columns on task_runs

Revision ID: 0005
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(sa.Column("received_attempt", sa.Integer))
        batch.add_column(sa.Column("received_first_at", UTCDateTime))
        batch.add_column(sa.Column("redelivered", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("stuck_at", UTCDateTime))
        batch.add_column(sa.Column("replay_of", sa.String(255)))
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
    with op.batch_alter_table("task_runs") as batch:
        for column in ("replay_of", "stuck_at", "redelivered", "received_first_at", "received_attempt"):
            batch.drop_column(column)
