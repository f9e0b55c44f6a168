"""Writing task runs: one merging upsert that gives the same row whatever order events arrive in.

A row handed to ``upsert_runs`` is a partial view of one task (what some events said about it).
The database row and the new row are merged in SQL by the rules storage.merge states in Python.
"""
from __future__ import annotations

import functools
import pickle
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import Boolean, Connection, Dialect, Float, and_, case, false, func, literal_column, or_, select, true

from storage.db import dialect_insert, insert_for
from storage.merge import (  # noqa: F401 - merge_run: the Python twin, beside the SQL one for callers
    CUSTOM_RANK, LAST_ATTEMPT, LONGEST_FIELDS, OUTCOME_FIELDS, OUTCOME_STATES, RECEIPT_FIELDS, STATE_RANK,
    TIME_ORDERED, merge_run)
from storage.params import CHUNK_ROWS, RowPlan, bind_time, pack_rows
from storage.schema import task_runs, workers
from storage.types import UTCDateTime

RUN_COLUMNS = tuple(c.name for c in task_runs.columns)

def _const(value) -> Any:
    """A constant rendered into the SQL text, not a bound parameter.

    The merge expression repeats the state ranks for every column; as bound parameters they
    made each executemany row carry ~1,400 values (for 28 columns), which cost more than the SQL.
    """
    return literal_column(f"'{value}'" if isinstance(value, str) else repr(value))


def _rank_sql(col):
    return case(*((col == _const(state), _const(rank)) for state, rank in STATE_RANK.items()),
                else_=_const(CUSTOM_RANK))


def _sql_greatest(a, b):
    return case((a.is_(None), b), (b.is_(None), a), (a >= b, a), else_=b)


def _sql_least(a, b):
    return case((a.is_(None), b), (b.is_(None), a), (a <= b, a), else_=b)


def upsert_runs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert or merge task runs (one statement, executemany). Returns the number of rows sent."""
    return execute_runs(conn, prepare_runs(conn.dialect, rows))


@dataclass
class PreparedRuns:
    """``upsert_runs``'s parameters, built ahead of the transaction (see ``prepare_runs``).

    They come in chunks of at most ``CHUNK_ROWS`` rows, each a list or that list pickled
    (``packed``): a batch's rows stay bytes until their chunk is executed, so only one chunk's
    worth of small objects is alive at a time. Unpickling tens of thousands of rows at once
    left the allocator's arenas pinned at their high-water mark (tens of MB of RSS).
    """

    dialect: Dialect
    chunks: list  # each: a list of rows' parameters, or that list pickled
    rows: int
    stamp_at: int | str  # where updated_at sits in each row's parameters
    key_at: int | str  # where task_id sits

    def params_by_chunk(self) -> Iterator[list]:
        for chunk in self.chunks:
            yield pickle.loads(chunk) if isinstance(chunk, bytes) else chunk

    @property
    def params(self) -> list:
        """Every row's parameters (one list for positional dialects, else a dict), in order."""
        return [values for chunk in self.params_by_chunk() for values in chunk]

    def part(self, start: int, most_rows: int) -> "PreparedRuns":
        """The runs of chunks ``start``.. in whole chunks, at most ``most_rows`` rows (at least one chunk)."""
        chunks = self.chunks[start:start + max(1, most_rows // CHUNK_ROWS)]
        if start + len(chunks) >= len(self.chunks):
            # The last chunk may be short (storage.params.pack_rows): the rest of the rows.
            rows = self.rows - sum(len(c) if isinstance(c, list) else CHUNK_ROWS for c in self.chunks[:start])
        else:
            rows = sum(len(c) if isinstance(c, list) else CHUNK_ROWS for c in chunks)
        return PreparedRuns(self.dialect, chunks, max(rows, 0), self.stamp_at, self.key_at)

    def one_by_one(self) -> Iterable[tuple[str, "PreparedRuns"]]:
        """(task_id, the run alone) for each run: for writing row by row."""
        for values in self.params:
            yield values[self.key_at], PreparedRuns(self.dialect, [[values]], 1, self.stamp_at, self.key_at)


def prepare_runs(dialect: Dialect, rows: Sequence[Mapping[str, Any]], packed: bool = False) -> PreparedRuns:
    """The parameters of ``upsert_runs`` for ``rows``: the Python half of the work, with no connection.

    The daemon's writer has them built (in a helper process) while the previous batch's SQL runs,
    ``packed``: pickled chunk by chunk as they are built.
    """
    return runs_from_chunks(dialect, pack_rows(row_plan(dialect), rows, packed), len(rows))


def runs_from_chunks(dialect: Dialect, chunks: list, rows: int) -> PreparedRuns:
    """Parameters that ``prepare_runs`` built for ``dialect`` (perhaps in another process), ready to execute."""
    _, _, stamp_at, key_at = _compiled_upsert(dialect)
    return PreparedRuns(dialect, chunks, rows, stamp_at, key_at)


def execute_runs(conn: Connection, prepared: PreparedRuns, updated_at: datetime | None = None) -> int:
    """Run prepared upserts; ``updated_at`` (when given) replaces every row's, as of this transaction."""
    if not prepared.rows:
        return 0
    if prepared.dialect is not conn.dialect:
        raise ValueError("parameters prepared for another dialect")
    sql = _compiled_upsert(conn.dialect)[0]
    bound = None if updated_at is None else bind_time(updated_at, row_plan(conn.dialect).times_as_text)
    at = prepared.stamp_at
    if conn.dialect.name == "postgresql" and prepared.rows > 1:
        from storage.pg_bulk import copy_merge  # COPY + one merging INSERT ... SELECT per batch

        copy_merge(conn, sql, row_plan(conn.dialect).names, prepared.key_at, _stamped(prepared.params_by_chunk(), at, bound))
        return prepared.rows
    for params in _stamped(prepared.params_by_chunk(), at, bound):
        if conn.dialect.name == "sqlite":
            _execute_multirow(conn, sql, params)
        else:  # psycopg pipelines executemany: one round trip per chunk
            conn.exec_driver_sql(sql, [tuple(v) for v in params] if conn.dialect.positional else params)
    return prepared.rows


def _stamped(chunks: Iterator[list], at: int | str, bound) -> Iterator[list]:
    for params in chunks:
        if bound is not None:
            for values in params:
                values[at] = bound
        yield params


def _execute_multirow(conn: Connection, sql: str, params: list) -> None:
    """SQLite: many rows per INSERT ... VALUES (..), (..), .. ON CONFLICT statement.

    sqlite3 releases the GIL inside each sqlite3_step; executemany steps (and so releases and
    takes back the GIL) once per row, and a busy thread beside it holds the GIL for up to the
    switch interval (5 ms) each time: the writer's SQL thread crawled whenever the reader or
    the preparing thread had work. One statement of 256 rows is one step, so the database
    works with the GIL released. Chunks are powers of two: at most nine statement texts.
    """
    limit = conn.connection.driver_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    most = max(1, min(CHUNK_ROWS, limit // len(RUN_COLUMNS)))  # the limit: 32,766 since 3.32, 999 before
    i, n = 0, len(params)
    while i < n:
        k = most
        while k > n - i:
            k //= 2
        flat = [value for values in params[i:i + k] for value in values]
        conn.exec_driver_sql(_multirow_sql(sql, k), tuple(flat))
        i += k


@functools.lru_cache(maxsize=64)
def _multirow_sql(sql: str, rows: int) -> str:
    """The single-row upsert with ``rows`` rows in its VALUES list (SQLite's '?' parameters)."""
    head, sep, tail = sql.partition(" VALUES (")
    one, close, rest = tail.partition(")")
    if not sep or not close or set(one.replace(", ", "")) != {"?"} or one.count("?") != len(RUN_COLUMNS):
        raise RuntimeError("unexpected shape of the task_runs upsert")
    return f"{head} VALUES {', '.join([f'({one})'] * rows)}{rest}"


@functools.lru_cache(maxsize=16)
def _compiled_upsert(dialect: Dialect) -> tuple[str, RowPlan, int | str, int | str]:
    """The merging upsert compiled once per dialect, how a row becomes its parameters (see
    storage.params), and where updated_at and task_id sit in them.

    The writer sends thousands of rows a second; building and compiling the statement per batch
    and SQLAlchemy's generic per-row, per-column parameter handling took longer than SQLite
    took to store them. The parameters are exactly what SQLAlchemy would bind: the plan is read
    from its bind processors, and a type this plan does not know is an error here, not a
    silently different value.
    """
    compiled = upsert_runs_statement(dialect.name).compile(dialect=dialect)
    names = tuple(compiled.positiontup) if dialect.positional else tuple(compiled.binds)
    if sorted(names) != sorted(RUN_COLUMNS):
        raise RuntimeError(f"unexpected parameters in the task_runs upsert: {names}")
    times, floats, bools, bool_type = [], [], [], bool
    for i, col in enumerate(task_runs.columns):
        if isinstance(col.type, UTCDateTime):
            times.append(i)
            continue
        process = col.type.dialect_impl(dialect).bind_processor(dialect)
        if process is None:
            continue
        if isinstance(col.type, Boolean):
            bools.append(i)
            bool_type = type(process(True))
        elif isinstance(col.type, Float) and process(1) == 1.0 and type(process(1)) is float:
            floats.append(i)
        else:
            raise RuntimeError(f"task_runs.{col.name}: a bind processor storage.params does not know")
    # Plain str: SQLAlchemy's column names are quoted_name, whose pickles import SQLAlchemy.
    plan = RowPlan(tuple(map(str, RUN_COLUMNS)), tuple(map(str, names)), dialect.positional, tuple(times),
                   tuple(floats), tuple(bools), bool_type, dialect.name == "sqlite")
    generic = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    probe = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=8)))
    if generic is None or generic(probe) != bind_time(probe, plan.times_as_text):
        raise RuntimeError(f"UTCDateTime binds differently on {dialect.name} than storage.params.bind_time")
    stamp_at = names.index("updated_at") if dialect.positional else "updated_at"
    key_at = names.index("task_id") if dialect.positional else "task_id"
    return compiled.string, plan, stamp_at, key_at


def row_plan(dialect: Dialect) -> RowPlan:
    """How merged rows become this dialect's upsert parameters (for storage.params, in any process)."""
    return _compiled_upsert(dialect)[1]


def upsert_runs_statement(dialect_name: str):
    """INSERT ... ON CONFLICT DO UPDATE that merges a row into the stored one (the SQL twin of merge_run)."""
    stmt = insert_for(dialect_name)(task_runs)
    old, new = task_runs.c, stmt.excluded
    time_ordered = [_const(state) for state in TIME_ORDERED]
    retry, last_attempt = _const("RETRY"), [_const(state) for state in LAST_ATTEMPT]
    wins = case(
        (and_(old.state == retry, or_(*(new.state == s for s in last_attempt))), true()),
        (and_(new.state == retry, or_(*(old.state == s for s in last_attempt))), false()),
        (
            or_(*(old.state == s for s in time_ordered), *(new.state == s for s in time_ordered)),
            or_(old.state_at.is_(None), and_(new.state_at.is_not(None), new.state_at >= old.state_at)),
        ),
        else_=_rank_sql(new.state) >= _rank_sql(old.state),
    )
    # Literal state lists: executemany cannot expand an IN parameter.
    is_outcome = lambda col: or_(*(col == _const(s) for s in sorted(OUTCOME_STATES)))  # noqa: E731
    new_outcome = and_(wins, is_outcome(new.state))
    old_outcome = and_(~wins, is_outcome(old.state))
    sets = {}
    for col in RUN_COLUMNS:
        if col == "task_id":
            continue
        o, n = old[col], new[col]
        if col in OUTCOME_FIELDS:
            sets[col] = case((new_outcome, n), (old_outcome, o), else_=func.coalesce(o, n))
        elif col in LONGEST_FIELDS:
            winner, loser = case((wins, n), else_=o), case((wins, o), else_=n)
            sets[col] = case(
                (winner.is_(None), loser),
                (loser.is_(None), winner),
                (func.length(loser) > func.length(winner), loser),
                else_=winner,
            )
        elif col in ("sent_at", "received_at", "started_at"):
            sets[col] = _sql_greatest(o, n)
        elif col == "queue_wait" or col in RECEIPT_FIELDS:
            continue  # computed below
        elif col == "seen_at":
            sets[col] = _sql_least(o, n)
        elif col == "retries":
            sets[col] = case((n > o, n), else_=o)
        elif col == "truncated":
            sets[col] = or_(o, n)
        elif col == "updated_at":
            sets[col] = n
        else:
            sets[col] = case((wins, func.coalesce(n, o)), else_=func.coalesce(o, n))
    sent = _sql_greatest(old.sent_at, new.sent_at)
    started = _sql_greatest(old.started_at, new.started_at)
    sets["queue_wait"] = _seconds_between(dialect_name, sent, started)
    sets.update(_receipts_sql(old, new))
    return stmt.on_conflict_do_update(index_elements=[task_runs.c.task_id], set_=sets)


def _receipts_sql(old, new) -> dict:
    """The SQL twin of merge_receipts."""
    a, b = old.received_attempt, new.received_attempt
    take_new = or_(a.is_(None), and_(b.is_not(None), b > a))
    take_old = or_(b.is_(None), a > b)
    first_o, first_n = old.received_first_at, new.received_first_at
    return {
        "received_attempt": case((take_new, b), else_=a),
        "received_first_at": case((take_new, first_n), (take_old, first_o), else_=_sql_least(first_o, first_n)),
        "redelivered": case(
            (and_(a.is_(None), b.is_(None)), or_(old.redelivered, new.redelivered)),
            (take_new, new.redelivered),
            (take_old, old.redelivered),
            else_=or_(old.redelivered, new.redelivered,
                     and_(first_o.is_not(None), first_n.is_not(None), first_o != first_n)),
        ),
    }


def _seconds_between(dialect_name: str, start, end):
    if dialect_name == "sqlite":
        diff = (func.julianday(end) - func.julianday(start)) * _const(86400.0)
    else:
        diff = func.extract("epoch", end - start)
    # Milliseconds: julianday() arithmetic is only good to a few microseconds.
    return case((or_(start.is_(None), end.is_(None)), None), (diff < _const(0), _const(0.0)),
                else_=func.round(diff, _const(3)))


def get_run(conn: Connection, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(task_runs).where(task_runs.c.task_id == task_id)).mappings().first()
    return dict(row) if row is not None else None


def upsert_workers(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert or update workers; the newest heartbeat and status win."""
    rows = list(rows)
    if not rows:
        return 0
    stmt = dialect_insert(conn)(workers)
    old, new = workers.c, stmt.excluded
    newer = or_(old.last_heartbeat.is_(None), and_(new.last_heartbeat.is_not(None), new.last_heartbeat >= old.last_heartbeat))
    sets = {
        col.name: case((newer, func.coalesce(new[col.name], old[col.name])), else_=old[col.name])
        for col in workers.columns
        if col.name not in ("hostname", "first_seen", "updated_at")
    }
    sets["first_seen"] = _sql_least(old.first_seen, new.first_seen)
    sets["updated_at"] = new.updated_at
    cols = [c.name for c in workers.columns]
    conn.execute(
        stmt.on_conflict_do_update(index_elements=[workers.c.hostname], set_=sets),
        [{c: r.get(c) for c in cols} | {"active": r.get("active") or 0, "processed": r.get("processed") or 0} for r in rows],
    )
    return len(rows)
