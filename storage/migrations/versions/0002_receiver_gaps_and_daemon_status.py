"""receiver_gaps and daemon_status

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receiver_gaps",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("ended_at", UTCDateTime),
        sa.Column("events_lost", sa.Integer),
        sa.Column("detail", sa.Text),
        sa.Column("reconciled", sa.Integer, nullable=False, server_default="0"),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_receiver_gaps"),
    )
    op.create_index("ix_receiver_gaps_started_at", "receiver_gaps", ["started_at"])
    op.create_table(
        "daemon_status",
        sa.Column("daemon_id", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("sources", sa.String(255), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
        sa.Column("stopped_at", UTCDateTime),
        sa.Column("counters", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("daemon_id", name="pk_daemon_status"),
    )
    op.create_index("ix_daemon_status_heartbeat_at", "daemon_status", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_table("daemon_status")
    op.drop_table("receiver_gaps")
