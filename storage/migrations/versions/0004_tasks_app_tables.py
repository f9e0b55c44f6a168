"""tasks app: periodic_tasks (with the default beat schedule), audit_logs, notifications, bills,
monthly_revenue, reports

Revision ID: 0004
Revises: 0003
"""
import json
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from storage.types import Money, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The default beat schedule, from the Celery setup guides (docs/tasks.md maps each one). Crontab fields
# are "minute hour day_of_month month_of_year day_of_week" in the configured time zone.
# Written once, here, so that a row a user removes stays removed.
DEFAULT_SCHEDULE = [
    ("check-pending-bills", "billing.check_pending_bills", "* * * * *", {}, True,
     "Mark pending bills past their due date overdue (every minute)"),
    ("send-bill-reminders", "billing.send_bill_reminders", "0 9 * * *", {}, True,
     "E-mail a reminder for bills due within 3 days or overdue, at most one per bill per day"),
    ("calculate-monthly-revenue", "billing.calculate_monthly_revenue", "30 0 1 * *", {}, True,
     "Revenue of the bills paid last month, per currency"),
    ("generate-hourly-report", "reports.generate_hourly_report", "0 * * * *", {}, True,
     "Report on the previous hour's tasks"),
    ("generate-daily-report", "reports.generate_daily_report", "30 2 * * *", {}, True,
     "Report on yesterday's tasks"),
    ("generate-weekly-report", "reports.generate_weekly_report", "0 10 * * 1", {}, True,
     "Report on last week's tasks (Monday 10:00)"),
    ("generate-monthly-report", "reports.generate_monthly_report", "0 0 1 * *", {}, True,
     "Report on last month's tasks (the 1st, 00:00)"),
    ("cleanup-expired-tasks", "cleanup.cleanup_task_history", "0 2 * * *", {}, True,
     "Delete task history beyond retention_days / retention_max_records"),
    ("deep-cleanup-task-history", "cleanup.cleanup_task_history", "0 3 * * 0", {"days": 90}, False,
     "Delete task history older than 90 days (Sunday 03:00); off: cleanup-expired-tasks covers it"),
    ("cleanup-expired-audit-logs", "cleanup.cleanup_audit_logs", "0 2 * * *", {}, True,
     "Delete audit log entries older than audit_retention_days (365)"),
    ("cleanup-old-notifications", "notifications.cleanup_old_notifications", "0 2 * * *", {}, True,
     "Delete read or delivered notifications older than notification_retention_days (30)"),
    ("cleanup-expired-results", "cleanup.cleanup_expired_results", "0 * * * *", {}, True,
     "Delete expired results from a result backend that does not expire them itself"),
    ("system-health-check", "maintenance.health_check", "*/5 * * * *", {}, True,
     "Database, schema, broker and disk space"),
    ("backup-database", "maintenance.backup_database", "0 3 * * *", {}, True,
     "Back up the history database into backup_dir"),
    ("optimize-database", "maintenance.optimize_database", "30 3 * * *", {}, True,
     "Refresh the query planner's statistics (ANALYZE)"),
]


def upgrade() -> None:
    periodic_tasks = op.create_table(
        "periodic_tasks",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("minute", sa.String(64)),
        sa.Column("hour", sa.String(64)),
        sa.Column("day_of_month", sa.String(64)),
        sa.Column("month_of_year", sa.String(64)),
        sa.Column("day_of_week", sa.String(64)),
        sa.Column("interval_seconds", sa.Integer),
        sa.Column("args", sa.Text, nullable=False, server_default="[]"),
        sa.Column("kwargs", sa.Text, nullable=False, server_default="{}"),
        sa.Column("queue", sa.String(255)),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("description", sa.Text),
        sa.Column("last_run_at", UTCDateTime),
        sa.Column("total_run_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_periodic_tasks"),
        sa.UniqueConstraint("name", name="uq_periodic_tasks_name"),
    )

    op.create_table(
        "audit_logs",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255)),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_audit_logs"),
    )
    op.create_index("ix_audit_logs_created_at", "audit_logs", ["created_at"])

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("recipient", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("dedup_key", sa.String(255)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("read_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.UniqueConstraint("dedup_key", name="uq_notifications_dedup_key"),
    )
    op.create_index("ix_notifications_created_at", "notifications", ["created_at"])

    op.create_table(
        "bills",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("customer", sa.String(255), nullable=False),
        sa.Column("email", sa.String(255)),
        sa.Column("amount", Money, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("due_date", sa.Date, nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=False),
        sa.Column("paid_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bills"),
    )
    op.create_index("ix_bills_status_due_date", "bills", ["status", "due_date"])
    op.create_index("ix_bills_paid_at", "bills", ["paid_at"])

    op.create_table(
        "monthly_revenue",
        sa.Column("month", sa.Date, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", Money, nullable=False),
        sa.Column("bill_count", sa.Integer, nullable=False),
        sa.Column("computed_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("month", "currency", name="pk_monthly_revenue"),
    )

    op.create_table(
        "reports",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("period_start", UTCDateTime, nullable=False),
        sa.Column("period_end", UTCDateTime, nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("emailed_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
        sa.UniqueConstraint("kind", "period_start", name="uq_reports_kind_period_start"),
    )

    now = datetime.now(timezone.utc)
    rows = []
    for name, task, cron, kwargs, enabled, description in DEFAULT_SCHEDULE:
        minute, hour, day_of_month, month_of_year, day_of_week = cron.split()
        rows.append({
            "name": name, "task": task, "minute": minute, "hour": hour, "day_of_month": day_of_month,
            "month_of_year": month_of_year, "day_of_week": day_of_week, "args": "[]",
            "kwargs": json.dumps(kwargs, sort_keys=True), "enabled": enabled, "description": description,
            "total_run_count": 0, "created_at": now, "updated_at": now,
        })
    op.bulk_insert(periodic_tasks, rows)


def downgrade() -> None:
    for table in ("reports", "monthly_revenue", "bills", "notifications", "audit_logs", "periodic_tasks"):
        op.drop_table(table)
