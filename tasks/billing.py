"""Billing jobs: overdue bills, payment reminders, monthly revenue.

Amounts are ``Decimal`` end to end (storage.types.Money); "today" and "a month" are calendar
days and months in the configured time zone. Each job can run again without changing anything.
"""
from __future__ import annotations

import logging
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from celery import shared_task
from sqlalchemy import Engine, func, or_, select

from tasks.settings import Settings
from storage.db import dialect_insert
from storage.schema import bills, monthly_revenue
from tasks.mail import MailError
from tasks.notifications import deliver
from tasks.periods import period_for_date
from tasks.policies import BadInput, CriticalTask

log = logging.getLogger(__name__)

OPEN_STATUSES = ("pending", "overdue")


def check_pending_bills(engine: Engine, *, today: date, now: datetime) -> int:
    """Mark pending bills whose due date has passed overdue; returns how many changed."""
    with engine.begin() as conn:
        return conn.execute(bills.update().where(bills.c.status == "pending", bills.c.due_date < today)
                            .values(status="overdue", updated_at=now)).rowcount


def bills_to_remind(engine: Engine, *, today: date, days_ahead: int, bill_ids: list[int] | None = None) -> list[dict]:
    """Open bills with an address, due within ``days_ahead`` days or overdue; only ``bill_ids`` when given."""
    query = select(bills).where(bills.c.status.in_(OPEN_STATUSES), bills.c.email.is_not(None),
                                bills.c.due_date <= today + timedelta(days=days_ahead)).order_by(bills.c.id)
    with engine.connect() as conn:
        if bill_ids is not None:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in bill_ids):
                raise BadInput(f"bill ids must be whole numbers; got {bill_ids!r}")
            known = set(conn.execute(select(bills.c.id).where(bills.c.id.in_(bill_ids))).scalars())
            unknown = sorted(set(bill_ids) - known)
            if unknown:
                raise BadInput(f"no bill with id {', '.join(map(str, unknown))}")
            query = query.where(bills.c.id.in_(bill_ids))
        return [dict(r) for r in conn.execute(query).mappings()]


def reminder_text(bill: dict, today: date) -> tuple[str, str]:
    late = bill["due_date"] < today
    subject = f"{'Overdue' if late else 'Reminder'}: bill #{bill['id']}, {bill['amount']} {bill['currency']}"
    body = (f"Dear {bill['customer']},\n\n"
            f"bill #{bill['id']} for {bill['amount']} {bill['currency']} "
            f"{'was' if late else 'is'} due on {bill['due_date'].isoformat()}"
            f"{' and is overdue' if late else ''}. Please pay it at your earliest convenience.\n")
    return subject, body


def send_bill_reminders(engine: Engine, settings: Settings, *, today: date, days_ahead: int = 3,
                        bill_ids: list[int] | None = None, now: datetime | None = None) -> dict[str, Any]:
    """E-mail each bill to remind at most once per day (the key names bill and day); returns counts."""
    if isinstance(days_ahead, bool) or not isinstance(days_ahead, int) or days_ahead < 0:
        raise BadInput(f"days_ahead must be a whole number, 0 or more; got {days_ahead!r}")
    sent, skipped, failed = [], [], []
    for bill in bills_to_remind(engine, today=today, days_ahead=days_ahead, bill_ids=bill_ids):
        subject, body = reminder_text(bill, today)
        try:
            outcome = deliver(engine, settings, bill["email"], subject, body,
                              key=f"bill-reminder:{bill['id']}:{today.isoformat()}", now=now)
        except MailError as exc:
            log.warning("reminder for bill %s not sent: %s", bill["id"], exc)
            failed.append(bill["id"])
            continue
        (sent if outcome["sent"] else skipped).append(bill["id"])
    return {"sent": sent, "already_reminded": skipped, "failed": failed}


def parse_month(text: str) -> date:
    match = re.fullmatch(r"(\d{4})-(\d{2})", text or "")
    if not match or not 1 <= int(match[2]) <= 12:
        raise BadInput(f"bad month {text!r}: expected YYYY-MM, e.g. 2026-10")
    return date(int(match[1]), int(match[2]), 1)


def calculate_monthly_revenue(engine: Engine, *, month: date, tz: ZoneInfo, now: datetime) -> list[dict[str, Any]]:
    """Sum the bills paid in ``month`` per currency into ``monthly_revenue``; a rerun rewrites nothing."""
    period = period_for_date("monthly", month, tz)
    first = period.start.astimezone(tz).date()
    with engine.begin() as conn:
        totals = conn.execute(
            select(bills.c.currency, func.sum(bills.c.amount).label("amount"), func.count().label("bill_count"))
            .where(bills.c.status == "paid", bills.c.paid_at >= period.start, bills.c.paid_at < period.end)
            .group_by(bills.c.currency).order_by(bills.c.currency)
        ).mappings().all()
        rows = [{"month": first, "currency": t["currency"], "amount": t["amount"], "bill_count": t["bill_count"],
                 "computed_at": now} for t in totals]
        if rows:
            stmt = dialect_insert(conn)(monthly_revenue)
            new = stmt.excluded
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[monthly_revenue.c.month, monthly_revenue.c.currency],
                set_={"amount": new.amount, "bill_count": new.bill_count, "computed_at": new.computed_at},
                where=or_(monthly_revenue.c.amount != new.amount, monthly_revenue.c.bill_count != new.bill_count),
            ), rows)
        # A currency whose bills are no longer paid that month (refunded, corrected) has no revenue left.
        conn.execute(monthly_revenue.delete().where(
            monthly_revenue.c.month == first, monthly_revenue.c.currency.not_in([r["currency"] for r in rows])))
    return [{"month": first.strftime("%Y-%m"), "currency": r["currency"], "amount": str(r["amount"]),
             "bill_count": r["bill_count"]} for r in rows]


def _today(settings: Settings) -> date:
    return datetime.now(settings.tz).date()


@shared_task(name="billing.check_pending_bills", base=CriticalTask, bind=True)
def check_pending_bills_task(self):
    return {"marked_overdue": check_pending_bills(self.engine, today=_today(self.settings), now=datetime.now(timezone.utc))}


@shared_task(name="billing.send_bill_reminders", base=CriticalTask, bind=True)
def send_bill_reminders_task(self, bill_ids: list[int] | None = None, days_ahead: int = 3):
    outcome = send_bill_reminders(self.engine, self.settings, today=_today(self.settings), days_ahead=days_ahead,
                                  bill_ids=bill_ids)
    if outcome["failed"]:
        # Retried by the policy; the reminders already sent today are not sent again.
        raise MailError(f"reminders for bills {outcome['failed']} not sent; {len(outcome['sent'])} sent")
    return outcome


@shared_task(name="billing.calculate_monthly_revenue", base=CriticalTask, bind=True)
def calculate_monthly_revenue_task(self, month: str | None = None):
    """``month`` is YYYY-MM; default the previous calendar month."""
    today = _today(self.settings)
    first = parse_month(month) if month else (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    return calculate_monthly_revenue(self.engine, month=first, tz=self.settings.tz, now=datetime.now(timezone.utc))
