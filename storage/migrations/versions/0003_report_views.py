"""report views (daily_task_stats, task_failures, hourly_throughput) and workflow indexes

Revision ID: 0003
Revises: 0002

The views are plain SQL over task_runs, one text for both databases except the time bucketing:
PostgreSQL buckets in UTC explicitly (the session time zone must not move a run to another day),
SQLite's date functions work on the stored UTC text.
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DAY = {"postgresql": "(seen_at AT TIME ZONE 'UTC')::date", "sqlite": "date(seen_at)"}
HOUR = {"postgresql": "date_trunc('hour', finished_at, 'UTC')", "sqlite": "strftime('%Y-%m-%d %H:00:00', finished_at)"}

DAILY_TASK_STATS = """
CREATE VIEW daily_task_stats AS
SELECT
    {day} AS day,
    name,
    COUNT(*) AS runs,
    SUM(CASE WHEN state = 'SUCCESS' THEN 1 ELSE 0 END) AS succeeded,
    SUM(CASE WHEN state = 'FAILURE' THEN 1 ELSE 0 END) AS failed,
    SUM(CASE WHEN state IN ('REVOKED', 'REJECTED') THEN 1 ELSE 0 END) AS revoked,
    SUM(CASE WHEN state NOT IN ('SUCCESS', 'FAILURE', 'REVOKED', 'REJECTED') THEN 1 ELSE 0 END) AS unfinished,
    SUM(retries) AS retries,
    CAST(SUM(CASE WHEN state = 'FAILURE' THEN 1 ELSE 0 END) AS DOUBLE PRECISION)
        / NULLIF(SUM(CASE WHEN state IN ('SUCCESS', 'FAILURE') THEN 1 ELSE 0 END), 0) AS failure_rate,
    AVG(runtime) AS avg_runtime,
    MAX(runtime) AS max_runtime,
    AVG(queue_wait) AS avg_queue_wait,
    MAX(queue_wait) AS max_queue_wait
FROM task_runs
GROUP BY {day}, name
"""

TASK_FAILURES = """
CREATE VIEW task_failures AS
SELECT task_id, name, exception_type, exception, traceback, worker, queue, retries,
       seen_at, started_at, finished_at, runtime, root_id, parent_id
FROM task_runs
WHERE state = 'FAILURE'
"""

HOURLY_THROUGHPUT = """
CREATE VIEW hourly_throughput AS
SELECT
    {hour} AS hour,
    name,
    COUNT(*) AS completed,
    SUM(CASE WHEN state = 'FAILURE' THEN 1 ELSE 0 END) AS failed,
    AVG(runtime) AS avg_runtime
FROM task_runs
WHERE state IN ('SUCCESS', 'FAILURE') AND finished_at IS NOT NULL
GROUP BY {hour}, name
"""

VIEWS = ("daily_task_stats", "task_failures", "hourly_throughput")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(DAILY_TASK_STATS.format(day=DAY[dialect]))
    op.execute(TASK_FAILURES)
    op.execute(HOURLY_THROUGHPUT.format(hour=HOUR[dialect]))
    # `show` finds a run's children and the size of its workflow.
    op.create_index("ix_task_runs_parent_id", "task_runs", ["parent_id"])
    op.create_index("ix_task_runs_root_id", "task_runs", ["root_id"])


def downgrade() -> None:
    op.drop_index("ix_task_runs_root_id", "task_runs")
    op.drop_index("ix_task_runs_parent_id", "task_runs")
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW {view}")
