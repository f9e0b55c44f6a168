"""Gaps reconciled by the cluster's leader: who saw each gap, and when (and by whom) it was reconciled

Any daemon records the gaps it sees; only the leader asks the result backend about them. A gap
whose reconciled_at is NULL is still to do: the leader finds it there, whichever daemon recorded
it, and sets reconciled_at in the transaction that stores what the backend said, so a gap is
reconciled once across leader changes.

Revision ID: 0013_gap_reconcile
Revises: 0011_cluster
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0013_gap_reconcile"
down_revision = "0011_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("receiver_gaps") as batch:
        batch.add_column(sa.Column("daemon_id", sa.String(255)))
        batch.add_column(sa.Column("reconciled_at", UTCDateTime))
        batch.add_column(sa.Column("reconciled_by", sa.String(255)))
    # Gaps from before this revision were reconciled (or not) by the daemon that recorded them.
    op.execute("UPDATE receiver_gaps SET reconciled_at = recorded_at")
    op.create_index("ix_receiver_gaps_unreconciled", "receiver_gaps", ["reconciled_at", "recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_receiver_gaps_unreconciled", "receiver_gaps")
    with op.batch_alter_table("receiver_gaps") as batch:
        batch.drop_column("reconciled_by")
        batch.drop_column("reconciled_at")
        batch.drop_column("daemon_id")
