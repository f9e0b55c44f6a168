"""worker_rollups_hourly and exception_rollups_hourly: hourly run counts per worker and per exception type, kept by triggers

Revision ID: 0015_rollup_workers
Revises: 0014_queue_depths
"""
import sqlalchemy as sa
from alembic import op

from storage.rollup_dims import DIMS, drop_trigger_ddl, rebuild, trigger_ddl
from storage.types import UTCDateTime

revision = "0015_rollup_workers"
down_revision = "0014_queue_depths"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, key, _ in DIMS.values():
        op.create_table(
            table,
            sa.Column("hour", UTCDateTime, primary_key=True),
            *[sa.Column(k, sa.String(16) if k == "state" else sa.String(255), primary_key=True) for k in key],
            sa.Column("runs", sa.BigInteger, nullable=False),
        )
    bind = op.get_bind()
    rebuild(bind)
    for ddl in trigger_ddl(bind.dialect.name):
        bind.exec_driver_sql(ddl)


def downgrade() -> None:
    bind = op.get_bind()
    for ddl in drop_trigger_ddl(bind.dialect.name):
        bind.exec_driver_sql(ddl)
    for table, _, _ in DIMS.values():
        op.drop_table(table)
