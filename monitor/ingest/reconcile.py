"""After a gap, ask the Celery result backend how tasks left unfinished actually ended.

Events lost in a gap leave rows stuck in PENDING/RECEIVED/STARTED/RETRY. When a result
backend is configured, a finished task's state, result or exception is there (until
``result_expires``), and is merged into the row like any event.
"""
from __future__ import annotations

import logging
import queue
from datetime import datetime, timezone

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from monitor.ingest.buffer import Gap
from monitor.ingest.events import exception_type, is_time_limit_error
from monitor.supervisor import Service
from tasks.redact import truncate
from tasks.settings import Settings
from storage.health import set_reconciled
from storage.runs import upsert_runs
from storage.schema import task_runs

log = logging.getLogger(__name__)

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
    def __init__(self, engine: Engine, settings: Settings, limit: int = 5000):
        super().__init__("reconcile")
        from tasks.client import client_app

        self.engine = engine
        self.settings = settings
        self.limit = limit
        self.app = client_app(settings.broker_url, settings.result_backend, name="taskmon-reconcile")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, gap_id: int, gap: Gap) -> None:
        self._queue.put((gap_id, gap))

    def stop(self) -> None:
        self.stopping.set()
        self._queue.put(None)

    def run(self) -> None:
        while not self.stopping.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                self.reconcile(*item)
            except Exception:  # noqa: BLE001 - a backend or database failure must not kill the thread
                self.counters.incr("reconcile.errors")
                log.exception("reconciling after gap %s failed", item[0])

    def reconcile(self, gap_id: int, gap: Gap) -> int:
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(task_runs.c.task_id)
                .where(task_runs.c.state.in_(OPEN_STATES), task_runs.c.seen_at <= (gap.ended_at or gap.started_at))
                .order_by(task_runs.c.seen_at.desc())
                .limit(self.limit)
            ).scalars().all()
        now = datetime.now(timezone.utc)
        rows = []
        for task_id in ids:
            if self.stopping.is_set():
                break
            meta = self.app.backend.get_task_meta(task_id)
            row = row_from_result(task_id, meta, now, self.settings.field_max_bytes)
            if row is not None:
                rows.append(row)
        try:
            with self.engine.begin() as conn:
                upsert_runs(conn, rows)
                set_reconciled(conn, gap_id, len(rows))
        except SQLAlchemyError as exc:
            self.counters.incr("reconcile.errors")
            log.warning("cannot store %d reconciled tasks: %s", len(rows), exc)
            return 0
        self.counters.incr("reconciled", len(rows))
        if ids:
            log.warning("gap %s (%s): %d of %d unfinished tasks reconciled from the result backend",
                        gap_id, gap.reason, len(rows), len(ids))
        return len(rows)
