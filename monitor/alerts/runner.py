"""The daemon's alert job: read what the rules need, plan (pure), record, hand e-mails to the alerts queue.

Runs in the daemon's scheduler thread right after each detector sweep, with its own database
connections: never in the event reader or the writer. Any failure is logged and counted; the
next run starts afresh from the stored groups.
"""
from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.alerts import conditions as cond
from monitor.alerts.grouping import Action, Group, plan
from tasks.alert_render import subject
from tasks.alert_rules import OCCURRENCE_RULES, recipients, rules_of
from monitor.ingest.counters import Counters
from tasks.settings import Settings
from storage import alerts as store
from storage import cluster as cluster_store
from storage import rollup_stats
from storage.errors import first_line

log = logging.getLogger(__name__)
SEND_TASK = "alerts.send_alert"
QUEUE = "alerts"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def claim_letters(conn, swept: list[dict], now: datetime) -> list[dict]:
    """The sweep's dead letters and those left unclaimed by an earlier leader, minus ones already alerted on
    and nameless ones that may still learn their task's name; all marked claimed (committed with the alerts)."""
    unclaimed = cluster_store.unalerted_letters(conn, now - cond.STALE_OCCURRENCE)
    seen = {letter["task_id"] for letter in unclaimed}
    fresh = [letter for letter in swept if letter["task_id"] not in seen]
    done = cluster_store.alerted_already(conn, [letter["task_id"] for letter in fresh])
    letters = [letter for letter in unclaimed + [letter for letter in fresh if letter["task_id"] not in done]
               if not cond.awaiting_name(letter, now)]
    cluster_store.mark_alerted(conn, [letter["task_id"] for letter in letters], now)
    return letters


def group_from_row(row: dict[str, Any]) -> Group:
    names = {f.name for f in dataclasses.fields(Group)} - {"key"}
    return Group(key=row["group_key"], **{k: row[k] for k in names})


def group_row(g: Group) -> dict[str, Any]:
    row = dataclasses.asdict(g)
    row["group_key"] = row.pop("key")
    return row


class AlertRunner:
    def __init__(self, engine: Engine, settings: Settings, *, clock: Callable[[], datetime] = utcnow):
        from tasks.client import client_app

        self.engine = engine
        self.settings = settings
        self.rules = rules_of(settings)
        self.clock = clock
        self.counters = Counters()
        # Sends alerts.send_alert by name, and reads beat schedules in the configured zone.
        self.app = client_app(settings.broker_url, name="taskmon-alerts", timezone=settings.timezone, enable_utc=True)

    @property
    def enabled(self) -> bool:
        return any(rule.enabled for rule in self.rules.values())

    def close(self) -> None:
        self.app.close()

    def run(self, sweep=None) -> list[int]:
        """The scheduler's job: one evaluation, failures logged and counted, never raised."""
        now = self.clock()
        try:
            ids = self.evaluate(now, sweep)
        except SQLAlchemyError as exc:
            self.counters.incr("alerts.errors")
            log.warning("alert evaluation failed: %s", first_line(exc))
            return []
        except Exception:  # a bug in one evaluation must not stop the next ones, nor the sweeps
            self.counters.incr("alerts.errors")
            log.exception("alert evaluation failed")
            return []
        self.counters.incr("alerts.evaluations")
        return ids

    def evaluate(self, now: datetime, sweep=None) -> list[int]:
        """Plan and record the notifications due at ``now``; send their tasks; return the new alert ids."""
        rules = self.rules
        occurrences = []
        watch_since = sweep.watch_since if sweep is not None else None
        if sweep is not None:
            occurrences += cond.stuck_occurrences(sweep.stuck, rules, now)
        conditions: list[cond.Condition] = []
        evaluated: list[str] = []
        depth_rule = rules["queue_depth"]
        if depth_rule.enabled:
            from monitor.broker.queues import BrokerError, queue_depths

            try:
                conditions += cond.queue_conditions(queue_depths(self.settings, depth_rule.queues), depth_rule)
                evaluated.append("queue_depth")
            except BrokerError as exc:
                self.counters.incr("alerts.broker_errors")
                log.warning("queue_depth rule skipped: %s", exc)
        with self.engine.begin() as conn:
            cluster_store.serialize_alerts(conn)
            # Dead letters are claimed in the transaction that records their alerts: ones a leader that died
            # wrote but never alerted on are taken here, and none is alerted on twice.
            letters = claim_letters(conn, sweep.dead_letters if sweep is not None else [], now)
            occurrences += cond.dead_letter_occurrences(letters, rules, now)
            groups = {row["group_key"]: group_from_row(row) for row in store.open_groups(conn)}
            conditions += self._stored_conditions(conn, now, evaluated, watch_since)
            covered = {o.task_name for o in occurrences} | {
                g.task_name for g in groups.values() if g.rule in OCCURRENCE_RULES and g.status == "open"}
            conditions = cond.drop_covered_rates(conditions, covered, set(groups))
            result = plan(groups, occurrences, conditions, evaluated=evaluated,
                          holds={"queue_depth": depth_rule.for_seconds}, now=now,
                          digest_interval=timedelta(seconds=self.settings.alert_digest_interval))
            store.save_groups(conn, [group_row(g) for g in result.groups.values()], now)
            new = [(store.insert_alert(conn, row), row) for row in (self._alert_row(a, now) for a in result.actions)]
        for action in result.actions:
            self.counters.incr(f"alerts.{action.kind}")
        ids = [alert_id for alert_id, row in new if row["status"] == "pending"]
        for alert_id, row in new:
            log.warning("alert #%d: %s", alert_id, row["subject"])
        self.dispatch(ids)
        self.resend(now)
        return [alert_id for alert_id, _ in new]

    def _stored_conditions(self, conn, now: datetime, evaluated: list[str],
                           watch_since: datetime | None) -> list[cond.Condition]:
        from storage.detection import list_workers
        from storage.schedules import list_schedules
        from tasks.cron import ScheduleError, due_after_last

        rules, out = self.rules, []
        if rules["worker_offline"].enabled:
            out += cond.worker_conditions(list_workers(conn), now, multiple=self.settings.lost_after_heartbeats,
                                          watch_since=watch_since)
            evaluated.append("worker_offline")
        rate = rules["failure_rate"]
        if rate.enabled:
            counts = rollup_stats.finished_counts(conn, now - timedelta(seconds=rate.window_seconds), now,
                                                  cond.FINISHED_STATES, cond.FAILED_STATES)
            out += cond.rate_conditions(counts, rate)
            evaluated.append("failure_rate")
        missed = rules["missed_run"]
        if missed.enabled:
            rows = []
            for row in list_schedules(conn, enabled_only=True):
                try:
                    rows.append(dict(row, due_at=due_after_last(row, self.app, now)))
                except ScheduleError as exc:
                    log.warning("missed_run rule: %s", exc)
            out += cond.missed_runs(rows, missed, now)
            evaluated.append("missed_run")
        return out

    def _alert_row(self, action: Action, now: datetime) -> dict[str, Any]:
        g = action.group
        to = recipients(self.rules[g.rule], self.settings)
        row = {
            "group_key": g.key, "rule": g.rule, "kind": action.kind, "task_name": g.task_name,
            "exception_type": g.exception_type, "target": g.target, "task_id": action.task_id,
            "message": g.message, "detail": dict(action.detail), "occurrences": action.count,
            "total_count": g.total_count, "first_seen": g.since, "last_seen": g.last_seen,
            "recipients": ",".join(to), "attempts": 0, "created_at": now, "updated_at": now,
        }
        if to:
            row.update(status="pending", next_attempt_at=now + timedelta(seconds=self.settings.alert_resend_after))
        else:
            row.update(status="failed", last_error=f"no recipients: set alert_recipients or alerts.{g.rule}.recipients")
        row["subject"] = subject(row)
        return row

    def dispatch(self, ids: list[int]) -> None:
        """Queue alerts.send_alert for each id; one that cannot be queued is re-sent later (resend)."""
        for alert_id in ids:
            try:
                self.app.send_task(SEND_TASK, args=[alert_id], queue=QUEUE)
                self.counters.incr("alerts.dispatched")
            except Exception as exc:  # noqa: BLE001 - any broker error: the row stays pending, resend retries
                self.counters.incr("alerts.dispatch_errors")
                log.warning("cannot queue alert #%d (will retry): %s", alert_id, exc)

    def resend(self, now: datetime) -> None:
        """Pending or failed alerts whose retry is overdue get their task again."""
        with self.engine.begin() as conn:
            ids = store.due_for_resend(conn, now)
            store.set_next_attempt(conn, ids, now + timedelta(seconds=self.settings.alert_resend_after))
        if ids:
            log.warning("re-sending %d alert(s) whose delivery is overdue", len(ids))
            self.counters.incr("alerts.resent", len(ids))
            self.dispatch(ids)
