"""Per-minute rollups of ``task_runs``: what statistics read instead of every run of a window.

``run_rollups`` holds, per minute of ``seen_at``, task name, queue and state, the number of runs,
their retries, the runtime and queue-wait sums and counts, and a fixed histogram of each. It is
kept by triggers on ``task_runs``, so it equals ``GROUP BY minute, name, queue, state`` over the
table after every commit, whoever wrote the rows (the daemon's writer, a replay, the detector
sweep, cleanup) and however often a row changed: a changed row takes its old contribution out and
puts its new one in, a deleted row takes its contribution out. SQLite fires a trigger per row;
PostgreSQL one per statement, over its transition tables, so a batch upsert costs one grouped
upsert of the rollups.

A NULL name or queue is kept as '' (the primary key cannot hold NULL); readers map it back.
Histogram buckets are Prometheus's default bounds, extended to an hour, so the metrics endpoint
can serve celery-exporter's histograms from the same counts.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import Connection

# Upper bounds (seconds) of the histogram buckets; a last bucket takes everything above.
BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                             10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
N_BUCKETS = len(BOUNDS) + 1
RUNTIME_BUCKETS = tuple(f"rt_{i:02d}" for i in range(N_BUCKETS))
WAIT_BUCKETS = tuple(f"qw_{i:02d}" for i in range(N_BUCKETS))
KEY = ("minute", "name", "queue", "state")
MEASURES = ("runs", "retries", "runtime_n", "runtime_sum", "wait_n", "wait_sum") + RUNTIME_BUCKETS + WAIT_BUCKETS
TRIGGERS = ("task_runs_rollup_insert", "task_runs_rollup_update", "task_runs_rollup_delete")

# run_totals: per task name, worker, queue and exception type, what every run stored so far adds
# up to (the Prometheus counters and histograms). Kept like run_rollups, except that a deleted run
# takes nothing away: cleanup does not make a counter go down.
TOTALS_KEY = ("name", "hostname", "queue", "exception")
TOTALS_COUNTS = ("sent", "received", "started", "succeeded", "failed", "rejected", "revoked", "retried")
TOTALS_MEASURES = TOTALS_COUNTS + ("runtime_n", "runtime_sum") + RUNTIME_BUCKETS + ("wait_n", "wait_sum") + WAIT_BUCKETS
TOTALS_TRIGGERS = ("task_runs_totals_insert", "task_runs_totals_update")


def bucket_of(value: float) -> int:
    """The histogram bucket (0 .. N_BUCKETS-1) of a runtime or queue wait."""
    for i, bound in enumerate(BOUNDS):
        if value <= bound:
            return i
    return len(BOUNDS)


def floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    down = floor_hour(t)
    return down if down == t else down + timedelta(hours=1)


def ceil_minute(t: datetime) -> datetime:
    down = floor_minute(t)
    return down if down == t else down + timedelta(minutes=1)


# -- the SQL that computes one row's contribution ---------------------------------------------

def _bucket_sql(value: str, i: int) -> str:
    lower = f" AND {value} > {BOUNDS[i - 1]!r}" if i > 0 else ""
    upper = f" AND {value} <= {BOUNDS[i]!r}" if i < len(BOUNDS) else ""
    return f"CASE WHEN {value} IS NOT NULL{lower}{upper} THEN 1 ELSE 0 END"


# Rollup levels: (table, time column). The hourly level keeps long windows to a few rows per hour.
LEVELS = {"minute": ("run_rollups", "minute"), "hour": ("run_rollups_hourly", "hour")}


def contribution(row: str, sign: int, dialect: str, level: str = "minute") -> list[str]:
    """SQL expressions, in KEY + MEASURES order, of the row alias ``row`` counted with ``sign`` (+1/-1)."""
    if dialect == "sqlite":  # ':' apart, so that text() sees no ':00' parameter
        minute = (f"substr({row}.seen_at, 1, 16) || ':' || '00.000000'" if level == "minute"
                  else f"substr({row}.seen_at, 1, 13) || ':' || '00:00.000000'")
    else:
        minute = f"(date_trunc('{level}', {row}.seen_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
    s = "" if sign > 0 else "-"
    values = [
        minute, f"coalesce({row}.name, '')", f"coalesce({row}.queue, '')", f"{row}.state",
        f"{s}1", f"{s}{row}.retries",
        f"{s}(CASE WHEN {row}.runtime IS NULL THEN 0 ELSE 1 END)", f"{s}coalesce({row}.runtime, 0)",
        f"{s}(CASE WHEN {row}.queue_wait IS NULL THEN 0 ELSE 1 END)", f"{s}coalesce({row}.queue_wait, 0)",
    ]
    values += [f"{s}({_bucket_sql(f'{row}.runtime', i)})" for i in range(N_BUCKETS)]
    values += [f"{s}({_bucket_sql(f'{row}.queue_wait', i)})" for i in range(N_BUCKETS)]
    return values


def _upsert_tail(level: str = "minute") -> str:
    table, time_col = LEVELS[level]
    sets = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES)
    return f"ON CONFLICT ({', '.join((time_col,) + KEY[1:])}) DO UPDATE SET {sets}"


def _columns(level: str = "minute") -> str:
    return ", ".join((LEVELS[level][1],) + KEY[1:] + MEASURES)


_COLUMNS = _columns()
# The columns whose change moves a row to another rollup row or changes its measures.
_WATCHED = ("seen_at", "name", "queue", "state", "retries", "runtime", "queue_wait")


def totals_contribution(row: str, sign: int = 1) -> list[str]:
    """SQL expressions, in TOTALS_KEY + TOTALS_MEASURES order, of the row alias ``row``'s counts
    with ``sign`` (+1/-1).

    Runtimes count for successful runs, as celery-exporter observes them on task-succeeded;
    queue waits for every run that has one."""
    s = "" if sign > 0 else "-"
    ok = f"{row}.state = 'SUCCESS' AND {row}.runtime IS NOT NULL"
    runtime = f"(CASE WHEN {ok} THEN {row}.runtime END)"
    flag = lambda cond: f"{s}(CASE WHEN {cond} THEN 1 ELSE 0 END)"  # noqa: E731
    values = [
        f"coalesce({row}.name, '')", f"coalesce({row}.worker, '')", f"coalesce({row}.queue, '')",
        f"coalesce({row}.exception_type, '')",
        flag(f"{row}.sent_at IS NOT NULL"), flag(f"{row}.received_at IS NOT NULL"),
        flag(f"{row}.started_at IS NOT NULL"), flag(f"{row}.state = 'SUCCESS'"),
        flag(f"{row}.state = 'FAILURE'"), flag(f"{row}.state = 'REJECTED'"), flag(f"{row}.state = 'REVOKED'"),
        f"{s}{row}.retries",
        flag(ok), f"{s}coalesce({runtime}, 0)",
    ]
    values += [f"{s}({_bucket_sql(runtime, i)})" for i in range(N_BUCKETS)]
    values += [flag(f"{row}.queue_wait IS NOT NULL"), f"{s}coalesce({row}.queue_wait, 0)"]
    values += [f"{s}({_bucket_sql(f'{row}.queue_wait', i)})" for i in range(N_BUCKETS)]
    return values


_TOTALS_COLUMNS = ", ".join(TOTALS_KEY + TOTALS_MEASURES)


def _totals_upsert_tail() -> str:
    sets = ", ".join(f"{m} = run_totals.{m} + excluded.{m}" for m in TOTALS_MEASURES)
    return f"ON CONFLICT ({', '.join(TOTALS_KEY)}) DO UPDATE SET {sets}"


def _sqlite_totals_triggers() -> list[str]:
    def upsert(row: str, sign: int) -> str:
        values = ", ".join(totals_contribution(row, sign))
        return f"INSERT INTO run_totals ({_TOTALS_COLUMNS}) VALUES ({values}) {_totals_upsert_tail()};"

    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _TOTALS_WATCHED)
    return [
        f"CREATE TRIGGER task_runs_totals_insert AFTER INSERT ON task_runs BEGIN {upsert('NEW', 1)} END",
        f"CREATE TRIGGER task_runs_totals_update AFTER UPDATE ON task_runs WHEN {changed} "
        f"BEGIN {upsert('OLD', -1)} {upsert('NEW', 1)} END",
    ]


def _pg_totals_function(name: str, parts: Iterable[tuple[str, int]]) -> str:
    k, n = len(TOTALS_KEY), len(TOTALS_KEY) + len(TOTALS_MEASURES)
    selects = " UNION ALL ".join(
        f"SELECT {', '.join(totals_contribution('r', sign))} FROM {table} AS r" for table, sign in parts)
    cols = ", ".join(f"c{i}" for i in range(n))
    sums = ", ".join(f"sum(c{i})" for i in range(k, n))
    nonzero = " OR ".join(f"sum(c{i}) <> 0" for i in range(k, n))
    group = ", ".join(f"c{i}" for i in range(k))
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO run_totals ({_TOTALS_COLUMNS}) "
        f"SELECT {group}, {sums} FROM ({selects}) AS d({cols}) "
        f"GROUP BY {group} HAVING {nonzero} ORDER BY {group} {_totals_upsert_tail()}; "
        f"RETURN NULL; END $$"
    )


def _pg_totals_triggers() -> list[str]:
    return [
        _pg_totals_function("taskmon_totals_insert", [("new_rows", 1)]),
        _pg_totals_function("taskmon_totals_update", [("old_rows", -1), ("new_rows", 1)]),
        "CREATE TRIGGER task_runs_totals_insert AFTER INSERT ON task_runs REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskmon_totals_insert()",
        "CREATE TRIGGER task_runs_totals_update AFTER UPDATE ON task_runs REFERENCING OLD TABLE AS old_rows "
        "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION taskmon_totals_update()",
    ]


def totals_grouped_sql() -> str:
    """``task_runs`` grouped as run_totals groups it: the backfill, and the contract tests' reference."""
    values = totals_contribution("t")
    k = len(TOTALS_KEY)
    key = ", ".join(values[:k])
    sums = ", ".join(f"sum({v})" for v in values[k:])
    return f"SELECT {key}, {sums} FROM task_runs AS t GROUP BY {key}"


def totals_backfill_sql() -> str:
    return f"INSERT INTO run_totals ({_TOTALS_COLUMNS}) {totals_grouped_sql()}"


_TOTALS_WATCHED = ("name", "worker", "queue", "exception_type", "sent_at", "received_at", "started_at", "state",
                   "retries", "runtime", "queue_wait")


def _sqlite_triggers() -> list[str]:
    def upsert(row: str, sign: int) -> str:
        return " ".join(
            f"INSERT INTO {LEVELS[level][0]} ({_columns(level)}) "
            f"VALUES ({', '.join(contribution(row, sign, 'sqlite', level))}) {_upsert_tail(level)};"
            for level in LEVELS)

    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _WATCHED)
    return [
        f"CREATE TRIGGER task_runs_rollup_insert AFTER INSERT ON task_runs BEGIN {upsert('NEW', 1)} END",
        f"CREATE TRIGGER task_runs_rollup_update AFTER UPDATE ON task_runs WHEN {changed} "
        f"BEGIN {upsert('OLD', -1)} {upsert('NEW', 1)} END",
        f"CREATE TRIGGER task_runs_rollup_delete AFTER DELETE ON task_runs BEGIN {upsert('OLD', -1)} END",
    ]


def _pg_function(name: str, parts: Iterable[tuple[str, int]]) -> str:
    sums = ", ".join(f"sum(c{i})" for i in range(len(KEY), len(KEY) + len(MEASURES)))
    cols = ", ".join(f"c{i}" for i in range(len(KEY) + len(MEASURES)))
    nonzero = " OR ".join(f"sum(c{i}) <> 0" for i in range(len(KEY), len(KEY) + len(MEASURES)))
    statements = []
    for level, (rollup_table, _) in LEVELS.items():
        selects = " UNION ALL ".join(
            f"SELECT {', '.join(contribution('r', sign, 'postgresql', level))} FROM {table} AS r"
            for table, sign in parts)
        # Rows in key order: two writers upserting the same rollup rows lock them in one order.
        statements.append(
            f"INSERT INTO {rollup_table} ({_columns(level)}) "
            f"SELECT c0, c1, c2, c3, {sums} FROM ({selects}) AS d({cols}) "
            f"GROUP BY c0, c1, c2, c3 HAVING {nonzero} ORDER BY c0, c1, c2, c3 {_upsert_tail(level)};")
    return (f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"{' '.join(statements)} RETURN NULL; END $$")


def _pg_triggers() -> list[str]:
    return [
        _pg_function("taskmon_rollup_insert", [("new_rows", 1)]),
        _pg_function("taskmon_rollup_update", [("old_rows", -1), ("new_rows", 1)]),
        _pg_function("taskmon_rollup_delete", [("old_rows", -1)]),
        "CREATE TRIGGER task_runs_rollup_insert AFTER INSERT ON task_runs REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskmon_rollup_insert()",
        "CREATE TRIGGER task_runs_rollup_update AFTER UPDATE ON task_runs REFERENCING OLD TABLE AS old_rows "
        "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION taskmon_rollup_update()",
        "CREATE TRIGGER task_runs_rollup_delete AFTER DELETE ON task_runs REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskmon_rollup_delete()",
    ]


def trigger_ddl(dialect: str, dims: bool = True) -> list[str]:
    """Every rollup trigger; ``dims`` False leaves out storage.rollup_dims' (whose tables a later
    migration makes)."""
    from storage import rollup_dims

    extra = rollup_dims.trigger_ddl(dialect) if dims else []
    if dialect == "sqlite":
        return _sqlite_triggers() + _sqlite_totals_triggers() + extra
    return _pg_triggers() + _pg_totals_triggers() + extra


def drop_trigger_ddl(dialect: str) -> list[str]:
    from storage import rollup_dims

    if dialect == "sqlite":
        return [f"DROP TRIGGER IF EXISTS {t}" for t in TRIGGERS + TOTALS_TRIGGERS] + rollup_dims.drop_trigger_ddl(dialect)
    return rollup_dims.drop_trigger_ddl(dialect) + [f"DROP TRIGGER IF EXISTS {t} ON task_runs" for t in TRIGGERS + TOTALS_TRIGGERS] + [
        f"DROP FUNCTION IF EXISTS taskmon_rollup_{k}()" for k in ("insert", "update", "delete")] + [
        f"DROP FUNCTION IF EXISTS taskmon_totals_{k}()" for k in ("insert", "update")]


def grouped_sql(dialect: str, where: str = "1 = 1", level: str = "minute") -> str:
    """``task_runs`` grouped as the rollups group it: the backfill, and the contract tests' reference."""
    values = contribution("t", 1, dialect, level)
    key = ", ".join(values[:len(KEY)])
    sums = ", ".join(f"sum({v})" for v in values[len(KEY):])
    return f"SELECT {key}, {sums} FROM task_runs AS t WHERE {where} GROUP BY {key}"


def backfill_sql(dialect: str, level: str = "minute") -> str:
    return f"INSERT INTO {LEVELS[level][0]} ({_columns(level)}) {grouped_sql(dialect, level=level)}"


def hourly_from_minutes_sql(dialect: str) -> str:
    """run_rollups_hourly as the sums of run_rollups' minutes: the same figures as grouping task_runs
    by hour, from far fewer rows."""
    hour = ("substr(minute, 1, 13) || ':' || '00:00.000000'" if dialect == "sqlite"
            else "(date_trunc('hour', minute AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')")
    sums = ", ".join(f"sum({m})" for m in MEASURES)
    return (f"INSERT INTO run_rollups_hourly ({_columns('hour')}) SELECT {hour}, name, queue, state, {sums} "
            f"FROM run_rollups GROUP BY {hour}, name, queue, state")


def rebuild(conn: Connection, totals: bool = False) -> dict[str, int]:
    """Empty the rollups (storage.rollup_dims' too) and fill them again from ``task_runs`` with one grouped INSERT ... SELECT a
    level: a backfill after a bulk load made with the triggers off, or a repair.

    ``totals`` rebuilds run_totals too, from the runs stored now: the counts of runs that cleanup
    has deleted since are lost, so the metrics' counters go down (Prometheus takes that as a reset).
    Returns the number of rows of each table rebuilt."""
    dialect = conn.dialect.name
    out = {}
    for table, _ in LEVELS.values():
        conn.exec_driver_sql(f"DELETE FROM {table}")
    # exec_driver_sql: the SQL holds ':00' literals that text() would take for parameters.
    conn.exec_driver_sql(backfill_sql(dialect, "minute"))
    conn.exec_driver_sql(hourly_from_minutes_sql(dialect))
    for table, _ in LEVELS.values():
        out[table] = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
    from storage import rollup_dims

    out.update(rollup_dims.rebuild(conn))
    if totals:
        conn.exec_driver_sql("DELETE FROM run_totals")
        conn.exec_driver_sql(totals_backfill_sql())
        out["run_totals"] = conn.exec_driver_sql("SELECT count(*) FROM run_totals").scalar_one()
    return out


# -- reading -----------------------------------------------------------------------------------

def quantile(buckets: list[int], q: float) -> tuple[float | None, float, float] | None:
    """(estimate, lower bound, upper bound) of quantile q from bucket counts, as Prometheus's
    ``histogram_quantile`` interpolates; the estimate is None when it falls in the open last bucket."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            lower = BOUNDS[i - 1] if i > 0 else 0.0
            if i == len(BOUNDS):
                return None, lower, math.inf
            upper = BOUNDS[i]
            return lower + (upper - lower) * ((rank - seen) / n), lower, upper
        seen += n
    return None, BOUNDS[-1], math.inf


def read_rollups(conn: Connection, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rollup rows summed per (name, state) over the minutes matching ``where``."""
    from sqlalchemy import text

    sums = ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
    sql = f"SELECT name, state, {sums} FROM run_rollups WHERE {where} GROUP BY name, state"
    return [dict(r) for r in conn.execute(text(sql).bindparams(**params)).mappings()]
