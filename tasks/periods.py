"""Calendar periods (hour, day, ISO week, month) in a time zone, as UTC ``[start, end)`` bounds."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from tasks.errors import BadInput

KINDS = ("hourly", "daily", "weekly", "monthly")


@dataclass(frozen=True)
class Period:
    kind: str
    start: datetime  # UTC
    end: datetime  # UTC, exclusive
    tz: ZoneInfo

    @property
    def label(self) -> str:
        local = self.start.astimezone(self.tz)
        if self.kind == "hourly":
            return local.strftime("%Y-%m-%d %H:00")
        if self.kind == "daily":
            return local.strftime("%Y-%m-%d")
        if self.kind == "weekly":
            year, week, _ = local.isocalendar()
            return f"{year}-W{week:02d}"
        return local.strftime("%Y-%m")


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz).astimezone(timezone.utc)


def first_of_next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def period_for_date(kind: str, day: date, tz: ZoneInfo) -> Period:
    """The day, ISO week (Monday first) or month that contains ``day``."""
    if kind == "daily":
        first, after = day, day + timedelta(days=1)
    elif kind == "weekly":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    elif kind == "monthly":
        first, after = day.replace(day=1), first_of_next_month(day)
    else:
        raise ValueError(f"unknown period {kind!r}: one of daily, weekly, monthly")
    return Period(kind, local_midnight(first, tz), local_midnight(after, tz), tz)


def hour_containing(moment: datetime, tz: ZoneInfo) -> Period:
    # From UTC: a local hour is always 60 minutes, even across a DST change, and zones with
    # :30 or :45 offsets start their hours off the UTC hour.
    local = moment.astimezone(tz)
    start = moment.astimezone(timezone.utc) - timedelta(minutes=local.minute, seconds=local.second,
                                                         microseconds=local.microsecond)
    return Period("hourly", start, start + timedelta(hours=1), tz)


def previous_period(kind: str, now: datetime, tz: ZoneInfo) -> Period:
    """The last complete period before ``now``: the previous hour, yesterday, last week, last month."""
    if kind == "hourly":
        current = hour_containing(now, tz)
        return Period("hourly", current.start - timedelta(hours=1), current.start, tz)
    today = now.astimezone(tz).date()
    if kind == "daily":
        return period_for_date(kind, today - timedelta(days=1), tz)
    if kind == "weekly":
        return period_for_date(kind, today - timedelta(days=7), tz)
    if kind == "monthly":
        return period_for_date(kind, today.replace(day=1) - timedelta(days=1), tz)
    raise ValueError(f"unknown period {kind!r}: one of {', '.join(KINDS)}")


def report_period(kind: str, tz, *, now: datetime, day: date | None = None) -> Period:
    """The period containing ``day``, else the last complete one before ``now``."""
    if kind not in KINDS:
        raise BadInput(f"unknown report {kind!r}: one of {', '.join(KINDS)}")
    if day is None:
        return previous_period(kind, now, tz)
    if kind == "hourly":
        raise BadInput("an hourly report is for the previous hour; it takes no date")
    return period_for_date(kind, day, tz)


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise BadInput(f"bad date {text!r}: expected YYYY-MM-DD") from None
