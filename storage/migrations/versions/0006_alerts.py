"""alerts: alert_groups and alerts

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_groups",
        sa.Column("group_key", sa.String(512), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task_name", sa.String(255)),
        sa.Column("exception_type", sa.String(255)),
        sa.Column("target", sa.String(255)),
        sa.Column("since", UTCDateTime, nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("total_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pending_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("notified_at", UTCDateTime),
        sa.Column("last_task_id", sa.String(255)),
        sa.Column("message", sa.Text),
        sa.Column("resolved_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("group_key", name="pk_alert_groups"),
    )
    op.create_index("ix_alert_groups_status", "alert_groups", ["status"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("group_key", sa.String(512), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("task_name", sa.String(255)),
        sa.Column("exception_type", sa.String(255)),
        sa.Column("target", sa.String(255)),
        sa.Column("task_id", sa.String(255)),
        sa.Column("message", sa.Text),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
        sa.Column("occurrences", sa.Integer, nullable=False),
        sa.Column("total_count", sa.Integer, nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_created_at", "alerts", ["created_at"])
    op.create_index("ix_alerts_status_next_attempt_at", "alerts", ["status", "next_attempt_at"])
    op.create_index("ix_alerts_group_key", "alerts", ["group_key"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("alert_groups")
