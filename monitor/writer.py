"""The writer thread: batches of events -> one transaction of merged upserts -> acks.

Each batch is prepared (events -> merged rows and their SQL parameters, Python work) and then
committed. It is the only thread that talks to the database on the hot path; the source
threads never wait on SQL, so a slow commit can fill the bounded buffer but cannot stall a
socket reader.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from monitor.buffer import EventBuffer, Taken
from monitor.counters import Counters
from monitor.events import Malformed, to_update
from monitor.state import Pending
from storage.health import Gap, record_gap
from storage.runs import PreparedRuns, execute_runs, prepare_runs, upsert_workers

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Prepared:
    """One batch, ready to commit: its rows in key order, their parameters, gaps and acks.

    The events themselves are not kept: once merged into rows they are garbage.
    """

    tasks: list[dict]
    workers: list[dict]
    runs: PreparedRuns
    gaps: list
    acks: list[Callable[[], None]]
    events: int


class Writer(threading.Thread):
    def __init__(self, engine: Engine, buffer: EventBuffer, *, field_max_bytes: int, batch_size: int = 50_000,
                 flush_interval: float = 0.2, on_gap: Callable[[int, Gap], None] | None = None,
                 clock: Callable[[], datetime] = utcnow):
        super().__init__(name="taskmon-writer", daemon=True)
        self.engine = engine
        self.buffer = buffer
        self.field_max_bytes = field_max_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.on_gap = on_gap
        self.clock = clock
        self.counters = Counters()
        self.stopping = threading.Event()
        self.give_up_at: float | None = None  # monotonic deadline for retries once stopping
        self.healthy = True
        self.working_since: float | None = None  # put_at of the oldest event of the batch in hand

    def lag(self, now: float | None = None) -> float:
        """Seconds since the oldest event not yet committed was received (0: nothing waits).

        The detectors judge silence from stored heartbeats; while this is large, a worker's
        recent heartbeats may still be in memory, and it would look lost when it is not.
        """
        now = time.monotonic() if now is None else now
        waiting = [t for t in (self.working_since, self.buffer.oldest_put_at()) if t is not None]
        return max(now - min(waiting), 0.0) if waiting else 0.0

    def stop(self, deadline: float) -> None:
        """Finish what is buffered, retrying a failing database until ``deadline`` (monotonic)."""
        self.give_up_at = deadline
        self.stopping.set()

    def run(self) -> None:
        while True:
            taken = self.buffer.take(self.batch_size, self.flush_interval)
            if taken.batches or taken.controls:
                self.working_since = min((b.put_at for b in taken.batches), default=None)
                prepared = self.prepare(taken)
                del taken  # the events are rows now: free them before the transaction
                self.commit(prepared)
                del prepared
                self.working_since = None
            elif self.stopping.is_set() and len(self.buffer) == 0:
                return

    def write(self, taken: Taken) -> bool:
        """Prepare and commit one batch (what run() does with each; benchmarks call it directly)."""
        return self.commit(self.prepare(taken))

    def prepare(self, taken: Taken) -> Prepared:
        """Events -> merged rows per task and worker, in key order, and the upsert's parameters."""
        pending = Pending()
        for batch in taken.batches:
            for event in batch.events:
                try:
                    pending.add(to_update(event, self.field_max_bytes))
                except Malformed as exc:
                    self.counters.incr(f"malformed.{exc.reason}")
                except (TypeError, ValueError, OverflowError) as exc:  # a shape to_update did not foresee
                    log.warning("skipping event that failed conversion: %s", exc)
                    self.counters.incr("malformed.bad_field_type")
        # Key order: the detector sweep locks rows in the same order, so PostgreSQL never deadlocks.
        tasks = [pending.tasks[k] for k in sorted(pending.tasks)]
        workers = [pending.workers[k] for k in sorted(pending.workers)]
        acks = [batch.ack for batch in taken.batches if batch.ack is not None]
        return Prepared(tasks, workers, prepare_runs(self.engine.dialect, tasks), taken.controls, acks, taken.events)

    def commit(self, prepared: Prepared) -> bool:
        if not self._commit(prepared):
            self.counters.incr("events_lost_on_shutdown", prepared.events)
            log.error("gave up on %d buffered events: the database stayed unreachable while stopping",
                      prepared.events)
            return False
        self.counters.incr("events_written", prepared.events)
        self.counters.incr("rows_written", len(prepared.tasks) + len(prepared.workers))
        for ack in prepared.acks:
            ack()
        return True

    def _transaction(self, runs: PreparedRuns, workers: list, gaps: list) -> list:
        now = self.clock()
        gap_ids = []
        with self.engine.begin() as conn:
            execute_runs(conn, runs, updated_at=now)
            upsert_workers(conn, [dict(w, updated_at=now) for w in workers])
            for gap in gaps:
                gap_ids.append((record_gap(conn, gap, now), gap))
        return gap_ids

    def _one_by_one(self, prepared: Prepared) -> list:
        """A batch the database refused as a whole: write row by row, skip and count the bad ones."""
        dialect = self.engine.dialect
        gap_ids = self._transaction(prepare_runs(dialect, []), [], prepared.gaps)
        for kind, rows in (("task", prepared.tasks), ("worker", prepared.workers)):
            for row in rows:
                try:
                    self._transaction(prepare_runs(dialect, [row] if kind == "task" else []),
                                      [row] if kind == "worker" else [], [])
                except (OperationalError, InterfaceError):
                    raise
                except SQLAlchemyError as exc:
                    self.counters.incr("malformed.db_rejected")
                    log.warning("database refused a %s row (%s): %s", kind, row.get("task_id") or row.get("hostname"),
                                str(getattr(exc, "orig", exc)).splitlines()[0])
        return gap_ids

    def _commit(self, prepared: Prepared) -> bool:
        delay = 0.5
        while True:
            try:
                try:
                    gap_ids = self._transaction(prepared.runs, prepared.workers, prepared.gaps)
                except (OperationalError, InterfaceError):
                    raise
                except DBAPIError as exc:
                    if exc.connection_invalidated:
                        raise
                    gap_ids = self._one_by_one(prepared)
                except SQLAlchemyError:
                    log.exception("the batch could not be written; trying row by row")
                    gap_ids = self._one_by_one(prepared)
                if not self.healthy:
                    log.warning("database is back; writing resumed")
                    self.healthy = True
                for gap_id, gap in gap_ids:
                    self.counters.incr("gaps")
                    if self.on_gap is not None:
                        self.on_gap(gap_id, gap)
                return True
            except SQLAlchemyError as exc:
                self.counters.incr("db_errors")
                if self.healthy:
                    log.error("cannot write to the database (%s); retrying with backoff, events stay buffered",
                              str(getattr(exc, "orig", exc)).splitlines()[0] if str(exc) else type(exc).__name__)
                    self.healthy = False
                if self.give_up_at is not None and time.monotonic() + delay > self.give_up_at:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
