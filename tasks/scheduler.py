"""A celery beat scheduler whose schedule is the ``periodic_tasks`` table, picked up again when it changes.

``celery -A tasks beat`` uses it (it is the app's ``beat_scheduler``; ``-S tasks.scheduler:DatabaseScheduler``
names it explicitly), and so does ``celery -A tasks worker -B``.
"""
from __future__ import annotations

import logging
import time

from celery.beat import ScheduleEntry, Scheduler
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from storage.db import ensure_schema, safe_url
from storage.schedules import definitions, list_schedules, record_runs
from tasks.cron import ScheduleError, celery_schedule

log = logging.getLogger(__name__)


class DatabaseScheduler(Scheduler):
    """Beat entries from the enabled rows of ``periodic_tasks``.

    Every ``schedule_poll_interval`` seconds it reads the rows' definitions (a small table, one
    query) and rebuilds its entries when any differs from what it loaded, whoever edited it:
    `taskmon schedule`, another program, or plain SQL. Comparing the definitions themselves, not
    a max(updated_at), also catches edits that forget updated_at and is immune to clock skew
    between editors. After every dispatch it writes last_run_at and total_run_count back.
    """

    Entry = ScheduleEntry

    def __init__(self, app, *args, **kwargs):
        self._entries: dict[str, ScheduleEntry] = {}
        self._definitions: tuple | None = None
        self._last_poll: float | None = None
        self._dirty: set[str] = set()
        self.poll_errors = 0
        self.tick_errors = 0
        self._tick_client = None  # False: the broker is not Redis, no tick is recorded
        self.poll_interval = app.settings.schedule_poll_interval
        kwargs["sync_every_tasks"] = 1  # bookkeeping goes to the table after every dispatch
        super().__init__(app, *args, **kwargs)
        # Wake at least once per poll interval, so an edit is seen even while nothing is due.
        self.max_interval = min(self.max_interval, self.poll_interval)

    @property
    def engine(self):
        return self.app.engine

    def setup_schedule(self):
        # The table is the only source: no app.conf.beat_schedule, and no celery.backend_cleanup
        # entry (the cleanup-expired-results row does that job).
        ensure_schema(self.engine)
        self.reload(force=True)

    @property
    def schedule(self) -> dict[str, ScheduleEntry]:
        now = time.monotonic()
        if self._last_poll is None or now - self._last_poll >= self.poll_interval:
            self._last_poll = now
            self.reload()
        return self._entries

    def reload(self, force: bool = False) -> bool:
        """Re-read the table if its definitions changed; True when the entries were rebuilt."""
        try:
            with self.engine.connect() as conn:
                current = definitions(conn)
                if not force and current == self._definitions:
                    return False
                rows = list_schedules(conn, enabled_only=True)
        except SQLAlchemyError as exc:
            self.poll_errors += 1
            log.warning("beat: cannot read the schedule from %s, keeping the loaded one (%d failed reads): %s",
                        safe_url(self.engine), self.poll_errors, exc)
            return False
        entries = {}
        for row in rows:
            try:
                entries[row["name"]] = self._entry(row)
            except ScheduleError as exc:
                log.error("beat: skipping %s", exc)
        self._definitions = current
        self._entries = entries
        log.info("beat: schedule loaded from %s: %d enabled entries", safe_url(self.engine), len(entries))
        return True

    def _entry(self, row) -> ScheduleEntry:
        last_run_at, total = row["last_run_at"], row["total_run_count"]
        previous = self._entries.get(row["name"])
        if previous is not None and (last_run_at is None or previous.last_run_at > last_run_at):
            # Not yet written back: keep what this process knows, or an edit would re-run the entry.
            last_run_at, total = previous.last_run_at, max(total, previous.total_run_count)
        return self.Entry(
            name=row["name"], task=row["task"], schedule=celery_schedule(row, self.app),
            args=tuple(row["args"]), kwargs=row["kwargs"],
            options={"queue": row["queue"]} if row["queue"] else {},
            last_run_at=last_run_at, total_run_count=total, app=self.app,
        )

    def reserve(self, entry):
        new_entry = self._entries[entry.name] = next(entry)
        self._dirty.add(entry.name)
        return new_entry

    def sync(self):
        if not self._dirty:
            return
        runs = {name: (e.last_run_at, e.total_run_count) for name in self._dirty if (e := self._entries.get(name))}
        try:
            with self.engine.begin() as conn:
                record_runs(conn, runs)
        except SQLAlchemyError as exc:
            log.warning("beat: cannot record runs of %s, will try again: %s", ", ".join(sorted(runs)), exc)
            return
        self._dirty.clear()

    def tick(self, *args, **kwargs):
        next_in = super().tick(*args, **kwargs)
        self._record_tick(next_in)
        return next_in

    def _record_tick(self, next_in: float) -> None:
        """Tell `taskmon schedule status` that beat is alive (Redis brokers; see tasks.beat_tick)."""
        import os
        import socket
        from datetime import datetime, timezone

        from tasks.beat_tick import record_tick, tick_client

        if self._tick_client is False:
            return
        try:
            if self._tick_client is None:
                self._tick_client = tick_client(self.app.conf.broker_url) or False
                if self._tick_client is False:
                    return
            prefix = (self.app.conf.broker_transport_options or {}).get("global_keyprefix", "")
            record_tick(self._tick_client, prefix, socket.gethostname(), os.getpid(), datetime.now(timezone.utc),
                        next_in)
        except (OSError, RedisError) as exc:  # a lost tick must never stop beat
            self.tick_errors += 1
            log.warning("beat: cannot record its tick (%d failed): %s", self.tick_errors, exc)

    @property
    def info(self):
        return f"    . db -> {safe_url(self.engine)} (checked for edits every {self.poll_interval}s)"
