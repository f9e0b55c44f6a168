"""Cleanup jobs: task history by age and count, queue-depth samples, audit logs, old notifications, expired results.

Every deletion goes through storage.retention in short per-chunk transactions. A dry run counts
exactly what a real run would delete, in the same order (age first, then the count cap).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from celery import shared_task
from sqlalchemy import Engine, Table, and_, create_engine, inspect, not_, or_

from tasks.settings import Settings
from storage.audit import record
from storage.retention import beyond_newest, count_where, delete_in_chunks
from storage.schema import audit_logs, notifications, queue_depths, task_runs
from tasks.policies import BadInput, DefaultTask

log = logging.getLogger(__name__)

OnChunk = Callable[[str, int, int], Any]


@dataclass
class Deletion:
    """What one cleanup rule deleted (or, in a dry run, would delete). count None: not countable."""

    table: str
    rule: str
    count: int | None
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def non_negative(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInput(f"{name} must be a whole number, 0 or more; got {value!r}")
    return value


def _cleanup(engine: Engine, table: Table, age_col, *, now: datetime, days: int, keep: int, chunk_size: int,
             dry_run: bool, on_chunk: OnChunk | None, only=None, age_rule: str | None = None) -> list[Deletion]:
    """Delete rows older than ``days`` (0: none), then all but the ``keep`` newest (0: no cap)."""
    days, keep = non_negative("days", days), non_negative("max_records", keep)
    progress = (lambda n, total: on_chunk(table.name, n, total)) if on_chunk else None
    age_where = age_col < now - timedelta(days=days) if days else None
    if age_where is not None and only is not None:
        age_where = and_(age_where, only)
    out = []
    if days:
        rule = age_rule or f"older than {days} days"
        if dry_run:
            with engine.connect() as conn:
                count = count_where(conn, table, age_where)
        else:
            count = delete_in_chunks(engine, table, age_where, order_by=[age_col], chunk_size=chunk_size,
                                     on_chunk=progress)
        out.append(Deletion(table.name, rule, count, dry_run))
    if keep:
        with engine.connect() as conn:
            cap_where = beyond_newest(conn, table, age_col, keep)
            if dry_run:
                unaged = cap_where if age_where is None or cap_where is None else and_(cap_where, not_(age_where))
                count = count_where(conn, table, unaged)
        if not dry_run:
            count = delete_in_chunks(engine, table, cap_where, order_by=[age_col], chunk_size=chunk_size,
                                     on_chunk=progress)
        out.append(Deletion(table.name, f"beyond the newest {keep}", count, dry_run))
    if not dry_run and any(d.count for d in out):
        with engine.begin() as conn:
            record(conn, now, "cleanup", table.name, {d.rule: d.count for d in out})
    return out


def cleanup_task_history(engine: Engine, *, now: datetime, days: int, max_records: int, chunk_size: int,
                         dry_run: bool = False, on_chunk: OnChunk | None = None) -> list[Deletion]:
    return _cleanup(engine, task_runs, task_runs.c.seen_at, now=now, days=days, keep=max_records,
                    chunk_size=chunk_size, dry_run=dry_run, on_chunk=on_chunk)


def cleanup_queue_depths(engine: Engine, *, now: datetime, days: int, chunk_size: int, dry_run: bool = False,
                         on_chunk: OnChunk | None = None) -> list[Deletion]:
    """Queue-depth samples older than ``days``: they follow the task history's retention."""
    return _cleanup(engine, queue_depths, queue_depths.c.sampled_at, now=now, days=days, keep=0,
                    chunk_size=chunk_size, dry_run=dry_run, on_chunk=on_chunk)


def cleanup_audit_logs(engine: Engine, *, now: datetime, days: int, max_records: int = 0, chunk_size: int,
                       dry_run: bool = False, on_chunk: OnChunk | None = None) -> list[Deletion]:
    return _cleanup(engine, audit_logs, audit_logs.c.created_at, now=now, days=days, keep=max_records,
                    chunk_size=chunk_size, dry_run=dry_run, on_chunk=on_chunk)


def cleanup_notifications(engine: Engine, *, now: datetime, days: int, chunk_size: int, dry_run: bool = False,
                          on_chunk: OnChunk | None = None) -> list[Deletion]:
    """Notifications older than ``days`` that are read or no longer waiting to be sent."""
    done = or_(notifications.c.read_at.is_not(None), notifications.c.status != "pending")
    return _cleanup(engine, notifications, notifications.c.created_at, now=now, days=days, keep=0,
                    chunk_size=chunk_size, dry_run=dry_run, on_chunk=on_chunk, only=done,
                    age_rule=f"read or delivered, older than {days} days")


def cleanup_expired_results(backend, *, now: datetime, chunk_size: int, dry_run: bool = False) -> list[Deletion]:
    """Results older than result_expires in a result backend that does not expire them itself."""
    from celery.backends.base import DisabledBackend
    from celery.backends.database import DatabaseBackend

    if backend is None or isinstance(backend, DisabledBackend):
        return [Deletion("results", "no result backend configured", None, dry_run)]
    name = type(backend).__name__
    if backend.supports_autoexpire:
        return [Deletion("results", f"{name} expires results by itself", None, dry_run)]
    if not isinstance(backend, DatabaseBackend):
        if not dry_run:
            backend.cleanup()
        return [Deletion("results", f"{name}.cleanup() (cannot count)", None, dry_run)]
    # celery's database backend stores naive UTC in date_done.
    cutoff = (now - backend.expires).astimezone(timezone.utc).replace(tzinfo=None)
    engine = create_engine(backend.url)
    out = []
    try:
        existing = set(inspect(engine).get_table_names())
        for table in (backend.task_cls.__table__, backend.taskset_cls.__table__):
            where = table.c.date_done < cutoff if table.name in existing else None
            if dry_run:
                with engine.connect() as conn:
                    count = count_where(conn, table, where)
            else:
                count = delete_in_chunks(engine, table, where, order_by=[table.c.date_done], chunk_size=chunk_size)
            out.append(Deletion(table.name, f"older than {int(backend.expires.total_seconds())}s", count, dry_run))
    finally:
        engine.dispose()
    return out


def run_cleanup(engine: Engine, settings: Settings, backend, *, now: datetime, days: int | None = None,
                max_records: int | None = None, audit_days: int | None = None,
                notification_days: int | None = None, dry_run: bool = False,
                on_chunk: OnChunk | None = None) -> list[Deletion]:
    """Everything `taskmon cleanup` does; None means the setting's value."""
    pick = lambda value, default: default if value is None else value  # noqa: E731
    chunk = settings.cleanup_chunk_size
    return [
        *cleanup_task_history(engine, now=now, days=pick(days, settings.retention_days),
                              max_records=pick(max_records, settings.retention_max_records),
                              chunk_size=chunk, dry_run=dry_run, on_chunk=on_chunk),
        *cleanup_queue_depths(engine, now=now, days=pick(days, settings.retention_days), chunk_size=chunk,
                              dry_run=dry_run, on_chunk=on_chunk),
        *cleanup_audit_logs(engine, now=now, days=pick(audit_days, settings.audit_retention_days),
                            chunk_size=chunk, dry_run=dry_run, on_chunk=on_chunk),
        *cleanup_notifications(engine, now=now, days=pick(notification_days, settings.notification_retention_days),
                               chunk_size=chunk, dry_run=dry_run, on_chunk=on_chunk),
        *cleanup_expired_results(backend, now=now, chunk_size=chunk, dry_run=dry_run),
    ]


def _summary(deletions: list[Deletion]) -> list[dict[str, Any]]:
    return [d.as_dict() for d in deletions]


@shared_task(name="cleanup.cleanup_task_history", base=DefaultTask, bind=True)
def cleanup_task_history_task(self, days: int | None = None, max_records: int | None = None):
    s = self.settings
    now, days = datetime.now(timezone.utc), s.retention_days if days is None else days
    return _summary([*cleanup_task_history(
        self.engine, now=now, days=days, max_records=s.retention_max_records if max_records is None else max_records,
        chunk_size=s.cleanup_chunk_size), *cleanup_queue_depths(self.engine, now=now, days=days,
                                                               chunk_size=s.cleanup_chunk_size)])


@shared_task(name="cleanup.cleanup_audit_logs", base=DefaultTask, bind=True)
def cleanup_audit_logs_task(self, days: int | None = None, max_records: int = 0):
    s = self.settings
    return _summary(cleanup_audit_logs(
        self.engine, now=datetime.now(timezone.utc), days=s.audit_retention_days if days is None else days,
        max_records=max_records, chunk_size=s.cleanup_chunk_size))


@shared_task(name="cleanup.cleanup_expired_results", base=DefaultTask, bind=True)
def cleanup_expired_results_task(self):
    return _summary(cleanup_expired_results(self.app.backend, now=datetime.now(timezone.utc),
                                            chunk_size=self.settings.cleanup_chunk_size))
