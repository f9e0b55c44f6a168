"""`stats` from the rollups: run_rollups_hourly for the whole hours of the window, run_rollups
for the whole minutes around them, task_runs only for the ragged edges (the part of a minute at
each end), so the cost follows the number of hours and task names, not the number of runs.

Counts, states, failure rate and throughput equal the exact ones (storage.stats.task_stats).
Percentiles (and the maximum) come from the histogram buckets: each is reported as the upper
bound of the bucket that holds it, with the bucket's bounds beside it; `stats --exact` reads
every run instead.
"""
from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, text

from storage.history import RunFilter, name_condition
from storage.rollups import (BOUNDS, LEVELS, MEASURES, RUNTIME_BUCKETS, WAIT_BUCKETS, ceil_hour, ceil_minute,
                             floor_hour, floor_minute, grouped_sql, quantile)
from storage.sql import bind
from storage.stats import PERCENTILES, STATES, read_snapshot

def answerable(f: RunFilter) -> bool:
    """A rollup row knows name and minute (and state, queue, but not worker): filters beyond name and
    time need the runs."""
    return not (f.states or f.failed or f.worker or f.queue)


GROUPS = ("name", "queue", "state")  # what a rollup row is keyed by, besides its minute or hour


def _add(into: dict, row: dict) -> None:
    for m in MEASURES:
        into[m] += float(row[m] or 0)


def _rollup_rows(conn: Connection, level: str, name: str | None, by: tuple[str, ...], a: datetime, b: datetime,
                 out: dict[tuple, dict], key: str) -> None:
    """Add the rollup rows of ``level`` for [a, b) (aligned to the level), summed per ``by``, into ``out``."""
    dialect = conn.dialect.name
    table, time_col = LEVELS[level]
    params: dict[str, Any] = {f"{key}_a": bind(dialect, a), f"{key}_b": bind(dialect, b)}
    conds = [f"{time_col} >= :{key}_a", f"{time_col} < :{key}_b"]
    if name:
        sql, p = name_condition(dialect, "name", name, f"{key}_name")
        conds.append(sql)
        params.update(p)
    sums = ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
    group = ", ".join(by)
    sql = f"SELECT {group}, {sums} FROM {table} WHERE {' AND '.join(conds)} GROUP BY {group}"
    for row in conn.execute(text(sql).bindparams(**params)).mappings():
        _add(out[tuple(row[c] for c in by)], row)


def _run_rows(conn: Connection, name: str | None, by: tuple[str, ...], a: datetime, b: datetime,
              out: dict[tuple, dict], key: str) -> None:
    """Add the runs first seen in [a, b), grouped as the rollups group them, into ``out``."""
    dialect = conn.dialect.name
    params = {f"{key}_a": bind(dialect, a), f"{key}_b": bind(dialect, b)}
    where = f"t.seen_at >= :{key}_a AND t.seen_at < :{key}_b"
    if name:
        sql, p = name_condition(dialect, "t.name", name, f"{key}_name")
        where += f" AND {sql}"
        params.update(p)
    columns = ["minute", *GROUPS, *MEASURES]
    for values in conn.execute(text(grouped_sql(dialect, where)).bindparams(**params)).all():
        row = dict(zip(columns, values))
        _add(out[tuple(row[c] for c in by)], row)


def window_sums(conn: Connection, start: datetime | None, end: datetime, by: tuple[str, ...] = ("name", "state"),
                name: str | None = None) -> dict[tuple, dict[str, float]]:
    """{values of ``by``: the rollup measures summed} over the runs first seen in [start, end) (start
    None: all history), optionally of task names matching ``name`` (a name or glob).

    The hourly rollups for the whole hours, the minute rollups for the whole minutes around them,
    task_runs for the seconds at each end: what every figure from the rollups (stats, reports,
    the failure-rate alert) is summed from. A NULL name or queue is '' here, as in the rollups."""
    if any(c not in GROUPS for c in by):
        raise ValueError(f"the rollups group by {', '.join(GROUPS)} only")
    with read_snapshot(conn):
        return _window_sums(conn, start, end, by, name)


def _window_sums(conn: Connection, start: datetime | None, end: datetime, by: tuple[str, ...],
                 name: str | None) -> dict[tuple, dict[str, float]]:
    out: dict[tuple, dict] = defaultdict(lambda: defaultdict(float))
    far_past = datetime(1970, 1, 1, tzinfo=timezone.utc)
    a = start if start is not None else far_past
    m_lo, m_hi = ceil_minute(a), floor_minute(end)
    if m_lo >= m_hi:  # within a minute or two: the runs themselves
        _run_rows(conn, name, by, a, end, out, "r0")
        return out
    h_lo, h_hi = ceil_hour(m_lo), floor_hour(m_hi)
    if h_lo < h_hi:
        _rollup_rows(conn, "hour", name, by, h_lo, h_hi, out, "h")
        minute_spans = [(m_lo, h_lo), (h_hi, m_hi)]
    else:
        minute_spans = [(m_lo, m_hi)]
    for i, (x, y) in enumerate(minute_spans):
        if x < y:
            _rollup_rows(conn, "minute", name, by, x, y, out, f"m{i}")
    for i, (x, y) in enumerate(((a, m_lo), (m_hi, end))):
        if x < y:
            _run_rows(conn, name, by, x, y, out, f"r{i + 1}")
    return out


def finished_counts(conn: Connection, since: datetime, now: datetime, finished_states: tuple[str, ...],
                    failed_states: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per task name, the runs first seen in [since, now) that have ended (``finished_states``) and
    how many of them failed (``failed_states``): the failure-rate alert's window, from the rollups."""
    out: dict[str, dict[str, int]] = {}
    for (name, state), m in window_sums(conn, since, now, ("name", "state")).items():
        if not name or state not in finished_states or not m["runs"]:
            continue  # a run without a name has no rule to match
        counts = out.setdefault(name, {"total": 0, "failed": 0})
        counts["total"] += int(m["runs"])
        if state in failed_states:
            counts["failed"] += int(m["runs"])
    return out


def bucket_bounds(buckets: list[int]) -> tuple[float, float | None] | None:
    """(lower, upper) bounds of the highest non-empty bucket: where the maximum is; upper None above the last bound."""
    top = max((i for i, n in enumerate(buckets) if n), default=None)
    if top is None:
        return None
    return (BOUNDS[top - 1] if top else 0.0), (BOUNDS[top] if top < len(BOUNDS) else None)


def _percentiles(buckets: list[int]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    bounds: dict[str, Any] = {}
    for key, p in PERCENTILES.items():
        q = quantile(buckets, p)
        values[key] = None if q is None or math.isinf(q[2]) else q[2]
        bounds[key] = None if q is None else [q[1], None if math.isinf(q[2]) else q[2]]
    top = bucket_bounds(buckets)
    if top is None:
        values["max"], bounds["max"] = None, None
    else:
        values["max"], bounds["max"] = top[1], list(top)
    return {**values, "bounds": bounds}


def _entry(name, m: dict, minutes: float | None) -> dict[str, Any]:
    states = {s: int(m.get(f"state:{s}", 0)) for s in STATES}
    total = int(m["runs"])
    states["OTHER"] = total - sum(states.values())
    completed = states["SUCCESS"] + states["FAILURE"]
    return {
        "name": name,
        "total": total,
        "states": states,
        "completed": completed,
        "failure_rate": states["FAILURE"] / completed if completed else None,
        "throughput_per_min": completed / minutes if minutes else None,
        "runtime": _percentiles([int(m[c]) for c in RUNTIME_BUCKETS]),
        "queue_wait": _percentiles([int(m[c]) for c in WAIT_BUCKETS]),
    }


def rollup_task_stats(conn: Connection, f: RunFilter, now: datetime) -> dict[str, Any]:
    """storage.stats.task_stats's answer, from the rollups; percentiles are bucket bounds."""
    if not answerable(f):
        raise ValueError("the rollups answer name and time filters only")
    end = f.until or now
    with read_snapshot(conn):
        sums = window_sums(conn, f.since, end, ("name", "state"), f.name)
        first = None
        if f.since is None and sums:
            name_sql, params = ("1 = 1", {}) if not f.name else name_condition(conn.dialect.name, "name", f.name, "n")
            first = conn.execute(text(f"SELECT min(seen_at) FROM task_runs WHERE {name_sql}").bindparams(**params)).scalar()
            if isinstance(first, str):
                first = datetime.fromisoformat(first)
            if first is not None and first.tzinfo is None:
                first = first.replace(tzinfo=timezone.utc)
    per_name: dict[Any, dict] = defaultdict(lambda: defaultdict(float))
    totals: dict = defaultdict(float)
    for (name, state), m in sums.items():
        if not m["runs"]:
            continue
        key = name or None  # '' in the rollups: a run without a name
        for target in (per_name[key], totals):
            for k in MEASURES:
                target[k] += m[k]
            target[f"state:{state}"] += m["runs"]
    start = f.since or first
    seconds = (end - start).total_seconds() if start is not None else 0.0
    minutes = seconds / 60 if seconds > 0 else None
    tasks = [_entry(name, per_name[name], minutes) for name in sorted(per_name, key=lambda n: (n is None, n or ""))]
    if not totals:
        totals = defaultdict(float, {m: 0 for m in MEASURES})
    return {
        "since": start,
        "until": end,
        "window_seconds": seconds if start is not None else None,
        "percentiles": "buckets",
        "tasks": tasks,
        "totals": _entry(None, totals, minutes),
    }

