"""PostgreSQL's text index for the history search, kept beside ``task_runs`` and outside its writer.

A pg_trgm GIN index on ``task_runs`` itself cost the daemon's writes three quarters of
PostgreSQL's CPU (every new version of a run, and a run is written two or three times in its
life, put its trigrams into the index; bench/README.md). So, as on SQLite (storage.search_index),
the index is kept by `taskmon serve` (monitor.search_indexer, at the lowest CPU priority) from the
runs written since its mark, a batch at a time: ``run_search(task_id, body)`` holds each run's
searched text (task id, name, args, kwargs, result and exception, joined by newlines) under the
GIN ``gin_trgm_ops`` index ``ix_run_search_trgm``, and ``run_search_mark`` one row, how far it
has read ``task_runs`` in its ``(updated_at, task_id)`` order. An entry whose text did not change
is not written again; a run the clean-up deletes takes its entry along (ON DELETE CASCADE).

The index reads runs up to the clock's time less MARK_SLACK (a writer stamps ``updated_at`` as its
transaction starts, and commits a little later). A search takes its candidates from the index plus
every run written since the mark (not indexed yet), and tests each with the search's own condition
on ``task_runs`` (storage.search). So the rows are those a scan finds: an entry for a run that has
changed since adds nothing, and a run changed since it was indexed is among the unindexed ones.
A run stamped by a writer whose clock is more than MARK_SLACK behind the indexer's is indexed only
when it is written again. Without the index (pg_trgm missing, no server has kept it, or it is
far behind) a search scans ``task_runs``, with the same rows.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from storage.search import PG_SEARCH_TEXT, like_pattern
from storage.sql import fetch

TABLE = "run_search"
MARK_TABLE = "run_search_mark"
INDEX = "ix_run_search_trgm"
MIN_TEXT = 3  # trigrams find nothing shorter; such texts scan
MARK_SLACK = timedelta(seconds=10)
BATCH = 5000
# How many runs written since the mark a search still answers from the index; past it (no server
# has kept the index lately) the search scans, as without one.
MAX_UNINDEXED = 100_000
# The advisory lock of the one server that keeps the index: this class and the schema's hash, so
# histories in several schemas of one database each have their own.
LOCK_SQL = "SELECT pg_try_advisory_lock(1953719661, hashtext(current_schema()))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(1953719661, hashtext(current_schema()))"


def mark(conn) -> tuple[datetime, str] | None:
    """(updated_at, task_id) of the last run indexed; None before the first."""
    rows = fetch(conn, f"SELECT updated_at, task_id FROM {MARK_TABLE} WHERE id = 1", {}, {})
    return (rows[0]["updated_at"], rows[0]["task_id"]) if rows else None


def _cutoff(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)) - MARK_SLACK


_AFTER_MARK = "(updated_at > :at OR (updated_at = :at AND task_id > :id)) AND updated_at <= :cutoff"
_START = datetime(1970, 1, 1, tzinfo=timezone.utc)


def index_batch(conn, limit: int = BATCH, now: datetime | None = None) -> int:
    """Index the next ``limit`` runs after the mark (in updated_at, task_id order) up to _cutoff and
    move the mark, in ``conn``'s transaction; the number read (0: caught up)."""
    at, last_id = mark(conn) or (_START, "")
    rows = fetch(conn, f"""
        WITH batch AS MATERIALIZED (
            SELECT task_id, updated_at, {PG_SEARCH_TEXT} AS body FROM task_runs
            WHERE {_AFTER_MARK} ORDER BY updated_at, task_id LIMIT :limit),
        put AS (
            INSERT INTO {TABLE} (task_id, body) SELECT task_id, body FROM batch ORDER BY task_id
            ON CONFLICT (task_id) DO UPDATE SET body = excluded.body WHERE {TABLE}.body <> excluded.body)
        SELECT (SELECT count(*) FROM batch) AS n, last.updated_at, last.task_id
        FROM (SELECT updated_at, task_id FROM batch ORDER BY updated_at DESC, task_id DESC LIMIT 1) AS last
        """, {"at": at, "id": last_id, "cutoff": _cutoff(now), "limit": limit}, {})
    if not rows:
        return 0
    from sqlalchemy import text  # here: `taskmon history` on SQLite imports this module, not SQLAlchemy

    conn.execute(text(f"INSERT INTO {MARK_TABLE} (id, updated_at, task_id) VALUES (1, :at, :id) "
                      "ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, task_id = excluded.task_id"),
                 {"at": rows[0]["updated_at"], "id": rows[0]["task_id"]})
    return rows[0]["n"]


def has_index(conn) -> bool:
    """The trigram index is there (the migration made it: pg_trgm was available)."""
    return fetch(conn, f"SELECT to_regclass('{INDEX}') IS NOT NULL AS made", {}, {})[0]["made"]


def candidates_sql(text: str, conn, key: str) -> tuple[str, dict[str, Any]] | None:
    """SQL for "task_id is a candidate of the search": the index's matches and every run written
    since its mark, with its parameters; None when the index cannot answer (never kept, the text
    too short, too much not indexed yet)."""
    if len(text) < MIN_TEXT:
        return None
    at = mark(conn)
    if at is None:
        return None
    since = at[0]
    unindexed = fetch(conn, "SELECT count(*) AS n FROM (SELECT 1 FROM task_runs WHERE updated_at >= :since "
                            "LIMIT :most) AS u", {"since": since, "most": MAX_UNINDEXED + 1}, {})[0]["n"]
    if unindexed > MAX_UNINDEXED:
        return None
    sql = (f"task_id IN (SELECT task_id FROM {TABLE} WHERE body LIKE :{key}_like "
           f"UNION SELECT task_id FROM task_runs WHERE updated_at >= :{key}_since)")
    return sql, {f"{key}_like": like_pattern(text), f"{key}_since": since}


def caught_up(conn, now: datetime | None = None) -> bool:
    """The index holds every run up to _cutoff (for the bench and the tests)."""
    at, last_id = mark(conn) or (_START, "")
    return not fetch(conn, f"SELECT 1 AS one FROM task_runs WHERE {_AFTER_MARK} LIMIT 1",
                     {"at": at, "id": last_id, "cutoff": _cutoff(now)}, {})
