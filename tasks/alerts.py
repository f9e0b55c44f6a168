"""alerts.send_alert: load an alert row, render it, mail it, record the outcome.

Idempotent per alert id: the row is claimed atomically before sending, so a duplicate task (a
daemon re-send racing a retry) sends nothing. A send that fails is recorded on the row, logged
and retried with the alert retry policy; it never raises an alert about itself (alerts.* task
names are excluded from every task rule).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import shared_task
from sqlalchemy import Engine

from tasks.alert_render import render
from tasks.settings import Settings
from storage import alerts as store
from storage.runs import get_run
from tasks.mail import MailError, send_mail
from tasks.policies import AlertTask

log = logging.getLogger(__name__)


def deliver_alert(engine: Engine, settings: Settings, alert_id: int, *, retry_in: float | None = None,
                  now: datetime | None = None) -> dict[str, Any]:
    """Send alert ``alert_id`` unless it is sent or being sent; {"id", "sent"}.

    ``now`` is the attempt's time: the claim, the outcome and the next look are stamped with it.
    Raises MailError when SMTP refuses it, after recording the error and, when ``retry_in`` is
    given, when the daemon should look again if that retry never comes.
    """
    now = now or datetime.now(timezone.utc)
    with engine.begin() as conn:
        if not store.claim(conn, alert_id, now):
            alert = store.get_alert(conn, alert_id)
            if alert is None:
                log.warning("alert %s does not exist; nothing to send", alert_id)
            else:
                log.info("alert %s is %s; not sending it again", alert_id, alert["status"])
            return {"id": alert_id, "sent": False}
        alert = store.get_alert(conn, alert_id)
        run = get_run(conn, alert["task_id"]) if alert.get("task_id") else None
    subject, text, html = render(alert, run, settings.tz, settings.timezone)
    try:
        send_mail(settings, alert["recipients"].split(","), subject, text, html)
    except MailError as exc:
        again = now + timedelta(seconds=retry_in + settings.alert_resend_after) if retry_in is not None else None
        with engine.begin() as conn:
            store.mark_failed(conn, alert_id, str(exc), now, again)
        raise
    with engine.begin() as conn:
        store.mark_sent(conn, alert_id, now)
    return {"id": alert_id, "sent": True}


@shared_task(name="alerts.send_alert", base=AlertTask, bind=True)
def send_alert(self, alert_id: int):
    settings = self.settings
    retries = self.request.retries or 0
    give_up = retries >= settings.alert_max_retries
    delay = None if give_up else self.retry_delay(retries)
    try:
        return deliver_alert(self.engine, settings, int(alert_id), retry_in=delay)
    except MailError as exc:
        if give_up:
            log.error("alert %s not sent after %d attempts, giving up: %s", alert_id, retries + 1, exc)
            raise
        log.warning("alert %s not sent (attempt %d), retrying in %.1fs: %s", alert_id, retries + 1, delay, exc)
        raise self.retry(exc=exc, countdown=delay, max_retries=settings.alert_max_retries) from None


def send_test(settings: Settings, to: tuple[str, ...] | list[str], now: datetime | None = None) -> str:
    """`taskmon alerts test`: render a sample alert and send it the way the alert task does; MailError if SMTP refuses."""
    now = now or datetime.now(timezone.utc)
    alert = {"id": "test", "rule": "failed", "kind": "fire", "task_name": "taskmon.test_alert",
             "exception_type": "TestAlert", "task_id": None, "detail": {},
             "message": "a test alert from `taskmon alerts test`: if you read this, alert e-mail works",
             "occurrences": 1, "total_count": 1, "first_seen": now, "last_seen": now, "created_at": now}
    subject, text, html = render(alert, None, settings.tz, settings.timezone)
    return send_mail(settings, list(to), subject, text, html)
