"""Cleanup: task history by age and count, audit logs, notifications, expired results; chunked, idempotent."""
import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import event, func, select, text

from cli import cli
from tasks.settings import Settings
from storage.audit import recent, record
from storage.schema import audit_logs, notifications, task_runs
from tasks.application import make_app
from tasks.cleanup import cleanup_audit_logs, cleanup_expired_results, cleanup_notifications, cleanup_task_history
from tasks.policies import BadInput
from tests.history import insert_runs

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def ids(engine):
    with engine.connect() as conn:
        return conn.execute(select(task_runs.c.task_id).order_by(task_runs.c.task_id)).scalars().all()


def counts(deletions):
    return [(d.table, d.rule, d.count) for d in deletions]


def test_history_by_age_deletes_only_older_rows_and_a_rerun_deletes_nothing(engine):
    insert_runs(engine, 40, NOW - timedelta(days=40), step=timedelta(days=1))  # days 40 .. 1 ago
    first = cleanup_task_history(engine, now=NOW, days=30, max_records=0, chunk_size=7)
    assert counts(first) == [("task_runs", "older than 30 days", 10)]
    assert count(engine, task_runs) == 30
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(task_runs.c.seen_at))).scalar_one()
    assert oldest == NOW - timedelta(days=30)
    again = cleanup_task_history(engine, now=NOW, days=30, max_records=0, chunk_size=7)
    assert counts(again) == [("task_runs", "older than 30 days", 0)] and count(engine, task_runs) == 30


def test_history_by_count_keeps_the_newest_n_even_with_equal_timestamps(engine):
    insert_runs(engine, 10, NOW - timedelta(hours=1), step=timedelta(0), prefix="same")  # ten rows, one instant
    insert_runs(engine, 5, NOW - timedelta(minutes=5), prefix="new")
    deletions = cleanup_task_history(engine, now=NOW, days=0, max_records=8, chunk_size=4)
    assert counts(deletions) == [("task_runs", "beyond the newest 8", 7)]
    assert ids(engine) == ["new0000000", "new0000001", "new0000002", "new0000003", "new0000004",
                           "same0000007", "same0000008", "same0000009"]
    assert counts(cleanup_task_history(engine, now=NOW, days=0, max_records=8, chunk_size=4)) == [
        ("task_runs", "beyond the newest 8", 0)]


def test_dry_run_counts_exactly_what_the_real_run_deletes_and_changes_nothing(engine):
    insert_runs(engine, 50, NOW - timedelta(days=50), step=timedelta(days=1))
    before = ids(engine)
    dry = cleanup_task_history(engine, now=NOW, days=30, max_records=12, chunk_size=5, dry_run=True)
    assert ids(engine) == before
    real = cleanup_task_history(engine, now=NOW, days=30, max_records=12, chunk_size=5)
    assert [d.count for d in dry] == [d.count for d in real] == [20, 18]
    assert count(engine, task_runs) == 12


def test_deletes_are_chunked_one_commit_per_chunk(engine):
    insert_runs(engine, 23, NOW - timedelta(days=60), step=timedelta(minutes=1))
    commits, chunks = [], []

    def on_commit(conn):
        commits.append(conn)

    event.listen(engine, "commit", on_commit)
    try:
        cleanup_task_history(engine, now=NOW, days=30, max_records=0, chunk_size=10,
                             on_chunk=lambda table, n, total: chunks.append(n))
    finally:
        event.remove(engine, "commit", on_commit)
    assert chunks == [10, 10, 3]  # never more than chunk_size rows in one transaction
    assert len(commits) == 4  # one per chunk, one for the audit entry
    assert count(engine, task_runs) == 0


def test_a_cleanup_that_deleted_something_is_audited(engine):
    insert_runs(engine, 3, NOW - timedelta(days=90))
    cleanup_task_history(engine, now=NOW, days=30, max_records=0, chunk_size=100)
    with engine.connect() as conn:
        entry = recent(conn, 1)[0]
    assert entry["action"] == "cleanup" and entry["target"] == "task_runs"
    assert json.loads(entry["detail"]) == {"older than 30 days": 3}


@pytest.mark.parametrize("kwargs, message", [
    ({"days": -1, "max_records": 0}, "days must be a whole number, 0 or more; got -1"),
    ({"days": 30, "max_records": -5}, "max_records must be a whole number, 0 or more; got -5"),
    ({"days": "30", "max_records": 0}, "days must be a whole number"),
])
def test_negative_or_non_numeric_limits_are_refused(engine, kwargs, message):
    insert_runs(engine, 3, NOW - timedelta(days=90))
    with pytest.raises(BadInput, match=message):
        cleanup_task_history(engine, now=NOW, chunk_size=100, **kwargs)
    assert count(engine, task_runs) == 3


def test_audit_logs_older_than_365_days_go_by_age_and_by_count(engine):
    with engine.begin() as conn:
        for days in (400, 366, 364, 10, 1):
            record(conn, NOW - timedelta(days=days), "test", actor="tester")
    assert counts(cleanup_audit_logs(engine, now=NOW, days=365, chunk_size=2)) == [("audit_logs", "older than 365 days", 2)]
    # the cleanup audited itself: 3 old entries + 1 new one remain; keep the newest 2
    assert count(engine, audit_logs) == 4
    assert counts(cleanup_audit_logs(engine, now=NOW, days=0, max_records=2, chunk_size=2)) == [
        ("audit_logs", "beyond the newest 2", 2)]
    # 2 kept + the entry that cleanup wrote about itself: a rerun keeping 3 deletes nothing
    assert counts(cleanup_audit_logs(engine, now=NOW, days=365, max_records=3, chunk_size=2)) == [
        ("audit_logs", "older than 365 days", 0), ("audit_logs", "beyond the newest 3", 0)]


def test_only_read_or_delivered_notifications_older_than_30_days_are_deleted(engine):
    old, recent_ = NOW - timedelta(days=31), NOW - timedelta(days=29)
    rows = [("old-read", old, "pending", NOW), ("old-sent", old, "sent", None), ("old-failed", old, "failed", None),
            ("old-pending", old, "pending", None), ("new-read", recent_, "sent", NOW)]
    with engine.begin() as conn:
        conn.execute(notifications.insert(), [
            {"recipient": "a@example.com", "subject": s, "body": "b", "status": st, "created_at": at, "read_at": read}
            for s, at, st, read in rows])
    assert counts(cleanup_notifications(engine, now=NOW, days=30, chunk_size=2)) == [
        ("notifications", "read or delivered, older than 30 days", 3)]
    with engine.connect() as conn:
        left = set(conn.execute(select(notifications.c.subject)).scalars())
    assert left == {"old-pending", "new-read"}
    assert cleanup_notifications(engine, now=NOW, days=30, chunk_size=2)[0].count == 0


def test_expired_results_are_deleted_from_a_database_result_backend(db_url, engine):
    app = make_app(Settings(broker_url="memory://", result_backend=f"db+{db_url}"), set_as_current=False)
    backend = app.backend
    for n in range(3):
        backend.store_result(f"r{n}", n, "SUCCESS")
    with backend.ResultSession() as session:
        session.execute(text("UPDATE celery_taskmeta SET date_done = :old WHERE task_id IN ('r0', 'r1')"),
                        {"old": datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=2)})
        session.commit()
    now = datetime.now(timezone.utc)
    dry = cleanup_expired_results(backend, now=now, chunk_size=1, dry_run=True)
    assert [(d.table, d.count) for d in dry] == [("celery_taskmeta", 2), ("celery_tasksetmeta", 0)]
    assert [d.count for d in cleanup_expired_results(backend, now=now, chunk_size=1)] == [2, 0]
    assert [d.count for d in cleanup_expired_results(backend, now=now, chunk_size=1)] == [0, 0]
    assert backend.get_task_meta("r2")["result"] == 2


def test_expired_results_need_no_cleanup_without_backend_or_with_redis(redis_url):
    none = make_app(Settings(broker_url="memory://"), set_as_current=False).backend
    assert cleanup_expired_results(none, now=NOW, chunk_size=10)[0].rule == "no result backend configured"
    redis_backend = make_app(Settings(broker_url=redis_url, result_backend=redis_url), set_as_current=False).backend
    assert cleanup_expired_results(redis_backend, now=NOW, chunk_size=10)[0].rule == "RedisBackend expires results by itself"


def test_cli_dry_run_on_100k_rows_changes_nothing_and_reports_the_count(db_url, engine):
    now = datetime.now(timezone.utc)
    insert_runs(engine, 100_000, now - timedelta(days=40), step=timedelta(seconds=10))  # 40 .. ~28.4 days ago
    with engine.connect() as conn:
        expected = conn.execute(select(func.count()).where(task_runs.c.seen_at < now - timedelta(days=30))).scalar_one()
    assert 0 < expected < 100_000
    result = CliRunner().invoke(cli, ["cleanup", "--dry-run", "--days", "30", "--json", "--db", db_url])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["dry_run"] is True
    # The CLI's clock is a moment later than the one above: a few rows may have aged past the cutoff.
    assert expected <= report["deletions"][0]["count"] <= expected + 10
    assert count(engine, task_runs) == 100_000
    text_out = CliRunner().invoke(cli, ["cleanup", "--dry-run", "--days", "30", "--db", db_url]).output
    assert "would delete" in text_out and "dry run: nothing was deleted" in text_out


def test_cli_cleanup_deletes_and_reports_counts(sqlite_url):
    from storage.db import make_engine, upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    insert_runs(engine, 30, datetime.now(timezone.utc) - timedelta(days=60))
    insert_runs(engine, 5, datetime.now(timezone.utc) - timedelta(hours=1), prefix="new")
    result = CliRunner().invoke(cli, ["cleanup", "--days", "30", "--max-records", "3", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["table", "rule", "deleted"]
    assert lines[1].split()[-1] == "30" and lines[2].split()[-1] == "2"
    assert count(engine, task_runs) == 3


def test_cli_negative_days_is_a_one_line_error(sqlite_store):
    result = CliRunner().invoke(cli, ["cleanup", "--days", "-1", "--db", sqlite_store])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["Error: days must be a whole number, 0 or more; got -1"]
