"""One detector sweep: read, decide (pure functions), apply findings and dead letters in one transaction.

The daemon's detector thread runs ``Sweeper.run`` every ``detect_interval`` seconds with its own
database connections, so a slow sweep never holds up the event reader or the writer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.ingest.counters import Counters
from monitor.detectors import GoneWorker, StuckTask, TaskVerdict
from monitor.detectors.deadletters import DEAD_STATES, KEEP_OPEN_STATES, dead_letter, recovery
from monitor.detectors.lost import ACTIVE_STATES, gone_workers, lost_tasks, watching_since
from monitor.detectors.stuck import WAITING_STATES, stuck_tasks
from monitor.detectors.timeout import Limits, running_over_limit
from tasks.settings import Settings
from storage import deadletters as letters_store
from storage import detection as store
from storage.errors import first_line

log = logging.getLogger(__name__)

# Dead letters written per sweep at most (a first sweep over a long history catches up in steps):
# more than the 750 failures a second of 30,000 events a second with 10% failing, every 10 s.
DEAD_LETTER_BATCH = 10_000
# How far back a sweep looks for rows changed since the previous one: covers the writer's longest
# transaction (updated_at is taken when it begins, the commit comes later).
WINDOW_SLACK = timedelta(seconds=120)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SweepResult:
    """What one sweep changed; the alert rules read it."""

    at: datetime
    watch_since: datetime | None = None  # since when taskmon has heard every event (None: not listening)
    verdicts: list[TaskVerdict] = field(default_factory=list)
    stuck: list[StuckTask] = field(default_factory=list)
    workers_lost: list[GoneWorker] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"lost": sum(v.state == "LOST" for v in self.verdicts),
               "timeout": sum(v.state == "TIMEOUT" for v in self.verdicts),
               "stuck": len(self.stuck), "workers_lost": len(self.workers_lost),
               "dead_letters": len(self.dead_letters), "resolved": len(self.resolved)}
        return {k: v for k, v in out.items() if v}


class Sweeper:
    def __init__(self, engine: Engine, settings: Settings, *,
                 feed_since: Callable[[], datetime | None] | None = None, clock: Callable[[], datetime] = utcnow):
        """``feed_since``: since when the event feed is live and caught up, None while it is not (the
        daemon knows); without it the feed counts as live since the sweeper was made."""
        self.engine = engine
        self.limits = Limits(settings.task_time_limit, settings.timeouts)
        self.multiple = settings.lost_after_heartbeats
        self.stuck_after = settings.stuck_after
        created = clock()
        self.feed_since = feed_since or (lambda: created)
        self.clock = clock
        self.counters = Counters()
        self._window_start: datetime | None = None  # None: look at the whole history

    def run(self) -> SweepResult | None:
        """The detector loop's job: one sweep, failures logged and counted, never raised."""
        now = self.clock()
        try:
            result = self.sweep(now, self.feed_since())
        except SQLAlchemyError as exc:
            self.counters.incr("detect.errors")
            log.warning("detector sweep failed: %s", first_line(exc))
            return None
        except Exception:  # a bug in one sweep must not stop the next ones
            self.counters.incr("detect.errors")
            log.exception("detector sweep failed")
            return None
        self.counters.incr("detect.sweeps")
        for kind, n in result.counts().items():
            self.counters.incr(f"detect.{kind}", n)
        if result.counts():
            log.info("detectors: %s", ", ".join(f"{n} {kind}" for kind, n in result.counts().items()))
        return result

    def sweep(self, now: datetime, feed_since: datetime | None) -> SweepResult:
        """Find and apply; ``feed_since``: since when the event feed is live and caught up (None: it is not)."""
        result = SweepResult(now)
        with self.engine.begin() as conn:
            watch_since = result.watch_since = watching_since(feed_since, store.latest_gap_end(conn))
            gone = gone_workers(store.list_workers(conn), now, multiple=self.multiple, watch_since=watch_since)
            if watch_since is None:
                # Not listening: a heartbeat or task event may be on its way, so only a goodbye makes
                # tasks LOST; a lost worker's tasks wait until the feed is live again.
                gone = {host: g for host, g in gone.items() if g.how == "offline"}
            verdicts = lost_tasks(store.runs_on_workers(conn, gone, ACTIVE_STATES), gone, now)
            lost_ids = {v.task_id for v in verdicts}
            over = store.started_before(conn, now - timedelta(seconds=self.limits.shortest()))
            verdicts += [v for v in running_over_limit(over, now, self.limits) if v.task_id not in lost_ids]
            stuck = stuck_tasks(store.waiting_since_before(conn, WAITING_STATES, now - timedelta(seconds=self.stuck_after)),
                                now, after=self.stuck_after)

            result.workers_lost = [g for g in gone.values()
                                   if g.how == "silent" and store.mark_worker_lost(conn, g.hostname, g.last_heartbeat, now)]
            # task_id order: the same lock order each sweep (PostgreSQL row locks)
            result.verdicts = [v for v in sorted(verdicts, key=lambda v: v.task_id)
                               if store.apply_verdict(conn, v, now)]
            result.stuck = [s for s in sorted(stuck, key=lambda s: s.task_id)
                            if store.flag_stuck(conn, s, WAITING_STATES, now)]

            candidates = store.dead_candidates(conn, DEAD_STATES, updated_since=self._window_start,
                                               limit=DEAD_LETTER_BATCH)
            result.dead_letters = [letter for letter in map(dead_letter, candidates) if letter is not None]
            letters_store.upsert_dead_letters(conn, result.dead_letters, now)
            for row in store.recovered_candidates(conn, KEEP_OPEN_STATES, updated_since=self._window_start):
                if letters_store.resolve(conn, row["task_id"], recovery(row["state"]), now, only_open=True):
                    result.resolved.append(row["task_id"])
        if len(candidates) < DEAD_LETTER_BATCH:
            self._window_start = now - WINDOW_SLACK
        return result
