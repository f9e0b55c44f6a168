"""Deleting many rows without holding a long lock: one short transaction per chunk.

A single ``DELETE`` of a million rows keeps SQLite's only write lock (and, on PostgreSQL, a
long transaction with its row locks and bloat) for as long as it runs, stalling the daemon's
writer. Here every chunk is its own transaction, so a writer waits at most one chunk.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, delete, func, or_, select

log = logging.getLogger(__name__)

# SQLite has no queue for its write lock: a writer that found it taken sleeps in its busy handler
# and retries at most every 100 ms. Deleting the next chunk at once would take the lock again before
# that retry and starve the writer through every chunk; a gap a little longer lets it in.
SQLITE_GAP = 0.11


def _key(table: Table):
    (key,) = table.primary_key.columns  # chunking needs a single-column primary key
    return key


def count_where(conn: Connection, table: Table, where: ColumnElement[bool] | None) -> int:
    if where is None:
        return 0
    return conn.execute(select(func.count()).select_from(table).where(where)).scalar_one()


def beyond_newest(conn: Connection, table: Table, order_col, keep: int) -> ColumnElement[bool] | None:
    """A condition matching every row but the ``keep`` newest by ``order_col`` (ties by key); None if none are beyond."""
    if keep < 1:
        raise ValueError(f"keep must be 1 or more, got {keep}")
    key = _key(table)
    boundary = conn.execute(select(order_col, key).order_by(order_col.desc(), key.desc()).offset(keep - 1).limit(1)).first()
    if boundary is None:
        return None
    at, last_key = boundary
    return or_(order_col < at, and_(order_col == at, key < last_key))


def delete_in_chunks(engine: Engine, table: Table, where: ColumnElement[bool] | None, *, order_by: list,
                     chunk_size: int, on_chunk: Callable[[int, int], Any] | None = None,
                     gap: float | None = None) -> int:
    """Delete the rows matching ``where``, oldest first, ``chunk_size`` per committed transaction.

    ``on_chunk(deleted_in_chunk, deleted_so_far)`` is called after each commit. ``gap`` is the pause
    between chunks (default: SQLITE_GAP on SQLite, none on PostgreSQL, whose writers never wait
    for a delete of other rows). Returns the total.
    """
    if where is None:
        return 0
    if chunk_size < 1:
        raise ValueError(f"chunk size must be 1 or more, got {chunk_size}")
    key = _key(table)
    if gap is None:
        gap = SQLITE_GAP if engine.dialect.name == "sqlite" else 0.0
    total = 0
    while True:
        victims = select(key).where(where).order_by(*order_by).limit(chunk_size)
        with engine.begin() as conn:
            deleted = conn.execute(delete(table).where(key.in_(victims))).rowcount
        total += deleted
        if on_chunk is not None:
            on_chunk(deleted, total)
        log.debug("%s: deleted %d (%d so far)", table.name, deleted, total)
        if deleted < chunk_size:
            return total
        time.sleep(gap)
