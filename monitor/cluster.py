"""Several daemons, one history: each daemon's name, and the one leader that runs what must run once.

Ingestion is shared through the brokers (a Redis Streams consumer group, RabbitMQ competing
consumers); the detector sweeps, alert rules and downtime accounting run in the leader only.
The leader holds a session-level PostgreSQL advisory lock on a connection of its own: when its
process dies, even by kill -9, the server ends the session and the lock is free for the next
follower's attempt (every LEADER_POLL seconds). On SQLite only one daemon may run at all.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from monitor.ingest.buffer import Gap
from monitor.supervisor import Service
from storage import cluster as store
from storage.db import sqlite_path
from storage.errors import first_line

log = logging.getLogger(__name__)

# Seconds between a follower's attempts at the lock, and the leader's checks that it still holds it.
# Takeover after the leader's death: at most this plus the server noticing (at once for a killed
# process on a live host; within 10 s, store.SESSION_IDLE_TIMEOUT, for a frozen leader or a host
# that vanished, and within 11 s, store.SESSION_KEEPALIVE, for a vanished host on PostgreSQL < 14).
LEADER_POLL = 2.0
# A leader acts (sweeps, alerts, reconciles) only this long after it last saw that it holds the lock:
# less than the server's idle_session_timeout, so a leader that was frozen and wakes up after the
# server gave its lock away stops at once, before its next check tells it so.
LEADER_LEASE = store.SESSION_IDLE_TIMEOUT - LEADER_POLL
# Client-side keepalives on the leader's connection: a leader cut off from the server learns it
# within 5 + 2 x 3 s and stops leading (psycopg passes these to libpq). Keepalives only probe an idle
# connection: a query sent into a dead link waits on TCP retransmissions (~15 min), so
# tcp_user_timeout (ms) gives up on data unacknowledged for as long.
CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                     "tcp_user_timeout": 11_000, "connect_timeout": 5}
SLOTS = 64


class ClusterError(Exception):
    """This daemon may not run: one line saying why and what to do."""


def _lock(path: Path) -> int | None:
    """An exclusive, non-blocking lock on ``path``: the open descriptor, or None when another process holds it.
    The kernel releases it when the process dies, however it dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_name(database_url: str, stream: str, *, directory: Path | None = None) -> tuple[str, int]:
    """``host-N``: the first slot no other daemon of this history on this host holds, and the lock holding it.

    A restarted daemon gets the slot (and so the stream consumer, and its pending entries) back.
    """
    directory = directory or Path(tempfile.gettempdir()) / "taskmon-daemons"
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    key = hashlib.sha256(f"{database_url}\0{stream}".encode()).hexdigest()[:16]
    host = socket.gethostname()
    for slot in range(SLOTS):
        fd = _lock(directory / f"{key}-{slot}.lock")
        if fd is not None:
            return f"{host}-{slot}", fd
    raise ClusterError(f"{SLOTS} taskmon daemons already run for this history on {host}: set daemon_name")


def sqlite_single_daemon(engine: Engine) -> int | None:
    """On SQLite, the lock that makes this daemon the only one; ClusterError when another one runs."""
    path = sqlite_path(engine)
    if path is None:
        return None
    lock_path = Path(f"{path}.taskmon-run.lock")
    fd = _lock(lock_path)
    if fd is None:
        try:
            pid = lock_path.read_text().strip() or "?"
        except OSError:
            pid = "?"
        raise ClusterError(f"another taskmon daemon (pid {pid}) is running on {path}: SQLite allows one daemon; "
                           "use PostgreSQL to run several")
    return fd


class Locks:
    """The OS locks this daemon holds while it runs: its name's slot, and SQLite's one-daemon lock."""

    def __init__(self, name: str, fds: list[int]):
        self.name = name
        self.fds = fds

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # closing the descriptor releases its flock
        self.fds = []


def cluster_locks(settings, engine: Engine) -> Locks:
    fds: list[int] = []
    single = sqlite_single_daemon(engine)
    if single is not None:
        fds.append(single)
    name = settings.daemon_name
    if not name:
        name, fd = claim_name(settings.database_url, settings.relay_stream)
        fds.append(fd)
    return Locks(name, fds)


def cluster_downtime(rows: list[dict], started_at: datetime, slack: float) -> Gap | None:
    """The gap before this daemon started in which no daemon was alive; None when one was.

    ``rows``: status rows of the daemons before this one (its own earlier run included). One that
    started before this daemon and beat at most ``slack`` seconds (stopped at most 1 s) before its
    start, or later, was alive then: the cluster was not down, whatever this daemon missed.
    """
    before = [row for row in rows if row["started_at"] <= started_at]
    if not before:
        return None
    ended, last = max(((row["stopped_at"] or row["heartbeat_at"], row) for row in before), key=lambda p: p[0])
    covered = max((row["stopped_at"] + timedelta(seconds=1)) if row["stopped_at"]
                  else row["heartbeat_at"] + timedelta(seconds=slack) for row in before)
    if covered >= started_at:
        return None
    how = "stopped" if last["stopped_at"] else "last heartbeat"
    return Gap("daemon", "daemon_down", ended, started_at, None,
               f"no daemon was running: the last one, {last['daemon_id']}, {how} at {ended.isoformat()}")


class Leadership(Service):
    """Takes and keeps the leader's lock; ``is_leader`` says whether this daemon leads now.

    ``on_change(leading)`` is called from this thread whenever the role changes.
    """

    def __init__(self, engine: Engine, *, poll: float = LEADER_POLL,
                 on_change: Callable[[bool], None] | None = None):
        super().__init__("leader")
        self.poll = poll
        self.on_change = on_change or (lambda leading: None)
        self.leading = threading.Event()
        self.single = engine.dialect.name != "postgresql"  # SQLite: the only daemon, so the leader
        self._engine = None if self.single else create_engine(
            engine.url, poolclass=NullPool, connect_args=CLIENT_KEEPALIVES)
        self._conn: Connection | None = None
        self._confirmed = 0.0  # time.monotonic() when the lock was last seen held
        self._warned_no_idle_timeout = False
        if self.single:
            self.leading.set()  # before the first heartbeat, which records the role

    @property
    def role(self) -> str:
        return "leader" if self.is_leader() else "follower"

    def is_leader(self) -> bool:
        return self.leading.is_set() and (self.single or time.monotonic() - self._confirmed < LEADER_LEASE)

    def run(self) -> None:
        if self.single:
            self.on_change(True)
            self.stopping.wait()
            return
        try:
            while not self.stopping.is_set():
                self._step()
                self.stopping.wait(self.poll)
        finally:
            self._release()

    def _step(self) -> None:
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
                if not store.prepare_leader_session(self._conn) and not self._warned_no_idle_timeout:
                    self._warned_no_idle_timeout = True
                    log.warning("PostgreSQL before 14 cannot end a frozen leader's session (idle_session_timeout): "
                                "a leader that hangs keeps the lock until it is killed")
                self._conn.commit()
            if self.leading.is_set():
                held = store.holds_leader_lock(self._conn)
            else:
                held = store.try_leader_lock(self._conn)
            self._conn.commit()  # no transaction left open on the lock's session
            if held:
                self._confirmed = time.monotonic()
        except SQLAlchemyError as exc:
            self.counters.incr("leader.errors")
            if self.leading.is_set():
                log.error("lost the leader's database session (%s): following until it is back", first_line(exc))
            self._release()
            held = False
        if held != self.leading.is_set():
            self._set(held)

    def _set(self, leading: bool) -> None:
        if leading:
            self.leading.set()
            self.counters.incr("leader.elected")
            log.warning("this daemon is the cluster leader: it runs the detectors and alerts")
        else:
            self.leading.clear()
            log.warning("this daemon follows: another daemon leads")
        self.on_change(leading)

    def _release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # ends the session: the lock is free at once
            except SQLAlchemyError as exc:
                log.debug("closing the leader's session: %s", first_line(exc))
            self._conn = None
        if self.leading.is_set() and (self.stopping.is_set() or not self.single):
            self.leading.clear()
            self.on_change(False)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
