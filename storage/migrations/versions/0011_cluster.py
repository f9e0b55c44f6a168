"""Several daemons on one history: each daemon's role, and dead letters claimed for alerting

daemon_status.role says which daemon leads (runs the detectors and alerts) and which follow;
dead_letters.alerted_at is set in the transaction that records the alert, so a leader that dies
between its sweep and its alerts leaves the letter for the next leader, and none is mailed twice.

Revision ID: 0011_cluster
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0011_cluster"
down_revision = "0010_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("daemon_status", sa.Column("role", sa.String(16)))
    op.add_column("dead_letters", sa.Column("alerted_at", UTCDateTime))
    # Letters from before this revision were evaluated by the daemon that wrote them.
    op.execute("UPDATE dead_letters SET alerted_at = created_at")
    op.create_index("ix_dead_letters_unalerted", "dead_letters", ["alerted_at", "dead_at"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_unalerted", "dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("alerted_at")
    with op.batch_alter_table("daemon_status") as batch:
        batch.drop_column("role")
