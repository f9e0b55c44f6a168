"""Merged task rows -> the task_runs upsert's parameters, in plain Python (no SQLAlchemy).

The daemon's helper process builds the parameters of every batch (monitor.ingest.prepare). Importing
SQLAlchemy only to reach its bind processors doubled the helper's memory (~26 MB of its 44), so
the conversion is written out here from a ``RowPlan``: what storage.runs.row_plan reads from
SQLAlchemy's compiled upsert and bind processors for a dialect, and checks against them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from storage.merge import queue_wait

# Rows per chunk of prepared parameters: one multi-row INSERT on SQLite (storage.runs).
CHUNK_ROWS = 256
UTC = timezone.utc


@dataclass(frozen=True)
class RowPlan:
    """How a merged row becomes the upsert's parameters for one dialect (picklable)."""

    columns: tuple[str, ...]  # task_runs' columns, in table order
    names: tuple[str, ...]  # the statement's parameters, in its order
    positional: bool  # parameters as a list in ``names`` order (else a dict)
    times: tuple[int, ...]  # UTCDateTime columns (indexes into ``columns``)
    floats: tuple[int, ...]  # columns SQLAlchemy binds through float()
    bools: tuple[int, ...]  # Boolean columns
    bool_type: type  # int where the database has no boolean (SQLite), else bool
    times_as_text: bool  # SQLite: UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'; else aware UTC datetimes


def bind_time(value: datetime, as_text: bool) -> Any:
    """UTCDateTime's bound value: what SQLAlchemy binds (storage.runs.row_plan checks it)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: taskmon stores only timezone-aware times")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26] if as_text else value  # [:26]: minus '+00:00'


def converter(plan: RowPlan) -> Callable[[Mapping[str, Any], dict], Any]:
    """``convert(row, times)``: one row's parameters; ``times`` memoizes the bound timestamps of a batch."""
    at = {c: i for i, c in enumerate(plan.columns)}
    i_retries, i_truncated, i_redelivered, i_wait = at["retries"], at["truncated"], at["redelivered"], at["queue_wait"]
    order = tuple(at[n] for n in plan.names)
    in_order = order == tuple(range(len(plan.columns)))
    columns, names, times_at, as_text = plan.columns, plan.names, plan.times, plan.times_as_text
    floats, bools, bool_type = plan.floats, plan.bools, plan.bool_type

    def convert(row: Mapping[str, Any], times: dict):
        values = list(map(row.get, columns))  # every column present: executemany needs one shape
        values[i_retries] = values[i_retries] or 0
        values[i_truncated] = bool(values[i_truncated])
        values[i_redelivered] = bool(values[i_redelivered])
        values[i_wait] = queue_wait(row)
        for i in times_at:
            value = values[i]
            if value is not None:
                bound = times.get(value)
                if bound is None:
                    bound = times[value] = bind_time(value, as_text)
                values[i] = bound
        for i in floats:
            if values[i] is not None:
                values[i] = float(values[i])
        for i in bools:
            values[i] = bool_type(values[i])
        if plan.positional:
            return values if in_order else [values[i] for i in order]
        return dict(zip(names, (values[i] for i in order)))

    return convert


def pack_rows(plan: RowPlan, rows: Sequence[Mapping[str, Any]], packed: bool) -> list:
    """The parameters of ``rows`` in chunks of CHUNK_ROWS, each pickled when ``packed``."""
    import pickle  # here: `taskmon history` binds its times with bind_time and needs no pickle

    convert = converter(plan)
    times: dict = {}  # a batch's rows share many timestamps (a task's state_at/seen_at/sent_at)
    chunks = []
    for i in range(0, len(rows), CHUNK_ROWS):
        chunk = [convert(r, times) for r in rows[i:i + CHUNK_ROWS]]
        chunks.append(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL) if packed else chunk)
    return chunks
