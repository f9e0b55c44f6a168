"""SQLite's text index for the history search, kept beside the history and outside its writer.

An FTS5 index kept by triggers on ``task_runs`` tripled the daemon's writer time per event. This
one lives in a file of its own next to the history (``<history>.search``), so the daemon's writes
never wait on it: `taskmon serve` keeps it (index_batch in a thread) from the runs written since
its mark (``task_runs.updated_at``, indexed, then rowid), and every SQLite connection to the
history attaches it when it is there (``attach``). It is an FTS5 trigram table, case-sensitive
like the search, with ``detail=none`` (a GLOB over it reads the trigram lists and checks each
candidate's stored text: a tenth of the writer cost and a third of the size of full detail).

The index reads runs up to the clock's time less MARK_SLACK, so that a transaction that commits a
little after a later-stamped one is not left behind the mark (the writers' clock is the server's:
a SQLite history is on the host). A search takes its candidates from the index plus every run
written since the mark (not indexed yet), and tests each with the search's own condition on
``task_runs`` (storage.search). So the rows are those a scan finds: an entry for a run that has
changed since, or was deleted, adds nothing, and a run changed since it was indexed is among the
unindexed ones. A run written by hand with an
updated_at already behind the mark is not: after such a write, stop the server and delete the
file; the server makes the index again when it starts.
"""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from storage.params import bind_time
from storage.search import SEARCHED

SCHEMA = "search"  # the attached database's name
SUFFIX = ".search"
MIN_TEXT = 3  # the trigram index finds nothing shorter; such texts scan
MARK_SLACK = timedelta(seconds=10)  # a write transaction stamped more than this before it commits is missed
BATCH = 2000
# How many runs written since the mark a search still answers from the index; past it (no server
# has kept the index lately) the search scans, as without one.
MAX_UNINDEXED = 50_000

_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS {s}.run_text USING fts5(task_id UNINDEXED, body, "
    "tokenize='trigram case_sensitive 1', detail=none)",
    # run -> its entry, to replace it when the run changes
    "CREATE TABLE IF NOT EXISTS {s}.run_docs (task_id TEXT PRIMARY KEY, doc INTEGER NOT NULL) WITHOUT ROWID",
    # one row: how far the index has read task_runs, in its (updated_at, rowid) order
    "CREATE TABLE IF NOT EXISTS {s}.index_mark (id INTEGER PRIMARY KEY CHECK (id = 1), updated_at TEXT NOT NULL, "
    "run_rowid INTEGER NOT NULL)",
)


def index_path(history: str | Path) -> Path:
    return Path(f"{history}{SUFFIX}")


def main_file(conn: sqlite3.Connection) -> str | None:
    """The file of a connection's main database ('' for a memory database: None)."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return file or None
    return None


def attach(conn: sqlite3.Connection, create: bool = False) -> bool:
    """Attach the history's search index to ``conn`` when the file is there (``create``: make it);
    True when it is attached. Outside a transaction (SQLite refuses ATTACH inside one)."""
    history = main_file(conn)
    if history is None:
        return False
    if attached(conn):
        return True
    path = index_path(history)
    if not create and not path.exists():
        return False
    try:
        conn.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (str(path),))
    except sqlite3.Error:  # unreadable: searches scan, and the server says why when it starts
        return False
    if create:
        conn.execute(f"PRAGMA {SCHEMA}.journal_mode=WAL")
        for statement in _DDL:
            conn.execute(statement.format(s=SCHEMA))
        conn.commit()
    return True


def attached(conn: sqlite3.Connection) -> bool:
    return any(name == SCHEMA for _, name, _ in conn.execute("PRAGMA database_list"))


def mark(conn: sqlite3.Connection) -> tuple[str, int] | None:
    """(updated_at as stored, rowid) of the last run indexed; None before the first."""
    try:
        row = conn.execute(f"SELECT updated_at, run_rowid FROM {SCHEMA}.index_mark WHERE id = 1").fetchone()
    except sqlite3.DatabaseError:  # attached while its tables were being made, or not a database
        return None
    return (row[0], row[1]) if row else None


def _cutoff(now: datetime | None) -> str:
    """``now`` (the clock's) less MARK_SLACK, as stored: the index reads runs up to it, so a write
    transaction that commits within MARK_SLACK of its stamp is never behind the mark."""
    return bind_time((now or datetime.now(timezone.utc)) - MARK_SLACK, as_text=True)


# Runs after the mark (updated_at, rowid) and written no later than the cutoff; parameters: the
# mark's updated_at twice, its rowid, the cutoff.
_AFTER_MARK = "(updated_at > ? OR (updated_at = ? AND rowid > ?)) AND updated_at <= ?"


def index_batch(conn: sqlite3.Connection, limit: int = BATCH, now: datetime | None = None) -> int:
    """Index the next ``limit`` runs after the mark (in updated_at, rowid order) up to _cutoff, and
    move the mark; the number indexed (0: caught up). ``conn`` has the index attached
    (attach(create=True))."""
    cutoff = _cutoff(now)
    at = mark(conn) or ("", 0)
    rows = conn.execute(f"SELECT rowid, updated_at, task_id, {', '.join(SEARCHED)} FROM main.task_runs "
                        f"WHERE {_AFTER_MARK} ORDER BY updated_at, rowid LIMIT ?",
                        (at[0], at[0], at[1], cutoff, limit)).fetchall()
    if not rows:
        return 0
    ids = [(r[2],) for r in rows]
    with conn:
        conn.executemany(f"DELETE FROM {SCHEMA}.run_text WHERE rowid = (SELECT doc FROM {SCHEMA}.run_docs "
                         "WHERE task_id = ?)", ids)
        docs = []
        for r in rows:
            cursor = conn.execute(f"INSERT INTO {SCHEMA}.run_text (task_id, body) VALUES (?, ?)",
                                  (r[2], "\n".join(v for v in r[3:] if v)))
            docs.append((r[2], cursor.lastrowid))
        conn.executemany(f"INSERT OR REPLACE INTO {SCHEMA}.run_docs (task_id, doc) VALUES (?, ?)", docs)
        conn.execute(f"INSERT OR REPLACE INTO {SCHEMA}.index_mark (id, updated_at, run_rowid) VALUES (1, ?, ?)",
                     (rows[-1][1], rows[-1][0]))
    return len(rows)


def purge_batch(conn: sqlite3.Connection, after: str = "", limit: int = 5000) -> tuple[int, str | None]:
    """Drop the entries of runs no longer in the history (the clean-up deleted them) among the next
    ``limit`` after task id ``after``: (dropped, the task id to go on from; None at the end)."""
    ids = [r[0] for r in conn.execute(f"SELECT task_id FROM {SCHEMA}.run_docs WHERE task_id > ? ORDER BY task_id "
                                      "LIMIT ?", (after, limit))]
    if not ids:
        return 0, None
    marks = ",".join("?" * len(ids))
    gone = [(r[0],) for r in conn.execute(f"SELECT task_id FROM {SCHEMA}.run_docs d WHERE task_id IN ({marks}) AND "
                                          "NOT EXISTS (SELECT 1 FROM main.task_runs r WHERE r.task_id = d.task_id)",
                                          ids)]
    if gone:
        with conn:
            conn.executemany(f"DELETE FROM {SCHEMA}.run_text WHERE rowid = (SELECT doc FROM {SCHEMA}.run_docs "
                             "WHERE task_id = ?)", gone)
            conn.executemany(f"DELETE FROM {SCHEMA}.run_docs WHERE task_id = ?", gone)
    return len(gone), ids[-1]


def glob_pattern(text: str) -> str:
    """A GLOB that matches any text containing ``text`` literally."""
    return "*" + "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text) + "*"


def candidates_sql(text: str, conn: sqlite3.Connection, key: str) -> tuple[str, dict[str, Any]] | None:
    """SQL for "task_id is a candidate of the search": the index's matches and every run written
    since its mark, with its parameters; None when the index cannot answer (not attached, the text
    too short, too much not indexed yet)."""
    if len(text) < MIN_TEXT or not attached(conn):
        return None
    since = (mark(conn) or ("", 0))[0]
    unindexed = conn.execute("SELECT count(*) FROM (SELECT 1 FROM main.task_runs WHERE updated_at >= ? LIMIT ?)",
                             (since, MAX_UNINDEXED + 1)).fetchone()[0]
    if unindexed > MAX_UNINDEXED:
        return None
    sql = (f"task_id IN (SELECT task_id FROM {SCHEMA}.run_text WHERE body GLOB :{key}_glob "
           f"UNION SELECT task_id FROM main.task_runs WHERE updated_at >= :{key}_since)")
    return sql, {f"{key}_glob": glob_pattern(text), f"{key}_since": since}


def caught_up(conn: sqlite3.Connection, now: datetime | None = None) -> bool:
    """The index holds every run up to _cutoff (for the bench and the tests)."""
    cutoff = _cutoff(now)
    at = mark(conn) or ("", 0)
    return conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM main.task_runs WHERE {_AFTER_MARK})",
                        (at[0], at[0], at[1], cutoff)).fetchone()[0] == 1
