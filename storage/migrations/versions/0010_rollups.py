"""run_rollups, run_rollups_hourly and run_totals: rollups and ever-growing totals of task_runs, kept by triggers

Revision ID: 0010_rollups
Revises: 0012_history_search
"""
import sqlalchemy as sa
from alembic import op

from storage.rollups import (LEVELS, RUNTIME_BUCKETS, TOTALS_COUNTS, WAIT_BUCKETS, backfill_sql, drop_trigger_ddl,
                             totals_backfill_sql, trigger_ddl)
from storage.types import UTCDateTime

revision = "0010_rollups"
down_revision = "0012_history_search"
branch_labels = None
depends_on = None


def _rollup_table(table: str, time_col: str) -> None:
    op.create_table(
        table,
        sa.Column(time_col, UTCDateTime, primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("runs", sa.BigInteger, nullable=False),
        sa.Column("retries", sa.BigInteger, nullable=False),
        sa.Column("runtime_n", sa.BigInteger, nullable=False),
        sa.Column("runtime_sum", sa.Float, nullable=False),
        sa.Column("wait_n", sa.BigInteger, nullable=False),
        sa.Column("wait_sum", sa.Float, nullable=False),
        *[sa.Column(c, sa.BigInteger, nullable=False) for c in RUNTIME_BUCKETS + WAIT_BUCKETS],
    )


def upgrade() -> None:
    for table, time_col in LEVELS.values():
        _rollup_table(table, time_col)
    op.create_table(
        "run_totals",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("hostname", sa.String(255), primary_key=True),
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("exception", sa.String(255), primary_key=True),
        *[sa.Column(c, sa.BigInteger, nullable=False) for c in TOTALS_COUNTS],
        sa.Column("runtime_n", sa.BigInteger, nullable=False),
        sa.Column("runtime_sum", sa.Float, nullable=False),
        *[sa.Column(c, sa.BigInteger, nullable=False) for c in RUNTIME_BUCKETS],
        sa.Column("wait_n", sa.BigInteger, nullable=False),
        sa.Column("wait_sum", sa.Float, nullable=False),
        *[sa.Column(c, sa.BigInteger, nullable=False) for c in WAIT_BUCKETS],
    )
    bind = op.get_bind()
    # exec_driver_sql: the SQL holds ':00' literals that text() would take for parameters.
    for level in LEVELS:
        bind.exec_driver_sql(backfill_sql(bind.dialect.name, level))
    bind.exec_driver_sql(totals_backfill_sql())
    for ddl in trigger_ddl(bind.dialect.name, dims=False):
        bind.exec_driver_sql(ddl)


def downgrade() -> None:
    bind = op.get_bind()
    for ddl in drop_trigger_ddl(bind.dialect.name):
        bind.exec_driver_sql(ddl)
    op.drop_table("run_totals")
    op.drop_table("run_rollups_hourly")
    op.drop_table("run_rollups")
