"""Events -> merged rows -> the upsert's parameters: the writer's Python work, in a helper process.

At tens of thousands of events a second this work (validation, redaction, merging, parameter
building: ~20 us an event) is more than one interpreter can do beside the pub/sub reader, which
must never fall behind or Redis drops it. So the writer hands each batch to a helper process
(``Preparer``) and commits the previous batch while the helper works on the next: the reader,
the helper and the database each get a core's share instead of one GIL between them.

The helper computes exactly what ``prepare_batch`` computes in the writer thread (the writer falls
back to that when there is no helper, or when the helper died); tests compare the two.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Iterable

import orjson

from monitor.counters import Counters
from monitor.events import Malformed, to_update
from monitor.memory import release_free_memory, tune_allocator
from monitor.state import Pending
from storage.params import RowPlan, pack_rows

log = logging.getLogger(__name__)


@dataclass
class Ready:
    """A batch's events as the writer commits them: task_runs parameters (key order, pickled in
    chunks: see storage.runs.PreparedRuns), worker rows, and what could not be used, by reason."""

    chunks: list[bytes]
    rows: int
    workers: list[dict]
    malformed: dict[str, int] = field(default_factory=dict)


def merge_events(pieces: Iterable[bytes | list], field_max_bytes: int, malformed: Counter) -> Pending:
    """Validate and merge events per task and worker; count the unusable ones in ``malformed``.

    ``pieces``: event lists, or orjson arrays of events (``Batch.piece``), decoded one at a time so
    that only one read's events are dicts at once; the merged rows are what stays.
    """
    pending = Pending()
    redacted: dict[str, str] = {}
    for piece in pieces:
        for event in orjson.loads(piece) if isinstance(piece, bytes) else piece:
            try:
                pending.add(to_update(event, field_max_bytes, redacted))
            except Malformed as exc:
                malformed[f"malformed.{exc.reason}"] += 1
            except (TypeError, ValueError, OverflowError) as exc:  # a shape to_update did not foresee
                log.warning("skipping event that failed conversion: %s", exc)
                malformed["malformed.bad_field_type"] += 1
    return pending


def prepare_batch(plan: RowPlan, pieces: Iterable[bytes | list], field_max_bytes: int) -> Ready:
    malformed: Counter = Counter()
    pending = merge_events(pieces, field_max_bytes, malformed)
    # Key order: the detector sweep locks rows in the same order, so PostgreSQL never deadlocks.
    tasks = [pending.tasks[k] for k in sorted(pending.tasks)]
    workers = [pending.workers[k] for k in sorted(pending.workers)]
    del pending
    return Ready(pack_rows(plan, tasks, packed=True), len(tasks), workers, dict(malformed))


# Helpers that die one after another (no memory to start one, say): stop starting them.
GIVE_UP_AFTER = 5

# -- the helper process ---------------------------------------------------------------------------
# It imports this module and what it needs, not SQLAlchemy (storage.params: ~26 MB less).


def _init_helper(daemon_pid: int) -> None:
    # Ctrl-C in a terminal signals the whole process group: the daemon stops and flushes, and
    # needs its helper until the last batch is prepared. The daemon shuts the helper down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_allocator()
    threading.Thread(target=_housekeeping, args=(daemon_pid,), name="taskmon-helper-housekeeping", daemon=True).start()


def _housekeeping(daemon_pid: int) -> None:
    """Every second: give a batch's garbage back (see monitor.memory), and exit if the daemon is gone
    (killed with -9, it cannot shut its helper down; orphans get a new parent)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != daemon_pid:
            os._exit(0)
        release_free_memory()


def _prepare_in_helper(plan: RowPlan, field_max_bytes: int, pieces: list) -> Ready:
    return prepare_batch(plan, pieces, field_max_bytes)


class Job:
    """One batch being prepared; ``result()`` prepares it in this thread when there is no helper or it failed."""

    def __init__(self, preparer: "Preparer", pieces: list, future: Future | None = None):
        self.preparer, self.pieces, self.future = preparer, pieces, future

    def done(self, timeout: float = 0) -> bool:
        """Whether ``result()`` would return at once, waiting up to ``timeout`` seconds for it."""
        if self.future is None:
            return True
        return bool(wait([self.future], timeout=timeout).done)

    def result(self) -> Ready:
        if self.future is not None:
            try:
                ready = self.future.result()
                self.preparer.failures_in_a_row = 0
                self.pieces = []  # safe in rows now: free the events before the batch commits
                return ready
            except BrokenProcessPool:
                self.preparer.broken()
            except CancelledError:  # the pool was closed under a writer still stopping: prepare it here
                pass
            except Exception:  # a bug the helper hit: the same work here logs and counts it again
                log.exception("the preparing helper failed on a batch; preparing it in the writer")
                self.preparer.counters.incr("prepare.helper_failures")
        return prepare_batch(self.preparer.plan, self.pieces, self.preparer.field_max_bytes)


class Preparer:
    """A pool of ``processes`` helper processes (spawned, so they share no locks with our threads)."""

    def __init__(self, plan: RowPlan, field_max_bytes: int, processes: int = 1):
        self.plan = plan  # storage.runs.row_plan(dialect)
        self.field_max_bytes = field_max_bytes
        self.processes = processes
        self.counters = Counters()  # prepare.helper_failures: crashes and errors of the helper
        self.failures_in_a_row = 0
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, pieces: list) -> Job:
        """Start preparing a batch (``Batch.piece`` of each of its batches). The pieces are kept until
        the result is in: a helper that dies loses nothing."""
        pool = self._ensure_pool()
        future = None
        if pool is not None:
            try:
                future = pool.submit(_prepare_in_helper, self.plan, self.field_max_bytes, pieces)
                # The pool's feeder thread keeps the last job it pickled (the whole batch, ~20 MB at
                # 50,000 events) until it sends another: a no-op right behind lets it go once sent.
                pool.submit(release_free_memory)
            except (BrokenProcessPool, RuntimeError):
                self.broken()
        return Job(self, pieces, future)

    def _ensure_pool(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.processes > 0:
            try:
                self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_helper, initargs=(os.getpid(),))
            except OSError as exc:
                log.error("cannot start a preparing helper (%s); the writer prepares batches itself", exc)
                self.processes = 0
        return self._pool

    def release(self) -> None:
        """Between bursts: the helper trims its heap (see the writer's idle clean-up)."""
        if self._pool is not None:
            try:
                self._pool.submit(release_free_memory).result(timeout=10)
            except Exception as exc:  # noqa: BLE001 - a broken helper is restarted by the next batch anyway
                log.debug("helper clean-up skipped: %s", exc)

    def broken(self) -> None:
        """The helper died (killed, out of memory): start a new one for the next batches."""
        self.counters.incr("prepare.helper_failures")
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= GIVE_UP_AFTER:
            log.error("the preparing helper died %d times in a row; the writer prepares batches itself from now on",
                      self.failures_in_a_row)
            self.processes = 0
        else:
            log.error("the preparing helper process died; starting another, this batch is prepared in the writer")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
