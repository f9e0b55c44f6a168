"""The leader's queue-depth samples: every queue_sample_interval seconds, messages waiting per queue into queue_depths.

Only the cluster's leader samples, so several daemons store one series, not one each. The queues
sampled are celery's default and those of the runs of the last day, the ones the dashboard shows.
A broker or database that cannot answer costs one sample, counted and logged; the next one is tried.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.broker.queues import BrokerError, queue_depths
from monitor.supervisor import Periodic
from storage.errors import first_line
from storage.queue_depths import record_depths
from storage.series import queues_seen

log = logging.getLogger(__name__)

QUEUES_SEEN = timedelta(days=1)


class QueueSampler(Periodic):
    """A Periodic whose job is one sample of every known queue, when ``is_leader()``."""

    def __init__(self, engine: Engine, settings, interval: float, is_leader: Callable[[], bool],
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        super().__init__("queue-depths", interval, self.sample, at_start=True)
        self.engine, self.settings, self.is_leader, self.clock = engine, settings, is_leader, clock

    def sample(self) -> int:
        """Sample once; the number of queues stored (0 when not the leader or on an error)."""
        if not self.is_leader():
            return 0
        now = self.clock()
        try:
            with self.engine.connect() as conn:
                names = {"celery", *queues_seen(conn, now - QUEUES_SEEN)}
            rows = queue_depths(self.settings, names)
            with self.engine.begin() as conn:
                stored = record_depths(conn, now, rows)
        except BrokerError as exc:
            self.counters.incr("queue_samples_failed")
            log.warning("queue depths not sampled: %s", exc)
            return 0
        except SQLAlchemyError as exc:
            self.counters.incr("queue_samples_failed")
            log.warning("queue depths not stored: %s", first_line(exc))
            return 0
        self.counters.incr("queue_samples")
        return stored
