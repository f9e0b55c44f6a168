"""E-mail notifications, each recorded in ``notifications`` so that one message is sent once.

A notification with a ``key`` (a task id, "bill-reminder:12:2026-11-23") is sent at most once:
a second delivery with the same key finds it sent, or being sent, and does nothing. A failed
send may be tried again under the same key.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from celery import shared_task
from sqlalchemy import Engine, select

from tasks.settings import Settings
from storage.db import dialect_insert
from storage.schema import notifications
from tasks.cleanup import cleanup_notifications
from tasks.mail import MailError, send_mail
from tasks.policies import BadInput, DefaultTask

log = logging.getLogger(__name__)


def _claim(engine: Engine, recipient: str, subject: str, body: str, key: str | None, now: datetime) -> tuple[int, bool]:
    """(notification id, whether this caller should send it)."""
    with engine.begin() as conn:
        stmt = dialect_insert(conn)(notifications).values(
            recipient=recipient, subject=subject, body=body, status="pending", dedup_key=key, created_at=now)
        new_id = conn.execute(stmt.on_conflict_do_nothing(index_elements=[notifications.c.dedup_key])
                              .returning(notifications.c.id)).scalar()
        if new_id is not None:
            return new_id, True
        row = conn.execute(select(notifications.c.id, notifications.c.status)
                           .where(notifications.c.dedup_key == key)).one()
        if row.status != "failed":
            return row.id, False
        retried = conn.execute(notifications.update()
                               .where(notifications.c.id == row.id, notifications.c.status == "failed")
                               .values(status="pending", error=None)).rowcount
        return row.id, retried == 1


def deliver(engine: Engine, settings: Settings, recipient: str, subject: str, body: str, *,
            key: str | None = None, html: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Record and send one e-mail; returns {"id", "sent"}. Raises MailError when SMTP refuses it."""
    if "@" not in (recipient or ""):
        raise BadInput(f"not an e-mail address: {recipient!r}")
    now = now or datetime.now(timezone.utc)
    notification_id, mine = _claim(engine, recipient, subject, body, key, now)
    if not mine:
        log.info("notification %s (%s) already sent or being sent; not sending again", notification_id, key)
        return {"id": notification_id, "sent": False}
    try:
        send_mail(settings, recipient, subject, body, html)
    except MailError as exc:
        with engine.begin() as conn:
            conn.execute(notifications.update().where(notifications.c.id == notification_id)
                         .values(status="failed", error=str(exc)))
        raise
    with engine.begin() as conn:
        conn.execute(notifications.update().where(notifications.c.id == notification_id)
                     .values(status="sent", sent_at=datetime.now(timezone.utc)))
    return {"id": notification_id, "sent": True}


@shared_task(name="notifications.send_notification_email", base=DefaultTask, bind=True)
def send_notification_email(self, email: str, subject: str, message: str):
    """The requirement documents' call: send_notification_email(email, subject, message). A redelivery sends nothing twice."""
    key = f"task:{self.request.id}" if self.request.id else None
    return deliver(self.engine, self.settings, email, subject, message, key=key)


@shared_task(name="notifications.cleanup_old_notifications", base=DefaultTask, bind=True)
def cleanup_old_notifications(self, days: int | None = None):
    s = self.settings
    deletions = cleanup_notifications(self.engine, now=datetime.now(timezone.utc),
                                      days=s.notification_retention_days if days is None else days,
                                      chunk_size=s.cleanup_chunk_size)
    return [d.as_dict() for d in deletions]
