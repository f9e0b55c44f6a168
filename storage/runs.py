"""Writing task runs: one merging upsert that gives the same row whatever order events arrive in.

A row handed to ``upsert_runs`` is a partial view of one task (what some events said about it).
The database row and the new row are merged with celery's state precedence
(celery/events/state.py): a state that logically happens-before the stored one only fills
fields that are still empty; RETRY is decided by time, because a task goes RETRY ->
RECEIVED -> STARTED again under the same id, except that SUCCESS and FAILURE always beat it:
no attempt follows them, so a task-retried stamped later comes from an earlier attempt whose
worker was slow to report it (a pool child descheduled between publishing the retry and
returning to the parent, while another child already ran the retry).
"""
from __future__ import annotations

import functools
import pickle
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import Connection, Dialect, and_, case, false, func, literal_column, or_, select, true

from storage.db import dialect_insert, insert_for
from storage.schema import task_runs, workers
from storage.types import UTCDateTime, utc_bind_processor

# Higher wins. celery.states.PRECEDENCE, strongest first, is
# SUCCESS, FAILURE, <custom>, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING.
# taskmon adds two states (issue 6), placed so that real events override detector verdicts:
# - LOST (set by the detector: its worker died) sits just above PENDING: any later event of
#   the task (a redelivery's RECEIVED, a late SUCCESS) replaces it; a stale task-sent does not
#   (RETRY and REJECTED, ordered by time, replace it when they are later than the verdict).
# - TIMEOUT (a task-failed with a time-limit error, or the detector: running over its limit)
#   sits above STARTED, so a duplicate task-started cannot revive it, and below REVOKED,
#   FAILURE and SUCCESS, so the way an over-limit task really ended replaces the verdict.
STATE_RANK: dict[str, int] = {
    "PENDING": 1,
    "LOST": 2,
    "RETRY": 3,
    "REJECTED": 4,
    "RECEIVED": 5,
    "STARTED": 6,
    "TIMEOUT": 7,
    "REVOKED": 8,
    "FAILURE": 10,
    "SUCCESS": 11,
}
CUSTOM_RANK = 9  # states celery does not know, as in celery.states.precedence
# States that end one attempt of a task that may have another under the same id: ordered by time.
TIME_ORDERED = ("RETRY", "REJECTED")
# Outcomes no attempt follows: a RETRY, whatever its time, belongs to an earlier attempt.
LAST_ATTEMPT = ("SUCCESS", "FAILURE")
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED", "TIMEOUT", "LOST"})
# Fields that describe how an attempt ended; they follow the state that wins.
OUTCOME_FIELDS = ("result", "exception", "exception_type", "traceback", "finished_at", "runtime")
OUTCOME_STATES = frozenset({"SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED", "TIMEOUT", "LOST"})
# A truncated repr is never longer than the complete one: the longer text is the more exact.
LONGEST_FIELDS = ("args", "kwargs")
# Per-attempt times: the latest attempt is the one a row describes.
LATEST_FIELDS = ("sent_at", "received_at", "started_at", "queue_wait")
# Receipts of the latest attempt (see merge_receipts): merged as one unit.
RECEIPT_FIELDS = ("received_attempt", "received_first_at", "redelivered")
RUN_COLUMNS = tuple(c.name for c in task_runs.columns)


def state_rank(state: str) -> int:
    return STATE_RANK.get(state, CUSTOM_RANK)


def new_wins(old_state: str, old_at, new_state: str, new_at) -> bool:
    """Whether a newly seen state replaces the stored one (the Python twin of the SQL rule)."""
    if old_state == "RETRY" and new_state in LAST_ATTEMPT:
        return True
    if new_state == "RETRY" and old_state in LAST_ATTEMPT:
        return False
    if old_state in TIME_ORDERED or new_state in TIME_ORDERED:
        return old_at is None or (new_at is not None and new_at >= old_at)
    return state_rank(new_state) >= state_rank(old_state)


# How merge_run combines each column (a dict lookup per column instead of a chain of tests).
_OTHER, _OUTCOME, _LONGEST, _LATEST, _SEEN, _RETRIES, _TRUNCATED, _UPDATED, _RECEIPT = range(9)
_MERGE_KIND: dict[str, int] = {
    **{col: _RECEIPT for col in RECEIPT_FIELDS},
    **{col: _OUTCOME for col in OUTCOME_FIELDS},
    **{col: _LONGEST for col in LONGEST_FIELDS},
    **{col: _LATEST for col in LATEST_FIELDS},
    "seen_at": _SEEN,
    "retries": _RETRIES,
    "truncated": _TRUNCATED,
    "updated_at": _UPDATED,
}


def merge_run(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two partial rows of one task exactly as ``upsert_runs`` does in SQL.

    A missing key means NULL; only the keys present in either row are visited, so merging
    the small rows events make is cheap.
    """
    if old is None:
        out = dict(new)
        out["queue_wait"] = queue_wait(out)
        return out
    return merge_into(dict(old), new)


def merge_into(row: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``merge_run(row, new)`` written into ``row`` (which the caller owns) and returned."""
    merge_fields(row, new)
    row["queue_wait"] = queue_wait(row)
    return row


def merge_fields(row: dict[str, Any], new: Mapping[str, Any]) -> None:
    """``merge_into`` without the derived ``queue_wait``, which ``prepare_runs`` derives anyway.

    Only ``new``'s columns are visited: a column only ``row`` has keeps its value, except
    where the rules say otherwise (an outcome that ``new`` replaces; retries and truncated,
    which are never NULL). The per-batch merge calls this once for nearly every event.
    """
    old_state, new_state = row["state"], new["state"]
    wins = new_wins(old_state, row.get("state_at"), new_state, new.get("state_at"))
    if "received_attempt" in new or "received_attempt" in row or "redelivered" in new or "redelivered" in row:
        row.update(merge_receipts(row, new))  # otherwise none of the three is known: NULL, NULL, false
    # Whose outcome (result, exception, ...) the row ends up with; None: the two are coalesced.
    outcome = _NEW if wins and new_state in OUTCOME_STATES else (
        _OLD if not wins and old_state in OUTCOME_STATES else None)
    if outcome is _NEW:
        for col in OUTCOME_FIELDS:
            if col not in new and col in row:
                row[col] = None
    if "retries" not in new and "retries" in row:
        row["retries"] = row["retries"] or 0
    if "truncated" not in new and "truncated" in row:
        row["truncated"] = bool(row["truncated"])
    kinds = _MERGE_KIND
    for col, value in new.items():
        kind = kinds.get(col, _OTHER)
        if kind == _RECEIPT:
            continue  # merged above, as one unit
        prev = row.get(col)
        if kind == _OTHER:
            if wins:
                row[col] = value if value is not None else prev
            else:
                row[col] = prev if prev is not None else value
        elif kind == _OUTCOME:
            if outcome is _NEW:
                row[col] = value
            elif outcome is None:
                row[col] = prev if prev is not None else value
            else:  # _OLD: the stored outcome stays
                row[col] = prev
        elif kind == _LATEST:
            row[col] = _greatest(prev, value)
        elif kind == _LONGEST:
            row[col] = _longest(value, prev) if wins else _longest(prev, value)
        elif kind == _SEEN:
            row[col] = _least(prev, value)
        elif kind == _RETRIES:
            row[col] = max(prev or 0, value or 0)
        elif kind == _TRUNCATED:
            row[col] = bool(prev) or bool(value)
        else:  # _UPDATED
            row[col] = value or prev


_NEW, _OLD = "new", "old"


def merge_receipts(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The receipts of the latest attempt: (retries of the attempt, its first receive, redelivered).

    A task-received row carries (retries, its time, False). The higher attempt wins outright;
    two receipts of the same attempt keep the earliest time and are a redelivery when their
    times differ. Duplicated events (same time) are not. Order-independent by construction.
    """
    a, b = old.get("received_attempt"), new.get("received_attempt")
    if a is None and b is None:
        return {"redelivered": bool(old.get("redelivered")) or bool(new.get("redelivered"))}
    if a is None or (b is not None and b > a):
        src = new
    elif b is None or a > b:
        src = old
    else:
        first_a, first_b = old.get("received_first_at"), new.get("received_first_at")
        return {"received_attempt": a, "received_first_at": _least(first_a, first_b),
                "redelivered": bool(old.get("redelivered")) or bool(new.get("redelivered"))
                or (first_a is not None and first_b is not None and first_a != first_b)}
    return {"received_attempt": src.get("received_attempt"), "received_first_at": src.get("received_first_at"),
            "redelivered": bool(src.get("redelivered"))}


def queue_wait(row: Mapping[str, Any]) -> float | None:
    """Seconds (to the millisecond) from the latest send to the start on a worker; None if either is unknown."""
    sent, started = row.get("sent_at"), row.get("started_at")
    if sent is None or started is None:
        return None
    return round(max((started - sent).total_seconds(), 0.0), 3)


def _coalesce(a, b):
    return a if a is not None else b


def _longest(a, b):
    if a is None or b is None:
        return _coalesce(a, b)
    return b if len(b) > len(a) else a


def _greatest(a, b):
    if a is None or b is None:
        return _coalesce(a, b)
    return max(a, b)


def _least(a, b):
    if a is None or b is None:
        return _coalesce(a, b)
    return min(a, b)


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

    def one_by_one(self) -> Iterable[tuple[str, "PreparedRuns"]]:
        """(task_id, the run alone) for each run: for writing row by row."""
        for values in self.params:
            yield values[self.key_at], PreparedRuns(self.dialect, [[values]], 1, self.stamp_at, self.key_at)


# Rows per chunk of prepared parameters: one multi-row INSERT on SQLite (see _execute_multirow).
CHUNK_ROWS = 256


def prepare_runs(dialect: Dialect, rows: Sequence[Mapping[str, Any]], packed: bool = False) -> PreparedRuns:
    """The parameters of ``upsert_runs`` for ``rows``: the Python half of the work, with no connection.

    The daemon's writer has them built (in a helper process) while the previous batch's SQL runs,
    ``packed``: pickled chunk by chunk as they are built.
    """
    _, convert, _, _ = _compiled_upsert(dialect)
    times: dict = {}  # a batch's rows share many timestamps (a task's state_at/seen_at/sent_at)
    chunks = []
    for i in range(0, len(rows), CHUNK_ROWS):
        chunk = [convert(r, times) for r in rows[i:i + CHUNK_ROWS]]
        chunks.append(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL) if packed else chunk)
    return runs_from_chunks(dialect, chunks, len(rows))


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
    bound, at = utc_bind_processor(conn.dialect)(updated_at) if updated_at is not None else None, prepared.stamp_at
    for params in prepared.params_by_chunk():
        if bound is not None:
            for values in params:
                values[at] = bound
        if conn.dialect.name == "sqlite":
            _execute_multirow(conn, sql, params)
        else:  # psycopg pipelines executemany: one round trip per chunk
            conn.exec_driver_sql(sql, [tuple(v) for v in params] if conn.dialect.positional else params)
    return prepared.rows



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
def _compiled_upsert(dialect: Dialect) -> tuple[str, Callable[[Mapping[str, Any], dict], Any], int | str, int | str]:
    """The merging upsert compiled once per dialect, the function that turns a row into its
    parameters, and where updated_at and task_id sit in them.

    The writer sends thousands of rows a second; building and compiling the statement per batch
    and SQLAlchemy's generic per-row, per-column parameter handling took longer than SQLite
    took to store them. The parameters are exactly what SQLAlchemy would bind.
    """
    compiled = upsert_runs_statement(dialect.name).compile(dialect=dialect)
    names = tuple(compiled.positiontup) if dialect.positional else tuple(compiled.binds)
    if sorted(names) != sorted(RUN_COLUMNS):
        raise RuntimeError(f"unexpected parameters in the task_runs upsert: {names}")
    utc_process = utc_bind_processor(dialect)
    times_at, steps = [], []
    for i, col in enumerate(task_runs.columns):
        if isinstance(col.type, UTCDateTime):
            times_at.append(i)
        else:
            process = col.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                steps.append((i, process))
    at = {c: i for i, c in enumerate(RUN_COLUMNS)}
    i_retries, i_truncated, i_wait = at["retries"], at["truncated"], at["queue_wait"]
    i_redelivered = at["redelivered"]
    order = tuple(at[n] for n in names)
    in_order = order == tuple(range(len(RUN_COLUMNS)))
    positional = dialect.positional

    def convert(row: Mapping[str, Any], times: dict):
        # Every column present (executemany needs one shape), queue_wait derived. SQLAlchemy's
        # processors turn None into None, so None is left as it is.
        values = list(map(row.get, RUN_COLUMNS))
        values[i_retries] = values[i_retries] or 0
        values[i_truncated] = bool(values[i_truncated])
        values[i_redelivered] = bool(values[i_redelivered])
        values[i_wait] = queue_wait(row)
        for i in times_at:
            value = values[i]
            if value is not None:
                bound = times.get(value)
                if bound is None:
                    bound = times[value] = utc_process(value)
                values[i] = bound
        for i, process in steps:
            if values[i] is not None:
                values[i] = process(values[i])
        if positional:
            return values if in_order else [values[i] for i in order]
        return dict(zip(names, (values[i] for i in order)))

    stamp_at = names.index("updated_at") if positional else "updated_at"
    key_at = names.index("task_id") if positional else "task_id"
    return compiled.string, convert, stamp_at, key_at


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
