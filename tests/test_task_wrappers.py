"""The Celery tasks around the jobs, run in process with Task.apply against a real database."""
from datetime import datetime, timedelta, timezone

import pytest
from celery.signals import task_retry

from tasks.settings import Settings
from storage.schema import bills
from tasks.application import make_app, task_names
from tasks.policies import BadInput
from tests.services import need_program


@pytest.fixture
def app(db_url, engine, tmp_path, smtp_server):
    settings = Settings(broker_url="memory://", database_url=db_url, timezone="Asia/Shanghai",
                        smtp_host="127.0.0.1", smtp_port=smtp_server.port, report_recipients=("ops@example.com",),
                        backup_dir=str(tmp_path / "backups"))
    app = make_app(settings, set_as_current=False)
    task_names(app)
    return app


def apply(app, name, **kwargs):
    return app.tasks[name].apply(kwargs=kwargs)


@pytest.fixture
def retries():
    """Names of the tasks retried while the test runs (celery's task_retry signal, sent in process too)."""
    seen = []

    def on_retry(sender=None, **_kwargs):
        seen.append(sender.name)

    task_retry.connect(on_retry, weak=False)
    yield seen
    task_retry.disconnect(on_retry)


@pytest.mark.parametrize("name, kwargs", [
    ("cleanup.cleanup_task_history", {}),
    ("cleanup.cleanup_audit_logs", {"days": 30}),
    ("cleanup.cleanup_expired_results", {}),
    ("notifications.cleanup_old_notifications", {}),
    ("reports.generate_hourly_report", {}),
    ("reports.generate_daily_report", {"date": "2026-11-20"}),
    ("reports.generate_weekly_report", {}),
    ("reports.generate_monthly_report", {}),
    ("billing.check_pending_bills", {}),
    ("billing.send_bill_reminders", {}),
    ("billing.calculate_monthly_revenue", {"month": "2026-10"}),
    ("maintenance.optimize_database", {}),
    ("maintenance.health_check", {"min_free_mb": 1}),
])
def test_every_job_runs_as_a_task(app, name, kwargs):
    result = apply(app, name, **kwargs)
    assert result.successful(), result.traceback


def test_notification_task_sends_once_per_task_id(app, smtp_server):
    task = app.tasks["notifications.send_notification_email"]
    first = task.apply(args=("user@example.com", "Hi", "Hello"), task_id="fixed-id")
    again = task.apply(args=("user@example.com", "Hi", "Hello"), task_id="fixed-id")  # a redelivery
    assert first.result["sent"] is True and again.result["sent"] is False
    assert len(smtp_server.messages) == 1


def test_reports_are_emailed_by_the_task(app, smtp_server):
    assert apply(app, "reports.generate_daily_report", date="2026-11-20").result["emailed"] is True
    assert smtp_server.messages[0]["message"]["Subject"].startswith("[taskmon] daily report 2026-11-20")


def test_backup_and_export_tasks_write_files(app, tmp_path):
    if app.engine.dialect.name == "postgresql":
        need_program("pg_dump")
    backup = apply(app, "maintenance.backup_database")
    assert backup.successful(), backup.traceback
    assert (tmp_path / "backups").exists() and backup.result["bytes"] > 0
    export = apply(app, "maintenance.export_data", start="2026-11-01", end="2026-11-02", path=str(tmp_path / "x.json"),
                   format="json")
    assert export.result == {"path": str(tmp_path / "x.json"), "rows": 0, "format": "json"}


@pytest.mark.parametrize("name, kwargs, message", [
    ("billing.send_bill_reminders", {"bill_ids": [999]}, "no bill with id 999"),
    ("cleanup.cleanup_task_history", {"days": -1}, "days must be a whole number"),
    ("notifications.cleanup_old_notifications", {"days": -3}, "days must be a whole number"),
    ("billing.calculate_monthly_revenue", {"month": "2026-13"}, "bad month"),
    ("reports.generate_weekly_report", {"date": "next week"}, "bad date"),
])
def test_bad_input_fails_at_once_without_retries(app, retries, name, kwargs, message):
    result = apply(app, name, **kwargs)
    assert result.state == "FAILURE"
    assert isinstance(result.result, BadInput) and message in str(result.result)
    assert retries == []


def test_a_transient_failure_is_retried_by_the_default_policy(app, retries):
    down = make_app(Settings(broker_url="memory://", database_url=app.settings.database_url, smtp_host="127.0.0.1",
                             smtp_port=1), set_as_current=False)
    task_names(down)
    result = down.tasks["notifications.send_notification_email"].apply(args=("user@example.com", "Hi", "x"))
    assert result.state == "FAILURE" and "cannot send mail" in str(result.result)
    assert retries == ["notifications.send_notification_email"] * 3


def test_overdue_bill_through_the_task(app, engine):
    yesterday = datetime.now(timezone.utc).astimezone(app.settings.tz).date() - timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(bills.insert().values(customer="c", amount="1.00", currency="CNY", due_date=yesterday,
                                           issued_at=datetime.now(timezone.utc), updated_at=datetime.now(timezone.utc)))
    assert apply(app, "billing.check_pending_bills").result == {"marked_overdue": 1}
    assert apply(app, "billing.check_pending_bills").result == {"marked_overdue": 0}
