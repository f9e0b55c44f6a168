"""daemon_status: per-source connection state, the writer's lag, since when the feed is live

`taskmon check` fails when a source has been disconnected (or its thread dead) or the writer
behind for longer than the stale threshold, and `taskmon workers` judges a silent worker only
while the feed was live; both read these from the newest heartbeat.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = (
    ("source_states", sa.Text),
    ("writer_lag", sa.Float),
    ("feed_since", UTCDateTime),
    ("stop_reason", sa.Text),
)


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("daemon_status", sa.Column(name, type_))


def downgrade() -> None:
    with op.batch_alter_table("daemon_status") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
