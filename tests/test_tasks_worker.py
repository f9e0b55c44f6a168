"""A real worker and beat run the periodic jobs from the database schedule, and follow its edits.

The schedule is shortened to seconds and beat checks the table every second.
"""
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli import cli
from storage.audit import record
from storage.db import make_engine, upgrade
from storage.schedules import get_schedule, update_schedule
from storage.schema import audit_logs, bills, monthly_revenue, notifications, periodic_tasks, reports, task_runs
from tasks.periods import previous_period
from tests.history import insert_runs

pytestmark = pytest.mark.slow
SHANGHAI = ZoneInfo("Asia/Shanghai")


def wait_until(check, what: str, timeout: float = 45.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout}s: {what}")


def scalar(engine, query):
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def task_env(db_url, broker_url):
    return {"TASKMON_DATABASE_URL": db_url, "TASKMON_BROKER_URL": broker_url, "TASKMON_TIMEZONE": "Asia/Shanghai",
            "TASKMON_SCHEDULE_POLL_INTERVAL": "1"}


def only_these_every_second(engine, *names, **kwargs):
    """Switch every entry off except ``names``, which run every second."""
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(periodic_tasks.update().values(enabled=False))
        for name in names:
            update_schedule(conn, name, {"enabled": True, "interval_seconds": 1, "minute": None, "hour": None,
                                         "day_of_month": None, "month_of_year": None, "day_of_week": None,
                                         **kwargs.get(name, {})}, now)


def cli_ok(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output


def test_worker_with_embedded_beat_runs_periodic_jobs_and_follows_schedule_edits(sqlite_url, redis_url, start_worker):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    insert_runs(engine, 20, now - timedelta(days=40), prefix="old")
    last_hour = previous_period("hourly", now, SHANGHAI)
    insert_runs(engine, 3, last_hour.start + timedelta(minutes=1), prefix="recent", state="FAILURE",
                exception_type="ValueError")
    today = now.astimezone(SHANGHAI).date()
    last_month = (today.replace(day=1) - timedelta(days=1)).replace(day=15)
    with engine.begin() as conn:
        conn.execute(bills.insert(), [
            {"customer": "late", "amount": "12.50", "currency": "CNY", "status": "pending",
             "due_date": today - timedelta(days=1), "issued_at": now, "paid_at": None, "updated_at": now},
            {"customer": "paid", "amount": "99.99", "currency": "CNY", "status": "paid", "due_date": last_month,
             "issued_at": now, "paid_at": datetime.combine(last_month, datetime.min.time(), SHANGHAI), "updated_at": now},
        ])
    only_these_every_second(engine, "check-pending-bills", "cleanup-expired-tasks", "generate-hourly-report",
                            **{"cleanup-expired-tasks": {"kwargs": {"days": 30}}})

    start_worker(redis_url, app="tasks", concurrency=1, extra=["-B"], env=task_env(sqlite_url, redis_url))

    wait_until(lambda: scalar(engine, select(bills.c.status).where(bills.c.customer == "late")) == "overdue",
               "billing.check_pending_bills marked the bill overdue")
    wait_until(lambda: scalar(engine, select(func.count()).select_from(task_runs)) == 3,
               "cleanup.cleanup_task_history removed the 40-day-old history")
    wait_until(lambda: scalar(engine, select(func.count()).select_from(reports).where(reports.c.kind == "hourly")) == 1,
               "reports.generate_hourly_report stored the previous hour's report")
    report = scalar(engine, select(reports.c.data))
    assert '"failed": 3' in report and '"exception": "ValueError"' in report
    with engine.connect() as conn:
        ran = get_schedule(conn, "check-pending-bills")
    assert ran["total_run_count"] >= 1 and ran["last_run_at"] > now - timedelta(minutes=1)

    # Edit the schedule the way a user does, while beat runs: no restart.
    assert scalar(engine, select(func.count()).select_from(monthly_revenue)) == 0
    cli_ok("schedule", "set", "calculate-monthly-revenue", "--every", "1", "--db", sqlite_url)
    cli_ok("schedule", "enable", "calculate-monthly-revenue", "--db", sqlite_url)
    wait_until(lambda: scalar(engine, select(monthly_revenue.c.amount)) is not None,
               "the newly enabled calculate-monthly-revenue entry ran")
    assert str(scalar(engine, select(monthly_revenue.c.amount))) == "99.99"


def test_separate_beat_and_worker_on_postgresql(pg_url, redis_url, start_worker, start_beat):
    engine = make_engine(pg_url)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(notifications.insert().values(recipient="a@example.com", subject="old", body="x", status="sent",
                                                   created_at=now - timedelta(days=45)))
        record(conn, now - timedelta(days=400), "test", actor="tester")
    only_these_every_second(engine, "cleanup-old-notifications")
    env = task_env(pg_url, redis_url)

    start_worker(redis_url, app="tasks", concurrency=1, env=env)
    start_beat("tasks", env=env, ready=b"schedule loaded", extra=["-S", "tasks.scheduler:DatabaseScheduler"])

    wait_until(lambda: scalar(engine, select(func.count()).select_from(notifications)) == 0,
               "notifications.cleanup_old_notifications removed the old notification")
    cli_ok("schedule", "add", "audit-fast", "cleanup.cleanup_audit_logs", "--every", "1", "--db", pg_url)
    wait_until(lambda: scalar(engine, select(func.count()).select_from(audit_logs)
                              .where(audit_logs.c.created_at < now - timedelta(days=365))) == 0,
               "the entry added while beat runs removed the 400-day-old audit entry")
    with engine.connect() as conn:
        assert get_schedule(conn, "audit-fast")["total_run_count"] >= 1
