"""queue_depths: messages waiting per queue over time, sampled by the cluster's leader

Revision ID: 0014_queue_depths
Revises: 0013_gap_reconcile
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0014_queue_depths"
down_revision = "0013_gap_reconcile"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_depths",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("sampled_at", UTCDateTime, nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("messages", sa.BigInteger),
        sa.Column("consumers", sa.Integer),
        sa.PrimaryKeyConstraint("id", name="pk_queue_depths"),
    )
    op.create_index("ix_queue_depths_queue_sampled_at", "queue_depths", ["queue", "sampled_at"])
    op.create_index("ix_queue_depths_sampled_at", "queue_depths", ["sampled_at"])


def downgrade() -> None:
    op.drop_index("ix_queue_depths_sampled_at", "queue_depths")
    op.drop_index("ix_queue_depths_queue_sampled_at", "queue_depths")
    op.drop_table("queue_depths")
