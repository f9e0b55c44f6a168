"""Bulk task_runs rows for the tests (a plain INSERT: fast, and the rows are new)."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from storage.schema import task_runs


def insert_runs(engine: Engine, count: int, start: datetime, step: timedelta = timedelta(seconds=1),
                prefix: str = "t", **fields) -> list[str]:
    """``count`` task runs first seen at ``start``, ``start + step``, ...; returns their ids."""
    rows = []
    for i in range(count):
        at = start + i * step
        rows.append({"task_id": f"{prefix}{i:07d}", "name": "sample.add", "state": "SUCCESS", "seen_at": at,
                     "updated_at": at, **fields})
    # Multi-row INSERTs: one statement per 2,000 rows, so PostgreSQL's statement-level rollup
    # triggers run once per chunk, not once per row as an executemany would make them.
    with engine.begin() as conn:
        for chunk in range(0, len(rows), 2000):
            conn.execute(task_runs.insert().values(rows[chunk:chunk + 2000]))
    return [r["task_id"] for r in rows]
