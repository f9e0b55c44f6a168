"""Reports: calendar periods in the time zone, figures from the history, stored and e-mailed once."""
import csv
import re
import io
import json
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli import cli
from tasks.settings import Settings
from storage.runs import upsert_runs
from storage.schema import reports
from tasks.mail import MailError
from tasks.periods import hour_containing, period_for_date, previous_period
from tasks.report_format import render
from tasks.reports import build_report, generate_report, report_period

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)  # a Friday
DAY_START = datetime(2026, 11, 19, 16, 0, tzinfo=timezone.utc)  # 2026-11-20 00:00 in Shanghai


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


def test_periods_are_calendar_periods_in_the_zone():
    daily = period_for_date("daily", DAY, SHANGHAI)
    assert (daily.start, daily.end, daily.label) == (DAY_START, DAY_START + timedelta(days=1), "2026-11-20")
    weekly = period_for_date("weekly", DAY, SHANGHAI)
    assert weekly.start == utc(2026, 11, 15, 16) and weekly.end == utc(2026, 11, 22, 16) and weekly.label == "2026-W47"
    monthly = period_for_date("monthly", date(2026, 12, 31), SHANGHAI)
    assert (monthly.start, monthly.end, monthly.label) == (utc(2026, 11, 30, 16), utc(2026, 12, 31, 16), "2026-12")


def test_a_day_across_a_dst_change_is_23_hours_and_hours_follow_odd_offsets():
    new_york = ZoneInfo("America/New_York")
    spring = period_for_date("daily", date(2026, 3, 8), new_york)
    assert spring.end - spring.start == timedelta(hours=23)
    kolkata = hour_containing(utc(2026, 11, 20, 10, 37, 12), ZoneInfo("Asia/Kolkata"))  # 16:07 local
    assert (kolkata.start, kolkata.label) == (utc(2026, 11, 20, 10, 30), "2026-11-20 16:00")


def test_previous_periods_are_the_last_complete_ones():
    now = utc(2026, 12, 1, 1, 30)  # 09:30 on Tuesday 1 December in Shanghai
    assert previous_period("hourly", now, SHANGHAI).label == "2026-12-01 08:00"
    assert previous_period("daily", now, SHANGHAI).label == "2026-11-30"
    assert previous_period("weekly", now, SHANGHAI).label == "2026-W48"
    assert previous_period("monthly", now, SHANGHAI).label == "2026-11"


def run(task_id, name, state, at, **fields):
    return {"task_id": task_id, "name": name, "state": state, "state_at": at, "seen_at": at, "updated_at": at, **fields}


@pytest.fixture
def history(engine):
    t = lambda minutes: DAY_START + timedelta(minutes=minutes)  # noqa: E731
    rows = [
        run("a1", "billing.charge", "SUCCESS", t(10), runtime=2.0, queue="finance", worker="w1"),
        run("a2", "billing.charge", "FAILURE", t(20), runtime=4.0, queue="finance", worker="w1",
            exception_type="TimeoutError", exception="TimeoutError('gateway')"),
        run("a3", "billing.charge", "FAILURE", t(30), runtime=6.0, queue="finance", worker="w2",
            exception_type="TimeoutError", retries=2),
        run("b1", "mail.send", "SUCCESS", t(40), runtime=0.5, queue="email", worker="w2"),
        run("b2", "mail.send", "FAILURE", t(50), runtime=0.5, queue="email", worker="w2", exception_type="SMTPError"),
        run("b3", "mail.send", "STARTED", t(60), queue="email", worker="w2"),
        run("c1", "slow.job", "SUCCESS", t(70), runtime=30.0, queue="default", worker="w1"),
        run("before", "slow.job", "FAILURE", DAY_START - timedelta(seconds=1), exception_type="Old"),
        run("after", "slow.job", "FAILURE", DAY_START + timedelta(days=1), exception_type="New"),
    ]
    with engine.begin() as conn:
        for row in rows:  # one at a time: upsert_runs cannot take several rows yet (expanding IN + executemany)
            upsert_runs(conn, [row])
    return engine


def test_report_figures_from_known_history(history):
    with history.connect() as conn:
        report = build_report(conn, period_for_date("daily", DAY, SHANGHAI), exact=True)
        rolled = build_report(conn, period_for_date("daily", DAY, SHANGHAI))
    assert report["period"] == {"label": "2026-11-20", "start": "2026-11-20 00:00", "end": "2026-11-21 00:00",
                                "timezone": "Asia/Shanghai"}
    assert report["totals"] == {"tasks": 7, "succeeded": 3, "failed": 3, "retries": 2, "failure_rate": 0.5}
    assert report["states"] == {"FAILURE": 3, "STARTED": 1, "SUCCESS": 3}
    assert report["top_failing"] == [
        {"task": "billing.charge", "runs": 3, "failures": 2, "failure_rate": 0.6667},
        {"task": "mail.send", "runs": 3, "failures": 1, "failure_rate": 0.3333},
    ]
    assert report["top_exceptions"] == [{"exception": "TimeoutError", "count": 2, "tasks": 1},
                                        {"exception": "SMTPError", "count": 1, "tasks": 1}]
    assert report["slowest"] == [
        {"task": "slow.job", "runs": 1, "avg_runtime": 30.0, "max_runtime": 30.0},
        {"task": "billing.charge", "runs": 3, "avg_runtime": 4.0, "max_runtime": 6.0},
        {"task": "mail.send", "runs": 2, "avg_runtime": 0.5, "max_runtime": 0.5},
    ]
    assert report["queues"] == [{"queue": "email", "tasks": 3, "failures": 1}, {"queue": "finance", "tasks": 3, "failures": 2},
                                {"queue": "default", "tasks": 1, "failures": 0}]
    assert report["workers"] == [{"worker": "w2", "tasks": 4, "failures": 2}, {"worker": "w1", "tasks": 3, "failures": 1}]
    # From the rollups: the same, except that each maximum is the histogram bucket that holds it.
    assert rolled["slowest"] == [
        {"task": "slow.job", "runs": 1, "avg_runtime": 30.0, "max_runtime": 30.0, "max_runtime_bounds": [10.0, 30.0]},
        {"task": "billing.charge", "runs": 3, "avg_runtime": 4.0, "max_runtime": 7.5, "max_runtime_bounds": [5.0, 7.5]},
        {"task": "mail.send", "runs": 2, "avg_runtime": 0.5, "max_runtime": 0.5, "max_runtime_bounds": [0.25, 0.5]},
    ]
    assert {k: v for k, v in rolled.items() if k != "slowest"} == {k: v for k, v in report.items() if k != "slowest"}
    assert "<= 7.5" in render(rolled, "text") and "6.000" in render(report, "text")


def test_an_empty_period_has_zero_counts_and_no_rate(engine):
    with engine.connect() as conn:
        report = build_report(conn, period_for_date("monthly", DAY, SHANGHAI))
    assert report["totals"] == {"tasks": 0, "succeeded": 0, "failed": 0, "retries": 0, "failure_rate": None}
    assert "(none)" in render(report, "text")


def settings_for(smtp_server=None, **kw):
    smtp = {"smtp_host": "127.0.0.1", "smtp_port": smtp_server.port} if smtp_server else {}
    return Settings(timezone="Asia/Shanghai", **smtp, **kw)


def test_generate_stores_the_report_and_emails_it_once(history, smtp_server):
    settings = settings_for(smtp_server, report_recipients=("ops@example.com", "boss@example.com"))
    now = DAY_START + timedelta(days=1, hours=3)
    first = generate_report(history, settings, "daily", now=now)
    assert first["emailed"] is True and first["period"] == "2026-11-20" and first["tasks"] == 7
    with history.connect() as conn:
        stored = conn.execute(select(reports)).mappings().all()
    second = generate_report(history, settings, "daily", now=now + timedelta(hours=1))
    with history.connect() as conn:
        again = conn.execute(select(reports)).mappings().all()
    assert second == dict(first, emailed=False)
    assert [dict(r) for r in again] == [dict(r) for r in stored]  # nothing rewritten
    assert len(smtp_server.messages) == 1
    mail = smtp_server.messages[0]
    assert sorted(mail["to"]) == ["boss@example.com", "ops@example.com"]
    assert mail["message"]["Subject"] == "[taskmon] daily report 2026-11-20: 7 tasks, 50.0% failed"
    body = mail["message"].get_body(("plain",)).get_content()
    assert "billing.charge" in body and "TimeoutError" in body
    assert "<table" in mail["message"].get_body(("html",)).get_content()
    data = json.loads(stored[0]["data"])
    assert data["totals"]["tasks"] == 7 and stored[0]["kind"] == "daily" and stored[0]["emailed_at"] is not None


def test_a_report_whose_mail_fails_is_stored_and_mailed_on_the_retry(history, smtp_server):
    down = Settings(timezone="Asia/Shanghai", smtp_host="127.0.0.1", smtp_port=1, alert_recipients=("ops@example.com",))
    now = DAY_START + timedelta(days=1, hours=3)
    with pytest.raises(MailError, match="cannot send mail via 127.0.0.1:1"):
        generate_report(history, down, "daily", now=now)
    up = settings_for(smtp_server, alert_recipients=("ops@example.com",))
    assert generate_report(history, up, "daily", now=now)["emailed"] is True
    assert len(smtp_server.messages) == 1


def test_late_history_updates_the_stored_report(history):
    settings = settings_for()
    now = DAY_START + timedelta(days=1, hours=3)
    generate_report(history, settings, "daily", now=now)
    with history.begin() as conn:
        upsert_runs(conn, [run("late", "mail.send", "SUCCESS", DAY_START + timedelta(hours=5))])
    generate_report(history, settings, "daily", now=now)
    with history.connect() as conn:
        rows = conn.execute(select(reports.c.data)).scalars().all()
    assert len(rows) == 1 and json.loads(rows[0])["totals"]["tasks"] == 8


def test_hourly_report_takes_no_date():
    with pytest.raises(ValueError, match="takes no date"):
        report_period("hourly", SHANGHAI, now=DAY_START, day=DAY)


def cli_report(db_url, *args):
    return CliRunner().invoke(cli, ["report", *args, "--db", db_url, "--timezone", "Asia/Shanghai"])


def test_cli_report_in_every_format(db_url, history):
    text = cli_report(db_url, "daily", "--date", "2026-11-20")
    assert text.exit_code == 0, text.output
    assert text.output.startswith("taskmon daily report 2026-11-20 (2026-11-20 00:00 to 2026-11-21 00:00, Asia/Shanghai)")
    assert re.search(r"failure rate +50.0%", text.output)
    as_json = json.loads(cli_report(db_url, "daily", "--date", "2026-11-20", "--format", "json").output)
    assert as_json["totals"]["tasks"] == 7
    rows = list(csv.reader(io.StringIO(cli_report(db_url, "daily", "--date", "2026-11-20", "--format", "csv").output)))
    assert rows[0] == ["section", "item", "metric", "value"]
    assert ["top_failing", "billing.charge", "failures", "2"] in rows
    md = cli_report(db_url, "weekly", "--date", "2026-11-20", "--format", "md").output
    assert md.startswith("# taskmon weekly report 2026-W47") and "| billing.charge | 3 | 2 | 66.7% |" in md
    monthly = json.loads(cli_report(db_url, "monthly", "--date", "2026-11-02", "--format", "json").output)
    assert monthly["period"]["label"] == "2026-11" and monthly["totals"]["tasks"] == 9
    exact = json.loads(cli_report(db_url, "daily", "--date", "2026-11-20", "--format", "json", "--exact").output)
    assert {k: v for k, v in exact.items() if k != "slowest"} == {k: v for k, v in as_json.items() if k != "slowest"}
    assert [r["max_runtime"] for r in exact["slowest"]] == [30.0, 6.0, 0.5]
    assert [r["max_runtime_bounds"] for r in as_json["slowest"]] == [[10.0, 30.0], [5.0, 7.5], [0.25, 0.5]]


def test_cli_report_bad_date_is_one_line(sqlite_url):
    result = cli_report(sqlite_url, "daily", "--date", "20-11-2026")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["Error: bad date '20-11-2026': expected YYYY-MM-DD"]
