"""Schedule definitions: validate crontab and interval specs, and turn rows into celery schedules.

A crontab is written like cron's: "minute hour day-of-month month day-of-week" (day-of-week 0 or
7 is Sunday), and read in the configured time zone.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Mapping

from celery import Celery
from celery.schedules import crontab, schedule

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
TASK_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


class ScheduleError(ValueError):
    """A schedule definition taskmon cannot use; the message says what is wrong."""


def parse_cron(expr: str) -> dict[str, str]:
    """"0 2 * * *" -> {"minute": "0", "hour": "2", ...}, each field checked by celery's own parser."""
    parts = expr.split()
    if len(parts) != len(CRON_FIELDS):
        raise ScheduleError(f"bad crontab {expr!r}: expected 5 fields, minute hour day-of-month month day-of-week")
    fields = dict(zip(CRON_FIELDS, parts))
    for name, value in fields.items():
        try:
            crontab(**{name: value})
        except Exception as exc:  # celery's parser raises ValueError and its own ParseException
            raise ScheduleError(f"bad crontab {expr!r}: {name.replace('_', '-')} {value!r}: {exc}") from None
    return fields


def schedule_fields(cron: str | None = None, every: int | None = None) -> dict[str, Any]:
    """The six schedule columns for a crontab or an interval in seconds (exactly one of them)."""
    if (cron is None) == (every is None):
        raise ScheduleError("give either a crontab or an interval in seconds, not both or neither")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ScheduleError(f"bad interval {every!r}: a whole number of seconds, 1 or more")
        return {**dict.fromkeys(CRON_FIELDS), "interval_seconds": every}
    return {**parse_cron(cron), "interval_seconds": None}


def definition(name: str, task: str, *, cron: str | None = None, every: int | None = None,
               args: Any = None, kwargs: Any = None, queue: str | None = None, queues=(),
               enabled: bool = True, description: str | None = None) -> dict[str, Any]:
    """A validated row for ``storage.schedules.add_schedule``."""
    return {
        "name": check_name(name),
        "task": check_task(task),
        **schedule_fields(cron, every),
        "args": check_args(args),
        "kwargs": check_kwargs(kwargs),
        "queue": check_queue(queue, queues),
        "enabled": bool(enabled),
        "description": description,
    }


def check_name(name: str) -> str:
    if not name or not name.strip() or len(name) > 200:
        raise ScheduleError(f"bad schedule name {name!r}: 1 to 200 characters")
    return name


def check_task(task: str) -> str:
    if not TASK_NAME.match(task or ""):
        raise ScheduleError(f"bad task name {task!r}: expected module.task, e.g. cleanup.cleanup_task_history")
    return task


def check_args(args: Any) -> list:
    if args is None:
        return []
    if not isinstance(args, (list, tuple)):
        raise ScheduleError(f"bad args {args!r}: a JSON list, e.g. [1, \"a\"]")
    return list(args)


def check_kwargs(kwargs: Any) -> dict:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ScheduleError(f"bad kwargs {kwargs!r}: a JSON object, e.g. {{\"days\": 30}}")
    return dict(kwargs)


def check_queue(queue: str | None, queues=()) -> str | None:
    if queue is None or queue == "":
        return None
    if queues and queue not in queues:
        raise ScheduleError(f"unknown queue {queue!r}: one of {', '.join(queues)}")
    return queue


def describe(row: Mapping[str, Any]) -> str:
    """"0 2 * * *" or "every 60s"."""
    if row.get("interval_seconds"):
        return f"every {row['interval_seconds']}s"
    return " ".join(str(row.get(f) or "*") for f in CRON_FIELDS)


def celery_schedule(row: Mapping[str, Any], app: Celery, nowfun=None):
    """The celery schedule object for a row; raises ScheduleError for a row edited into nonsense."""
    if row.get("interval_seconds"):
        return schedule(timedelta(seconds=row["interval_seconds"]), nowfun=nowfun, app=app)
    try:
        return crontab(**{f: row.get(f) or "*" for f in CRON_FIELDS}, nowfun=nowfun, app=app)
    except Exception as exc:  # ValueError / ParseException from celery's parser
        raise ScheduleError(f"schedule {row.get('name')!r}: bad crontab {describe(row)!r}: {exc}") from None


def next_run(row: Mapping[str, Any], app: Celery, now: datetime) -> datetime:
    """When the row is next due after ``now``, as beat sees it (an aware datetime)."""
    sched = celery_schedule(row, app, nowfun=lambda: now.astimezone(app.timezone))
    last = row.get("last_run_at") or now
    return now + max(sched.remaining_estimate(last), timedelta(0))


def due_after_last(row: Mapping[str, Any], app: Celery, now: datetime) -> datetime | None:
    """When the row was (or is) due next after its ``last_run_at``, possibly in the past; None if it never ran."""
    last = row.get("last_run_at")
    if last is None:
        return None
    sched = celery_schedule(row, app, nowfun=lambda: now.astimezone(app.timezone))
    return now + sched.remaining_estimate(last)
