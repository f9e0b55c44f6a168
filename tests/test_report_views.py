"""The report views of migration 0003 on SQLite and PostgreSQL, and the migration's way back."""
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import inspect, text

from storage.db import _alembic_config, current_revision, upgrade
from tests.history_data import insert, reporting_history, run

VIEWS = {"daily_task_stats", "task_failures", "hourly_throughput"}


@pytest.fixture
def today():
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def rows(engine, sql, **params):
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TIME ZONE 'Asia/Shanghai'")  # buckets must not follow the session zone
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def test_daily_task_stats_counts_rates_and_averages_per_utc_day(engine, today):
    insert(engine, reporting_history(today))
    late = today - timedelta(days=2) + timedelta(hours=23, minutes=30)  # already the next day in Shanghai
    insert(engine, [run("late", "reports.daily", "SUCCESS", late, wait=1.0, runtime=3.0)])
    got = rows(engine, "SELECT * FROM daily_task_stats WHERE name = 'reports.daily' ORDER BY day")
    assert [str(r["day"]) for r in got] == [(today - timedelta(days=n)).strftime("%Y-%m-%d") for n in (40, 2, 1)]
    d1 = got[1]
    assert {k: d1[k] for k in ("runs", "succeeded", "failed", "revoked", "unfinished", "retries")} == {
        "runs": 3, "succeeded": 2, "failed": 1, "revoked": 0, "unfinished": 0, "retries": 0}
    assert d1["failure_rate"] == pytest.approx(1 / 3) and d1["avg_runtime"] == pytest.approx(11.0)
    assert d1["max_runtime"] == 20.0 and d1["avg_queue_wait"] == pytest.approx(5 / 3) and d1["max_queue_wait"] == 3.0
    mail = rows(engine, "SELECT * FROM daily_task_stats WHERE name = 'mail.send' AND runs = 3")
    assert mail[0]["unfinished"] == 1 and mail[0]["revoked"] == 1 and mail[0]["failure_rate"] == 0.0


def test_task_failures_and_hourly_throughput(engine, today):
    insert(engine, reporting_history(today))
    failures = rows(engine, "SELECT task_id, exception_type, worker FROM task_failures ORDER BY task_id")
    assert [(r["task_id"], r["exception_type"]) for r in failures] == [
        ("a2", "ValueError"), ("b3", "TimeoutError"), ("b4", "TimeoutError"), ("c1", "SMTPError"), ("o1", "ValueError")]
    hours = rows(engine, "SELECT hour, name, completed, failed, avg_runtime FROM hourly_throughput "
                         "WHERE name = 'billing.charge' ORDER BY hour")
    assert [(r["completed"], r["failed"], r["avg_runtime"]) for r in hours] == [(2, 0, 2.0), (1, 1, 2.0), (1, 1, 4.0)]


def test_downgrade_removes_views_and_indexes_and_upgrade_restores_them(engine):
    command.downgrade(_alembic_config(engine), "0001")
    assert current_revision(engine) == "0001"
    assert not VIEWS & set(inspect(engine).get_view_names())
    assert "ix_task_runs_parent_id" not in {i["name"] for i in inspect(engine).get_indexes("task_runs")}
    upgrade(engine)
    assert VIEWS <= set(inspect(engine).get_view_names())
    assert {"ix_task_runs_parent_id", "ix_task_runs_root_id"} <= {i["name"] for i in inspect(engine).get_indexes("task_runs")}
