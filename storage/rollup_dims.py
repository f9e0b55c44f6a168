"""Hourly run counts per worker and per exception type: what reports rank workers and exceptions by.

``worker_rollups_hourly`` counts runs per hour of ``seen_at``, worker and state;
``exception_rollups_hourly`` per hour, exception type, task name and state (the name, so that a
report can say how many tasks raised an exception). Kept like storage.rollups' tables, by
triggers on ``task_runs`` in the writer's transaction: equal to the GROUP BY over the table after
every commit, a changed row moving its count, a deleted row (cleanup) taking it out. A NULL worker,
exception type or name is kept as '' (the primary key cannot hold NULL).

One level only: a window reads the whole hours here and the ragged edges (under an hour at each
end) from ``task_runs`` by its ``seen_at`` index.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, text

from storage.rollups import ceil_hour, floor_hour
from storage.sql import bind

# table: (key columns after the hour, the task_runs columns they come from)
DIMS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "worker": ("worker_rollups_hourly", ("worker", "state"), ("worker", "state")),
    "exception": ("exception_rollups_hourly", ("exception_type", "name", "state"), ("exception_type", "name", "state")),
}
TRIGGERS = tuple(f"task_runs_{dim}s_{op}" for dim in DIMS for op in ("insert", "update", "delete"))
FUNCTIONS = tuple(f"taskmon_dims_{op}" for op in ("insert", "update", "delete"))


def _hour(row: str, dialect: str) -> str:
    if dialect == "sqlite":  # ':' apart, so that text() sees no ':00' parameter
        return f"substr({row}.seen_at, 1, 13) || ':' || '00:00.000000'"
    return f"(date_trunc('hour', {row}.seen_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


def _key(row: str, dim: str, dialect: str) -> list[str]:
    sources = DIMS[dim][2]
    return [_hour(row, dialect)] + [f"{row}.{c}" if c == "state" else f"coalesce({row}.{c}, '')" for c in sources]


def _columns(dim: str) -> str:
    return ", ".join(("hour",) + DIMS[dim][1] + ("runs",))


def _upsert_tail(dim: str) -> str:
    table, key, _ = DIMS[dim]
    return f"ON CONFLICT ({', '.join(('hour',) + key)}) DO UPDATE SET runs = {table}.runs + excluded.runs"


def _sqlite_triggers() -> list[str]:
    out = []
    for dim, (table, _, sources) in DIMS.items():
        def upsert(row: str, sign: int) -> str:
            s = "" if sign > 0 else "-"
            return (f"INSERT INTO {table} ({_columns(dim)}) VALUES ({', '.join(_key(row, dim, 'sqlite'))}, {s}1) "
                    f"{_upsert_tail(dim)};")

        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in ("seen_at",) + sources)
        out += [
            f"CREATE TRIGGER task_runs_{dim}s_insert AFTER INSERT ON task_runs BEGIN {upsert('NEW', 1)} END",
            f"CREATE TRIGGER task_runs_{dim}s_update AFTER UPDATE ON task_runs WHEN {changed} "
            f"BEGIN {upsert('OLD', -1)} {upsert('NEW', 1)} END",
            f"CREATE TRIGGER task_runs_{dim}s_delete AFTER DELETE ON task_runs BEGIN {upsert('OLD', -1)} END",
        ]
    return out


def _pg_function(name: str, parts: list[tuple[str, int]]) -> str:
    statements = []
    for dim, (table, key, _) in DIMS.items():
        n = len(key) + 1
        cols = ", ".join(f"c{i}" for i in range(n))
        selects = " UNION ALL ".join(f"SELECT {', '.join(_key('r', dim, 'postgresql'))}, {sign} FROM {table_} AS r"
                                     for table_, sign in parts)
        # Rows in key order: two writers upserting the same rows lock them in one order.
        statements.append(
            f"INSERT INTO {table} ({_columns(dim)}) SELECT {cols}, sum(c{n}) FROM ({selects}) AS d({cols}, c{n}) "
            f"GROUP BY {cols} HAVING sum(c{n}) <> 0 ORDER BY {cols} {_upsert_tail(dim)};")
    return (f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"{' '.join(statements)} RETURN NULL; END $$")


def _pg_triggers() -> list[str]:
    return [
        _pg_function("taskmon_dims_insert", [("new_rows", 1)]),
        _pg_function("taskmon_dims_update", [("old_rows", -1), ("new_rows", 1)]),
        _pg_function("taskmon_dims_delete", [("old_rows", -1)]),
        "CREATE TRIGGER task_runs_dims_insert AFTER INSERT ON task_runs REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskmon_dims_insert()",
        "CREATE TRIGGER task_runs_dims_update AFTER UPDATE ON task_runs REFERENCING OLD TABLE AS old_rows "
        "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION taskmon_dims_update()",
        "CREATE TRIGGER task_runs_dims_delete AFTER DELETE ON task_runs REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskmon_dims_delete()",
    ]


def trigger_ddl(dialect: str) -> list[str]:
    return _sqlite_triggers() if dialect == "sqlite" else _pg_triggers()


def drop_trigger_ddl(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [f"DROP TRIGGER IF EXISTS {t}" for t in TRIGGERS]
    return ([f"DROP TRIGGER IF EXISTS task_runs_dims_{op} ON task_runs" for op in ("insert", "update", "delete")]
            + [f"DROP FUNCTION IF EXISTS {f}()" for f in FUNCTIONS])


def grouped_sql(dialect: str, dim: str, where: str = "1 = 1") -> str:
    """``task_runs`` grouped as ``dim``'s rollup groups it: the backfill, the ragged edges and the
    contract tests' reference."""
    key = ", ".join(_key("t", dim, dialect))
    return f"SELECT {key}, count(*) FROM task_runs AS t WHERE {where} GROUP BY {key}"


def rebuild(conn: Connection) -> dict[str, int]:
    """Empty both tables and fill them again from ``task_runs``; the rows of each."""
    out = {}
    for dim, (table, _, _) in DIMS.items():
        conn.exec_driver_sql(f"DELETE FROM {table}")
        # exec_driver_sql: the SQL holds ':00' literals that text() would take for parameters.
        conn.exec_driver_sql(f"INSERT INTO {table} ({_columns(dim)}) {grouped_sql(conn.dialect.name, dim)}")
        out[table] = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
    return out


def window_counts(conn: Connection, dim: str, start: datetime | None, end: datetime,
                  present: str | None = None) -> dict[tuple, int]:
    """{key of ``dim`` (e.g. (worker, state)): runs first seen in [start, end)}: the hourly rows for
    the whole hours, ``task_runs`` for the rest. A NULL is '' here, as in the table; ``present``
    (a key column) leaves out the runs where it is NULL."""
    dialect = conn.dialect.name
    table, key, _ = DIMS[dim]
    a = start if start is not None else datetime(1970, 1, 1, tzinfo=timezone.utc)
    out: dict[tuple, int] = defaultdict(int)
    h_lo, h_hi = ceil_hour(a), floor_hour(end)
    if h_lo < h_hi:
        edges = [(a, h_lo), (h_hi, end)]
        only = f" AND {present} <> ''" if present else ""
        sql = (f"SELECT {', '.join(key)}, sum(runs) FROM {table} WHERE hour >= :a AND hour < :b{only} "
               f"GROUP BY {', '.join(key)}")
        for *k, n in conn.execute(text(sql).bindparams(a=bind(dialect, h_lo), b=bind(dialect, h_hi))).all():
            out[tuple(k)] += int(n or 0)
    else:
        edges = [(a, end)]
    for i, (x, y) in enumerate(edges):
        if x < y:
            where = f"t.seen_at >= :e{i}a AND t.seen_at < :e{i}b" + (f" AND t.{present} IS NOT NULL" if present else "")
            params: dict[str, Any] = {f"e{i}a": bind(dialect, x), f"e{i}b": bind(dialect, y)}
            for _, *k, n in conn.execute(text(grouped_sql(dialect, dim, where)).bindparams(**params)).all():
                out[tuple(k)] += int(n)
    return {k: n for k, n in out.items() if n}
