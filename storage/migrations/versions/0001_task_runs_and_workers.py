"""task_runs and workers

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_runs",
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_at", UTCDateTime),
        sa.Column("args", sa.Text),
        sa.Column("kwargs", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("exception", sa.Text),
        sa.Column("exception_type", sa.String(255)),
        sa.Column("traceback", sa.Text),
        sa.Column("queue", sa.String(255)),
        sa.Column("routing_key", sa.String(255)),
        sa.Column("exchange", sa.String(255)),
        sa.Column("worker", sa.String(255)),
        sa.Column("root_id", sa.String(255)),
        sa.Column("parent_id", sa.String(255)),
        sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("eta", UTCDateTime),
        sa.Column("expires", UTCDateTime),
        sa.Column("seen_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("received_at", UTCDateTime),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("runtime", sa.Float),
        sa.Column("queue_wait", sa.Float),
        sa.Column("truncated", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_task_runs"),
    )
    op.create_index("ix_task_runs_seen_at", "task_runs", ["seen_at"])
    op.create_index("ix_task_runs_name_seen_at", "task_runs", ["name", "seen_at"])
    op.create_index("ix_task_runs_state_seen_at", "task_runs", ["state", "seen_at"])
    op.create_index("ix_task_runs_worker_seen_at", "task_runs", ["worker", "seen_at"])
    op.create_index("ix_task_runs_updated_at", "task_runs", ["updated_at"])
    op.create_index("ix_task_runs_finished_at", "task_runs", ["finished_at"])

    op.create_table(
        "workers",
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_heartbeat", UTCDateTime),
        sa.Column("software", sa.String(255)),
        sa.Column("active", sa.Integer, nullable=False, server_default="0"),
        sa.Column("processed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("loadavg", sa.String(64)),
        sa.Column("freq", sa.Float),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("hostname", name="pk_workers"),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("task_runs")
