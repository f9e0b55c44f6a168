"""Hourly, daily, weekly and monthly reports: computed from the history, stored, e-mailed once."""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timezone
from typing import Any

from celery import shared_task
from sqlalchemy import Connection, Engine, select

from tasks.settings import Settings
from storage.db import dialect_insert
from storage.schema import reports
from tasks.mail import MailError, send_mail
from tasks.periods import Period, parse_day, report_period
from tasks.policies import DefaultTask
from tasks.report_data import build_report
from tasks.report_format import render, title

log = logging.getLogger(__name__)


def store_report(conn: Connection, period: Period, report: dict[str, Any], now: datetime) -> int:
    """Insert or refresh the period's row; an unchanged report leaves the row as it was."""
    data = json.dumps(report, sort_keys=True)
    stmt = dialect_insert(conn)(reports).values(
        kind=period.kind, period_start=period.start, period_end=period.end, timezone=period.tz.key,
        data=data, created_at=now, updated_at=now)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[reports.c.kind, reports.c.period_start],
        set_={"data": stmt.excluded.data, "updated_at": stmt.excluded.updated_at},
        where=reports.c.data != stmt.excluded.data))
    return conn.execute(select(reports.c.id).where(reports.c.kind == period.kind,
                                                   reports.c.period_start == period.start)).scalar_one()


def email_report(engine: Engine, settings: Settings, report_id: int, report: dict[str, Any], now: datetime) -> bool:
    """Send the report to the recipients once; False when there is no one to send it to or it went already."""
    recipients = settings.report_recipients or settings.alert_recipients
    if not recipients:
        log.info("report %s not e-mailed: no report_recipients or alert_recipients configured", report_id)
        return False
    with engine.begin() as conn:
        claimed = conn.execute(reports.update().where(reports.c.id == report_id, reports.c.emailed_at.is_(None))
                               .values(emailed_at=now)).rowcount
    if not claimed:
        return False
    t = report["totals"]
    rate = "-" if t["failure_rate"] is None else f"{t['failure_rate'] * 100:.1f}%"
    subject = f"[taskmon] {report['kind']} report {report['period']['label']}: {t['tasks']} tasks, {rate} failed"
    try:
        send_mail(settings, recipients, subject, render(report, "text"), render(report, "html"))
    except MailError:
        with engine.begin() as conn:
            conn.execute(reports.update().where(reports.c.id == report_id).values(emailed_at=None))
        raise
    return True


def generate_report(engine: Engine, settings: Settings, kind: str, *, now: datetime,
                    day: date | None = None) -> dict[str, Any]:
    period = report_period(kind, settings.tz, now=now, day=day)
    with engine.begin() as conn:
        report = build_report(conn, period)
        report_id = store_report(conn, period, report, now)
    emailed = email_report(engine, settings, report_id, report, now)
    log.info("%s (id %s, e-mailed: %s)", title(report), report_id, emailed)
    return {"report_id": report_id, "kind": kind, "period": report["period"]["label"],
            "tasks": report["totals"]["tasks"], "emailed": emailed}


def _generate(task, kind: str, date_text: str | None = None) -> dict[str, Any]:
    day = parse_day(date_text) if date_text else None
    return generate_report(task.engine, task.settings, kind, now=datetime.now(timezone.utc), day=day)


@shared_task(name="reports.generate_hourly_report", base=DefaultTask, bind=True)
def generate_hourly_report(self):
    return _generate(self, "hourly")


@shared_task(name="reports.generate_daily_report", base=DefaultTask, bind=True)
def generate_daily_report(self, date: str | None = None):
    return _generate(self, "daily", date)


@shared_task(name="reports.generate_weekly_report", base=DefaultTask, bind=True)
def generate_weekly_report(self, date: str | None = None):
    return _generate(self, "weekly", date)


@shared_task(name="reports.generate_monthly_report", base=DefaultTask, bind=True)
def generate_monthly_report(self, date: str | None = None):
    return _generate(self, "monthly", date)
