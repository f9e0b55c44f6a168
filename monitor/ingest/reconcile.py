"""After a gap, ask the Celery result backend how tasks left unfinished actually ended.

Events lost in a gap leave rows stuck in PENDING/RECEIVED/STARTED/RETRY. When a result
backend is configured, a finished task's state, result or exception is there (until
``result_expires``), and is merged into the row like any event. With several daemons, only
the leader asks, once per gap, whichever daemon saw it.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import Engine, select

from monitor.ingest.events import exception_type, is_time_limit_error
from monitor.supervisor import Service
from storage.errors import first_line
from tasks.backoff import compute_backoff
from tasks.redact import truncate
from tasks.settings import Settings
from storage.health import set_reconciled, unreconciled_gaps
from storage.runs import upsert_runs
from storage.schema import task_runs

log = logging.getLogger(__name__)

# How often the leader looks for gaps other daemons recorded (its own, and a new leadership, nudge it at once).
RECONCILE_POLL = 5.0
# Older gaps are left alone: Celery's result_expires (1 day by default) has emptied the backend of them.
RECONCILE_WITHIN = timedelta(days=1)

# LOST and TIMEOUT may be detector verdicts that the backend can overrule with the real outcome.
OPEN_STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "LOST", "TIMEOUT")
BACKEND_FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def _aware(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def row_from_result(task_id: str, meta: dict, now: datetime, field_max_bytes: int) -> dict | None:
    """A partial task_runs row from a result-backend meta dict, or None if it is not final."""
    status = meta.get("status")
    if status not in BACKEND_FINAL:
        return None
    done = _aware(meta.get("date_done")) or now
    row = {"task_id": task_id, "state": status, "state_at": done, "seen_at": done, "finished_at": done,
           "updated_at": now}
    result = meta.get("result")
    if status == "SUCCESS":
        row["result"], cut = truncate(repr(result), field_max_bytes)
    else:
        if isinstance(result, dict) and "exc_type" in result:  # json-serialized exception
            text = f"{result['exc_type']}({', '.join(repr(a) for a in result.get('exc_message') or ())})"
        else:
            text = repr(result)
        row["exception"], cut = truncate(text, field_max_bytes)
        row["exception_type"] = exception_type(row["exception"])
        if is_time_limit_error(row["exception_type"]):
            row["state"] = "TIMEOUT"
        row["traceback"], cut2 = truncate(meta.get("traceback"), field_max_bytes)
        cut = cut or cut2
    row["truncated"] = cut
    return row


class Reconciler(Service):
    """Settles the open tasks of unreconciled gaps, in the cluster's leader only.

    Every daemon records the gaps it sees in receiver_gaps; the leader takes them from there,
    whichever daemon recorded them, at each ``nudge`` (a gap just recorded, leadership just won)
    and every RECONCILE_POLL seconds. A follower's reconciler only waits.
    """

    def __init__(self, engine: Engine, settings: Settings, *, daemon_id: str | None = None,
                 is_leader: Callable[[], bool] = lambda: True, limit: int = 5000, poll: float | None = None):
        super().__init__("reconcile")
        from tasks.client import client_app

        self.engine = engine
        self.settings = settings
        self.daemon_id = daemon_id
        self.is_leader = is_leader
        self.limit = limit
        self.poll = RECONCILE_POLL if poll is None else poll
        self.app = client_app(settings.broker_url, settings.result_backend, name="taskmon-reconcile")
        self._wake = threading.Event()

    def nudge(self) -> None:
        """Look for unreconciled gaps now (a no-op in a follower: the leader finds them at its next look)."""
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self._wake.wait(self.poll if not failures else compute_backoff(failures, first=1.0, cap=60.0))
            self._wake.clear()
            if self.stopping.is_set() or not self.is_leader():
                continue
            try:
                self.run_once()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - each result backend (redis, a database, rpc) raises its own
                # The gap stays unreconciled: tried again after a backoff, by this leader or the next.
                self.counters.incr("reconcile.errors")
                if not failures:
                    log.warning("cannot reconcile gaps (%s: %s); retrying", type(exc).__name__, first_line(exc))
                failures += 1

    def run_once(self, now: datetime | None = None) -> int:
        """Reconcile every gap still to do (within RECONCILE_WITHIN); returns how many this daemon settled."""
        now = now or datetime.now(timezone.utc)
        with self.engine.connect() as conn:
            gaps = unreconciled_gaps(conn, now - RECONCILE_WITHIN)
        done = 0
        for gap in gaps:
            if self.stopping.is_set() or not self.is_leader():
                break
            done += self.reconcile(gap)
        return done

    def reconcile(self, gap: dict) -> int:
        """Ask the result backend about the tasks ``gap`` may have left open; store the answers and mark
        the gap in one transaction. Returns 1 when this daemon reconciled it, 0 when another did first."""
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(task_runs.c.task_id)
                .where(task_runs.c.state.in_(OPEN_STATES), task_runs.c.seen_at <= (gap["ended_at"] or gap["started_at"]))
                .order_by(task_runs.c.seen_at.desc())
                .limit(self.limit)
            ).scalars().all()
        now = datetime.now(timezone.utc)
        rows = []
        for task_id in ids:
            if self.stopping.is_set():
                return 0  # not marked: the next leader (or this one, restarted) does it
            meta = self.app.backend.get_task_meta(task_id)
            row = row_from_result(task_id, meta, now, self.settings.field_max_bytes)
            if row is not None:
                rows.append(row)
        with self.engine.begin() as conn:
            if not set_reconciled(conn, gap["id"], len(rows), now, self.daemon_id):
                conn.rollback()
                self.counters.incr("reconcile.already_done")
                log.info("gap %s was reconciled by another daemon meanwhile", gap["id"])
                return 0
            upsert_runs(conn, rows)
        self.counters.incr("reconcile.gaps")
        self.counters.incr("reconciled", len(rows))
        seen_by = f", seen by {gap['daemon_id']}" if gap.get("daemon_id") and gap["daemon_id"] != self.daemon_id else ""
        log.log(logging.WARNING if ids else logging.INFO,
                "gap %s (%s%s): %d of %d unfinished tasks reconciled from the result backend",
                gap["id"], gap["reason"], seen_by, len(rows), len(ids))
        return 1
