"""Billing: overdue bills, one reminder per bill per day, exact monthly revenue; reruns change nothing."""
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from tasks.settings import Settings
from storage.schema import bills, monthly_revenue, notifications
from tasks.billing import calculate_monthly_revenue, check_pending_bills, parse_month, send_bill_reminders
from tasks.policies import BadInput

SHANGHAI = ZoneInfo("Asia/Shanghai")
TODAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


def add_bills(engine, *specs):
    """(customer, amount, due, status, paid_at, currency) tuples -> ids."""
    with engine.begin() as conn:
        ids = []
        for customer, amount, due, status, paid_at, currency in specs:
            ids.append(conn.execute(bills.insert().values(
                customer=customer, email=f"{customer}@example.com", amount=amount, currency=currency, status=status,
                due_date=due, issued_at=NOW - timedelta(days=30), paid_at=paid_at, updated_at=NOW - timedelta(days=30),
            )).inserted_primary_key[0])
    return ids


def snapshot(engine, table):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()]


def test_money_round_trips_exactly_and_floats_are_refused(engine):
    (bill_id,) = add_bills(engine, ("acme", Decimal("0.10"), TODAY, "pending", None, "CNY"))
    with engine.connect() as conn:
        assert conn.execute(select(bills.c.amount).where(bills.c.id == bill_id)).scalar_one() == Decimal("0.10")
    with pytest.raises(Exception, match="float amount"):
        add_bills(engine, ("acme", 0.1, TODAY, "pending", None, "CNY"))
    with pytest.raises(Exception, match="more than two decimal places"):
        add_bills(engine, ("acme", Decimal("1.005"), TODAY, "pending", None, "CNY"))


def test_check_pending_bills_marks_only_past_due_pending_bills_and_is_idempotent(engine):
    past, today_, paid = add_bills(engine, ("a", "10.00", TODAY - timedelta(days=1), "pending", None, "CNY"),
                                   ("b", "10.00", TODAY, "pending", None, "CNY"),
                                   ("c", "10.00", TODAY - timedelta(days=9), "paid", NOW, "CNY"))
    assert check_pending_bills(engine, today=TODAY, now=NOW) == 1
    after_first = snapshot(engine, bills)
    assert {r["id"]: r["status"] for r in after_first} == {past: "overdue", today_: "pending", paid: "paid"}
    assert check_pending_bills(engine, today=TODAY, now=NOW + timedelta(minutes=1)) == 0
    assert snapshot(engine, bills) == after_first


def test_reminders_go_out_once_per_bill_per_day(engine, smtp_server):
    settings = Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port)
    due_soon, overdue, later, paid = add_bills(
        engine, ("soon", "99.90", TODAY + timedelta(days=2), "pending", None, "CNY"),
        ("late", "5.00", TODAY - timedelta(days=3), "overdue", None, "USD"),
        ("later", "1.00", TODAY + timedelta(days=10), "pending", None, "CNY"),
        ("paid", "1.00", TODAY, "paid", NOW, "CNY"))
    first = send_bill_reminders(engine, settings, today=TODAY, now=NOW)
    assert first == {"sent": [due_soon, overdue], "already_reminded": [], "failed": []}
    second = send_bill_reminders(engine, settings, today=TODAY, now=NOW)
    assert second == {"sent": [], "already_reminded": [due_soon, overdue], "failed": []}
    assert len(smtp_server.messages) == 2
    subjects = sorted(m["message"]["Subject"] for m in smtp_server.messages)
    assert subjects == [f"Overdue: bill #{overdue}, 5.00 USD", f"Reminder: bill #{due_soon}, 99.90 CNY"]
    # The next day each open bill may be reminded again.
    tomorrow = send_bill_reminders(engine, settings, today=TODAY + timedelta(days=1), now=NOW + timedelta(days=1))
    assert tomorrow["sent"] == [due_soon, overdue] and len(smtp_server.messages) == 4
    with engine.connect() as conn:
        assert conn.execute(select(notifications.c.status)).scalars().all() == ["sent"] * 4


def test_a_failed_reminder_is_sent_on_a_later_run_the_same_day(engine, smtp_server):
    (bill_id,) = add_bills(engine, ("x", "3.00", TODAY, "pending", None, "CNY"))
    down = Settings(smtp_host="127.0.0.1", smtp_port=1)
    assert send_bill_reminders(engine, down, today=TODAY, now=NOW)["failed"] == [bill_id]
    up = Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port)
    assert send_bill_reminders(engine, up, today=TODAY, now=NOW)["sent"] == [bill_id]
    assert send_bill_reminders(engine, up, today=TODAY, now=NOW)["sent"] == []
    assert len(smtp_server.messages) == 1


def test_reminders_for_an_unknown_bill_are_refused(engine):
    (bill_id,) = add_bills(engine, ("x", "3.00", TODAY, "pending", None, "CNY"))
    with pytest.raises(BadInput, match="no bill with id 4242"):
        send_bill_reminders(engine, Settings(), today=TODAY, bill_ids=[bill_id, 4242])
    with pytest.raises(BadInput, match="days_ahead must be"):
        send_bill_reminders(engine, Settings(), today=TODAY, days_ahead=-1)
    with engine.connect() as conn:
        assert conn.execute(select(notifications)).first() is None


def test_monthly_revenue_is_exact_per_currency_and_a_rerun_changes_nothing(engine):
    paid = lambda y, m, d, h=12: datetime(y, m, d, h, tzinfo=SHANGHAI)  # noqa: E731
    add_bills(
        engine,
        *[("c", "0.10", TODAY, "paid", paid(2026, 10, 5), "CNY") for _ in range(3)],  # 0.30, not 0.30000000000000004
        ("c", "1234567.89", TODAY, "paid", paid(2026, 10, 31, 23), "CNY"),  # 15:00 UTC, still October in Shanghai
        ("c", "20.00", TODAY, "paid", paid(2026, 10, 1, 0), "USD"),
        ("c", "7.00", TODAY, "paid", paid(2026, 11, 1, 0), "CNY"),  # November in Shanghai (still October in UTC)
        ("c", "8.00", TODAY, "pending", None, "CNY"),
    )
    rows = calculate_monthly_revenue(engine, month=date(2026, 10, 1), tz=SHANGHAI, now=NOW)
    assert rows == [{"month": "2026-10", "currency": "CNY", "amount": "1234568.19", "bill_count": 4},
                    {"month": "2026-10", "currency": "USD", "amount": "20.00", "bill_count": 1}]
    stored = snapshot(engine, monthly_revenue)
    assert [r["amount"] for r in stored] == [Decimal("1234568.19"), Decimal("20.00")]
    calculate_monthly_revenue(engine, month=date(2026, 10, 1), tz=SHANGHAI, now=NOW + timedelta(hours=1))
    assert snapshot(engine, monthly_revenue) == stored  # computed_at untouched too


def test_monthly_revenue_follows_corrections(engine):
    (bill_id,) = add_bills(engine, ("c", "5.00", TODAY, "paid", datetime(2026, 10, 5, tzinfo=timezone.utc), "EUR"))
    calculate_monthly_revenue(engine, month=date(2026, 10, 1), tz=SHANGHAI, now=NOW)
    with engine.begin() as conn:
        conn.execute(bills.update().where(bills.c.id == bill_id).values(status="cancelled"))
    assert calculate_monthly_revenue(engine, month=date(2026, 10, 1), tz=SHANGHAI, now=NOW) == []
    assert snapshot(engine, monthly_revenue) == []


@pytest.mark.parametrize("text", ["2026-13", "2026-1", "October", ""])
def test_bad_month_is_refused(text):
    with pytest.raises(BadInput, match="expected YYYY-MM"):
        parse_month(text)
