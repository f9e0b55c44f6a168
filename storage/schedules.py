"""The beat schedule's rows (``periodic_tasks``): read, add, change, remove. Plain dicts in and out.

Definitions are validated by tasks/cron.py before they get here; this module only stores them.
args and kwargs are JSON text in the table and Python lists/dicts in the dicts.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import Connection, select

from storage.schema import periodic_tasks

# Columns that say what runs when; beat reloads its schedule when any of them changes.
DEFINITION_COLUMNS = (
    "name", "task", "minute", "hour", "day_of_month", "month_of_year", "day_of_week",
    "interval_seconds", "args", "kwargs", "queue", "enabled",
)
EDITABLE_COLUMNS = frozenset(DEFINITION_COLUMNS) | {"description"}


class UnknownSchedule(LookupError):
    def __init__(self, name: str):
        super().__init__(f"no schedule named {name!r} (see `taskmon schedule list`)")


class DuplicateSchedule(ValueError):
    def __init__(self, name: str):
        super().__init__(f"a schedule named {name!r} already exists: remove it first or choose another name")


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["args"] = json.loads(out["args"] or "[]")
    out["kwargs"] = json.loads(out["kwargs"] or "{}")
    return out


def _encode(values: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(values) - EDITABLE_COLUMNS
    if unknown:
        raise ValueError(f"not a schedule column: {', '.join(sorted(unknown))}")
    out = dict(values)
    for key in ("args", "kwargs"):
        if key in out:
            out[key] = json.dumps(out[key], sort_keys=True)
    return out


def list_schedules(conn: Connection, enabled_only: bool = False) -> list[dict[str, Any]]:
    query = select(periodic_tasks).order_by(periodic_tasks.c.name)
    if enabled_only:
        query = query.where(periodic_tasks.c.enabled.is_(True))
    return [_decode(r) for r in conn.execute(query).mappings()]


def get_schedule(conn: Connection, name: str) -> dict[str, Any]:
    row = conn.execute(select(periodic_tasks).where(periodic_tasks.c.name == name)).mappings().first()
    if row is None:
        raise UnknownSchedule(name)
    return _decode(row)


def add_schedule(conn: Connection, definition: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    name = definition["name"]
    exists = conn.execute(select(periodic_tasks.c.id).where(periodic_tasks.c.name == name)).first()
    if exists is not None:
        raise DuplicateSchedule(name)
    conn.execute(periodic_tasks.insert().values(
        **_encode(definition), total_run_count=0, created_at=now, updated_at=now))
    return get_schedule(conn, name)


def update_schedule(conn: Connection, name: str, changes: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Change a row's definition; ``updated_at`` records when (run bookkeeping never touches it)."""
    result = conn.execute(periodic_tasks.update().where(periodic_tasks.c.name == name)
                          .values(**_encode(changes), updated_at=now))
    if result.rowcount == 0:
        raise UnknownSchedule(name)
    return get_schedule(conn, name)


def remove_schedule(conn: Connection, name: str) -> None:
    if conn.execute(periodic_tasks.delete().where(periodic_tasks.c.name == name)).rowcount == 0:
        raise UnknownSchedule(name)


def record_runs(conn: Connection, runs: Mapping[str, tuple[datetime, int]]) -> None:
    """Store beat's bookkeeping: when each entry last ran and how often it has run."""
    for name, (last_run_at, total_run_count) in runs.items():
        conn.execute(periodic_tasks.update().where(periodic_tasks.c.name == name)
                     .values(last_run_at=last_run_at, total_run_count=total_run_count))


def definitions(conn: Connection) -> tuple[tuple, ...]:
    """Every row's definition, for change detection: a small table, so this is a cheap query."""
    cols = [periodic_tasks.c[name] for name in DEFINITION_COLUMNS]
    return tuple(tuple(r) for r in conn.execute(select(*cols).order_by(periodic_tasks.c.name)))
