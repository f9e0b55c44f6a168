"""The beat schedule in the database: validation, `taskmon schedule`, and the DatabaseScheduler."""
import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from cli import cli
from tasks.settings import Settings
from storage.audit import recent
from storage.db import make_engine, upgrade
from storage.schedules import add_schedule, get_schedule, list_schedules, update_schedule
from storage.schema import periodic_tasks
from tasks.application import make_app
from tasks.cron import ScheduleError, definition, next_run, parse_cron
from tasks.scheduler import DatabaseScheduler

NOW = datetime(2026, 11, 23, 1, 30, tzinfo=timezone.utc)  # 09:30 in Shanghai
DEFAULT_NAMES = {
    "check-pending-bills", "send-bill-reminders", "calculate-monthly-revenue", "generate-hourly-report",
    "generate-daily-report", "generate-weekly-report", "generate-monthly-report", "cleanup-expired-tasks",
    "deep-cleanup-task-history", "cleanup-expired-audit-logs", "cleanup-old-notifications",
    "cleanup-expired-results", "system-health-check", "backup-database", "optimize-database",
}


def run(db_url, *args, tz="Asia/Shanghai"):
    return CliRunner().invoke(cli, [*args, "--db", db_url, "--timezone", tz])


def test_default_schedule_is_seeded_once_and_a_removed_row_stays_removed(engine):
    with engine.connect() as conn:
        rows = {r["name"]: r for r in list_schedules(conn)}
    assert set(rows) == DEFAULT_NAMES
    assert (rows["generate-weekly-report"]["minute"], rows["generate-weekly-report"]["hour"],
            rows["generate-weekly-report"]["day_of_week"]) == ("0", "10", "1")
    assert rows["check-pending-bills"]["minute"] == "*"
    assert rows["deep-cleanup-task-history"]["kwargs"] == {"days": 90} and not rows["deep-cleanup-task-history"]["enabled"]
    with engine.begin() as conn:
        conn.execute(periodic_tasks.delete().where(periodic_tasks.c.name == "backup-database"))
    upgrade(engine)
    with engine.connect() as conn:
        assert {r["name"] for r in list_schedules(conn)} == DEFAULT_NAMES - {"backup-database"}


@pytest.mark.parametrize("expr, message", [
    ("0 2 * *", "expected 5 fields"),
    ("61 * * * *", "minute '61'"),
    ("0 25 * * *", "hour '25'"),
    ("0 2 0 * *", "day-of-month '0'"),
    ("0 2 * 13 *", "month-of-year '13'"),
    ("0 2 * * funday", "day-of-week 'funday'"),
])
def test_bad_crontab_is_refused_with_the_field_named(expr, message):
    with pytest.raises(ScheduleError, match=message):
        parse_cron(expr)


def test_definition_needs_exactly_one_schedule_and_sane_parts():
    with pytest.raises(ScheduleError, match="either a crontab or an interval"):
        definition("x", "cleanup.cleanup_task_history")
    with pytest.raises(ScheduleError, match="bad interval"):
        definition("x", "cleanup.cleanup_task_history", every=0)
    with pytest.raises(ScheduleError, match="module.task"):
        definition("x", "nodots", every=5)
    with pytest.raises(ScheduleError, match="JSON object"):
        definition("x", "a.b", every=5, kwargs=[1])
    assert parse_cron("*/15 2-4 * * mon-fri") == {"minute": "*/15", "hour": "2-4", "day_of_month": "*",
                                                 "month_of_year": "*", "day_of_week": "mon-fri"}


def test_next_run_is_computed_in_the_configured_time_zone():
    app = make_app(Settings(broker_url="memory://", timezone="Asia/Shanghai"), set_as_current=False)
    row = definition("daily", "a.b", cron="0 2 * * *")
    nxt = next_run(row, app, NOW)
    assert nxt.astimezone(timezone.utc) == datetime(2026, 11, 23, 18, 0, tzinfo=timezone.utc)  # 02:00 +08:00
    weekly = definition("weekly", "a.b", cron="0 10 * * 1")  # 2026-11-23 is a Monday, 09:30 there
    assert next_run(weekly, app, NOW).astimezone(timezone.utc) == datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


def test_schedule_commands_edit_rows_and_write_the_audit_log(engine, db_url):
    added = run(db_url, "schedule", "add", "nightly-export", "maintenance.export_data", "--cron", "15 1 * * *",
                "--kwargs", '{"start": "2026-01-01", "end": "2026-01-02", "path": "/tmp/x.csv"}', "--queue", "maintenance")
    assert added.exit_code == 0, added.output
    assert run(db_url, "schedule", "disable", "nightly-export").exit_code == 0
    changed = run(db_url, "schedule", "set", "nightly-export", "--every", "120")
    assert changed.exit_code == 0 and "schedule" in changed.output
    listed = run(db_url, "schedule", "list", "--json")
    row = next(r for r in json.loads(listed.output) if r["name"] == "nightly-export")
    assert row["schedule"] == "every 120s" and row["enabled"] is False and row["queue"] == "maintenance"
    assert row["kwargs"]["path"] == "/tmp/x.csv" and row["next_run_at"] is None
    assert run(db_url, "schedule", "enable", "nightly-export").exit_code == 0
    assert run(db_url, "schedule", "remove", "nightly-export").exit_code == 0
    with make_engine(db_url).connect() as conn:
        actions = [a["action"] for a in recent(conn)]
    assert actions[:5] == ["schedule.remove", "schedule.enable", "schedule.set", "schedule.disable", "schedule.add"]


def test_schedule_list_shows_times_in_the_configured_zone(engine, db_url):
    result = run(db_url, "schedule", "list")
    assert result.exit_code == 0, result.output
    assert "generate-weekly-report" in result.output and "0 10 * * 1" in result.output
    assert result.output.rstrip().endswith("# times in Asia/Shanghai")


@pytest.mark.parametrize("args, code, message", [
    (["schedule", "add", "x", "cleanup.cleanup_task_history", "--cron", "0 2 * *"], 2, "bad crontab '0 2 * *'"),
    (["schedule", "add", "x", "cleanup.cleanup_task_history", "--cron", "0 99 * * *"], 2, "hour '99'"),
    (["schedule", "add", "x", "cleanup.nonexistent", "--every", "5"], 2, "unknown task 'cleanup.nonexistent'"),
    (["schedule", "add", "x", "cleanup.cleanup_task_history", "--every", "5", "--queue", "q9"], 2, "unknown queue 'q9'"),
    (["schedule", "add", "x", "cleanup.cleanup_task_history", "--every", "5", "--kwargs", "{nope"], 2, "--kwargs: not valid JSON"),
    (["schedule", "add", "backup-database", "maintenance.backup_database", "--every", "5"], 1, "already exists"),
    (["schedule", "disable", "no-such-entry"], 1, "no schedule named 'no-such-entry'"),
    (["schedule", "remove", "no-such-entry"], 1, "no schedule named 'no-such-entry'"),
    (["schedule", "set", "no-such-entry", "--every", "5"], 1, "no schedule named 'no-such-entry'"),
    (["schedule", "set", "backup-database", "--cron", "x y z"], 2, "bad crontab"),
])
def test_schedule_errors_are_one_line_with_meaningful_exit_codes(sqlite_store, args, code, message):
    result = run(sqlite_store, *args)
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_any_task_allows_another_apps_task(sqlite_store):
    result = run(sqlite_store, "schedule", "add", "theirs", "auth.cleanup_expired_sessions", "--cron", "0 */2 * * *", "--any-task")
    assert result.exit_code == 0, result.output


# -- DatabaseScheduler, in process, with an in-memory broker: no sleeping ------------------------

@pytest.fixture
def scheduler(db_url, engine):
    """A scheduler polling on every access, over a table with one due interval entry and nothing else enabled."""
    app = make_app(Settings(broker_url="memory://", database_url=db_url, schedule_poll_interval=1), set_as_current=False)
    with engine.begin() as conn:
        conn.execute(periodic_tasks.update().values(enabled=False))
        add_schedule(conn, definition("often", "maintenance.optimize_database", every=1), NOW)
        conn.execute(periodic_tasks.update().where(periodic_tasks.c.name == "often")
                     .values(last_run_at=datetime.now(timezone.utc) - timedelta(hours=1)))
    sched = DatabaseScheduler(app=app)
    sched.poll_interval = 0
    yield sched
    sched.close()


def test_scheduler_loads_only_enabled_rows(scheduler):
    assert set(scheduler.schedule) == {"often"}
    entry = scheduler.schedule["often"]
    assert entry.task == "maintenance.optimize_database" and entry.schedule.run_every == timedelta(seconds=1)


def test_scheduler_picks_up_edits_without_restart(scheduler, engine):
    with engine.begin() as conn:
        update_schedule(conn, "backup-database", {"enabled": True}, NOW)
        update_schedule(conn, "often", {"kwargs": {"x": 1}, "queue": "low_priority"}, NOW)
    assert set(scheduler.schedule) == {"often", "backup-database"}
    assert scheduler.schedule["often"].kwargs == {"x": 1}
    assert scheduler.schedule["often"].options == {"queue": "low_priority"}
    # An edit made with plain SQL, without touching updated_at, is picked up as well.
    with engine.begin() as conn:
        conn.execute(periodic_tasks.update().where(periodic_tasks.c.name == "backup-database")
                     .values(minute="*/10", hour="*"))
    assert str(scheduler.schedule["backup-database"].schedule._orig_minute) == "*/10"


def test_scheduler_dispatches_due_entries_and_records_the_run(scheduler, engine):
    scheduler.tick()  # builds the heap and sends the overdue entry
    with engine.connect() as conn:
        row = get_schedule(conn, "often")
    assert row["total_run_count"] == 1
    assert row["last_run_at"] > datetime.now(timezone.utc) - timedelta(minutes=1)
    assert row["updated_at"] == NOW  # bookkeeping is not an edit


def test_scheduler_skips_a_row_edited_into_nonsense_and_keeps_the_rest(scheduler, engine):
    with engine.begin() as conn:
        update_schedule(conn, "backup-database", {"enabled": True}, NOW)
        conn.execute(periodic_tasks.update().where(periodic_tasks.c.name == "backup-database").values(hour="99"))
    assert set(scheduler.schedule) == {"often"}


def test_scheduler_keeps_its_schedule_when_the_database_goes_away(scheduler):
    before = dict(scheduler.schedule)
    scheduler.app._engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # the store went away
    assert scheduler.schedule == before and scheduler.poll_errors == 1
