"""Statistics per task name: counts by state, failure rate, throughput, runtime and queue-wait percentiles.

Percentiles are continuous ones (linear interpolation between the two nearest ranks, the definition
of PostgreSQL's ``percentile_cont``, numpy's default and Excel's PERCENTILE.INC): for n sorted values
x[0..n-1] and fraction p, h = (n-1)*p and the result is x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] - x[floor(h)]).
PostgreSQL computes it with ``percentile_cont``. SQLite has no such aggregate: it numbers the values
of each task name with ``row_number()`` and returns only the two values around each percentile's
rank, which are interpolated here exactly as PostgreSQL does; a few numbers per task name leave
the database whatever the number of runs.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from sqlalchemy import Connection, case, func, literal_column, select, text
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from storage.history import RunFilter, conditions
from storage.merge import CELERY_STATES
from storage.schema import task_runs

STATES = CELERY_STATES
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
ALL = object()  # the group key of the totals


def percentiles(conn: Connection, value, cond, group=None, counts=None) -> dict[Any, dict[str, float | None]]:
    """{group value (or ALL): {"p50": .., "p95": .., "p99": ..}} of ``value`` over the rows matching ``cond``.

    ``counts`` ({group: number of non-NULL values}) is needed on SQLite, which ranks the values
    with ``row_number()`` and returns only the two ranks around each percentile.
    """
    keys = [group.label("g")] if group is not None else [literal_column("1").label("g")]
    out: dict[Any, dict[str, float | None]] = {}
    if conn.dialect.name == "postgresql":
        cols = [func.percentile_cont(p).within_group(value).label(k) for k, p in PERCENTILES.items()]
        stmt = select(*keys, *cols).where(cond, value.is_not(None))
        if group is not None:
            stmt = stmt.group_by(group)
        for row in conn.execute(stmt).mappings():
            out[row["g"] if group is not None else ALL] = {k: row[k] for k in PERCENTILES}
        return out
    wanted = {g: {k: _ranks(n, p) for k, p in PERCENTILES.items()} for g, n in (counts or {}).items() if n}
    if not wanted:
        return out
    ranked = select(
        *keys, value.label("v"),
        (func.row_number().over(partition_by=[group] if group is not None else None, order_by=value) - 1).label("i"),
    ).where(cond, value.is_not(None)).subquery()
    ranks = sorted({i for per_p in wanted.values() for lo, hi, _ in per_p.values() for i in (lo, hi)})
    found = {}
    for g, i, v in conn.execute(select(ranked.c.g, ranked.c.i, ranked.c.v).where(ranked.c.i.in_(ranks))):
        found[(g if group is not None else ALL, i)] = v
    for g, per_p in wanted.items():
        out[g] = {}
        for k, (lo, hi, frac) in per_p.items():
            lo_v, hi_v = found[(g, lo)], found[(g, hi)]
            out[g][k] = lo_v + frac * (hi_v - lo_v)  # PostgreSQL's float8_lerp, operation for operation
    return out


def _ranks(n: int, p: float) -> tuple[int, int, float]:
    """(floor rank, ceiling rank, fraction between them) of fraction p among n sorted values, from 0."""
    h = p * (n - 1)
    lo = math.floor(h)
    return lo, math.ceil(h), h - lo


def _counts(conn: Connection, cond, group=None) -> dict[Any, dict[str, Any]]:
    c = task_runs.c
    cols = [
        func.count().label("total"),
        *[func.sum(case((c.state == s, 1), else_=0)).label(s) for s in STATES],
        func.count(c.runtime).label("runtime_n"),
        func.count(c.queue_wait).label("queue_wait_n"),
        func.max(c.runtime).label("runtime_max"),
        func.min(c.seen_at).label("first_seen"),
    ]
    stmt = select(*([group.label("g")] if group is not None else []), *cols).where(cond)
    if group is not None:
        stmt = stmt.group_by(group)
    out = {}
    for row in conn.execute(stmt).mappings():
        if row["total"]:
            out[row["g"] if group is not None else ALL] = dict(row)
    return out


def _entry(name, counts, runtime, wait, minutes) -> dict[str, Any]:
    states = {s: int(counts[s] or 0) for s in STATES}
    states["OTHER"] = counts["total"] - sum(states.values())
    completed = states["SUCCESS"] + states["FAILURE"]
    return {
        "name": name,
        "total": counts["total"],
        "states": states,
        "completed": completed,
        "failure_rate": states["FAILURE"] / completed if completed else None,
        "throughput_per_min": completed / minutes if minutes else None,
        "runtime": {**runtime, "max": counts["runtime_max"]},
        "queue_wait": wait,
    }


def where(conn: Connection, f: RunFilter):
    """The filter's condition (storage.history writes it, for `history` too) as a SQLAlchemy clause."""
    cond, params = conditions(conn.dialect.name, f)
    return text(cond).bindparams(**params)


def unindexed(column):
    """SQLite's unary ``+column``: the same value, but the planner may not use an index for it."""
    return UnaryExpression(column, operator=custom_op("+"), type_=column.type)


@contextmanager
def read_snapshot(conn: Connection) -> Iterator[None]:
    """Let several SELECTs see one state of the database.

    pysqlite begins a transaction only before a write, so each SQLite SELECT would otherwise see the
    database of its own moment, and a run written or deleted between the counts and the ranks
    would make them disagree. On PostgreSQL the caller's transaction is used as it is.
    """
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name != "sqlite" or dbapi.in_transaction:
        yield
        return
    conn.exec_driver_sql("BEGIN")
    try:
        yield
    finally:
        if dbapi.in_transaction:
            conn.exec_driver_sql("COMMIT")


def task_stats(conn: Connection, f: RunFilter, now: datetime) -> dict[str, Any]:
    """Per task name and in total, for runs first seen in [f.since, f.until or now).

    failure_rate is FAILURE / (SUCCESS + FAILURE); throughput_per_min is those completed runs per
    minute of the window (from ``since``, or the first run seen, to ``until`` or ``now``).
    """
    c = task_runs.c
    cond = where(conn, f)
    group = c.name
    if conn.dialect.name == "sqlite" and f.since is not None:
        # Otherwise SQLite walks the whole (name, seen_at) index to group without sorting, instead
        # of reading just the window through the seen_at index (PostgreSQL's planner chooses well).
        group = unindexed(c.name)
    empty = {k: None for k in PERCENTILES}
    per_name, runtimes, waits, total_runtime, total_wait = {}, {}, {}, empty, empty
    with read_snapshot(conn):
        totals = _counts(conn, cond).get(ALL)
        if totals:
            per_name = _counts(conn, cond, group)
            runtimes = percentiles(conn, c.runtime, cond, group, {g: e["runtime_n"] for g, e in per_name.items()})
            waits = percentiles(conn, c.queue_wait, cond, group, {g: e["queue_wait_n"] for g, e in per_name.items()})
            total_runtime = percentiles(conn, c.runtime, cond, None, {ALL: totals["runtime_n"]}).get(ALL, empty)
            total_wait = percentiles(conn, c.queue_wait, cond, None, {ALL: totals["queue_wait_n"]}).get(ALL, empty)
    end = f.until or now
    start = f.since or (totals["first_seen"] if totals else None)
    seconds = (end - start).total_seconds() if start is not None else 0.0
    minutes = seconds / 60 if seconds > 0 else None
    tasks = [
        _entry(name, per_name[name], runtimes.get(name, empty), waits.get(name, empty), minutes)
        for name in sorted(per_name, key=lambda n: (n is None, n or ""))
    ]
    zero = {"total": 0, "runtime_max": None, **{s: 0 for s in STATES}}
    return {
        "since": start,
        "until": end,
        "window_seconds": seconds if start is not None else None,
        "tasks": tasks,
        "totals": _entry(None, totals or zero, total_runtime, total_wait, minutes),
    }
