"""Sending e-mail over SMTP with taskmon's smtp_* settings: reports, reminders, notifications, alerts."""
from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Iterable

from tasks.settings import Settings
from storage.errors import first_line

log = logging.getLogger(__name__)


class MailError(RuntimeError):
    """The message could not be handed to the SMTP server; the text says where and why."""


def send_mail(settings: Settings, to: str | Iterable[str], subject: str, text: str, html: str | None = None,
              *, timeout: float = 30.0) -> str:
    """Send a plain-text message (with an HTML alternative when given); return its Message-ID."""
    recipients = [to] if isinstance(to, str) else list(to)
    if not recipients:
        raise ValueError("send_mail: no recipients")
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=settings.smtp_from.rpartition("@")[2] or None)
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    where = f"{settings.smtp_host}:{settings.smtp_port} ({settings.smtp_security})"
    try:
        with _connect(settings, timeout) as smtp:
            if settings.smtp_user:
                smtp.login(settings.smtp_user, settings.smtp_password)
            smtp.send_message(msg, to_addrs=recipients)
    except (smtplib.SMTPException, OSError) as exc:
        reason = first_line(exc)
        raise MailError(f"cannot send mail via {where}: {reason}") from exc
    log.info("sent %r to %s via %s", subject, ", ".join(recipients), where)
    return msg["Message-ID"]


def _connect(settings: Settings, timeout: float) -> smtplib.SMTP:
    context = ssl.create_default_context()
    if settings.smtp_security == "ssl":
        return smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=timeout, context=context)
    smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    if settings.smtp_security == "starttls":
        try:
            smtp.starttls(context=context)
        except (smtplib.SMTPException, OSError):
            smtp.close()
            raise
    return smtp
