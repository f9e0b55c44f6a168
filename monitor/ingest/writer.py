"""The writer thread: batches of events -> transactions of merged upserts -> acks.

Each batch is prepared (events -> merged rows and their SQL parameters: Python work, done by a
helper process when the daemon has one, see monitor.ingest.prepare) and then committed, in the order
taken. It is the only thread that talks to the database on the hot path; the source threads
never wait on SQL, so a slow commit can fill the bounded buffer but cannot stall a socket reader.

A batch is committed in several transactions, each sized to last about ``TRANSACTION_SECONDS``
(``TransactionSize``): a transaction holds the row locks of its runs (and of the rollup rows its
triggers change) until it commits, and a detector verdict or an API write on one of those rows
waits for it. The batch's acks are given once the last of them has committed; a batch cut short
by a crash is delivered again, and merging a run again changes nothing (storage.merge), nor
does it change the rollups, which follow the rows.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from monitor.ingest.buffer import EventBuffer, Gap, Taken
from monitor.ingest.counters import Counters
from monitor.ingest.memory import release_free_memory
from monitor.ingest.prepare import Job, Preparer
from storage.db import release_idle_connections
from storage.errors import first_line
from tasks.backoff import compute_backoff
from storage.health import record_gap
from storage.params import CHUNK_ROWS
from storage.runs import PreparedRuns, execute_runs, row_plan, runs_from_chunks, upsert_workers

log = logging.getLogger(__name__)

# How long one transaction of the writer should hold its locks. Fewer rows per transaction cost
# more statements and commits; bench/ingest/read_latency.py shows both sides.
TRANSACTION_SECONDS = 0.1
RENEW_IDLE = 2.0  # seconds without a commit after a burst before a grown helper is replaced (prepare.RENEW_RSS_BYTES)
TRANSACTION_ROWS = 8192  # the most runs in one transaction (pg_bulk.STAGE_ROWS: one staging step)


class TransactionSize:
    """Runs per transaction so that one takes about ``seconds``, from how fast the last ones went.

    Whole chunks of prepared rows (CHUNK_ROWS) at least, ``most`` at most; it at most doubles
    from one transaction to the next, so one fast commit does not make the next one long.
    """

    def __init__(self, seconds: float = TRANSACTION_SECONDS, most: int = TRANSACTION_ROWS, start: int = 2048):
        self.seconds, self.most = seconds, most
        self.rows = min(start, most)

    def took(self, rows: int, seconds: float) -> None:
        if rows < CHUNK_ROWS // 2 or seconds <= 0:
            return  # a last sliver of a batch says little about the rate
        fits = int(rows * self.seconds / seconds)
        self.rows = max(CHUNK_ROWS, min(self.most, fits, 2 * self.rows))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Prepared:
    """One batch, ready to commit: its runs' parameters (key order), worker rows, gaps and acks.

    The events themselves are not kept: once merged into rows they are garbage.
    """

    runs: PreparedRuns
    workers: list[dict]
    gaps: list
    acks: list[Callable[[], None]]
    events: int
    committed: int = 0  # chunks of ``runs`` already committed: a retry goes on from there


@dataclass
class InFlight:
    """A batch taken from the buffer whose rows are being prepared (see monitor.ingest.prepare)."""

    job: Job
    gaps: list
    acks: list[Callable[[], None]]
    events: int
    put_at: float | None  # when the buffer took its oldest events


class Writer(threading.Thread):
    def __init__(self, engine: Engine, buffer: EventBuffer, *, field_max_bytes: int, batch_size: int = 50_000,
                 flush_interval: float = 0.2, on_gap: Callable[[int, Gap], None] | None = None,
                 clock: Callable[[], datetime] = utcnow, preparer: Preparer | None = None,
                 transaction: TransactionSize | None = None, daemon_id: str | None = None):
        super().__init__(name="taskmon-writer", daemon=True)
        self.engine = engine
        self.buffer = buffer
        self.field_max_bytes = field_max_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.transaction = transaction or TransactionSize()
        self.on_gap = on_gap
        self.clock = clock
        self.daemon_id = daemon_id  # recorded with each gap: which daemon saw it
        # No helper process unless given one: batches are then prepared in this thread.
        self.preparer = preparer or Preparer(row_plan(engine.dialect), field_max_bytes, processes=0)
        self.counters = Counters()
        self.stopping = threading.Event()
        self.give_up_at: float | None = None  # monotonic deadline for retries once stopping
        self.healthy = True
        self.working_since: float | None = None  # put_at of the oldest event taken but not committed

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
        # With a helper process, batches are prepared there while this thread commits earlier ones.
        # A batch goes to the helper when half a batch is waiting (or when nothing is in flight), so
        # the helper always has a worthwhile batch in hand instead of a sliver taken just after
        # the previous one.
        depth = 3 if self.preparer.processes else 1
        in_flight: deque[InFlight] = deque()
        since_cleanup = 0  # events written since the last idle clean-up
        renew_due = False  # a burst ended: replace a grown helper once the writer has been idle RENEW_IDLE s
        last_commit = time.monotonic()
        while True:
            if len(in_flight) < depth and (not in_flight or len(self.buffer) >= self.batch_size // 2):
                taken = self.buffer.take(self.batch_size, 0 if in_flight else self.flush_interval)
                if taken.batches or taken.controls:
                    in_flight.append(self.submit(taken))
                    self._note_working(in_flight)
                    continue
            if in_flight:
                if len(in_flight) < depth and not in_flight[0].job.done(self.flush_interval / 4):
                    continue  # meanwhile the buffer may fill enough for the next batch
                flight = in_flight.popleft()
                self.commit(self.finish(flight))
                self._note_working(in_flight)
                since_cleanup += flight.events
                last_commit = time.monotonic()
                del flight
                release_free_memory()
            elif self.stopping.is_set() and len(self.buffer) == 0:
                return
            elif since_cleanup >= self.batch_size:
                # Idle after a burst: collect what only the cyclic collector frees, and give it back;
                # a helper that kept much of the burst is replaced if the pause lasts.
                gc.collect()
                release_free_memory()
                since_cleanup, renew_due = 0, True
            elif renew_due and time.monotonic() - last_commit >= RENEW_IDLE:
                # Not at every pause of a busy stream: starting a helper costs a few tenths of a second of CPU.
                self.preparer.renew_grown()
                release_idle_connections(self.engine)
                release_free_memory()
                renew_due = False

    def _note_working(self, in_flight: deque[InFlight]) -> None:
        self.working_since = min((f.put_at for f in in_flight if f.put_at is not None), default=None)

    def write(self, taken: Taken) -> bool:
        """Prepare and commit one batch (what run() does with each; benchmarks call it directly)."""
        return self.commit(self.prepare(taken))

    def prepare(self, taken: Taken) -> Prepared:
        """Events -> merged rows per task and worker, in key order, and the upsert's parameters."""
        return self.finish(self.submit(taken))

    def submit(self, taken: Taken) -> InFlight:
        return InFlight(self.preparer.submit([batch.piece for batch in taken.batches]), taken.controls,
                        [batch.ack for batch in taken.batches if batch.ack is not None], taken.events,
                        min((b.put_at for b in taken.batches), default=None))

    def finish(self, flight: InFlight) -> Prepared:
        """Wait for a batch's rows (prepared here if the helper failed); count what was malformed."""
        ready = flight.job.result()
        for key, n in ready.malformed.items():
            self.counters.incr(key, n)
        return Prepared(runs_from_chunks(self.engine.dialect, ready.chunks, ready.rows), ready.workers, flight.gaps,
                        flight.acks, flight.events)

    def commit(self, prepared: Prepared) -> bool:
        if not self._commit(prepared):
            self.counters.incr("events_lost_on_shutdown", prepared.events)
            log.error("gave up on %d buffered events: the database stayed unreachable while stopping",
                      prepared.events)
            return False
        self.counters.incr("events_written", prepared.events)
        self.counters.incr("rows_written", prepared.runs.rows + len(prepared.workers))
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
                gap_ids.append((record_gap(conn, now=now, daemon_id=self.daemon_id, **dataclasses.asdict(gap)), gap))
        return gap_ids

    def _singles(self, prepared: Prepared) -> deque:
        """The rest of a batch the database refused, as (kind, key, runs, workers) to write row by row."""
        empty = runs_from_chunks(self.engine.dialect, [], 0)
        rest = prepared.runs.part(prepared.committed, prepared.runs.rows)
        singles: deque = deque(("task", key, one, []) for key, one in rest.one_by_one())
        singles.extend(("worker", row.get("hostname"), empty, [row]) for row in prepared.workers)
        return singles

    def _write_singly(self, singles: deque) -> None:
        """Write each row on its own, skip and count the ones refused; each leaves ``singles`` once done."""
        while singles:
            kind, key, runs, workers = singles[0]
            try:
                self._transaction(runs, workers, [])
            except (OperationalError, InterfaceError):
                raise
            except SQLAlchemyError as exc:
                self.counters.incr("malformed.db_rejected")
                log.warning("database refused a %s row (%s): %s", kind, key, first_line(exc))
            singles.popleft()

    def _whole(self, prepared: Prepared, gaps: list) -> list | None:
        """The batch in transactions of ``self.transaction``'s size: its gaps' ids, or None when the
        database refused one of them.

        Workers and gaps go with the last. What committed before a failure stays committed
        (``prepared.committed``): a retry, or the row-by-row fallback, takes the rest.
        """
        runs = prepared.runs
        try:
            while True:
                part = runs.part(prepared.committed, self.transaction.rows)
                last = prepared.committed + len(part.chunks) >= len(runs.chunks)
                started = time.monotonic()
                recorded = self._transaction(part, prepared.workers if last else [], gaps if last else [])
                self.transaction.took(part.rows, time.monotonic() - started)
                prepared.committed += len(part.chunks)
                if last:
                    return recorded
        except (OperationalError, InterfaceError):
            raise
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
        except SQLAlchemyError:
            log.exception("the batch could not be written; trying row by row")
        return None

    def _commit(self, prepared: Prepared) -> bool:
        # A retry goes on from where the failure stopped: gaps already recorded are not recorded
        # (nor reconciled) twice, and a batch refused as a whole goes on row by row.
        attempt = 0
        recorded: list | None = None  # (gap id, gap) once the batch's gaps are committed
        singles: deque | None = None  # the rows of a refused batch still to write
        while True:
            try:
                if recorded is None:
                    recorded = self._whole(prepared, prepared.gaps)
                    if recorded is None:  # refused: the gaps on their own, then row by row
                        recorded = self._transaction(runs_from_chunks(self.engine.dialect, [], 0), [], prepared.gaps)
                        singles = self._singles(prepared)
                if singles:
                    self._write_singly(singles)
                if not self.healthy:
                    log.warning("database is back; writing resumed")
                    self.healthy = True
                for gap_id, gap in recorded:
                    self.counters.incr("gaps")
                    if self.on_gap is not None:
                        self.on_gap(gap_id, gap)
                return True
            except SQLAlchemyError as exc:
                self.counters.incr("db_errors")
                if self.healthy:
                    log.error("cannot write to the database (%s); retrying with backoff, events stay buffered",
                              first_line(exc))
                    self.healthy = False
                delay = compute_backoff(attempt, first=0.5, cap=10.0)
                attempt += 1
                if self.give_up_at is not None and time.monotonic() + delay > self.give_up_at:
                    return False
                time.sleep(delay)
