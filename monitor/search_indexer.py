"""The thread of `taskmon serve` that keeps the history search index: SQLite's file beside the
history (storage.search_index, SearchIndexer) or PostgreSQL's run_search table
(storage.pg_search_index, PgSearchIndexer).

It indexes the runs written since its mark, a batch at a time, at once while there are more and
every INTERVAL seconds once caught up, at the lowest CPU priority (a busy machine's index lags,
and the searches read the runs it has not indexed yet); every PURGE_EVERY it also drops the
entries of runs the clean-up deleted, a batch per round. One server keeps the index: a second `taskmon serve` on the
same history finds the lock taken and leaves it to the first. A history that cannot be read for a
while (locked, gone) costs a round, logged; the index is only ever behind, never wrong.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from storage import search_index

log = logging.getLogger(__name__)
INTERVAL = 1.0
PURGE_EVERY = 3600.0
WARN_EVERY = 60.0


class _Keeper(threading.Thread):
    """What both keepers share: the thread, at the lowest CPU priority, that indexes a round at once
    while there are more and every INTERVAL seconds once caught up, warning at most every WARN_EVERY."""

    def __init__(self, what: str, errors: tuple):
        super().__init__(name="search-index", daemon=True)
        self.what = what  # the index, as the log names it
        self.errors = errors  # what a round may raise and the next one may get past
        self.stopping = threading.Event()
        self._last_warning = 0.0

    def run(self) -> None:
        try:  # the lowest CPU priority, this thread alone (Linux): the daemon's writer and the API come first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while not self.stopping.is_set():
            try:
                more = self._round()
            except self.errors as exc:
                self._warn(exc)
                self._recover()
                more = False
            if not more:
                self.stopping.wait(INTERVAL)
        self._recover()

    def _round(self) -> bool:
        """Index (and purge) a batch; True when there is more to do at once."""
        raise NotImplementedError

    def _recover(self) -> None:
        """After a failed round, and when stopping: drop what the next round should make again."""

    def _release(self) -> None:
        """Give up keeping the index, so that another server may take it."""

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._last_warning >= WARN_EVERY:
            self._last_warning = time.monotonic()
            log.warning("%s not updated: %s", self.what, str(exc).splitlines()[0])

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=5)
        self._release()


class SearchIndexer(_Keeper):
    def __init__(self, history: str):
        super().__init__(f"search index of {history}", (sqlite3.Error,))
        self.history = history
        self._lock_file = None
        self._conn: sqlite3.Connection | None = None
        self._purge_after: str | None = None
        self._next_purge = time.monotonic() + PURGE_EVERY

    def prepare(self) -> bool:
        """Make the index file and its tables and take the lock; False when another server keeps it
        (or it cannot be made: then searches scan, as without one). Before the server's processes
        open their connections, so that each attaches it."""
        lock_path = Path(f"{search_index.index_path(self.history)}.lock")
        try:
            self._lock_file = open(lock_path, "a")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("search index of %s: kept by another taskmon serve", self.history)
            return False
        except OSError as exc:
            log.warning("search index of %s not kept: %s", self.history, exc)
            return False
        try:
            conn = self._connect()
            conn.close()
        except sqlite3.Error as exc:
            log.warning("search index of %s not kept: %s", self.history, exc)
            return False
        return True

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.history, timeout=30, check_same_thread=False)
        if not search_index.attach(conn, create=True):
            conn.close()
            raise sqlite3.OperationalError(f"cannot open {search_index.index_path(self.history)}")
        return conn

    def _round(self) -> bool:
        if self._conn is None:
            self._conn = self._connect()
        more = search_index.index_batch(self._conn) == search_index.BATCH
        if self._purge_after is not None or time.monotonic() >= self._next_purge:
            _, self._purge_after = search_index.purge_batch(self._conn, self._purge_after or "")
            self._next_purge = time.monotonic() + PURGE_EVERY
            more = more or self._purge_after is not None
        return more

    def _recover(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()


class PgSearchIndexer(_Keeper):
    """The same for PostgreSQL (storage.pg_search_index): one server keeps the index, the one that
    holds its advisory lock (LOCK_SQL) on a connection of its own; the others leave it to it. A
    server that lost its connection (and with it the lock) goes on, and two servers keeping the
    index for a while only write the same entries twice."""

    def __init__(self, engine):
        from sqlalchemy.exc import SQLAlchemyError

        super().__init__("history search index", (SQLAlchemyError,))
        self.engine = engine
        self._lock_conn = None

    def prepare(self) -> bool:
        """Take the lock; False when another server keeps the index, or it cannot be kept (no
        pg_trgm index: searches scan)."""
        from sqlalchemy import text

        from storage import pg_search_index

        try:
            conn = self.engine.connect()
            if not pg_search_index.has_index(conn):
                conn.close()
                log.warning("history search not indexed: the pg_trgm extension is missing in this database "
                            "(install PostgreSQL's contrib package, then `taskmon db upgrade`); searches scan")
                return False
            taken = conn.execute(text(pg_search_index.LOCK_SQL)).scalar()
            conn.commit()  # the lock is the session's: it stays until the connection closes
        except self.errors as exc:
            log.warning("history search index not kept: %s", str(exc).splitlines()[0])
            return False
        if not taken:
            conn.close()
            log.info("history search index: kept by another taskmon serve")
            return False
        self._lock_conn = conn
        return True

    def _round(self) -> bool:
        from storage import pg_search_index

        with self.engine.begin() as conn:  # the server's work on PostgreSQL is not lowered, only this thread
            return pg_search_index.index_batch(conn) == pg_search_index.BATCH

    def _release(self) -> None:
        from sqlalchemy import text

        from storage import pg_search_index

        if self._lock_conn is not None:
            try:  # given back now: a closed session's backend may hold it a moment longer
                self._lock_conn.execute(text(pg_search_index.UNLOCK_SQL))
                self._lock_conn.commit()
            except self.errors as exc:
                log.debug("history search index lock: %s", str(exc).splitlines()[0])
            self._lock_conn.invalidate()  # closes the session (a pooled one would keep the lock)
            self._lock_conn.close()
            self._lock_conn = None
